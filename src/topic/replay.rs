//! A topic's replay ring: its most recent publications, kept by the owner so
//! that a reconnecting client can resume with `since`.
//!
//! Bounded by count, bytes and age (whichever bites first). The ring always
//! holds a contiguous run of seqs ending at the topic's last seq, so a
//! resume either gets exactly the missed publications or a plain reason.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::publication::SharedPub;

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
    /// The publication (shared with live delivery).
    pub publ: SharedPub,
    /// When it was retained.
    pub at: Instant,
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
    /// evicts what falls outside the per-topic count and byte bounds.
    /// Returns (publications, bytes) evicted. Age and the shard budget are
    /// the owner's sweep's (it pops from the front).
    pub fn push(&mut self, publ: SharedPub, now: Instant, lim: &ReplayLimits) -> (usize, usize) {
        self.bytes += publ.bytes();
        self.items.push_back(Retained { publ, at: now });
        let (mut n, mut freed) = (0, 0);
        while self.items.len() > lim.max_count || self.bytes > lim.max_bytes {
            freed += self.pop_oldest();
            n += 1;
        }
        (n, freed)
    }

    /// Drops the oldest publication; returns its bytes.
    pub fn pop_oldest(&mut self) -> usize {
        let Some(r) = self.items.pop_front() else { return 0 };
        let b = r.publ.bytes();
        self.bytes -= b;
        b
    }

    /// The oldest retained publication.
    pub fn front(&self) -> Option<&Retained> {
        self.items.front()
    }

    /// The publications after `since` up to `last` (the topic's seq), in
    /// order, if all are retained and fit in `max_bytes` of replay.
    pub fn resume(&self, since: u64, last: u64, max_bytes: usize) -> Result<Vec<SharedPub>, ResumeError> {
        if since > last {
            return Err(ResumeError::Ahead);
        }
        if since == last {
            return Ok(Vec::new());
        }
        let first = match self.items.front() {
            Some(f) => f.publ.seq,
            None => return Err(ResumeError::Expired),
        };
        if since + 1 < first {
            return Err(ResumeError::Expired);
        }
        let skip = (since + 1 - first) as usize;
        let mut bytes = 0;
        let mut out = Vec::with_capacity(self.items.len().saturating_sub(skip));
        for r in self.items.iter().skip(skip) {
            bytes += r.publ.frame.len();
            if bytes > max_bytes {
                return Err(ResumeError::Limit);
            }
            out.push(r.publ.clone());
        }
        Ok(out)
    }

    /// A page of the ring (a history query): after `since` in order, or
    /// (`reverse`) before it newest first; without `since` from the oldest
    /// (or the newest). At most `limit` publications and about `max_bytes`
    /// of frames (a page, not a resume: it is cut short, never refused).
    /// Expired when `since` is older than the ring holds contiguously.
    pub fn page(
        &self,
        since: Option<u64>,
        limit: usize,
        reverse: bool,
        max_bytes: usize,
    ) -> Result<Vec<SharedPub>, ResumeError> {
        let first = self.items.front().map(|r| r.publ.seq);
        if let (Some(s), Some(f)) = (since, first) {
            if !reverse && s + 1 < f {
                return Err(ResumeError::Expired);
            }
        }
        let keep = |r: &&Retained| since.is_none_or(|s| if reverse { r.publ.seq < s } else { r.publ.seq > s });
        let mut bytes = 0;
        let mut out = Vec::new();
        let mut take = |r: &Retained| {
            bytes += r.publ.frame.len();
            if out.len() >= limit || (bytes > max_bytes && !out.is_empty()) {
                return false;
            }
            out.push(r.publ.clone());
            true
        };
        if reverse {
            for r in self.items.iter().rev().filter(keep) {
                if !take(r) {
                    break;
                }
            }
        } else {
            for r in self.items.iter().filter(keep) {
                if !take(r) {
                    break;
                }
            }
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

    /// Bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::owned::EpochSource;
    use crate::topic::publication::{PubMeta, Publication};

    fn lim(count: usize, bytes: usize) -> ReplayLimits {
        ReplayLimits { max_count: count, max_bytes: bytes, max_age: Duration::from_secs(60) }
    }

    pub(crate) fn publ(seq: u64, len: usize) -> SharedPub {
        let data = "1".repeat(len);
        let epoch = EpochSource::new(0).next_epoch();
        let meta = PubMeta {
            topic: "a/b",
            seq,
            epoch,
            prio: None,
            msg_id: None,
            from: None,
            data: &data,
            extra: None,
            stream: None,
        };
        let frame: Box<[u8]> = data.as_bytes().into();
        std::sync::Arc::new(Publication::new(std::sync::Arc::from("a/b"), &meta, frame, (0, len)))
    }

    fn fill(ring: &mut ReplayRing, n: u64, now: Instant, l: &ReplayLimits) {
        for seq in 1..=n {
            ring.push(publ(seq, 10), now, l);
        }
    }

    #[test]
    fn pages_go_forward_backward_and_stop_at_the_limit() {
        let l = lim(100, 1 << 20);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 10, Instant::now(), &l);
        let seqs = |v: Vec<SharedPub>| v.iter().map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(seqs(ring.page(None, 3, false, usize::MAX).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(ring.page(None, 3, true, usize::MAX).unwrap()), vec![10, 9, 8]);
        assert_eq!(seqs(ring.page(Some(7), 10, false, usize::MAX).unwrap()), vec![8, 9, 10]);
        assert_eq!(seqs(ring.page(Some(3), 10, true, usize::MAX).unwrap()), vec![2, 1]);
        assert_eq!(seqs(ring.page(Some(10), 10, false, usize::MAX).unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(ring.page(None, 0, false, usize::MAX).unwrap()), Vec::<u64>::new());
        assert_eq!(ring.page(None, 10, false, 1).unwrap().len(), 1, "a page always makes progress");
        while ring.front().is_some_and(|r| r.publ.seq < 5) {
            ring.pop_oldest();
        }
        assert_eq!(ring.page(Some(3), 10, false, usize::MAX).unwrap_err(), ResumeError::Expired);
        assert_eq!(seqs(ring.page(Some(4), 10, false, usize::MAX).unwrap()), vec![5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn resume_returns_exactly_the_missed_run() {
        let (now, l) = (Instant::now(), lim(100, 1 << 20));
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &l);
        let got: Vec<u64> = ring.resume(41, 50, usize::MAX).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(got, (42..=50).collect::<Vec<_>>());
        assert!(ring.resume(50, 50, usize::MAX).unwrap().is_empty());
        assert_eq!(ring.resume(0, 50, usize::MAX).unwrap().len(), 50);
        assert_eq!(ring.resume(51, 50, usize::MAX).unwrap_err(), ResumeError::Ahead);
    }

    #[test]
    fn count_and_bytes_each_bound_the_ring() {
        let now = Instant::now();
        let by_count = lim(10, 1 << 20);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &by_count);
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.resume(39, 50, usize::MAX).unwrap_err(), ResumeError::Expired);
        assert_eq!(ring.resume(40, 50, usize::MAX).unwrap().len(), 10);

        let one = publ(1, 10).bytes();
        let by_bytes = lim(1000, one * 5 + 5);
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &by_bytes);
        assert_eq!((ring.len(), ring.bytes()), (5, one * 5));
        while ring.pop_oldest() > 0 {}
        assert_eq!((ring.len(), ring.bytes()), (0, 0));
    }

    #[test]
    fn oversized_replay_is_a_limit() {
        let (now, l) = (Instant::now(), lim(100, 1 << 20));
        let mut ring = ReplayRing::default();
        fill(&mut ring, 50, now, &l);
        assert_eq!(ring.resume(0, 50, 100).unwrap_err(), ResumeError::Limit);
    }
}
