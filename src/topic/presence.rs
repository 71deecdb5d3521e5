//! Presence of one topic (PROTOCOL-EXTENSIONS §6), kept by its owner: a
//! capped list of current subscribers (the count is the topic's exact
//! interest total) and the subscribers that want `join`/`leave` events.
//!
//! A member is (shard, connection key): the connection key packs the
//! edge's slot and generation, so the owner needs no edge types.

use std::collections::HashSet;
use std::sync::Arc;

/// A subscriber's place: its shard and connection key.
pub type Place = (usize, u64);

/// One topic's presence state.
#[derive(Debug, Default)]
pub struct Presence {
    /// Up to `max_list` current subscribers, in the order they came.
    list: Vec<(Place, Arc<str>)>,
    /// Subscribers that asked for events.
    watchers: HashSet<Place>,
}

impl Presence {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.watchers.is_empty()
    }

    /// A subscriber joins; the list keeps it if it has room.
    pub fn join(&mut self, at: Place, client: Arc<str>, watch: bool, max_list: usize) {
        if self.list.len() < max_list && !self.list.iter().any(|(p, _)| *p == at) {
            self.list.push((at, client));
        }
        if watch {
            self.watchers.insert(at);
        }
    }

    /// A subscriber leaves; whether it was a watcher.
    pub fn leave(&mut self, at: Place) -> bool {
        if let Some(i) = self.list.iter().position(|(p, _)| *p == at) {
            self.list.remove(i);
        }
        self.watchers.remove(&at)
    }

    /// The watchers, but `not`.
    pub fn watchers_but(&self, not: Place) -> impl Iterator<Item = Place> + '_ {
        self.watchers.iter().copied().filter(move |p| *p != not)
    }

    /// Watchers held.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// The listed subscribers.
    pub fn list(&self) -> &[(Place, Arc<str>)] {
        &self.list
    }
}
