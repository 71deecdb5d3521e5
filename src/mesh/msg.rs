//! The one message enum that crosses shards.
//!
//! Every variant is `Send` with no `Rc` inside, and says who sends it and
//! what the receiver must do. Rings are FIFO per ordered pair of shards;
//! several guarantees rest on that (see `Subscribed` and `Unsubscribed`).

use std::sync::Arc;
use std::time::Instant;

use crate::proto::message::{ErrorCode, Prio, Recovery, Since};
use crate::topic::owned::Epoch;

/// A publication as shared between shards (protocol-neutral, with its
/// native frame encoded once).
pub use crate::topic::publication::SharedPub;

/// A connection on some shard: its slot and the slot's generation, so a
/// reply to a connection that has gone (and whose slot was reused) is
/// recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Slot index in the shard's connection slab.
    pub idx: u32,
    /// Generation of the slot when the request was made.
    pub gen: u32,
}

/// Who waits for the answer to a publish, and in which language the edge
/// must encode it. The owner never encodes replies: it sends a typed
/// [`PubReply`] back and the requester's shard encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    /// The publishing connection (on the sending shard).
    pub conn: ConnRef,
    /// Command id to echo.
    pub id: Option<u64>,
    /// How the edge answers.
    pub kind: ReplyKind,
    /// The publisher asked for a `receipt`.
    pub receipt: bool,
}

/// Where a publication's receipt parts go: the publisher's shard and
/// connection, and how many parts (interested shards) make it whole.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptTo {
    /// The publisher's shard.
    pub shard: usize,
    /// The publisher.
    pub conn: ConnRef,
    /// Parts to expect.
    pub of: u32,
}

/// A publish on its way to the owner.
#[derive(Debug)]
pub struct PublishReq {
    /// Who waits for the answer.
    pub to: Requester,
    /// Validated topic.
    pub topic: Box<str>,
    /// Verbatim, validated JSON `data`.
    pub data: Box<str>,
    /// Idempotency key.
    pub msg_id: Option<Box<str>>,
    /// Priority as the publisher gave it (None: not given, i.e. normal).
    pub prio: Option<Prio>,
    /// The authenticated publisher's `sub`.
    pub from: Option<std::sync::Arc<str>>,
    /// When the publish was read off the socket.
    pub received_at: Instant,
    /// Extra JSON fields stamped into the frame before `data` (a
    /// dead-letter publication's `"dead":{…}`), set by the server only.
    pub extra: Option<Box<str>>,
    /// An append to a token stream.
    pub stream: Option<Box<StreamArg>>,
    /// Retained-value fields.
    pub retain: Option<Box<RetainArg>>,
}

/// A shard's request to the cluster participant (the NATS JetStream
/// client thread), over its own SPSC ring.
#[derive(Debug)]
pub enum ClusterReq {
    /// Store this sequenced publication (answered `Stored`, in seq order).
    Append(SharedPub),
    /// Load a topic's stored state (answered `Loaded`).
    Load(Arc<str>),
    /// A publish into a partition another node owns: forward it there
    /// (answered `Forwarded`; `from` is the publisher's shard).
    Forward {
        /// The publisher's shard.
        from: usize,
        /// The publish.
        req: Box<PublishReq>,
    },
    /// The answer to a publish the participant brought from another node
    /// (`to.conn` is the participant's token for it).
    Answer {
        /// The remote publisher's token.
        to: Requester,
        /// The owner's answer.
        reply: PubReply,
    },
    /// This shard has taken in an `Ownership` change of `stream`: every
    /// append of it that came before is in the ring already.
    OwnershipSeen(u32),
}

/// A topic's stored state: epoch, last seq, recent publications in order.
pub type StoredTopic = (Epoch, u64, Vec<SharedPub>);

/// A history page: the topic's epoch (None: not held), its last seq, and
/// the publications.
pub type HistoryPage = (Option<Epoch>, u64, Vec<SharedPub>);

/// A `join` or `leave` of a topic's presence.
#[derive(Debug)]
pub struct PresenceNote {
    /// A `join` (else a `leave`).
    pub join: bool,
    /// The topic.
    pub topic: Arc<str>,
    /// The member's `sub` (or `anon`).
    pub client: Arc<str>,
    /// The member's connection id, `<shard>.<slot>.<gen>`.
    pub conn: String,
}

/// The owner's answer to a `presence` query.
#[derive(Debug)]
pub struct PresenceList {
    /// Command id to echo.
    pub id: Option<u64>,
    /// The topic.
    pub topic: Box<str>,
    /// Subscribers, exact.
    pub count: u64,
    /// Listed members (at most `presence.max_list`): `sub` and connection id.
    pub clients: Vec<(Arc<str>, String)>,
}

/// A subscriber as presence knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its connection (on the sending shard).
    pub conn: ConnRef,
    /// The token's `sub`, or `anon`.
    pub client: Arc<str>,
    /// It wants `join`/`leave` events (subscribe only).
    pub watch: bool,
}

/// The retained-value fields of a publish.
#[derive(Debug, Clone, Copy)]
pub struct RetainArg {
    /// Retain it (false: only `expire`).
    pub retain: bool,
    /// Expires after, ms.
    pub ttl_ms: Option<u64>,
    /// Only if the retained value's seq is this (0: none).
    pub if_seq: Option<u64>,
    /// The server's expiry of the value of this seq: publish the `expired`
    /// msg and clear the value, only if it is still that one.
    pub expire: Option<u64>,
}

/// The token stream fields of a publish.
#[derive(Debug, Clone)]
pub struct StreamArg {
    /// The stream.
    pub name: Box<str>,
    /// This append closes it.
    pub end: bool,
    /// Why the server closed it (`abandoned`), for a server-made end.
    pub reason: Option<&'static str>,
}

/// A request on the requester's shard: its slot there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqOrigin {
    /// The requester's shard.
    pub shard: usize,
    /// Slot in that shard's request table.
    pub slot: u32,
    /// The slot's generation.
    pub gen: u32,
}

/// A request on its way to the topic's owner.
#[derive(Debug)]
pub struct ReqRoute {
    /// Where replies go.
    pub origin: ReqOrigin,
    /// Validated topic.
    pub topic: Box<str>,
    /// Only this group's members.
    pub group: Option<Box<str>>,
    /// Verbatim JSON.
    pub data: Box<str>,
    /// Deadline, ms (told to the responder).
    pub timeout_ms: u64,
    /// The requester's `sub`.
    pub from: Option<Arc<str>>,
}

/// A request on its way to its responder.
#[derive(Debug)]
pub struct ReqHandOff {
    /// The responder.
    pub conn: ConnRef,
    /// Opaque id.
    pub req: Box<str>,
    /// The route it came by.
    pub route: ReqRoute,
}

/// The group fields of a join, owned (see `proto::message::GroupSub`).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// Group name.
    pub name: Box<str>,
    /// Members settle what they get.
    pub ack: bool,
    /// Unsettled publications this member may hold.
    pub max_inflight: u32,
    /// Settle deadline, ms.
    pub ack_wait_ms: u64,
    /// Attempts before the dead-letter topic.
    pub max_deliver: u32,
    /// Dead-letter topic (None: `<topic>/dlq`).
    pub dead_letter: Option<Box<str>>,
}

/// What kind of client a publish came from, so its edge answers in its
/// language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A WebSocket `pub`: an `ack` or `error` frame.
    Ws,
    /// `POST /v1/publish`: a whole HTTP response.
    Http,
    /// Item `n` of `POST /v1/publish/batch`.
    Batch(u32),
    /// The server itself (a dead-letter publication): nobody is answered.
    Internal,
}

/// The owner's answer to a publish, protocol-neutral.
#[derive(Debug, Clone)]
pub enum PubReply {
    /// Sequenced (or a duplicate of an earlier publication).
    Ack {
        /// The topic.
        topic: Arc<str>,
        /// Its seq.
        seq: u64,
        /// The topic's epoch.
        epoch: Epoch,
        /// A repeated `msg_id`: not delivered again.
        dup: bool,
    },
    /// Refused.
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: &'static str,
        /// When to retry.
        retry_after_ms: Option<u64>,
    },
}

/// A message between two shards.
#[derive(Debug)]
pub enum MeshMsg {
    /// Shard of the publisher → owner: sequence, answer (`Published`) and
    /// fan out (`Deliver`), or refuse (`Published` with `Refused`).
    Publish(Box<PublishReq>),
    /// Owner → each interested shard: queue `publ` on every local
    /// subscriber of its topic.
    Deliver {
        /// The publication.
        publ: SharedPub,
        /// When the publish was read off the publisher's socket.
        received_at: Instant,
        /// The publisher wants a receipt: where this shard's part goes.
        receipt: Option<Box<ReceiptTo>>,
    },
    /// A shard that delivered a publication → the publisher's shard: how
    /// many of its subscribers the frame was written to, and dropped for.
    ReceiptPart {
        /// Whose receipt.
        to: ReceiptTo,
        /// The publication's topic.
        topic: Arc<str>,
        /// Its seq.
        seq: u64,
        /// Subscribers it was written to.
        delivered: u32,
        /// Subscribers it was dropped for (slow, closing).
        dropped: u32,
    },
    /// Owner → shard of the requester: the answer to its publish, encoded
    /// there for the requester's wire format.
    Published {
        /// Who waits.
        to: Requester,
        /// The answer.
        reply: PubReply,
    },
    /// Shard of `conn` → owner: count one more subscription of the sender,
    /// answer with `Subscribed`.
    Subscribe {
        /// The subscribing connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
        /// Resume position, if any.
        since: Option<Since>,
        /// First a rollup of each token stream.
        streams: bool,
        /// First the retained value.
        last: bool,
        /// Presence: the subscriber, and whether it wants join/leave events.
        member: Option<Box<Member>>,
        /// The replay goes inside one reply (a Centrifugo subscribe): it may
        /// take up to half of `limits.outbound_hard_bytes`, not just the
        /// soft limit, so a subscriber closed for falling behind (≈ the
        /// soft limit missed) can recover in one go.
        wide: bool,
    },
    /// Shard of `conn` → owner: the topic's retained value, please.
    Get {
        /// The asking connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
    },
    /// Owner → shard of `conn`: the retained value (None: `not_found`) and
    /// its time to live, ms.
    Value {
        /// The asking connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The value.
        value: Option<(SharedPub, Option<u64>)>,
    },
    /// Owner → shard of `conn`: the subscription is counted. Every `Deliver`
    /// of this topic sent after this message carries a seq above `seq`, so
    /// adding the connection now gives it exactly the seqs after `seq`. If
    /// the connection is gone or already subscribed, the receiver gives the
    /// count back with `Release`.
    Subscribed {
        /// The subscribing connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The topic.
        topic: Arc<str>,
        /// Last assigned seq at subscribe time.
        seq: u64,
        /// Current epoch.
        epoch: Epoch,
        /// How a `since` resume turned out.
        recovery: Recovery,
        /// With `Recovery::Recovered`: the missed publications, in order.
        replay: Vec<SharedPub>,
        /// The presence member the subscribe brought (given back with its
        /// `Release` if the connection is gone meanwhile).
        member: Option<Box<Member>>,
    },
    /// Owner → shard of `conn`: the subscription was refused (nothing was
    /// counted); send `error` with `code`.
    SubscribeRefused {
        /// The subscribing connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Error code to send.
        code: ErrorCode,
        /// Explanation to send.
        message: &'static str,
    },
    /// Shard of `conn` → owner: round trip so that the `unsubscribed` reply
    /// is ordered after any `Subscribed` still in flight for this topic.
    Unsubscribe {
        /// The unsubscribing connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
    },
    /// Owner → shard of `conn`: apply the unsubscribe now and reply.
    Unsubscribed {
        /// The unsubscribing connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
    },
    /// Every shard → every other shard during a graceful drain: the
    /// sender has handled everything of `round` (1: its intake stopped; 2:
    /// every publish it owned was fanned out). See `shard::drain`.
    DrainBarrier {
        /// 1 or 2.
        round: u8,
    },
    /// Any shard → owner: give back one subscription of the sender.
    Release {
        /// The topic.
        topic: Arc<str>,
        /// A subscriber leaves (None: a count given back for a duplicate).
        leave: Option<Box<Member>>,
    },
    /// Owner → a watcher's shard: a `join` or `leave` frame for these of
    /// its connections (subscribers with `presence: true`).
    PresenceEvent {
        /// The watchers there.
        conns: Vec<ConnRef>,
        /// What happened (encoded there, in each watcher's wire format).
        note: Arc<PresenceNote>,
    },
    /// Participant → owner: `topic`'s publications through `through` are
    /// stored (durable mode).
    Stored {
        /// The topic.
        topic: Arc<str>,
        /// The last stored seq (every one before it is stored too).
        through: u64,
    },
    /// Participant → every shard: this node now owns (or no longer owns)
    /// the partitions of `stream` — it sequences their topics (or forwards
    /// their publishes and mirrors them from the stream).
    Ownership {
        /// The stream (the unit of ownership).
        stream: u32,
        /// Owned now.
        owned: bool,
    },
    /// Participant → a topic's local shard: a publication another node
    /// sequenced and stored (a mirror applies it in seq order).
    Replicated(SharedPub),
    /// A forwarding shard → the publisher's shard: the publish went to
    /// another node, which sends no receipt; the one asked for is given up.
    ReceiptVoid {
        /// The publisher.
        conn: ConnRef,
    },
    /// Participant → the shard that forwarded a publish: the owner node's
    /// answer, for the publisher on shard `from`.
    Forwarded {
        /// The publisher's shard.
        from: usize,
        /// Who waits for it.
        to: Requester,
        /// The answer.
        reply: PubReply,
    },
    /// Participant → owner: `topic`'s stored state (Ok(None): never
    /// stored; Err: the store could not be read).
    Loaded {
        /// The topic.
        topic: Arc<str>,
        /// What the store holds.
        state: Result<Option<Box<StoredTopic>>, String>,
    },
    /// Shard of `conn` → owner: a page of the topic's replay ring.
    History {
        /// The asking connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
        /// After (or, `reverse`, before) this seq of this epoch.
        since: Option<(u64, Box<str>)>,
        /// At most this many publications.
        limit: usize,
        /// Newest first.
        reverse: bool,
    },
    /// Owner → shard of `conn`: the page (Err: the position is not
    /// recoverable).
    HistoryAnswer {
        /// The asking connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The topic's epoch (None: not held) and last seq, and the page.
        page: Result<Box<HistoryPage>, ()>,
    },
    /// Shard of `conn` → owner: a `presence` query.
    PresenceGet {
        /// The asking connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
    },
    /// Owner → shard of `conn`: the `presence` answer (encoded there, in
    /// the connection's wire format).
    PresenceAnswer {
        /// The asking connection.
        conn: ConnRef,
        /// The answer.
        answer: Box<PresenceList>,
    },
    /// Shard of `conn` → owner: join (or re-join) a consumer group.
    GroupJoin {
        /// The joining connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Validated topic.
        topic: Box<str>,
        /// The group and the member's settings.
        spec: Box<GroupSpec>,
    },
    /// Owner → shard of `conn`: the member joined.
    GroupJoined {
        /// The member.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The topic.
        topic: Arc<str>,
        /// The group.
        group: Arc<str>,
        /// Last assigned seq at join time.
        seq: u64,
        /// Current epoch.
        epoch: Epoch,
    },
    /// Owner → shard of `conn`: the join or leave was refused.
    GroupRefused {
        /// The connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: &'static str,
    },
    /// Shard of `conn` → owner: the member leaves (`unsub` with `group`,
    /// or its connection went: then `answer` is false).
    GroupLeave {
        /// The member.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The topic.
        topic: Box<str>,
        /// The group.
        group: Box<str>,
        /// Whether `GroupLeft` is wanted.
        answer: bool,
    },
    /// Owner → shard of `conn`: left (answer to `GroupLeave` with `answer`).
    GroupLeft {
        /// The connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// The topic.
        topic: Box<str>,
        /// The group.
        group: Box<str>,
    },
    /// Owner → shard of `conn`: hand `publ` to that one member.
    GroupDeliver {
        /// The member.
        conn: ConnRef,
        /// The publication.
        publ: SharedPub,
        /// The group.
        group: Arc<str>,
        /// Attempt, from 1.
        attempt: u32,
        /// The member settles it (the frame carries group and attempt).
        ack: bool,
    },
    /// Shard of `conn` → owner: a member settles a publication.
    GroupSettle {
        /// The member.
        conn: ConnRef,
        /// Command id to echo in an error.
        id: Option<u64>,
        /// The topic.
        topic: Box<str>,
        /// The group.
        group: Box<str>,
        /// The publication.
        seq: u64,
        /// What became of it.
        outcome: crate::proto::message::Outcome,
    },
    /// Requester's shard → owner of `topic`: route a request to a member.
    ReqRoute(Box<ReqRoute>),
    /// Owner → responder's shard: hand the request to `conn`.
    Request(Box<ReqHandOff>),
    /// Responder's shard → requester's shard: the request reached its
    /// responder (the sender is its shard).
    ReqBound {
        /// The request.
        origin: ReqOrigin,
        /// Its opaque id.
        req: Box<str>,
    },
    /// Owner or responder's shard → requester's shard: nobody can answer
    /// (no member, or the responder went away).
    ReqGone {
        /// The request.
        origin: ReqOrigin,
    },
    /// Responder's shard → requester's shard: one reply.
    ReqReply {
        /// The request.
        origin: ReqOrigin,
        /// Its id at the responder (a reply from a responder the request
        /// has left, e.g. after a fallback, is dropped).
        req: Box<str>,
        /// Verbatim JSON.
        data: Box<str>,
        /// More follow.
        more: bool,
    },
    /// Responder's shard → requester's shard: the replies passed
    /// `requests.max_reply_bytes`; the request is over.
    ReqOverflow {
        /// The request.
        origin: ReqOrigin,
    },
    /// Requester's shard → responder's shard: stop working on `req`.
    ReqCancel {
        /// The request's opaque id.
        req: Box<str>,
    },
    /// Owner → shard of `conn`: the settle was refused (not held, not a member).
    GroupSettleRefused {
        /// The connection.
        conn: ConnRef,
        /// Command id to echo.
        id: Option<u64>,
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: &'static str,
    },
}
