//! The closed loop bounded per *subscriber*: the publisher keeps at most W
//! publications in flight beyond the slowest (non-`slow`) subscriber, across
//! every worker process, so that no system's drop policy fires and the run
//! measures how fast each one can deliver, not how it sheds.
//!
//! Each worker tracks the minimum delivered count over its subscribers in
//! O(1) per delivery ([`MinTracker`]) and stores it in its slot of a small
//! shared-memory file ([`Slots`]); the publishing worker reads every slot.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::sync::atomic::{AtomicU64, Ordering};

/// The minimum of a set of counters that only grow by small steps.
///
/// `counts[k]` is how many tracked subscribers have delivered exactly
/// `base + k`; the minimum is `base` while `counts[0] > 0`.
#[derive(Debug, Default)]
pub struct MinTracker {
    base: u64,
    counts: VecDeque<u32>,
    live: u32,
}

impl MinTracker {
    /// Starts tracking a subscriber at `at` (a value below the current
    /// minimum counts as the minimum).
    pub fn add(&mut self, at: u64) {
        if self.live == 0 {
            self.base = at;
            self.counts.clear();
        }
        let at = at.max(self.base);
        let k = (at - self.base) as usize;
        if self.counts.len() <= k {
            self.counts.resize(k + 1, 0);
        }
        self.counts[k] += 1;
        self.live += 1;
        self.settle();
    }

    /// A tracked subscriber moved from `from` to `to` (`to > from`).
    pub fn advance(&mut self, from: u64, to: u64) {
        self.remove(from);
        self.add(to);
    }

    /// Stops tracking a subscriber that was at `at` (it died).
    pub fn remove(&mut self, at: u64) {
        let k = (at.max(self.base) - self.base) as usize;
        if let Some(c) = self.counts.get_mut(k) {
            if *c > 0 {
                *c -= 1;
                self.live -= 1;
            }
        }
        self.settle();
    }

    fn settle(&mut self) {
        while self.live > 0 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// The minimum, or None when nothing is tracked.
    pub fn min(&self) -> Option<u64> {
        (self.live > 0).then_some(self.base)
    }
}

/// One u64 per worker in a shared-memory file, each on its own cache line,
/// plus one more: how many publications the run made in all, set when
/// publishing stops, so every worker can drain until its subscribers have
/// every one of them.
pub struct Slots {
    ptr: *mut AtomicU64,
    len: usize,
}

const STRIDE: usize = 8; // u64s per slot: one 64-byte line each

impl Slots {
    /// Creates the file for `workers` slots, every slot at u64::MAX ("no
    /// subscribers here").
    pub fn create(path: &str, workers: usize) -> std::io::Result<()> {
        let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        f.set_len(((workers + 1) * STRIDE * 8) as u64)?;
        let s = Self::open(path, workers)?;
        for w in 0..=workers {
            s.slot(w).store(u64::MAX, Ordering::Release);
        }
        Ok(())
    }

    /// Maps an existing slots file.
    pub fn open(path: &str, workers: usize) -> std::io::Result<Self> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let bytes = (workers + 1) * STRIDE * 8;
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we just sized to `bytes`;
        // the fd may be closed after mmap returns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: p.cast(), len: workers })
    }

    fn slot(&self, w: usize) -> &AtomicU64 {
        assert!(w <= self.len, "slot {w} of {}", self.len);
        // SAFETY: in bounds of the mapping, 8-aligned (page-aligned base),
        // and only ever accessed atomically by every process.
        unsafe { &*self.ptr.add(w * STRIDE) }
    }

    /// Publishes this worker's minimum.
    pub fn store(&self, w: usize, v: u64) {
        assert!(w < self.len, "worker {w} of {}", self.len);
        self.slot(w).store(v, Ordering::Release);
    }

    /// The publishing worker: publishing stopped after `n` publications.
    pub fn set_published(&self, n: u64) {
        self.slot(self.len).store(n, Ordering::Release);
    }

    /// The run's publications in all, once publishing has stopped.
    pub fn published(&self) -> Option<u64> {
        Some(self.slot(self.len).load(Ordering::Acquire)).filter(|&n| n != u64::MAX)
    }

    /// The minimum over every worker.
    pub fn min(&self) -> u64 {
        (0..self.len).map(|w| self.slot(w).load(Ordering::Acquire)).min().unwrap_or(u64::MAX)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.cast(), (self.len + 1) * STRIDE * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_follows_the_slowest() {
        let mut m = MinTracker::default();
        assert_eq!(m.min(), None);
        for _ in 0..3 {
            m.add(0);
        }
        m.advance(0, 1);
        m.advance(0, 1);
        assert_eq!(m.min(), Some(0));
        m.advance(0, 5); // a gap counts as progress
        assert_eq!(m.min(), Some(1));
        m.advance(1, 2);
        m.remove(1); // the last subscriber at 1 dies
        assert_eq!(m.min(), Some(2));
        m.remove(2);
        m.remove(5);
        assert_eq!(m.min(), None);
    }

    #[test]
    fn slots_are_shared_between_mappings() {
        let path = std::env::temp_dir().join(format!("sc-slots-{}", std::process::id()));
        let path = path.to_str().unwrap();
        Slots::create(path, 3).unwrap();
        let a = Slots::open(path, 3).unwrap();
        let b = Slots::open(path, 3).unwrap();
        assert_eq!(b.min(), u64::MAX);
        a.store(1, 40);
        a.store(2, 7);
        assert_eq!(b.min(), 7);
        assert_eq!(b.published(), None);
        a.set_published(99);
        assert_eq!((b.published(), b.min()), (Some(99), 7));
        let _ = std::fs::remove_file(path);
    }
}
