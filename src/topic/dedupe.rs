//! A topic's idempotency window: recently seen `msg_id`s and the seq each
//! was given, bounded per topic by count; age and the shard's memory budget
//! are enforced by the owner's sweep (`owner::sweep`), which pops from the
//! front.
//!
//! Lives on the topic's owner, which handles every publish of the topic on
//! one thread, so racing duplicates from any connection are serialized here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Recently seen `msg_id`s of one topic.
#[derive(Debug, Default)]
pub struct DedupeWindow {
    seqs: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, Instant)>,
    /// Ids inserted over the topic's life; the front of `order` is
    /// `inserted - order.len()` (keys for the owner's sweep log).
    inserted: u64,
    bytes: usize,
}

/// Bytes one remembered id costs beyond its text (map + queue entries).
const ENTRY_OVERHEAD: usize = 64;

impl DedupeWindow {
    /// The seq already given to `msg_id`, if it is inside the window.
    pub fn lookup(&self, msg_id: &str) -> Option<u64> {
        self.seqs.get(msg_id).copied()
    }

    /// Remembers that `msg_id` was sequenced as `seq`; returns the key of
    /// the entry (for the sweep log).
    pub fn insert(&mut self, msg_id: &str, seq: u64, now: Instant) -> u64 {
        let id: Arc<str> = Arc::from(msg_id);
        self.bytes += id.len() + ENTRY_OVERHEAD;
        self.seqs.insert(id.clone(), seq);
        self.order.push_back((id, now));
        self.inserted += 1;
        self.inserted - 1
    }

    /// Forgets the oldest id; returns its bytes.
    pub fn pop_oldest(&mut self) -> usize {
        let Some((id, _)) = self.order.pop_front() else { return 0 };
        // Ids in the window are unique: a repeated id is a duplicate and is
        // never inserted again.
        self.seqs.remove(&id);
        let b = id.len() + ENTRY_OVERHEAD;
        self.bytes -= b;
        b
    }

    /// Key of the oldest entry still held (entries before it are gone).
    pub fn front_key(&self) -> u64 {
        self.inserted - self.order.len() as u64
    }

    /// When the oldest entry was inserted.
    pub fn front_at(&self) -> Option<Instant> {
        self.order.front().map(|(_, at)| *at)
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_pop_in_order() {
        let now = Instant::now();
        let mut w = DedupeWindow::default();
        assert_eq!(w.insert("a", 1, now), 0);
        assert_eq!(w.insert("b", 2, now), 1);
        assert_eq!(w.lookup("a"), Some(1));
        assert_eq!(w.front_key(), 0);
        assert!(w.pop_oldest() > 0);
        assert_eq!(w.lookup("a"), None);
        assert_eq!(w.lookup("b"), Some(2));
        assert_eq!(w.front_key(), 1);
        w.pop_oldest();
        assert!(w.is_empty());
        assert_eq!(w.bytes(), 0);
        assert_eq!(w.pop_oldest(), 0);
    }
}
