//! A doorbell: how a producer wakes a consumer that found its rings empty.
//!
//! rtrb cannot wait. The consumer announces it is about to sleep (`park`),
//! re-checks its rings, and only then waits on the read end of a socket pair
//! (a glommio-pollable fd). A producer pushes, then (after a full fence)
//! checks the parked flag; only the producer that flips it back writes one
//! byte. The fence pairs with the consumer's SeqCst store: either the
//! consumer's re-check sees the push, or the producer sees `parked`, so no
//! wake-up is lost.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The producer-facing half of a shard's doorbell.
#[derive(Debug)]
pub struct Doorbell {
    /// The consumer is (about to be) asleep and must be woken.
    parked: AtomicBool,
    /// Write end of the socket pair.
    tx: UnixStream,
    /// Wake-ups actually written (each one a syscall); for metrics.
    kicks: AtomicU64,
}

impl Doorbell {
    /// A doorbell and the read end the consumer waits on (both non-blocking).
    pub fn new() -> std::io::Result<(Arc<Self>, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let bell = Self { parked: AtomicBool::new(false), tx, kicks: AtomicU64::new(0) };
        Ok((Arc::new(bell), rx))
    }

    /// Producer side: call after publishing work the consumer must see.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::SeqCst) {
            self.kick();
        }
    }

    /// Writes the wake-up byte. A full socket buffer means a wake-up is
    /// already pending, so `WouldBlock` is fine.
    fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        let _ = (&self.tx).write(&[1]);
    }

    /// Wakes the consumer whether or not it parked. The consumer uses it on
    /// itself to yield through io_uring (see the shard's mesh task).
    pub fn poke(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.kick();
    }

    /// Consumer side: announce the intent to sleep. Re-check every source of
    /// work after this and before waiting.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Consumer side: found work after `park`; no wake-up needed.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Wake-ups written so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_a_parked_consumer_is_kicked_once() {
        let (bell, mut rx) = Doorbell::new().unwrap();
        bell.notify();
        assert_eq!(bell.kicks(), 0, "an awake consumer costs no syscall");
        bell.park();
        bell.notify();
        bell.notify();
        assert_eq!(bell.kicks(), 1, "only the first producer after park writes");
        let mut buf = [0u8; 8];
        assert_eq!(rx.read(&mut buf).unwrap(), 1);
    }
}
