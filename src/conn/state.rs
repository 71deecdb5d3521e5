//! One connection's state, as held in its shard's slab.
//!
//! Kept small on purpose (an idle subscribed socket should cost well under
//! 2 KiB of server memory in all): no read buffer while idle (`inbuf` holds
//! only an unfinished frame), outbound lanes of shared handles, and
//! subscriptions as (topic, position) pairs.

use std::sync::Arc;

use smallvec::SmallVec;
use std::task::Waker;
use std::time::Instant;

use super::outbound::Outbound;
use super::rate::TokenBucket;
use crate::proto::handshake::MAX_REQUEST_HEAD as MAX_HEAD;
use crate::proto::MessageAssembler;

/// Queued answer bytes past which an HTTP API connection reads and handles
/// no further pipelined request (the client is not reading its answers).
pub const HTTP_OUT_BOUND: usize = 64 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the first HTTP request head.
    Handshake,
    /// Serving the HTTP API (keep-alive, one request at a time).
    Http,
    /// WebSocket open.
    Open,
    /// A close (or final HTTP response) is queued; flush it, shut down,
    /// and ignore further input.
    Closing,
}

/// One subscription of a connection.
#[derive(Debug)]
pub struct Sub {
    /// The topic (the same `Arc` as the shard's local index key).
    pub topic: Arc<str>,
    /// This connection's position in the topic's local subscriber list.
    pub pos: u32,
}

/// A connection's state.
#[derive(Debug)]
pub struct Conn {
    /// Slot generation (see `ConnRef`).
    pub gen: u32,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Bytes of an unfinished request head or frame. Empty when idle.
    pub inbuf: Vec<u8>,
    /// Fragment reassembly state.
    pub asm: MessageAssembler,
    /// Outbound lanes.
    pub out: Outbound,
    /// Live subscriptions (the common single subscription is held inline).
    pub subs: SmallVec<[Sub; 1]>,
    /// `sub` commands sent to an owner and not answered yet (counted
    /// against the subscription limit).
    pub pending_subs: u32,
    /// Publishes routed to an owner and not answered yet.
    pub awaiting: u32,
    /// Publishes with `receipt` whose receipt is not sent yet.
    pub receipts: u32,
    /// The peer shut its write side (EOF): nothing more is read; the
    /// connection lives until what it is owed is answered and flushed.
    pub peer_eof: bool,
    /// Its reader waits for the shard's parked fanouts to finish (it is on
    /// the wake-after-fanout list once).
    pub fanout_wait: bool,
    /// Wakes the connection's task when something is queued.
    pub waker: Option<Waker>,
    /// When the peer last sent anything (liveness).
    pub last_seen: Instant,
    /// A server ping is outstanding.
    pub ping_out: bool,
    /// HTTP API state, for connections that speak it.
    pub http: Option<Box<super::http::HttpState>>,
    /// Publish rate bucket, created on the first publish.
    pub bucket: Option<TokenBucket>,
    /// `sub`/`unsub` rate bucket, created on the first such command.
    pub control_bucket: Option<TokenBucket>,
    /// The close code sent, once closing (for metrics).
    pub close_code: Option<u16>,
    /// Refused `rate_limited`: not read again before this instant.
    pub read_paused_until: Option<Instant>,
    /// Slots of this connection's open requests (on this shard).
    pub requests: Vec<u32>,
    /// Ids of the requests this connection is answering.
    pub serving: Vec<Box<str>>,
    /// Consumer groups this connection is a member of (topic, group).
    pub groups: Vec<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    /// Upgraded at `[server] echo_path`: messages are echoed, not parsed.
    pub echo: bool,
    /// Who the client is, from its token (None: anonymous).
    pub identity: Option<Box<crate::auth::Identity>>,
    /// Upgraded at `/connection/websocket`: it speaks the Centrifugo
    /// protocol (None: the native one).
    pub cf: Option<Box<super::centrifugo::CfConn>>,
}

impl Conn {
    /// This connection as presence names it (`watch` unset).
    pub fn member(&self, me: crate::mesh::ConnRef) -> Box<crate::mesh::msg::Member> {
        let client = self.identity.as_ref().map_or_else(|| std::sync::Arc::from("anon"), |i| i.sub.clone());
        Box::new(crate::mesh::msg::Member { conn: me, client, watch: false })
    }

    /// A fresh connection in the handshake phase.
    pub fn new(gen: u32, now: Instant) -> Self {
        Self {
            gen,
            phase: Phase::Handshake,
            inbuf: Vec::new(),
            asm: MessageAssembler::default(),
            out: Outbound::default(),
            subs: SmallVec::new(),
            pending_subs: 0,
            awaiting: 0,
            receipts: 0,
            peer_eof: false,
            fanout_wait: false,
            waker: None,
            last_seen: now,
            ping_out: false,
            bucket: None,
            control_bucket: None,
            http: None,
            close_code: None,
            identity: None,
            cf: None,
            echo: false,
            read_paused_until: None,
            groups: Vec::new(),
            requests: Vec::new(),
            serving: Vec::new(),
        }
    }

    /// Index of the subscription to `topic`, if any.
    pub fn sub_index(&self, topic: &str) -> Option<usize> {
        self.subs.iter().position(|s| &*s.topic == topic)
    }

    /// Whether the read side should wait: an HTTP connection holding a whole
    /// request's worth of pipelined input while a request is in flight or
    /// its answers are not being read. TCP then pushes back on the client,
    /// so what the server holds for it stays within one request.
    pub fn input_paused(&self, max_body: usize) -> bool {
        if !matches!(self.phase, Phase::Http | Phase::Handshake) || self.inbuf.len() < max_body + MAX_HEAD {
            return false;
        }
        self.http.as_ref().is_some_and(|h| h.busy) || self.out.bytes() > HTTP_OUT_BOUND
    }

    /// After the peer's EOF: whether nothing is owed to it any more (every
    /// routed publish and sub answered, every byte queued for it sent), so
    /// the socket may close without dropping an answer.
    pub fn settled(&self) -> bool {
        self.out.is_empty()
            && (self.phase == Phase::Closing
                || (self.awaiting == 0 && self.pending_subs == 0 && !self.http.as_ref().is_some_and(|h| h.busy)))
    }

    /// Wakes the connection's task (to write what was queued).
    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}
