//! What a topic's owner keeps: `seq`, `epoch`, the interest set, the replay
//! ring and the dedupe window (the table and its bounds: `owner`).
//!
//! The owner does not know which connections subscribe, only how many
//! subscriptions each shard holds. A publish therefore costs one mesh message
//! per interested shard. Counts (not flags) keep the set exact without a
//! race: every subscribe adds one, every unsubscribe or disconnect gives one
//! back, and messages between two shards are delivered in order.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::dedupe::DedupeWindow;
use super::replay::ReplayRing;

/// A topic epoch: 12 lowercase hex digits. A new one is drawn whenever the
/// owner can no longer vouch for earlier seqs (process start, a topic's state
/// evicted and recreated).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch([u8; 12]);

impl Epoch {
    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        // Invariant: built from hex digits only.
        std::str::from_utf8(&self.0).unwrap_or("000000000000")
    }

    /// An epoch from its text (12 lowercase hex digits), as stored.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = b.len() == 12 && b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        ok.then(|| {
            let mut out = [0u8; 12];
            out.copy_from_slice(b);
            Self(out)
        })
    }

    /// The epoch a durable cluster gives a topic it has never stored: the
    /// same on every node (a subscriber on a node that does not own the
    /// topic is told the epoch the owner will sequence it in), drawn from
    /// the topic name. (A topic whose whole history aged out of the stream
    /// starts again in it: docs/ARCHITECTURE.md.)
    pub fn first_of(topic: &str) -> Self {
        let mut z = crate::topic::name::fnv1a64(topic.as_bytes()) ^ 0x5348_4152_4443_5354;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self::from_u64(z ^ (z >> 31))
    }

    fn from_u64(v: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 12];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((v >> (44 - 4 * i)) & 0xf) as usize];
        }
        Self(out)
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Draws epochs: a per-process random seed (from the OS, via std's hasher
/// keys) run through splitmix64, so epochs differ across restarts and topics.
#[derive(Debug)]
pub struct EpochSource {
    state: u64,
}

impl EpochSource {
    /// A source seeded from the OS and salted with `shard`.
    pub fn new(shard: usize) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(shard);
        Self { state: h.finish() }
    }

    /// The next epoch.
    pub fn next_epoch(&mut self) -> Epoch {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Epoch::from_u64(z ^ (z >> 31))
    }
}

/// The owner's state of one topic.
#[derive(Debug)]
pub struct OwnedTopic {
    /// The topic name, shared with mesh messages so shards need not copy it.
    pub name: Arc<str>,
    /// The last assigned seq (0 before the first publish).
    pub seq: u64,
    /// The current epoch.
    pub epoch: Epoch,
    /// Subscriptions held by each shard, indexed by shard id.
    interest: Box<[u32]>,
    /// Sum of `interest`.
    total: u64,
    /// Recent publications, for resume.
    pub replay: ReplayRing,
    /// Recent `msg_id`s, for idempotent publish.
    pub dedupe: DedupeWindow,
    /// Open and recently closed token streams.
    pub streams: super::streams::Streams,
    /// The retained value (PROTOCOL-EXTENSIONS §5).
    pub retained: Option<Retained>,
    /// Who is subscribed, as far as presence lists and events need.
    pub presence: super::presence::Presence,
    /// Holds that keep the topic off the idle lists (so it is not evicted):
    /// durable mode pins a topic while its publications wait for the store.
    pub pins: u32,
    /// Durable cluster mode: the state may lag the stream (the node's
    /// ownership of the topic's partition changed, or a mirror saw a gap);
    /// it is reloaded before the topic is used to sequence or subscribe.
    pub stale: bool,
    /// Durable cluster mode: the last seq its subscribers were given, when
    /// publications after it were sequenced here and then given up (the
    /// partition moved before they were stored). A reload delivers what the
    /// store holds after this one.
    pub rewound: Option<u64>,
}

/// A topic's retained value.
#[derive(Debug)]
pub struct Retained {
    /// The publication.
    pub publ: super::publication::SharedPub,
    /// When it expires.
    pub expires: Option<std::time::Instant>,
    /// Its expiry timer on the shard's wheel (cancelled when replaced).
    pub timer: Option<super::wheel::TimerId>,
}

impl OwnedTopic {
    /// A topic with no state yet, for a mesh of `shards`.
    pub fn new(name: Arc<str>, epoch: Epoch, shards: usize) -> Self {
        Self {
            name,
            seq: 0,
            epoch,
            interest: vec![0; shards].into_boxed_slice(),
            total: 0,
            replay: ReplayRing::default(),
            dedupe: DedupeWindow::default(),
            streams: super::streams::Streams::default(),
            retained: None,
            presence: Default::default(),
            pins: 0,
            stale: false,
            rewound: None,
        }
    }

    /// Records one more subscription on `shard`.
    pub fn add_interest(&mut self, shard: usize) {
        if let Some(n) = self.interest.get_mut(shard) {
            *n = n.saturating_add(1);
            self.total += 1;
        }
    }

    /// Gives back one subscription of `shard`. Returns false (and changes
    /// nothing) if `shard` held none, which would be a bookkeeping bug.
    pub fn release_interest(&mut self, shard: usize) -> bool {
        match self.interest.get(shard).and_then(|n| n.checked_sub(1)) {
            Some(n) => {
                self.interest[shard] = n;
                self.total -= 1;
                true
            }
            None => false,
        }
    }

    /// Shards that hold at least one subscription.
    pub fn interested(&self) -> impl Iterator<Item = usize> + '_ {
        self.interest.iter().enumerate().filter(|(_, &n)| n > 0).map(|(s, _)| s)
    }

    /// Total subscriptions over all shards.
    pub fn subscriptions(&self) -> u64 {
        self.total
    }

    /// No subscriber, nothing retained, no `msg_id` remembered, no stream: dropping it
    /// loses nothing but its seq and epoch.
    pub fn holds_nothing(&self) -> bool {
        self.total == 0
            && self.replay.is_empty()
            && self.dedupe.is_empty()
            && self.streams.is_empty()
            && self.retained.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_hex_and_distinct() {
        let mut a = EpochSource::new(0);
        let mut b = EpochSource::new(0);
        let (x, y, z) = (a.next_epoch(), a.next_epoch(), b.next_epoch());
        assert_eq!(x.as_str().len(), 12);
        assert!(x.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(x, y);
        assert_ne!(x, z, "two sources (two processes) draw different epochs");
    }

    #[test]
    fn interest_counts_are_exact() {
        let mut t = OwnedTopic::new(Arc::from("a/b"), EpochSource::new(0).next_epoch(), 3);
        t.add_interest(2);
        t.add_interest(2);
        t.add_interest(0);
        assert_eq!(t.interested().collect::<Vec<_>>(), vec![0, 2]);
        assert!(t.release_interest(2));
        assert!(t.release_interest(2));
        assert!(!t.release_interest(2), "never below zero");
        assert!(!t.release_interest(7), "no such shard");
        assert_eq!(t.interested().collect::<Vec<_>>(), vec![0]);
        assert_eq!(t.subscriptions(), 1);
    }
}
