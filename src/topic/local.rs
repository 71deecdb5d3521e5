//! A shard's index of its own subscribers: topic → local connection slots.
//!
//! Each connection remembers, for every topic it subscribes to, its position
//! in that topic's list, so unsubscribe and disconnect are O(1) swap-removes
//! instead of scans of lists that can hold 100k entries.

use std::collections::HashMap;
use std::sync::Arc;

/// Local subscribers of one topic.
#[derive(Debug)]
pub struct LocalTopic {
    /// The topic name (the same `Arc` the connections hold).
    pub name: Arc<str>,
    /// Connection slots subscribed, in no particular order.
    pub subs: Vec<u32>,
}

/// Topic → local subscribers, for one shard.
#[derive(Debug, Default)]
pub struct LocalSubs {
    map: HashMap<Arc<str>, LocalTopic>,
    /// Total subscriptions held on this shard.
    count: u64,
}

impl LocalSubs {
    /// Adds `conn` to `topic`; returns the shared name and the position the
    /// connection must remember for [`LocalSubs::remove`].
    pub fn add(&mut self, topic: &str, conn: u32) -> (Arc<str>, u32) {
        let entry = match self.map.get_mut(topic) {
            Some(e) => e,
            None => {
                let name: Arc<str> = Arc::from(topic);
                self.map.entry(name.clone()).or_insert(LocalTopic { name, subs: Vec::new() })
            }
        };
        entry.subs.push(conn);
        self.count += 1;
        (entry.name.clone(), (entry.subs.len() - 1) as u32)
    }

    /// Removes the subscriber at `pos` of `topic`. Returns the connection that
    /// was moved into `pos` (it must update its remembered position), if any.
    pub fn remove(&mut self, topic: &str, pos: u32) -> Option<u32> {
        let entry = self.map.get_mut(topic)?;
        let pos = pos as usize;
        if pos >= entry.subs.len() {
            return None;
        }
        entry.subs.swap_remove(pos);
        self.count -= 1;
        let moved = entry.subs.get(pos).copied();
        if entry.subs.is_empty() {
            self.map.remove(topic);
        }
        moved
    }

    /// The local subscribers of `topic`.
    pub fn get(&self, topic: &str) -> Option<&LocalTopic> {
        self.map.get(topic)
    }

    /// Topics with at least one local subscriber.
    pub fn topics(&self) -> usize {
        self.map.len()
    }

    /// Subscriptions held on this shard.
    pub fn subscriptions(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_remove_reports_moved_connection() {
        let mut s = LocalSubs::default();
        let (_, p0) = s.add("a/b", 10);
        let (_, p1) = s.add("a/b", 11);
        let (_, p2) = s.add("a/b", 12);
        assert_eq!((p0, p1, p2), (0, 1, 2));
        assert_eq!(s.remove("a/b", p0), Some(12), "the last one moves into slot 0");
        assert_eq!(s.get("a/b").unwrap().subs, vec![12, 11]);
        assert_eq!(s.remove("a/b", 1), None);
        assert_eq!(s.remove("a/b", 0), None);
        assert_eq!((s.topics(), s.subscriptions()), (0, 0), "empty topics are dropped");
    }
}
