//! A topic's replay ring: its most recent publications, kept by the owner so
//! that a reconnecting client can resume with `since`.
//!
//! Bounded by count, bytes and age (whichever bites first). The ring always
//! holds a contiguous run of seqs ending at the topic's last seq, so a
//! resume either gets exactly the missed publications or a plain reason.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mesh::SharedFrame;
use crate::proto::message::Prio;

/// The bounds of one ring.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Publications kept.
    pub max_count: usize,
    /// Frame bytes kept.
    pub max_bytes: usize,
    /// Oldest publication kept.
    pub max_age: Duration,
}

/// One retained publication.
#[derive(Debug, Clone)]
pub struct Retained {
    /// Its seq.
    pub seq: u64,
    /// Its delivery lane.
    pub prio: Prio,
    /// The encoded `msg` frame (shared with live delivery).
    pub frame: SharedFrame,
    at: Instant,
}

/// Why a resume cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// Some missed publications are no longer retained.
    Expired,
    /// The client claims a seq this epoch never reached.
    Ahead,
    /// The replay would be larger than one connection may queue.
    Limit,
}

/// The replay ring of one topic.
#[derive(Debug, Default)]
pub struct ReplayRing {
    items: VecDeque<Retained>,
    bytes: usize,
}

impl ReplayRing {
    /// Retains a new publication (its seq must follow the last one) and
    /// evicts what falls outside the bounds.
    pub fn push(&mut self, seq: u64, prio: Prio, frame: SharedFrame, now: Instant, lim: &ReplayLimits) {
        self.bytes += frame.len();
        self.items.push_back(Retained { seq, prio, frame, at: now });
        self.evict(now, lim);
    }

    fn evict(&mut self, now: Instant, lim: &ReplayLimits) {
        while let Some(front) = self.items.front() {
            let old = now.saturating_duration_since(front.at) > lim.max_age;
            if !(self.items.len() > lim.max_count || self.bytes > lim.max_bytes || old) {
                break;
            }
            self.bytes -= front.frame.len();
            self.items.pop_front();
        }
    }

    /// The publications after `since` up to `last` (the topic's seq), in
    /// order, if all are retained and fit in `max_bytes` of replay.
    pub fn resume(
        &mut self,
        since: u64,
        last: u64,
        now: Instant,
        lim: &ReplayLimits,
        max_bytes: usize,
    ) -> Result<Vec<Retained>, ResumeError> {
        if since > last {
            return Err(ResumeError::Ahead);
        }
        if since == last {
            return Ok(Vec::new());
        }
        self.evict(now, lim);
        let first = match self.items.front() {
            Some(f) => f.seq,
            None => return Err(ResumeError::Expired),
        };
        if since + 1 < first {
            return Err(ResumeError::Expired);
        }
        let skip = (since + 1 - first) as usize;
        let mut bytes = 0;
        let mut out = Vec::with_capacity(self.items.len() - skip);
        for r in self.items.iter().skip(skip) {
            bytes += r.frame.len();
            if bytes > max_bytes {
                return Err(ResumeError::Limit);
            }
            out.push(r.clone());
        }
        Ok(out)
    }

    /// Publications retained.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frame bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn lim(count: usize, bytes: usize, age_ms: u64) -> ReplayLimits {
        ReplayLimits { max_count: count, max_bytes: bytes, max_age: Duration::from_millis(age_ms) }
    }

    fn fill(ring: &mut ReplayRing, n: u64, now: Instant, l: &ReplayLimits) {
        for seq in 1..=n {
            ring.push(seq, Prio::Normal, Arc::from(vec![seq as u8; 10]), now, l);
        }
    }

    #[test]
    fn resume_returns_exactly_the_missed_run() {
        let (now, l) = (Instant::now(), lim(100, 1 << 20, 60_000));
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &l);
        let got: Vec<u64> = ring.resume(41, 50, now, &l, usize::MAX).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(got, (42..=50).collect::<Vec<_>>());
        assert!(ring.resume(50, 50, now, &l, usize::MAX).unwrap().is_empty());
        assert_eq!(ring.resume(0, 50, now, &l, usize::MAX).unwrap().len(), 50);
        assert_eq!(ring.resume(51, 50, now, &l, usize::MAX).unwrap_err(), ResumeError::Ahead);
    }

    #[test]
    fn count_bytes_and_age_each_bound_the_ring() {
        let now = Instant::now();
        let by_count = lim(10, 1 << 20, 60_000);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &by_count);
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.resume(39, 50, now, &by_count, usize::MAX).unwrap_err(), ResumeError::Expired);
        assert_eq!(ring.resume(40, 50, now, &by_count, usize::MAX).unwrap().len(), 10);

        let by_bytes = lim(1000, 55, 60_000);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &by_bytes);
        assert_eq!((ring.len(), ring.bytes()), (5, 50));

        let by_age = lim(1000, 1 << 20, 100);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 5, now, &by_age);
        let later = now + Duration::from_millis(200);
        assert_eq!(ring.resume(2, 5, later, &by_age, usize::MAX).unwrap_err(), ResumeError::Expired);
        assert!(ring.is_empty(), "aged out");
    }

    #[test]
    fn oversized_replay_is_a_limit() {
        let (now, l) = (Instant::now(), lim(100, 1 << 20, 60_000));
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &l);
        assert_eq!(ring.resume(0, 50, now, &l, 100).unwrap_err(), ResumeError::Limit);
    }
}
