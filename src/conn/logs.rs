//! Log lines for limit hits, themselves rate-limited: at most one warning
//! per kind per shard per second, carrying how many were suppressed, so an
//! incident (a flood of slow consumers, a noisy tenant) cannot flood the
//! log. Plain fields owned by the shard; no locks.

use std::time::{Duration, Instant};

/// Kinds of limit hits that are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// A publish refused by a rate limit.
    RateLimited,
    /// A connection closed with 4000.
    SlowConsumer,
    /// A publish refused for a full mesh ring.
    RingFull,
    /// A connection closed for not answering pings.
    PingTimeout,
}

const KINDS: usize = 4;
/// At most one warning per kind in this window.
const WINDOW: Duration = Duration::from_secs(1);

/// Per-shard warning throttle.
#[derive(Debug, Default)]
pub struct HitLog {
    last: [Option<Instant>; KINDS],
    suppressed: [u64; KINDS],
}

impl HitLog {
    /// Records a hit; logs it unless one of its kind was logged within the
    /// window.
    pub fn hit(&mut self, shard: usize, kind: Hit, detail: &str) {
        let k = kind as usize;
        let now = Instant::now();
        if self.last[k].is_some_and(|t| now.saturating_duration_since(t) < WINDOW) {
            self.suppressed[k] += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed[k]);
        self.last[k] = Some(now);
        tracing::warn!(shard, kind = ?kind, suppressed, "{detail}");
    }
}
