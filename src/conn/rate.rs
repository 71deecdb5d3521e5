//! Token buckets for publish rate limits.
//!
//! Per connection, in the connection's slot; per tenant, in the shard that
//! reads the publish. The tenant budget is for the whole process: each of N
//! shards enforces rate/N and burst/N for the publishes it reads, so no
//! bucket is shared between threads (a tenant whose publishers all land on
//! one shard gets 1/N of its budget there; see docs/PROTOCOL.md).

use std::collections::HashMap;
use std::time::Instant;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, last: now }
    }

    /// Takes one token, or says how many ms until one is there.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Whether the bucket has refilled to `burst` by `now` (idle).
    fn full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Default of `rates.max_tenants`.
pub const MAX_TENANTS: usize = 100_000;

/// How often a full table is scanned for buckets that can be forgotten.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Per-tenant buckets of one shard, at most `max` of them.
#[derive(Debug)]
pub struct TenantBuckets {
    map: HashMap<Box<str>, TokenBucket>,
    max: usize,
    /// Shared by the tenants that found the table full.
    overflow: Option<TokenBucket>,
    /// No purge scan before this (a full table of busy tenants is not
    /// rescanned per new tenant).
    next_purge: Option<Instant>,
    /// Publishes metered by the shared overflow bucket.
    pub overflowed: u64,
}

impl Default for TenantBuckets {
    fn default() -> Self {
        Self::new(MAX_TENANTS)
    }
}

impl TenantBuckets {
    /// An empty table tracking at most `max` tenants.
    pub fn new(max: usize) -> Self {
        Self { map: HashMap::new(), max: max.max(1), overflow: None, next_purge: None, overflowed: 0 }
    }

    /// Takes one token from `tenant`'s bucket.
    pub fn take(&mut self, tenant: &str, rate: f64, burst: f64, now: Instant) -> Result<(), u64> {
        if let Some(b) = self.map.get_mut(tenant) {
            return b.take(rate, burst, now);
        }
        if self.map.len() >= self.max && self.next_purge.is_none_or(|t| now >= t) {
            // A full bucket carries no state worth keeping.
            self.map.retain(|_, b| !b.full(rate, burst, now));
            self.next_purge = Some(now + PURGE_EVERY);
        }
        if self.map.len() >= self.max {
            self.overflowed += 1;
            return self.overflow.get_or_insert_with(|| TokenBucket::new(burst, now)).take(rate, burst, now);
        }
        let mut b = TokenBucket::new(burst, now);
        let r = b.take(rate, burst, now);
        self.map.insert(tenant.into(), b);
        r
    }

    /// Tenants tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no tenant is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, t0);
        assert!((0..3).all(|_| b.take(10.0, 3.0, t0).is_ok()));
        assert_eq!(b.take(10.0, 3.0, t0), Err(100), "one token per 100 ms at 10/s");
        assert!(b.take(10.0, 3.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(10.0, 3.0, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn tenant_table_forgets_idle_buckets_at_its_bound() {
        let t0 = Instant::now();
        let mut t = TenantBuckets::default();
        for i in 0..MAX_TENANTS {
            t.take(&format!("t{i}"), 1000.0, 10.0, t0).unwrap();
        }
        assert_eq!(t.len(), MAX_TENANTS);
        // A second later every bucket has refilled: none carries state, so
        // the next new tenant finds them forgotten.
        let later = t0 + Duration::from_secs(1);
        t.take("new", 1000.0, 10.0, later).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_of_busy_tenants_never_grows() {
        let t0 = Instant::now();
        let mut t = TenantBuckets::new(100);
        for i in 0..100 {
            t.take(&format!("t{i}"), 1.0, 5.0, t0).unwrap();
        }
        // Every bucket holds state (not refilled): nothing can be forgotten,
        // so new tenants share one bucket (burst 5) and the table stays put.
        let shared: Vec<_> = (0..1000).map(|i| t.take(&format!("new{i}"), 1.0, 5.0, t0)).collect();
        assert_eq!(t.len(), 100, "the table inserted past its bound");
        assert_eq!(shared.iter().filter(|r| r.is_ok()).count(), 5, "new tenants share one bucket");
        assert_eq!(t.overflowed, 1000);
        // Once buckets refill they are forgotten and new tenants get their own.
        let later = t0 + Duration::from_secs(10);
        t.take("fresh", 1.0, 5.0, later).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tenants_are_independent() {
        let t0 = Instant::now();
        let mut t = TenantBuckets::default();
        assert!(t.take("a", 1.0, 1.0, t0).is_ok());
        assert!(t.take("a", 1.0, 1.0, t0).is_err());
        assert!(t.take("b", 1.0, 1.0, t0).is_ok());
        assert_eq!(t.len(), 2);
    }
}
