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

/// Most tenants one shard tracks before forgetting idle (full) buckets.
pub const MAX_TENANTS: usize = 100_000;

/// Per-tenant buckets of one shard.
#[derive(Debug, Default)]
pub struct TenantBuckets {
    map: HashMap<Box<str>, TokenBucket>,
}

impl TenantBuckets {
    /// Takes one token from `tenant`'s bucket.
    pub fn take(&mut self, tenant: &str, rate: f64, burst: f64, now: Instant) -> Result<(), u64> {
        if let Some(b) = self.map.get_mut(tenant) {
            return b.take(rate, burst, now);
        }
        if self.map.len() >= MAX_TENANTS {
            // A full bucket carries no state worth keeping.
            self.map.retain(|_, b| !b.full(rate, burst, now));
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
    fn tenants_are_independent() {
        let t0 = Instant::now();
        let mut t = TenantBuckets::default();
        assert!(t.take("a", 1.0, 1.0, t0).is_ok());
        assert!(t.take("a", 1.0, 1.0, t0).is_err());
        assert!(t.take("b", 1.0, 1.0, t0).is_ok());
        assert_eq!(t.len(), 2);
    }
}
