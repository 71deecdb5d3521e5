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
