//! The control plane's two ends: the [`Control`] requests a shard's mesh task
//! answers, and the cloneable [`ControlHandle`] the supervisor, the admin
//! listener and tests send them through (crossbeam channel + doorbell).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::conn::stats::{ShardStats, Totals};
use crate::mesh::Doorbell;

/// Control-plane requests to a shard (crossbeam channel + doorbell).
#[derive(Debug)]
pub enum Control {
    /// Reply with a stats snapshot.
    Stats(Sender<ShardStats>),
    /// Liveness probe: reply at once.
    Ping(Sender<()>),
    /// Graceful drain: stop accepting, then close every connection behind
    /// its queued publications (see `drain`).
    Drain,
    /// Stop: close the listener and end the executor (sockets close).
    Stop,
}

/// One shard's control inbox and its doorbell.
pub struct ShardLink {
    /// The inbox.
    pub control: Sender<Control>,
    /// Rung after every send.
    pub bell: Arc<Doorbell>,
}

/// A cheap, cloneable, `Send` handle on the control plane: what the admin
/// listener and the supervisor use to ask shards for figures.
#[derive(Clone)]
pub struct ControlHandle {
    links: Arc<[ShardLink]>,
    draining: Arc<AtomicBool>,
}

impl ControlHandle {
    /// A handle on `links`, sharing the drain flag.
    pub fn new(links: Vec<ShardLink>, draining: Arc<AtomicBool>) -> Self {
        Self { links: links.into(), draining }
    }

    fn send(&self, shard: usize, msg: Control) -> bool {
        let link = &self.links[shard];
        let ok = link.control.send(msg).is_ok();
        link.bell.notify();
        ok
    }

    /// Marks the drain begun and asks every shard to drain.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for i in 0..self.links.len() {
            self.send(i, Control::Drain);
        }
    }

    /// Asks every shard to stop.
    pub fn stop_all(&self) {
        for i in 0..self.links.len() {
            self.send(i, Control::Stop);
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.links.len()
    }

    /// Whether a graceful drain has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sends one request to every shard and collects the answers, or the
    /// first shard that did not answer within `timeout`.
    fn ask_all<T>(&self, timeout: Duration, make: impl Fn(Sender<T>) -> Control) -> Result<Vec<T>, usize> {
        let mut waits = Vec::with_capacity(self.links.len());
        for i in 0..self.links.len() {
            let (tx, rx) = crossbeam_channel::bounded::<T>(1);
            if !self.send(i, make(tx)) {
                return Err(i);
            }
            waits.push(rx);
        }
        let deadline = std::time::Instant::now() + timeout;
        waits.iter().enumerate().map(|(i, rx)| rx.recv_deadline(deadline).map_err(|_| i)).collect()
    }

    /// A snapshot of every shard, or None if one did not answer in time.
    pub fn try_stats(&self, timeout: Duration) -> Option<Totals> {
        self.ask_all(timeout, Control::Stats).ok().map(|shards| Totals { shards })
    }

    /// Whether every shard's mesh task answers the control plane within
    /// `timeout` (a liveness probe: a wedged executor cannot answer); on
    /// failure, the first shard that did not.
    pub fn alive(&self, timeout: Duration) -> Result<(), usize> {
        self.ask_all(timeout, Control::Ping).map(|_| ())
    }
}
