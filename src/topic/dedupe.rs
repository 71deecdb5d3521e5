//! A topic's idempotency window: recently seen `msg_id`s and the seq each
//! was given, bounded by count and age.
//!
//! Lives on the topic's owner, which handles every publish of the topic on
//! one thread, so racing duplicates from any connection are serialized here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Recently seen `msg_id`s of one topic.
#[derive(Debug, Default)]
pub struct DedupeWindow {
    seqs: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, Instant)>,
}

impl DedupeWindow {
    /// The seq already given to `msg_id`, if it is inside the window.
    pub fn lookup(&mut self, msg_id: &str, now: Instant, max_count: usize, max_age: Duration) -> Option<u64> {
        self.evict(now, max_count, max_age);
        self.seqs.get(msg_id).copied()
    }

    /// Remembers that `msg_id` was sequenced as `seq`.
    pub fn insert(&mut self, msg_id: &str, seq: u64, now: Instant, max_count: usize, max_age: Duration) {
        let id: Arc<str> = Arc::from(msg_id);
        self.seqs.insert(id.clone(), seq);
        self.order.push_back((id, now));
        self.evict(now, max_count, max_age);
    }

    fn evict(&mut self, now: Instant, max_count: usize, max_age: Duration) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() <= max_count && now.saturating_duration_since(*at) <= max_age {
                break;
            }
            self.seqs.remove(id);
            self.order.pop_front();
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_by_count_and_age() {
        let now = Instant::now();
        let age = Duration::from_secs(10);
        let mut w = DedupeWindow::default();
        w.insert("a", 1, now, 2, age);
        w.insert("b", 2, now, 2, age);
        assert_eq!(w.lookup("a", now, 2, age), Some(1));
        w.insert("c", 3, now, 2, age);
        assert_eq!(w.lookup("a", now, 2, age), None, "evicted by count");
        assert_eq!(w.lookup("c", now, 2, age), Some(3));
        let later = now + Duration::from_secs(11);
        assert_eq!(w.lookup("c", later, 2, age), None, "evicted by age");
        assert!(w.is_empty());
    }
}
