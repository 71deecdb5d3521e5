//! The owner's sweep logs: every retained publication and every remembered
//! `msg_id` of the shard, in the order they were added (so in time order),
//! as (slot, generation, key, time). Popping from the front finds the
//! shard's oldest state in O(1), whichever topic holds it, so age and the
//! shard budget are enforced without scanning topics and without waiting for
//! a quiet topic to be touched.
//!
//! An entry is stale when its topic was removed (the slot's generation
//! moved on) or already dropped that state (per-topic bounds); stale entries
//! are skipped when popped, and compacted away once they outnumber the live
//! ones.

use std::collections::VecDeque;
use std::time::Instant;

/// Stale entries tolerated beyond twice the live ones before compacting.
pub const COMPACT_SLACK: usize = 4096;

/// One logged piece of retained state.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The topic's table slot.
    pub slot: u32,
    /// The slot's generation when logged.
    pub gen: u32,
    /// The publication's seq, or the dedupe entry's key.
    pub key: u64,
    /// When it was added.
    pub at: Instant,
}

/// A time-ordered log of entries.
#[derive(Debug, Default)]
pub struct SweepLog {
    q: VecDeque<Entry>,
}

impl SweepLog {
    /// Appends an entry (times must not go backwards).
    pub fn push(&mut self, e: Entry) {
        self.q.push_back(e);
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<Entry> {
        self.q.front().copied()
    }

    /// Takes the oldest entry if it was added at or before `cutoff` (no
    /// cutoff: nothing is old enough yet).
    pub fn pop_older_than(&mut self, cutoff: Option<Instant>) -> Option<Entry> {
        let c = cutoff?;
        if self.q.front()?.at > c {
            return None;
        }
        self.pop()
    }

    /// Takes the oldest entry.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = self.q.pop_front();
        if self.q.is_empty() && self.q.capacity() > COMPACT_SLACK {
            self.q = VecDeque::new();
        }
        e
    }

    /// Keeps only the entries `live` says are.
    pub fn retain(&mut self, live: impl FnMut(&Entry) -> bool) {
        self.q.retain(live);
        self.q.shrink_to(self.q.len() * 2);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}
