//! Retained values with TTL (PROTOCOL-EXTENSIONS §5) over real sockets on
//! a 2-shard server: `retain`, `get`, `sub` with `last`, `if_seq`
//! compare-and-set, TTL expiry publishing the `expired` msg on the owner's
//! timer wheel, replacement cancelling the old TTL, and the bounds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn retain(p: &mut Client, topic: &str, data: Value, extra: Value) -> Value {
    let mut cmd = json!({"op":"pub","id":1,"topic":topic,"data":data,"retain":true});
    for (k, v) in extra.as_object().unwrap() {
        cmd[k] = v.clone();
    }
    p.ask(cmd)
}

#[test]
fn retain_get_and_sub_last_from_either_shard() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/job-42/state";
    let mut p = Client::connect_to_shard(addr, 0);
    for shard in [0, 1] {
        let mut c = Client::connect_to_shard(addr, shard);
        let v = c.ask(json!({"op":"get","id":3,"topic":topic}));
        assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("not_found"), Some(3)), "{v}");
    }
    let a = retain(&mut p, topic, json!({"step":1}), json!({}));
    assert_eq!(a["op"], "ack");
    let b = retain(&mut p, topic, json!({"step":2}), json!({}));
    // A plain publish does not replace the retained value.
    p.publish(topic, json!("chatter"));
    for shard in [0, 1] {
        let mut c = Client::connect_to_shard(addr, shard);
        let v = c.ask(json!({"op":"get","id":4,"topic":topic}));
        assert_eq!((&v["op"], &v["id"], &v["topic"]), (&json!("value"), &json!(4), &json!(topic)), "{v}");
        assert_eq!((&v["seq"], &v["data"]), (&b["seq"], &json!({"step":2})), "{v}");
        assert!(v.get("ttl_ms").is_none(), "no TTL, no ttl_ms: {v}");
        let s = c.ask(json!({"op":"sub","id":5,"topic":topic,"last":true}));
        assert_eq!(s["op"], "subscribed");
        let m = c.expect_op("msg");
        assert_eq!((&m["retained"], &m["seq"], &m["data"]), (&json!(true), &b["seq"], &json!({"step":2})), "{m}");
    }
    // Without `last`: nothing first.
    let mut plain = Client::connect(addr);
    plain.sub(topic);
    p.publish(topic, json!("next"));
    assert_eq!(plain.expect_op("msg")["data"], "next");
    let _ = a;
    server.shutdown();
}

#[test]
fn if_seq_is_compare_and_set() {
    let server = server_with(high_rates);
    let mut p = Client::connect(server.local_addr());
    let topic = "acme/lock";
    let v = retain(&mut p, topic, json!("a"), json!({"if_seq": 5}));
    assert_eq!(v["code"], "conflict", "no value yet, so only if_seq 0 matches: {v}");
    let a = retain(&mut p, topic, json!("a"), json!({"if_seq": 0}));
    assert_eq!(a["op"], "ack", "{a}");
    let v = retain(&mut p, topic, json!("b"), json!({"if_seq": 0}));
    assert_eq!(v["code"], "conflict", "{v}");
    let b = retain(&mut p, topic, json!("b"), json!({"if_seq": a["seq"]}));
    assert_eq!(b["op"], "ack", "{b}");
    let v = retain(&mut p, topic, json!("c"), json!({"if_seq": a["seq"]}));
    assert_eq!(v["code"], "conflict", "a stale seq: {v}");
    let g = p.ask(json!({"op":"get","id":1,"topic":topic}));
    assert_eq!(g["data"], "b");
    server.shutdown();
}

#[test]
fn a_ttl_expires_the_value_with_an_expired_msg_and_a_replacement_cancels_it() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/presence-ish";
    let mut s = Client::connect(addr);
    s.sub(topic);
    let mut p = Client::connect(addr);
    let a = retain(&mut p, topic, json!("short"), json!({"ttl_ms": 300}));
    let g = p.ask(json!({"op":"get","id":1,"topic":topic}));
    let ttl = g["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{g}");
    assert_eq!(s.expect_op("msg")["seq"], a["seq"]);
    let t0 = Instant::now();
    let m = s.expect_op("msg");
    let waited = t0.elapsed();
    assert_eq!((&m["expired"], &m["data"]), (&json!(true), &Value::Null), "{m}");
    assert_eq!(m["seq"].as_u64(), a["seq"].as_u64().map(|s| s + 1), "the expiry is a publication");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(p.ask(json!({"op":"get","id":2,"topic":topic}))["code"], "not_found");
    // A value replaced before its TTL: the old TTL does not expire the new one.
    let b = retain(&mut p, topic, json!("first"), json!({"ttl_ms": 200}));
    let c = retain(&mut p, topic, json!("second"), json!({}));
    assert_eq!(s.expect_op("msg")["seq"], b["seq"]);
    assert_eq!(s.expect_op("msg")["seq"], c["seq"]);
    std::thread::sleep(Duration::from_millis(400));
    let g = p.ask(json!({"op":"get","id":3,"topic":topic}));
    assert_eq!((&g["data"], &g["seq"]), (&json!("second"), &c["seq"]), "{g}");
    let t = server.stats();
    assert_eq!(t.sum(|s| s.owner.retained_expired), 1);
    assert_eq!(t.sum(|s| s.retained_values.0), 1);
    server.shutdown();
}

#[test]
fn retained_values_are_bounded_per_tenant() {
    let server = server_with(|c| {
        high_rates(c);
        c.retained.max_per_tenant = 1;
    });
    let addr = server.local_addr();
    // Two topics of tenant acme owned by the same shard.
    let topics: Vec<String> =
        (0..1000).map(|i| format!("acme/v-{i}")).filter(|t| server.owner_of(t) == 0).take(2).collect();
    let mut p = Client::connect(addr);
    assert_eq!(retain(&mut p, &topics[0], json!(1), json!({}))["op"], "ack");
    assert_eq!(retain(&mut p, &topics[0], json!(2), json!({}))["op"], "ack", "replacing is not a new value");
    let v = retain(&mut p, &topics[1], json!(1), json!({}));
    assert_eq!(v["code"], "overloaded", "retained.max_per_tenant: {v}");
    // Another tenant has its own bound.
    let other = (0..1000).map(|i| format!("beta/v-{i}")).find(|t| server.owner_of(t) == 0).unwrap();
    assert_eq!(retain(&mut p, &other, json!(1), json!({}))["op"], "ack");
    assert_eq!(server.stats().sum(|s| s.owner.retained_refused), 1);
    server.shutdown();
}

#[test]
fn bad_retain_fields_get_bad_request() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    for cmd in [
        json!({"op":"pub","id":1,"topic":"a/b","data":1,"ttl_ms":10}),
        json!({"op":"pub","id":1,"topic":"a/b","data":1,"if_seq":0}),
        json!({"op":"pub","id":1,"topic":"a/b","data":1,"retain":true,"ttl_ms":0}),
        json!({"op":"get","id":1}),
    ] {
        assert_eq!(c.ask(cmd.clone())["code"], "bad_request", "{cmd}");
    }
    assert_eq!(c.ask(json!({"op":"get","id":1,"topic":"bad topic"}))["code"], "bad_topic");
    server.shutdown();
}
