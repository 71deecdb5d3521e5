//! The admin listener: exact counter movements after a scripted workload,
//! parsed with a real Prometheus text parser; JSON stats; health and
//! readiness (503 while draining).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Sums a metric over all label sets matching `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_move_by_exactly_the_scripted_amounts_and_parse() {
    let server = server_with(|c| {
        c.rates.connection_per_sec = 0.001;
        c.rates.connection_burst = 4.0;
    });
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "metrics");
    let mut subs: Vec<Client> = (0..3).map(|s| Client::connect_to_shard(addr, s % 2)).collect();
    for s in &mut subs {
        s.sub(&topic);
    }
    let mut p = Client::connect_to_shard(addr, 1);
    // 4 accepted (the burst), then 3 refused by the rate limit.
    for i in 0..7 {
        p.send(json!({"op":"pub","id":i,"topic":topic,"data":i}));
    }
    let replies: Vec<_> = (0..7).map(|_| p.recv()).collect();
    assert_eq!(replies.iter().filter(|v| v["op"] == "ack").count(), 4);
    for s in &mut subs {
        for _ in 0..4 {
            s.expect_op("msg");
        }
    }
    p.send(json!({"op":"sub","id":9,"topic":"bad"}));
    p.expect_op("error");

    let r = admin_get(&server, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let m = &r.body;
    assert_eq!(metric(m, "shardcast_publishes_rejected_total", &[("reason", "rate_limited")]), 3.0);
    assert_eq!(metric(m, "shardcast_rate_limited_total", &[("scope", "connection")]), 3.0);
    assert_eq!(metric(m, "shardcast_publishes_accepted_total", &[]), 4.0);
    assert_eq!(metric(m, "shardcast_frames_encoded_total", &[]), 4.0);
    assert_eq!(metric(m, "shardcast_deliveries_total", &[]), 12.0, "4 publications x 3 subscribers");
    assert_eq!(metric(m, "shardcast_errors_sent_total", &[("code", "bad_topic")]), 1.0);
    assert_eq!(metric(m, "shardcast_errors_sent_total", &[("code", "rate_limited")]), 3.0);
    assert_eq!(metric(m, "shardcast_connections_open", &[]), 4.0);
    assert_eq!(metric(m, "shardcast_subscriptions", &[]), 3.0);
    assert_eq!(metric(m, "shardcast_internal_errors_total", &[]), 0.0);
    assert_eq!(metric(m, "shardcast_draining", &[]), 0.0);
    assert_eq!(metric(m, "shardcast_topic_last_seq", &[("topic", topic.as_str())]), 4.0);
    assert_eq!(metric(m, "shardcast_topic_lag", &[("topic", topic.as_str())]), 0.0, "everyone caught up");
    // Latency summaries: one sample per (publish, interested shard).
    let scrape = prometheus_parse::Scrape::parse(m.lines().map(|l| Ok(l.to_string()))).unwrap();
    let count = scrape.samples.iter().find(|s| s.metric == "shardcast_publish_ack_latency_seconds_count").unwrap();
    assert!(
        matches!(count.value, prometheus_parse::Value::Untyped(4.0) | prometheus_parse::Value::Counter(4.0)),
        "{:?}",
        count.value
    );
    let q = scrape.samples.iter().find(|s| s.metric == "shardcast_publish_deliver_latency_seconds").expect("summary");
    assert!(matches!(q.value, prometheus_parse::Value::Summary(_)), "{:?}", q.value);
    // Ring series exist for both directions.
    assert!(
        m.contains(r#"shardcast_ring_pushed_total{from="0",to="1"}"#)
            && m.contains(r#"shardcast_ring_pushed_total{from="1",to="0"}"#)
    );

    let s = admin_get(&server, "/v1/stats").json();
    assert_eq!(
        (s["publishes_accepted"].as_u64(), s["deliveries"].as_u64(), s["connections_open"].as_u64()),
        (Some(4), Some(12), Some(4))
    );
    assert_eq!(s["shards"].as_array().unwrap().len(), 2);
    let per: HashMap<u64, u64> = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["shard"].as_u64().unwrap(), x["publishes_accepted"].as_u64().unwrap()))
        .collect();
    assert_eq!(per[&0], 4, "the owner shard sequenced them");
    server.shutdown();
}

#[test]
fn health_and_readiness_flip_during_drain() {
    let server = server();
    assert_eq!(admin_get(&server, "/healthz").status, 200);
    let r = admin_get(&server, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    assert_eq!(admin_get(&server, "/nope").status, 404);
    // A client that never reads or closes keeps the drain busy for the
    // close linger, long enough to look at /readyz.
    let _stuck = std::net::TcpStream::connect(server.local_addr()).unwrap();
    let mut c = Client::connect(server.local_addr());
    c.sub("acme/drain");
    let admin = server.admin_addr().unwrap();
    let control = server.control();
    let drainer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let r = Http::connect(admin).request("GET", "/readyz", "text/plain", b"");
        let m = Http::connect(admin).request("GET", "/metrics", "text/plain", b"");
        (r.status, r.body, control.draining(), metric(&m.body, "shardcast_draining", &[]))
    });
    server.drain(Duration::from_secs(5));
    let (status, body, draining, gauge) = drainer.join().unwrap();
    assert_eq!((status, body.as_str(), draining, gauge), (503, "draining\n", true, 1.0));
    // Neither the raw connection nor `c` (not reading during the drain)
    // sent a FIN after the server's close: both dropped at the linger bound.
    assert_eq!(server.stats().sum(|s| s.counters.close_linger_expired), 2);
    assert_eq!(c.expect_op("drain")["reconnect_after_ms"], 1000);
    assert_eq!(c.expect_close(), 1012);
    server.shutdown();
}

/// Issue 9 defect 5: the admin listener was one thread with per-read
/// timeouts, so one client trickling a byte every 0.9 s, or ten silent
/// connections, kept `/healthz` from everyone else for seconds. Now each
/// connection has its own thread and a whole-request deadline: `/healthz`
/// answers while they hang on, and they are cut off with 408.
#[test]
fn slow_admin_clients_do_not_block_healthz() {
    let server = server_with(|c| c.admin.request_timeout_ms = 1500);
    let admin = server.admin_addr().unwrap();
    let silent: Vec<std::net::TcpStream> = (0..10).map(|_| std::net::TcpStream::connect(admin).unwrap()).collect();
    let mut trickle = std::net::TcpStream::connect(admin).unwrap();
    trickle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    trickle.write_all(b"GET /heal").unwrap();
    // Every silent connection and the trickler were accepted before this.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        // Far below the old worst case (~20 s behind ten silent clients).
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("healthz answered while slow clients hang on");
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        trickle.write_all(b"t").unwrap();
    }
    // The trickler never finishes its head: 408 at the whole-request deadline
    // even though it keeps sending.
    let t0 = std::time::Instant::now();
    let mut out = String::new();
    loop {
        let mut b = [0u8; 256];
        match trickle.read(&mut b) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&b[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                assert!(t0.elapsed() < Duration::from_secs(10), "no 408");
                let _ = trickle.write_all(b"z");
            }
            Err(_) => break,
        }
    }
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    drop(silent);
    let m = admin_get(&server, "/metrics").body;
    assert!(metric(&m, "shardcast_admin_request_timeouts_total", &[]) >= 1.0, "{m}");
    server.shutdown();
}

/// `admin.max_connections` bounds the threads: past it a connection gets
/// 503 at once, counted; once the holders are cut off, service resumes.
#[test]
fn admin_connections_are_bounded() {
    let server = server_with(|c| {
        c.admin.max_connections = 2;
        c.admin.request_timeout_ms = 500;
    });
    let admin = server.admin_addr().unwrap();
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(admin).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    // The holders time out (408); then scrapes work and show the refusal.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let r = admin_get(&server, "/metrics");
        if r.status == 200 {
            break r.body;
        }
        assert!(std::time::Instant::now() < deadline, "admin never recovered");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metric(&m, "shardcast_admin_connections_refused_total", &[]) >= 1.0);
    drop(held);
    server.shutdown();
}

/// `admin.token`: every endpoint but `/healthz` needs the bearer token.
#[test]
fn admin_token_guards_the_figures() {
    let server = server_with(|c| c.admin.token = "admin-test-token".into());
    let admin = server.admin_addr().unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        use std::io::{Read, Write};
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get("/healthz", None).starts_with("HTTP/1.1 200 "));
    for path in ["/metrics", "/v1/stats", "/readyz"] {
        assert!(get(path, None).starts_with("HTTP/1.1 401 "), "{path}");
        assert!(get(path, Some("wrong-token-xxxx")).starts_with("HTTP/1.1 401 "), "{path}");
        assert!(get(path, Some("admin-test-token")).starts_with("HTTP/1.1 200 "), "{path}");
    }
    let m = get("/metrics", Some("admin-test-token"));
    let body = m.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(metric(body, "shardcast_admin_unauthorized_total", &[]), 6.0);
    server.shutdown();
}
