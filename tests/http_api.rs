//! The HTTP publish API on the public listener, over real sockets with two
//! shards.

mod common;

use common::*;
use serde_json::json;

/// `POST /v1/publish` reaches a WebSocket subscriber on another shard with
/// the same seq sequence and `msg_id` dedupe as a WebSocket publish.
#[test]
fn http_publish_reaches_websocket_subscribers_with_the_same_semantics() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "http");
    let mut sub = Client::connect_to_shard(addr, 0);
    sub.sub(&topic);
    let mut ws_pub = Client::connect(addr);
    let a1 = ws_pub.publish(&topic, json!("via websocket"));
    // Read seq 1 before the critical seq 2 is published: a critical frame
    // that finds seq 1 still queued overtakes it (and seq 1 becomes a gap),
    // which is the documented lane rule but not what this test is about.
    let m1 = sub.expect_op("msg");
    let mut http = Http::connect(addr);
    let r = http.post_json(
        "/v1/publish",
        &json!({"topic": topic, "data": {"via": "http"}, "msg_id": "job-1", "prio": "critical"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a2 = r.json();
    assert_eq!((a2["seq"].as_u64(), a2["dup"].as_bool()), (Some(2), Some(false)));
    assert_eq!(a2["epoch"], a1["epoch"]);
    // The same msg_id again, over WebSocket: a duplicate of seq 2.
    ws_pub.send(json!({"op":"pub","id":3,"topic":topic,"data":"again","msg_id":"job-1"}));
    let a3 = ws_pub.expect_op("ack");
    assert_eq!((a3["seq"].as_u64(), a3["dup"].as_bool()), (Some(2), Some(true)));
    // And over HTTP once more.
    let r = http.post_json("/v1/publish", &json!({"topic": topic, "data": 0, "msg_id": "job-1"}));
    assert_eq!((r.json()["seq"].as_u64(), r.json()["dup"].as_bool()), (Some(2), Some(true)));
    let m2 = sub.expect_op("msg");
    assert_eq!((m1["seq"].as_u64(), m2["seq"].as_u64()), (Some(1), Some(2)));
    assert_eq!(
        (m2["data"]["via"].as_str(), m2["msg_id"].as_str(), m2["prio"].as_str()),
        (Some("http"), Some("job-1"), Some("critical"))
    );
    sub.sync();
    server.shutdown();
}

/// Bad requests get the right status and never hurt the server.
#[test]
fn http_errors_have_the_right_status() {
    let server = server_with(|c| {
        c.limits.max_message_bytes = 1024;
        c.rates.connection_per_sec = 0.001;
        c.rates.connection_burst = 2.0;
    });
    let addr = server.local_addr();
    let mut h = Http::connect(addr);
    let cases: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        ("POST", "/v1/publish", "application/json", b"{not json".to_vec(), 400),
        ("POST", "/v1/publish", "application/json", br#"{"topic":"acme/x"}"#.to_vec(), 400),
        ("POST", "/v1/publish", "application/json", br#"{"topic":"acme","data":1}"#.to_vec(), 400),
        ("POST", "/v1/publish", "text/plain", br#"{"topic":"acme/x","data":1}"#.to_vec(), 415),
        ("POST", "/v1/publish", "application/json", br#"[1,2]"#.to_vec(), 400),
        ("GET", "/v1/publish", "application/json", Vec::new(), 405),
        ("POST", "/v1/nope", "application/json", b"{}".to_vec(), 404),
        ("POST", "/v1/publish/batch", "application/json", b"[]".to_vec(), 400),
    ];
    for (method, path, ctype, body, want) in cases {
        let r = h.request(method, path, ctype, &body);
        assert_eq!(r.status, want, "{method} {path} {}: {}", String::from_utf8_lossy(&body), r.body);
        assert!(r.json()["error"]["code"].is_string(), "{}", r.body);
    }
    // Two publishes fit the burst; the third is rate limited with Retry-After.
    for _ in 0..2 {
        assert_eq!(h.post_json("/v1/publish", &json!({"topic":"acme/x","data":1})).status, 200);
    }
    let r = h.post_json("/v1/publish", &json!({"topic":"acme/x","data":1}));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    // Oversized bodies are refused before being read, and the connection closes.
    let r = Http::connect(addr).request("POST", "/v1/publish", "application/json", &vec![b' '; 5000]);
    assert_eq!(r.status, 413);
    // A POST without a length.
    let raw = raw_exchange(addr, b"POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 411"));
    // Everything still works.
    Client::connect(addr).sync();
    assert_eq!(server.stats().sum(|s| s.counters.internal_errors), 0);
    server.shutdown();
}

/// Keep-alive with pipelining: answers come back in request order even
/// when consecutive publications go to different owner shards.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topics: Vec<String> = (0..2).map(|s| topic_owned_by(&server, s, "pipe")).collect();
    let mut h = Http::connect(addr);
    for i in 0..200 {
        let t = &topics[i % 2];
        h.send("POST", "/v1/publish", "application/json", json!({"topic": t, "data": i}).to_string().as_bytes());
    }
    for i in 0..200 {
        let r = h.read();
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["topic"], topics[i % 2].as_str(), "answer {i} out of order");
        assert_eq!(v["seq"], (i / 2 + 1) as u64);
    }
    server.shutdown();
}

/// A batch is acked item by item, in order, each with its own result.
#[test]
fn batch_publish_acks_each_item_in_order() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topics: Vec<String> = (0..2).map(|s| topic_owned_by(&server, s, "batch")).collect();
    let mut sub = Client::connect(addr);
    sub.sub(&topics[0]);
    let mut h = Http::connect(addr);
    let body = json!([
        {"topic": topics[0], "data": 1},
        {"topic": topics[1], "data": 2},
        {"topic": "bad topic!", "data": 3},
        {"topic": topics[0], "data": 4, "msg_id": "m"},
        {"topic": topics[0], "data": 5, "msg_id": "m"},
        {"topic": topics[1]}
    ]);
    let r = h.post_json("/v1/publish/batch", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(res.len(), 6);
    assert_eq!((res[0]["seq"].as_u64(), res[1]["seq"].as_u64()), (Some(1), Some(1)));
    assert_eq!(res[2]["error"]["code"], "bad_topic");
    assert_eq!((res[3]["seq"].as_u64(), res[3]["dup"].as_bool()), (Some(2), Some(false)));
    assert_eq!((res[4]["seq"].as_u64(), res[4]["dup"].as_bool()), (Some(2), Some(true)));
    assert_eq!(res[5]["error"]["code"], "bad_request");
    assert_eq!(sub.expect_op("msg")["data"], 1);
    assert_eq!(sub.expect_op("msg")["data"], 4);
    // The connection is still good for the next request.
    assert_eq!(h.post_json("/v1/publish", &json!({"topic": topics[0], "data": 6})).json()["seq"], 3);
    server.shutdown();
}
