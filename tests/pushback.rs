//! Issue 11 (noisy tenants): a connection refused `rate_limited` is not read
//! again until its `retry_after_ms` (at least 20 ms, at most 1 s), so a
//! client that retries at once waits in TCP instead of being refused again
//! and again. Without it, the third publish below is read at once and
//! refused too.

mod common;

use std::time::Instant;

use common::*;
use serde_json::json;

#[test]
fn a_rate_limited_connection_is_pushed_back_not_refused_again() {
    let server = server_with(|c| {
        c.rates.connection_per_sec = 10.0;
        c.rates.connection_burst = 1.0;
    });
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ask(json!({"op":"pub","id":1,"topic":"push/r","data":1}))["op"], "ack");
    let refused = c.ask(json!({"op":"pub","id":2,"topic":"push/r","data":2}));
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retry_after_ms"].as_u64().unwrap();
    let t0 = Instant::now();
    // Retried at once: read only once the wait is over, and then accepted.
    let third = c.ask(json!({"op":"pub","id":3,"topic":"push/r","data":3}));
    let waited = t0.elapsed().as_millis() as u64;
    assert_eq!(third["op"], "ack", "{third}");
    assert!(waited + 5 >= wait.min(1000), "answered after {waited} ms, retry_after_ms {wait}");
    assert!(server.stats().sum(|s| s.counters.reads_paused) >= 1);
    server.shutdown();
}
