//! A protocol-neutral publication: what the owner sequenced, as it travels
//! the mesh and lives in the replay ring.
//!
//! The native `/ws` frame is encoded once per publish, by the owner's shard,
//! and the payload is not stored twice: `data` is a range inside that frame
//! (the frame carries `data` verbatim). A second wire format encodes its own
//! frame from these fields, once per publish, on the shard that first needs
//! it. Immutable once built; shared between shards as an `Arc`.

use std::sync::Arc;

use super::owned::Epoch;
use crate::proto::message::Prio;

/// One sequenced publication.
#[derive(Debug)]
pub struct Publication {
    /// The topic (the owner's shared name).
    pub topic: Arc<str>,
    /// Its seq in the topic.
    pub seq: u64,
    /// The topic's epoch when it was sequenced.
    pub epoch: Epoch,
    /// Delivery lane.
    pub prio: Prio,
    /// Whether the publisher named the priority (the frame echoes it then).
    pub prio_given: bool,
    /// Idempotency key, if the publisher gave one.
    pub msg_id: Option<Box<str>>,
    /// The authenticated publisher's `sub` (stamped by the server).
    pub from: Option<Arc<str>>,
    /// The encoded native `msg` frame, shared byte for byte by every
    /// subscriber of the native protocol.
    pub frame: Box<[u8]>,
    /// A token stream append: the stream and whether it ends it (a slow
    /// reader's dropped appends are merged by these).
    pub stream: Option<Box<(Box<str>, bool)>>,
    /// Where the verbatim JSON `data` sits inside `frame`.
    data_at: (u32, u32),
}

/// A publication shared by every shard that delivers it.
pub type SharedPub = Arc<Publication>;

/// What the owner decided about a publication before it is encoded.
#[derive(Debug, Clone, Copy)]
pub struct PubMeta<'a> {
    /// The topic.
    pub topic: &'a str,
    /// Assigned seq.
    pub seq: u64,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Priority as the publisher gave it.
    pub prio: Option<Prio>,
    /// Idempotency key.
    pub msg_id: Option<&'a str>,
    /// The authenticated publisher's `sub`.
    pub from: Option<&'a Arc<str>>,
    /// Verbatim JSON payload.
    pub data: &'a str,
    /// Extra JSON fields the server stamps before `data` (`"dead":{…}`).
    pub extra: Option<&'a str>,
    /// A token stream append: its stream and `end`.
    pub stream: Option<(&'a str, bool)>,
}

impl Publication {
    /// Builds a publication from its encoded frame; `data_at` is the byte
    /// range of `data` inside `frame` (the encoder reports it).
    pub fn new(topic: Arc<str>, meta: &PubMeta<'_>, frame: Box<[u8]>, data_at: (usize, usize)) -> Self {
        debug_assert_eq!(&frame[data_at.0..data_at.1], meta.data.as_bytes());
        Self {
            topic,
            seq: meta.seq,
            epoch: meta.epoch,
            prio: meta.prio.unwrap_or_default(),
            prio_given: meta.prio.is_some(),
            msg_id: meta.msg_id.map(Into::into),
            from: meta.from.cloned(),
            frame,
            stream: meta.stream.map(|(n, e)| Box::new((n.into(), e))),
            data_at: (data_at.0 as u32, data_at.1 as u32),
        }
    }

    /// Builds a publication with its native `/ws` frame, encoded once into
    /// `scratch` and copied into its own allocation.
    pub fn native(topic: Arc<str>, meta: &PubMeta<'_>, scratch: &mut Vec<u8>) -> Self {
        let fields = crate::proto::message::MsgFields {
            topic: meta.topic,
            seq: meta.seq,
            epoch: meta.epoch.as_str(),
            msg_id: meta.msg_id,
            prio: meta.prio,
            from: meta.from.map(|f| &**f),
            data: meta.data,
            extra: meta.extra,
        };
        let (frame, at) = crate::proto::message::msg_frame(scratch, &fields);
        Self::new(topic, meta, frame, at)
    }

    /// A standalone publication of `topic` (a fresh epoch, no `msg_id`):
    /// for tests, benchmarks and tools that need one without an owner.
    pub fn sample(topic: &str, seq: u64, data: &str) -> SharedPub {
        let epoch = super::owned::EpochSource::new(0).next_epoch();
        let meta = PubMeta { topic, seq, epoch, prio: None, msg_id: None, from: None, data, extra: None, stream: None };
        Arc::new(Self::native(Arc::from(topic), &meta, &mut Vec::new()))
    }

    /// The verbatim JSON payload.
    pub fn data(&self) -> &str {
        let (a, b) = (self.data_at.0 as usize, self.data_at.1 as usize);
        // Invariant: the range was taken from the UTF-8 payload when the
        // frame was encoded.
        std::str::from_utf8(self.frame.get(a..b).unwrap_or_default()).unwrap_or("null")
    }

    /// Bytes this publication holds (what replay budgets count).
    pub fn bytes(&self) -> usize {
        self.frame.len() + self.msg_id.as_ref().map_or(0, |m| m.len()) + std::mem::size_of::<Self>()
    }

    /// The fields the Centrifugo protocol shows.
    pub fn cf_fields(&self) -> crate::proto::centrifugo::PubFields<'_> {
        crate::proto::centrifugo::PubFields {
            channel: &self.topic,
            offset: self.seq,
            data: self.data(),
            user: self.from.as_deref(),
            stream: self.stream.as_deref().map(|(s, e)| (&**s, *e)),
        }
    }

    /// The priority as the publisher gave it.
    pub fn prio_given(&self) -> Option<Prio> {
        self.prio_given.then_some(self.prio)
    }
}
