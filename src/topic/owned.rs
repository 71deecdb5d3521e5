//! What a topic's owner shard keeps: `seq`, `epoch` and the interest set.
//!
//! The owner does not know which connections subscribe, only how many
//! subscriptions each shard holds. A publish therefore costs one mesh message
//! per interested shard. Counts (not flags) keep the set exact without a
//! race: every subscribe adds one, every unsubscribe or disconnect gives one
//! back, and messages between two shards are delivered in order.

use std::collections::HashMap;
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
    /// Recent publications, for resume.
    pub replay: ReplayRing,
    /// Recent `msg_id`s, for idempotent publish.
    pub dedupe: DedupeWindow,
}

impl OwnedTopic {
    /// Records one more subscription on `shard`.
    pub fn add_interest(&mut self, shard: usize) {
        self.interest[shard] = self.interest[shard].saturating_add(1);
    }

    /// Gives back one subscription of `shard`. Returns false (and changes
    /// nothing) if `shard` held none, which would be a bookkeeping bug.
    pub fn release_interest(&mut self, shard: usize) -> bool {
        match self.interest[shard].checked_sub(1) {
            Some(n) => {
                self.interest[shard] = n;
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
        self.interest.iter().map(|&n| u64::from(n)).sum()
    }
}

/// Why a topic could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The shard owns `max_topics` topics and none can be evicted.
    #[error("too many topics on this shard")]
    TooManyTopics,
}

/// All topics one shard owns.
#[derive(Debug)]
pub struct OwnedTopics {
    map: HashMap<Arc<str>, OwnedTopic>,
    shards: usize,
    max_topics: usize,
    epochs: EpochSource,
    /// Topics evicted (to make room) since start.
    pub evicted: u64,
}

impl OwnedTopics {
    /// An empty set for shard `shard` of `shards`, holding at most `max_topics`.
    pub fn new(shard: usize, shards: usize, max_topics: usize) -> Self {
        Self { map: HashMap::new(), shards, max_topics, epochs: EpochSource::new(shard), evicted: 0 }
    }

    /// The topic, if this shard has state for it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut OwnedTopic> {
        self.map.get_mut(name)
    }

    /// The topic, created with a fresh epoch if new. At the limit, a topic
    /// without subscribers is evicted to make room (its epoch is gone with
    /// it, so a later resume reports `epoch_mismatch`).
    pub fn get_or_create(&mut self, name: &str) -> Result<&mut OwnedTopic, TopicError> {
        if !self.map.contains_key(name) {
            if self.map.len() >= self.max_topics {
                let victim = self.map.iter().find(|(_, t)| t.subscriptions() == 0).map(|(k, _)| k.clone());
                let Some(victim) = victim else {
                    return Err(TopicError::TooManyTopics);
                };
                self.map.remove(&victim);
                self.evicted += 1;
            }
            let name: Arc<str> = Arc::from(name);
            let topic = OwnedTopic {
                name: name.clone(),
                seq: 0,
                epoch: self.epochs.next_epoch(),
                interest: vec![0; self.shards].into_boxed_slice(),
                replay: ReplayRing::default(),
                dedupe: DedupeWindow::default(),
            };
            self.map.insert(name, topic);
        }
        self.map.get_mut(name).ok_or(TopicError::TooManyTopics)
    }

    /// Number of topics owned.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no topic is owned.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of all interest counts (subscriptions on all shards to topics this
    /// shard owns). Used by tests and metrics to prove nothing leaks.
    pub fn total_interest(&self) -> u64 {
        self.map.values().map(OwnedTopic::subscriptions).sum()
    }

    /// Publications retained over all owned topics, and their bytes.
    pub fn retained(&self) -> (u64, u64) {
        self.map.values().fold((0, 0), |(n, b), t| (n + t.replay.len() as u64, b + t.replay.bytes() as u64))
    }

    /// The `n` owned topics with the highest seqs: (topic, last seq).
    /// Linear in the number of topics (a selection, not a sort), since it
    /// runs on the shard thread for every metrics scrape.
    pub fn busiest(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(&Arc<str>, u64)> = self.map.values().map(|t| (&t.name, t.seq)).collect();
        if n == 0 {
            return Vec::new();
        }
        if v.len() > n {
            v.select_nth_unstable_by_key(n - 1, |t| std::cmp::Reverse(t.1));
            v.truncate(n);
        }
        v.sort_by_key(|t| std::cmp::Reverse(t.1));
        v.into_iter().map(|(t, s)| (t.to_string(), s)).collect()
    }

    /// Iterates over the owned topics.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedTopic> {
        self.map.values()
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
        let mut topics = OwnedTopics::new(0, 3, 10);
        let t = topics.get_or_create("a/b").unwrap();
        t.add_interest(2);
        t.add_interest(2);
        t.add_interest(0);
        assert_eq!(t.interested().collect::<Vec<_>>(), vec![0, 2]);
        assert!(t.release_interest(2));
        assert!(t.release_interest(2));
        assert!(!t.release_interest(2), "never below zero");
        assert_eq!(t.interested().collect::<Vec<_>>(), vec![0]);
        assert_eq!(topics.total_interest(), 1);
    }

    #[test]
    fn busiest_selects_the_top_seqs_in_order() {
        let mut topics = OwnedTopics::new(0, 1, 100);
        for (i, seq) in [5u64, 9, 1, 7, 3, 8].iter().enumerate() {
            topics.get_or_create(&format!("a/{i}")).unwrap().seq = *seq;
        }
        let top: Vec<u64> = topics.busiest(3).into_iter().map(|(_, s)| s).collect();
        assert_eq!(top, vec![9, 8, 7]);
        assert_eq!(topics.busiest(10).len(), 6);
        assert!(topics.busiest(0).is_empty());
    }

    #[test]
    fn limit_evicts_only_idle_topics() {
        let mut topics = OwnedTopics::new(0, 1, 2);
        topics.get_or_create("a/1").unwrap().add_interest(0);
        let e2 = topics.get_or_create("a/2").unwrap().epoch;
        topics.get_or_create("a/3").unwrap();
        assert_eq!((topics.len(), topics.evicted), (2, 1));
        assert!(topics.get_mut("a/2").is_none());
        topics.get_mut("a/3").unwrap().add_interest(0);
        assert_eq!(topics.get_or_create("a/4").unwrap_err(), TopicError::TooManyTopics);
        // Recreating an evicted topic draws a new epoch.
        topics.get_mut("a/3").unwrap().release_interest(0);
        assert_ne!(topics.get_or_create("a/2").unwrap().epoch, e2);
    }
}
