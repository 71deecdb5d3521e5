//! Request/reply (PROTOCOL-EXTENSIONS §3) over real sockets on a 2-shard
//! server: streamed replies, no responders, fallback (no member, timeout),
//! timeout with and without partial replies, cancel by the requester, by
//! its disconnect, a responder that goes away, and the reply bound.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn responder(addr: std::net::SocketAddr, topic: &str) -> Client {
    let mut r = Client::connect(addr);
    let v = r.ask(json!({"op":"sub","id":1,"topic":topic,"group":"workers"}));
    assert_eq!(v["op"], "subscribed", "{v}");
    r
}

#[test]
fn a_request_gets_a_streamed_reply() {
    let server = server();
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    q.send(json!({"op":"req","id":7,"topic":"acme/models/sum","data":{"text":"hi"},"timeout_ms":5000}));
    let req = r.expect_op("request");
    assert_eq!(req["topic"], "acme/models/sum");
    assert_eq!(req["data"], json!({"text":"hi"}));
    assert_eq!(req["deadline_ms"], 5000);
    let id = req["req"].as_str().unwrap().to_owned();
    for (d, more) in [("Hel", true), ("lo", true), ("!", false)] {
        r.send(json!({"op":"reply","req":id,"data":d,"more":more}));
    }
    for (d, more) in [("Hel", true), ("lo", true), ("!", false)] {
        let v = q.expect_op("reply");
        assert_eq!((v["id"].as_u64(), v["data"].as_str()), (Some(7), Some(d)), "{v}");
        assert_eq!(v.get("more").is_some(), more, "more only on partial replies: {v}");
    }
    // Over: a late reply goes nowhere.
    r.send(json!({"op":"reply","req":id,"data":"late"}));
    r.sync();
    assert!(q.quiet(Duration::from_millis(200)).is_empty());
    server.shutdown();
}

#[test]
fn no_responders_and_the_fallback_when_nobody_is_there() {
    let server = server();
    let addr = server.local_addr();
    let mut q = Client::connect(addr);
    let v = q.ask(json!({"op":"req","id":1,"topic":"acme/models/big","data":1}));
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("no_responders"), Some(1)), "{v}");
    let mut small = responder(addr, "acme/models/small");
    q.send(json!({"op":"req","id":2,"topic":"acme/models/big","data":2,"fallback":"acme/models/small"}));
    let req = small.expect_op("request");
    assert_eq!(req["data"], 2);
    small.send(json!({"op":"reply","req":req["req"],"data":"from small"}));
    assert_eq!(q.expect_op("reply")["data"], "from small");
    server.shutdown();
}

#[test]
fn a_timeout_cancels_the_responder_and_tries_the_fallback_once() {
    let server = server();
    let addr = server.local_addr();
    let mut big = responder(addr, "acme/models/big");
    let mut small = responder(addr, "acme/models/small");
    let mut q = Client::connect(addr);
    q.send(
        json!({"op":"req","id":3,"topic":"acme/models/big","data":"x","timeout_ms":200,"fallback":"acme/models/small"}),
    );
    let req = big.expect_op("request");
    let cancel = big.expect_op("cancel");
    assert_eq!(cancel["req"], req["req"]);
    let req2 = small.expect_op("request");
    assert_eq!(req2["deadline_ms"], 200, "a fresh timeout");
    // The fallback is silent too: now the requester gets timeout.
    assert_eq!(small.expect_op("cancel")["req"], req2["req"]);
    let v = q.expect_op("error");
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("timeout"), Some(3)));
    assert!(v.get("partial").is_none());
    server.shutdown();
}

#[test]
fn a_timeout_after_partial_replies_does_not_fall_back() {
    let server = server();
    let addr = server.local_addr();
    let mut big = responder(addr, "acme/models/big");
    let mut small = responder(addr, "acme/models/small");
    let mut q = Client::connect(addr);
    q.send(
        json!({"op":"req","id":4,"topic":"acme/models/big","data":"x","timeout_ms":300,"fallback":"acme/models/small"}),
    );
    let req = big.expect_op("request");
    big.send(json!({"op":"reply","req":req["req"],"data":"part","more":true}));
    assert_eq!(q.expect_op("reply")["more"], true);
    let v = q.expect_op("error");
    assert_eq!((v["code"].as_str(), v["partial"].as_bool()), (Some("timeout"), Some(true)), "{v}");
    assert_eq!(big.expect_op("cancel")["req"], req["req"]);
    assert!(small.quiet(Duration::from_millis(200)).is_empty(), "no fallback once a reply was forwarded");
    server.shutdown();
}

#[test]
fn cancel_by_the_requester_and_by_its_disconnect_reach_the_responder() {
    let server = server();
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    q.send(json!({"op":"req","id":5,"topic":"acme/models/sum","data":1}));
    let req = r.expect_op("request");
    q.send(json!({"op":"cancel","id":5}));
    assert_eq!(r.expect_op("cancel")["req"], req["req"]);
    r.send(json!({"op":"reply","req":req["req"],"data":"too late"}));
    r.sync();
    assert!(q.quiet(Duration::from_millis(200)).is_empty());
    q.send(json!({"op":"req","id":6,"topic":"acme/models/sum","data":2}));
    let req = r.expect_op("request");
    drop(q);
    assert_eq!(r.expect_op("cancel")["req"], req["req"]);
    let t = wait_stats(&server, "two cancels", |t| t.sum(|s| s.counters.requests_cancelled) >= 2);
    assert_eq!(t.sum(|s| s.counters.requests_timed_out), 0);
    server.shutdown();
}

#[test]
fn a_responder_that_goes_away_ends_the_request_or_falls_back() {
    let server = server();
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    q.send(json!({"op":"req","id":8,"topic":"acme/models/sum","data":1}));
    r.expect_op("request");
    drop(r);
    let v = q.expect_op("error");
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("no_responders"), Some(8)), "{v}");
    server.shutdown();
}

#[test]
fn replies_past_the_bound_end_the_request() {
    let server = server_with(|c| c.requests.max_reply_bytes = 1000);
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    q.send(json!({"op":"req","id":9,"topic":"acme/models/sum","data":1}));
    let req = r.expect_op("request");
    let chunk = "x".repeat(600);
    r.send(json!({"op":"reply","req":req["req"],"data":chunk,"more":true}));
    r.send(json!({"op":"reply","req":req["req"],"data":chunk,"more":true}));
    assert_eq!(r.expect_op("error")["code"], "overloaded");
    assert_eq!(q.expect_op("reply")["more"], true);
    let v = q.expect_op("error");
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("overloaded"), Some(9)), "{v}");
    server.shutdown();
}

#[test]
fn bad_requests_get_bad_request() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    for cmd in [
        json!({"op":"req","id":1,"topic":"a/b"}),
        json!({"op":"req","id":1,"topic":"a/b","data":1,"timeout_ms":0}),
        json!({"op":"req","id":1,"topic":"a/b","data":1,"timeout_ms":600001}),
        json!({"op":"reply","id":1,"data":1}),
        json!({"op":"reply","id":1,"req":"","data":1}),
    ] {
        assert_eq!(c.ask(cmd.clone())["code"], "bad_request", "{cmd}");
    }
    let v = c.ask(json!({"op":"req","id":2,"topic":"bad topic","data":1}));
    assert_eq!(v["code"], "bad_topic");
    server.shutdown();
}

#[test]
fn open_requests_per_connection_are_bounded() {
    let server = server_with(|c| c.requests.max_per_connection = 1);
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    q.send(json!({"op":"req","id":1,"topic":"acme/models/sum","data":1}));
    r.expect_op("request");
    let v = q.ask(json!({"op":"req","id":2,"topic":"acme/models/sum","data":2}));
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("overloaded"), Some(2)), "{v}");
    assert!(v["retry_after_ms"].as_u64().is_some());
    assert_eq!(server.stats().sum(|s| s.counters.requests_refused), 1);
    server.shutdown();
}

#[test]
fn open_requests_per_shard_and_held_fallback_bytes_are_bounded() {
    let server = server_with(|c| {
        c.requests.max_open = 1;
        c.requests.max_held_bytes = 64;
    });
    let addr = server.local_addr();
    let _r = responder(addr, "acme/models/sum");
    let mut a = Client::connect_to_shard(addr, 0);
    let mut b = Client::connect_to_shard(addr, 0);
    let mut c = Client::connect_to_shard(addr, 1);
    a.send(json!({"op":"req","id":1,"topic":"acme/models/sum","data":1}));
    a.sync();
    // requests.max_open: the shard's one slot is taken, for every connection there.
    let v = b.ask(json!({"op":"req","id":2,"topic":"acme/models/sum","data":2}));
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("overloaded"), Some(2)), "{v}");
    // requests.max_held_bytes: data kept for a fallback is bounded; without
    // a fallback nothing is kept.
    let big = "y".repeat(100);
    let v = c.ask(json!({"op":"req","id":3,"topic":"acme/models/sum","data":big,"fallback":"acme/models/small"}));
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("overloaded"), Some(3)), "{v}");
    c.send(json!({"op":"req","id":4,"topic":"acme/models/sum","data":big}));
    c.sync();
    let t = server.stats();
    assert_eq!(t.sum(|s| s.counters.requests_refused), 2);
    assert_eq!(t.sum(|s| s.requests_open), 2);
    server.shutdown();
}

/// The service row named `topic` in /v1/stats.
fn service(server: &shardcast::server::ServerHandle, topic: &str) -> Value {
    let s = admin_get(server, "/v1/stats").json();
    s["services"].as_array().unwrap().iter().find(|s| s["topic"] == topic).cloned().unwrap_or(Value::Null)
}

#[test]
fn per_service_metrics_count_outcomes_and_reply_latency() {
    let server = server_with(|c| c.requests.max_services = 2);
    let addr = server.local_addr();
    let mut r = responder(addr, "acme/models/sum");
    let mut q = Client::connect(addr);
    // Three answered (two chunks each, 5 ms apart), on either shard.
    for id in 1..=3u64 {
        q.send(json!({"op":"req","id":id,"topic":"acme/models/sum","data":id,"timeout_ms":5000}));
        let req = r.expect_op("request");
        std::thread::sleep(Duration::from_millis(5));
        r.send(json!({"op":"reply","req":req["req"],"data":"a","more":true}));
        std::thread::sleep(Duration::from_millis(5));
        r.send(json!({"op":"reply","req":req["req"],"data":"b"}));
        assert_eq!(q.expect_op("reply")["more"], true);
        assert!(q.expect_op("reply").get("more").is_none());
    }
    // One times out and falls back (to nobody: no_responders counts for the fallback's result).
    q.send(
        json!({"op":"req","id":4,"topic":"acme/models/sum","data":4,"timeout_ms":100,"fallback":"acme/models/none"}),
    );
    r.expect_op("request");
    assert_eq!(r.expect_op("cancel")["op"], "cancel");
    assert_eq!(q.expect_op("error")["code"], "no_responders");
    // One cancelled by the requester.
    q.send(json!({"op":"req","id":5,"topic":"acme/models/sum","data":5}));
    r.expect_op("request");
    q.send(json!({"op":"cancel","id":5}));
    r.expect_op("cancel");
    // One timeout without a fallback.
    q.send(json!({"op":"req","id":6,"topic":"acme/models/sum","data":6,"timeout_ms":100}));
    r.expect_op("request");
    assert_eq!(q.expect_op("error")["code"], "timeout");
    let s = service(&server, "acme/models/sum");
    assert_eq!(
        (&s["requests"], &s["answered"], &s["timeouts"], &s["fallbacks"], &s["cancels"], &s["no_responders"]),
        (&json!(6), &json!(3), &json!(1), &json!(1), &json!(1), &json!(1)),
        "{s}"
    );
    assert_eq!((&s["first_reply"]["count"], &s["final_reply"]["count"]), (&json!(3), &json!(3)), "{s}");
    let (first, last) = (s["first_reply"]["p50_us"].as_u64().unwrap(), s["final_reply"]["p50_us"].as_u64().unwrap());
    assert!(first >= 4_000 && last >= 9_000 && last > first, "5 ms to the first chunk, 10 ms to the last: {s}");
    // requests.max_services = 2: a third service topic counts under (other).
    for (i, t) in ["acme/models/x", "acme/models/y"].iter().enumerate() {
        assert_eq!(q.ask(json!({"op":"req","id":10 + i,"topic":t,"data":1}))["code"], "no_responders");
    }
    let text = admin_get(&server, "/metrics").body;
    for topic in ["acme/models/sum", "(other)"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("shardcast_service_requests_total{{topic=\"{topic}\"}}"))),
            "{topic} missing from /metrics"
        );
    }
    assert!(text.contains("shardcast_service_reply_seconds_count{topic=\"acme/models/sum\"} 3"));
    server.shutdown();
}
