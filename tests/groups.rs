//! Consumer groups (PROTOCOL-EXTENSIONS §2) over real sockets on a
//! 2-shard server: exactly one member per group per publication, acks,
//! retry, deadlines, dead letters, a member's disconnect, backpressure to
//! producers, retention while a group is empty, and bad group commands.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn join(c: &mut Client, topic: &str, group: &str, extra: Value) -> Value {
    let mut cmd = json!({"op":"sub","id":5,"topic":topic,"group":group});
    for (k, v) in extra.as_object().unwrap() {
        cmd[k] = v.clone();
    }
    let v = c.ask(cmd);
    assert_eq!(v["op"], "subscribed", "{v}");
    assert_eq!(v["group"], group);
    v
}

fn publish_n(p: &mut Client, topic: &str, n: u64) {
    for i in 1..=n {
        let a = p.publish(topic, json!({"n": i}));
        assert_eq!(a["op"], "ack", "{a}");
    }
}

fn msgs(v: &[Value]) -> Vec<&Value> {
    v.iter().filter(|m| m["op"] == "msg").collect()
}

#[test]
fn each_publication_goes_to_exactly_one_member_of_each_group() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/jobs";
    let mut plain = Client::connect(addr);
    plain.sub(topic);
    // Three members on both shards, with and without acks in two groups.
    let mut members = [Client::connect_to_shard(addr, 0), Client::connect_to_shard(addr, 1), Client::connect(addr)];
    for m in members.iter_mut() {
        join(m, topic, "g1", json!({}));
    }
    let mut c = Client::connect(addr);
    join(&mut c, topic, "g2", json!({"ack": true, "max_inflight": 1024}));
    let mut p = Client::connect(addr);
    publish_n(&mut p, topic, 300);
    let got_plain = msgs(&plain.quiet(Duration::from_millis(500))).len();
    assert_eq!(got_plain, 300, "plain subscribers still get everything");
    let mut seqs = Vec::new();
    let mut per = Vec::new();
    for m in members.iter_mut() {
        let got: Vec<u64> =
            msgs(&m.quiet(Duration::from_millis(300))).iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        per.push(got.len());
        seqs.extend(got);
    }
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), 300, "each once across the group: {per:?}");
    assert_eq!(set, (1..=300).collect(), "every publication reached the group");
    assert!(per.iter().all(|n| *n == 100), "round robin without acks: {per:?}");
    let g2 = c.quiet(Duration::from_millis(300));
    assert_eq!(msgs(&g2).len(), 300, "a second group gets its own copy");
    assert!(msgs(&g2).iter().all(|m| m["group"] == "g2" && m["attempt"] == 1));
    let t = server.stats();
    assert_eq!(t.sum(|s| s.group_inflight), 300, "g2 holds all 300 unsettled");
    assert_eq!(t.sum(|s| s.groups_owned), 2);
    server.shutdown();
}

#[test]
fn acked_members_settle_done_retry_and_unknown_seqs() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/work";
    let mut m = Client::connect(addr);
    join(&mut m, topic, "w", json!({"ack": true, "max_inflight": 1}));
    let mut p = Client::connect(addr);
    publish_n(&mut p, topic, 3);
    let first = m.expect_op("msg");
    assert_eq!(
        (first["seq"].as_u64(), first["group"].as_str(), first["attempt"].as_u64()),
        (Some(1), Some("w"), Some(1))
    );
    assert!(msgs(&m.quiet(Duration::from_millis(200))).is_empty(), "max_inflight 1: nothing more before a settle");
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":1,"outcome":"done"}));
    let second = m.expect_op("msg");
    assert_eq!(second["seq"], 2);
    // A retry goes to the back: seq 3 (ready) comes first, then seq 2 again.
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":2,"outcome":"retry","delay_ms":0}));
    let third = m.expect_op("msg");
    assert_eq!((third["seq"].as_u64(), third["attempt"].as_u64()), (Some(3), Some(1)));
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":3,"outcome":"done"}));
    let again = m.expect_op("msg");
    assert_eq!((again["seq"].as_u64(), again["attempt"].as_u64()), (Some(2), Some(2)));
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":2,"outcome":"working"}));
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":2,"outcome":"done"}));
    m.sync();
    assert!(msgs(&m.quiet(Duration::from_millis(200))).is_empty(), "all settled: nothing more");
    let e = m.ask(json!({"op":"settle","id":9,"topic":topic,"group":"w","seq":99,"outcome":"done"}));
    assert_eq!((e["op"].as_str(), e["code"].as_str(), e["id"].as_u64()), (Some("error"), Some("not_found"), Some(9)));
    let e = m.ask(json!({"op":"settle","id":10,"topic":topic,"group":"other","seq":3,"outcome":"done"}));
    assert_eq!(e["code"], "not_member");
    server.shutdown();
}

#[test]
fn a_missed_deadline_redelivers_and_max_deliver_dead_letters() {
    let server = server_with(|c| {
        high_rates(c);
        c.groups.backoff_base_ms = 10;
    });
    let addr = server.local_addr();
    let topic = "acme/flaky";
    let mut dlq = Client::connect(addr);
    dlq.sub("acme/flaky/dlq");
    let mut m = Client::connect(addr);
    join(&mut m, topic, "w", json!({"ack": true, "ack_wait_ms": 200, "max_deliver": 2}));
    let mut p = Client::connect(addr);
    p.publish(topic, json!({"job": "x", "n": [1, 2]}));
    let t0 = std::time::Instant::now();
    assert_eq!(m.expect_op("msg")["attempt"], 1);
    let second = m.expect_op("msg");
    assert_eq!(second["attempt"], 2);
    assert!(t0.elapsed() >= Duration::from_millis(190), "redelivered only after ack_wait: {:?}", t0.elapsed());
    let dead = dlq.expect_op("msg");
    assert_eq!(dead["data"], json!({"job": "x", "n": [1, 2]}), "data verbatim: {dead}");
    assert_eq!(dead["dead"], json!({"topic": topic, "group": "w", "seq": 1, "attempts": 2, "reason": "ack_wait"}));
    assert_eq!(dead["topic"], "acme/flaky/dlq");
    // And `dead` from a member goes there at once.
    p.publish(topic, json!(2));
    let third = m.expect_op("msg");
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":third["seq"],"outcome":"dead"}));
    let dead = dlq.expect_op("msg");
    assert_eq!(dead["dead"]["reason"], "dead");
    assert_eq!(dead["dead"]["attempts"], 1);
    let t = server.stats();
    assert!(t.sum(|s| s.counters.group_deadlines_missed) >= 2);
    assert_eq!(t.sum(|s| s.counters.group_dead_lettered), 2);
    server.shutdown();
}

#[test]
fn a_member_that_disconnects_gives_its_work_to_the_others() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/handoff";
    let mut a = Client::connect_to_shard(addr, 0);
    let mut b = Client::connect_to_shard(addr, 1);
    join(&mut a, topic, "w", json!({"ack": true}));
    join(&mut b, topic, "w", json!({"ack": true}));
    let mut p = Client::connect(addr);
    p.publish(topic, json!("job"));
    let (ra, rb) = (a.quiet(Duration::from_millis(300)), b.quiet(Duration::from_millis(100)));
    let (holder, mut other) = match (msgs(&ra).len(), msgs(&rb).len()) {
        (1, 0) => (a, b),
        (0, 1) => (b, a),
        n => panic!("one member holds it: {n:?}"),
    };
    drop(holder); // no settle, just gone
    let again = other.expect_op("msg");
    assert_eq!((again["seq"].as_u64(), again["attempt"].as_u64()), (Some(1), Some(2)));
    server.shutdown();
}

#[test]
fn a_full_group_pushes_back_on_producers() {
    let server = server_with(|c| {
        high_rates(c);
        c.groups.max_pending = 5;
    });
    let addr = server.local_addr();
    let topic = "acme/slow";
    let mut m = Client::connect(addr);
    join(&mut m, topic, "w", json!({"ack": true, "max_inflight": 1}));
    let mut p = Client::connect(addr);
    let mut acked = 0;
    let refused = loop {
        let a = p.publish_or_error(topic, json!(acked));
        if a["op"] == "ack" {
            acked += 1;
            assert!(acked <= 6, "past the bound without a refusal");
        } else {
            break a;
        }
    };
    assert_eq!(acked, 6, "one in flight and five pending");
    assert_eq!(refused["code"], "overloaded", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some());
    // Settling frees room: the producer may publish again.
    let first = m.expect_op("msg");
    m.send(json!({"op":"settle","topic":topic,"group":"w","seq":first["seq"],"outcome":"done"}));
    m.expect_op("msg");
    assert_eq!(p.publish_or_error(topic, json!("more"))["op"], "ack");
    assert!(server.stats().sum(|s| s.counters.group_backpressure) >= 1);
    server.shutdown();
}

#[test]
fn an_empty_group_keeps_its_work_for_the_next_member() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/restart";
    let mut m = Client::connect(addr);
    join(&mut m, topic, "w", json!({"ack": true, "max_inflight": 10}));
    let left = m.ask(json!({"op":"unsub","id":3,"topic":topic,"group":"w"}));
    assert_eq!((left["op"].as_str(), left["group"].as_str()), (Some("unsubscribed"), Some("w")));
    let mut p = Client::connect(addr);
    publish_n(&mut p, topic, 3);
    let mut n = Client::connect(addr);
    join(&mut n, topic, "w", json!({"ack": true, "max_inflight": 10}));
    let got: Vec<u64> = (0..3).map(|_| n.expect_op("msg")["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, [1, 2, 3]);
    let e = m.ask(json!({"op":"unsub","id":4,"topic":topic,"group":"w"}));
    assert_eq!(e["code"], "not_member");
    server.shutdown();
}

#[test]
fn bad_group_commands_get_bad_request() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    for (cmd, why) in [
        (json!({"op":"sub","id":1,"topic":"a/b","group":""}), "empty group"),
        (json!({"op":"sub","id":1,"topic":"a/b","group":"has space"}), "bad characters"),
        (json!({"op":"sub","id":1,"topic":"a/b","group":"g","max_inflight":0}), "max_inflight 0"),
        (json!({"op":"sub","id":1,"topic":"a/b","group":"g","ack_wait_ms":0}), "ack_wait 0"),
        (json!({"op":"sub","id":1,"topic":"a/b","group":"g","since":{"seq":1,"epoch":"x"}}), "since"),
        (json!({"op":"settle","id":1,"topic":"a/b","group":"g","outcome":"done"}), "no seq"),
        (json!({"op":"settle","id":1,"topic":"a/b","group":"g","seq":1,"outcome":"later"}), "bad outcome"),
        (json!({"op":"settle","id":1,"topic":"a/b","seq":1,"outcome":"done"}), "no group"),
    ] {
        let v = c.ask(cmd);
        assert_eq!(v["code"], "bad_request", "{why}: {v}");
    }
    let v = c.ask(json!({"op":"sub","id":1,"topic":"a/b","group":"g","dead_letter":"other/dlq"}));
    assert_eq!(v["code"], "forbidden", "{v}");
    c.sync();
    server.shutdown();
}

#[test]
fn group_bounds_refuse_joins_with_overloaded() {
    let server = server_with(|c| {
        high_rates(c);
        c.groups.max_members = 1;
        c.groups.max_per_topic = 1;
    });
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    join(&mut a, "acme/b", "g", json!({}));
    let mut b = Client::connect(addr);
    let v = b.ask(json!({"op":"sub","id":1,"topic":"acme/b","group":"g"}));
    assert_eq!(v["code"], "overloaded", "groups.max_members: {v}");
    let v = b.ask(json!({"op":"sub","id":2,"topic":"acme/b","group":"h"}));
    assert_eq!(v["code"], "overloaded", "groups.max_per_topic: {v}");
    assert_eq!(server.stats().sum(|s| s.counters.group_joins_refused), 2);
    server.shutdown();
}

#[test]
fn groups_per_shard_are_bounded() {
    let server = server_with(|c| {
        high_rates(c);
        c.groups.max_groups = 1;
    });
    let addr = server.local_addr();
    let on = |shard: usize| -> Vec<String> {
        (0..1000).map(|i| format!("acme/room-{i}")).filter(|t| server.owner_of(t) == shard).take(2).collect()
    };
    let (t1, t2) = (on(0)[0].clone(), on(0)[1].clone());
    let mut a = Client::connect(addr);
    join(&mut a, &t1, "g", json!({}));
    let mut b = Client::connect(addr);
    let v = b.ask(json!({"op":"sub","id":1,"topic":t2,"group":"g"}));
    assert_eq!(v["code"], "overloaded", "groups.max_groups: {v}");
    assert!(v["message"].as_str().unwrap().contains("shard"), "{v}");
    // Joining the group that exists is not a new group.
    join(&mut b, &t1, "g", json!({}));
    // Another shard has its own budget.
    let t3 = on(1)[0].clone();
    join(&mut b, &t3, "g", json!({}));
    assert_eq!(server.stats().sum(|s| s.counters.group_joins_refused), 1);
    server.shutdown();
}

#[test]
fn per_group_metrics_count_handoffs_settles_and_ack_latency() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/metered";
    let mut m = Client::connect(addr);
    join(&mut m, topic, "g", json!({"ack":true,"max_inflight":8,"max_deliver":2}));
    let mut p = Client::connect(addr);
    publish_n(&mut p, topic, 5);
    // 1..=3 done, 4 retry then done, 5 dead.
    let mut settled = 0;
    while settled < 5 {
        let v = m.expect_op("msg");
        let (seq, attempt) = (v["seq"].as_u64().unwrap(), v["attempt"].as_u64().unwrap());
        let outcome = match (seq, attempt) {
            (4, 1) => "retry",
            (5, _) => "dead",
            _ => "done",
        };
        if outcome != "retry" {
            settled += 1;
        }
        std::thread::sleep(Duration::from_millis(3));
        m.send(json!({"op":"settle","topic":topic,"group":"g","seq":seq,"outcome":outcome,"delay_ms":0}));
    }
    m.sync();
    let s = admin_get(&server, "/v1/stats").json();
    let g = s["groups"].as_array().unwrap().iter().find(|g| g["topic"] == topic).expect("the group is listed").clone();
    assert_eq!(g["group"], "g");
    assert_eq!(
        (&g["members"], &g["handoffs"], &g["redeliveries"], &g["done"], &g["dead_lettered"], &g["inflight"]),
        (&json!(1), &json!(6), &json!(1), &json!(4), &json!(1), &json!(0)),
        "{g}"
    );
    assert_eq!(g["ack_latency"]["count"], 4, "{g}");
    assert!(g["ack_latency"]["p50_us"].as_u64().unwrap() >= 2000, "the member took ≥ 3 ms per job: {g}");
    let text = admin_get(&server, "/metrics").body;
    for line in [
        "shardcast_consumer_group_done_total{topic=\"acme/metered\",group=\"g\"} 4",
        "shardcast_consumer_group_dead_lettered_total{topic=\"acme/metered\",group=\"g\"} 1",
        "shardcast_consumer_group_ack_latency_seconds_count{topic=\"acme/metered\",group=\"g\"} 4",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from /metrics");
    }
    assert!(text.contains(
        "shardcast_consumer_group_ack_latency_seconds{topic=\"acme/metered\",group=\"g\",quantile=\"0.99\"}"
    ));
    server.shutdown();
}
