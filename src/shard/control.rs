//! The control plane's two ends: the [`Control`] requests a shard's mesh task
//! answers, and the cloneable [`ControlHandle`] the supervisor, the admin
//! listener and tests send them through (crossbeam channel + doorbell).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// A reloaded TLS config for connections accepted from now on.
    Tls(crate::auth::tls::ServerTls),
}

/// One shard's control inbox and its doorbell.
pub struct ShardLink {
    /// The inbox.
    pub control: Sender<Control>,
    /// Rung after every send.
    pub bell: Arc<Doorbell>,
    /// The shard's progress counter (see `ShardCtx::progress`).
    pub progress: Arc<AtomicU64>,
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

    /// Hands each shard its new TLS config (one per shard, in order).
    pub fn reload_tls(&self, configs: Vec<crate::auth::tls::ServerTls>) {
        for (i, c) in configs.into_iter().enumerate().take(self.links.len()) {
            self.send(i, Control::Tls(c));
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

/// What the supervisor concludes from one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every shard answered in time.
    Alive,
    /// `shard` did not answer in time but its tasks kept running (a long
    /// batch, a backlog): busy, not wedged. Never a reason to exit.
    Busy {
        /// The late shard.
        shard: usize,
    },
    /// `shard` neither answered nor ran a task for the whole probe window:
    /// its executor is stuck, the process must be restarted.
    Wedged {
        /// The stuck shard.
        shard: usize,
    },
}

/// The supervisor's judge: a probe that times out kills only a shard that
/// made no progress at all while it waited.
pub struct Watchdog {
    control: ControlHandle,
    /// Probes answered late by a shard that was still making progress.
    pub late: u64,
}

impl Watchdog {
    /// A watchdog over every shard of `control`.
    pub fn new(control: ControlHandle) -> Self {
        Self { control, late: 0 }
    }

    /// Probes every shard, waiting up to `timeout`.
    pub fn check(&mut self, timeout: Duration) -> Verdict {
        let before: Vec<u64> = self.control.links.iter().map(|l| l.progress.load(Ordering::Relaxed)).collect();
        match self.control.alive(timeout) {
            Ok(()) => Verdict::Alive,
            Err(shard) if self.control.links[shard].progress.load(Ordering::Relaxed) != before[shard] => {
                self.late += 1;
                Verdict::Busy { shard }
            }
            Err(shard) => Verdict::Wedged { shard },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake shard on a thread: answers probes, or only makes progress,
    /// or does nothing.
    fn fake(mode: &'static str) -> (ControlHandle, std::thread::JoinHandle<()>, Arc<AtomicBool>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (bell, _rx) = Doorbell::new().unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let link = ShardLink { control: tx, bell, progress: progress.clone() };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match mode {
                    "answers" => {
                        if let Ok(Control::Ping(r)) = rx.recv_timeout(Duration::from_millis(5)) {
                            let _ = r.send(());
                        }
                    }
                    "busy" => {
                        progress.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(rx);
        });
        (ControlHandle::new(vec![link], Arc::new(AtomicBool::new(false))), t, stop)
    }

    #[test]
    fn a_busy_shard_is_late_not_wedged() {
        for (mode, want) in
            [("answers", Verdict::Alive), ("busy", Verdict::Busy { shard: 0 }), ("stuck", Verdict::Wedged { shard: 0 })]
        {
            let (control, t, stop) = fake(mode);
            let mut w = Watchdog::new(control);
            assert_eq!(w.check(Duration::from_millis(200)), want, "{mode}");
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
        }
    }
}
