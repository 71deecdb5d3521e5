//! Idempotent publish and rate limits, over real sockets with two shards.

mod common;

use std::collections::HashMap;
use std::thread;

use common::*;
use serde_json::json;

/// A repeated `msg_id` (same connection) is acked with the original seq and
/// `dup: true`, and delivered once.
#[test]
fn duplicate_msg_id_on_one_connection() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "dedupe1");
    let mut sub = Client::connect_to_shard(addr, 0);
    sub.sub(&topic);
    let mut p = Client::connect_to_shard(addr, 0);
    let mut acks = Vec::new();
    for attempt in 0..3 {
        p.send(json!({"op":"pub","id":attempt,"topic":topic,"data":{"try":attempt},"msg_id":"gen-77:3"}));
        acks.push(p.expect_op("ack"));
    }
    assert_eq!(
        acks.iter().map(|a| (a["seq"].as_u64(), a["dup"].as_bool())).collect::<Vec<_>>(),
        vec![(Some(1), Some(false)), (Some(1), Some(true)), (Some(1), Some(true))]
    );
    p.publish(&topic, json!("other"));
    let m = sub.expect_op("msg");
    assert_eq!(
        (m["seq"].as_u64(), m["msg_id"].as_str(), m["data"]["try"].as_u64()),
        (Some(1), Some("gen-77:3"), Some(0))
    );
    assert_eq!(sub.expect_op("msg")["seq"], 2, "the duplicates were not delivered");
    assert_eq!(server.stats().sum(|s| s.counters.dedupe_hits), 2);
    server.shutdown();
}

/// Four connections on both shards race the same 200 msg_ids: each id is
/// sequenced once (exactly one `dup: false` ack, all acks agree on its
/// seq) and delivered once.
#[test]
fn racing_duplicates_from_many_connections() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "dedupe-race");
    let mut sub = Client::connect_to_shard(addr, 1);
    sub.sub(&topic);
    let racers: Vec<_> = (0..4)
        .map(|r| {
            let topic = topic.clone();
            thread::spawn(move || {
                let mut c = Client::connect_to_shard(addr, r % 2);
                for i in 0..200 {
                    c.send(json!({"op":"pub","topic":topic,"data":{"r":r},"msg_id":format!("job-{i}")}));
                }
                (0..200).map(|_| c.expect_op("ack")).collect::<Vec<_>>()
            })
        })
        .collect();
    let acks: Vec<_> = racers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(acks.len(), 800);
    let mut firsts = 0;
    let mut seq_of: HashMap<u64, u64> = HashMap::new();
    for a in &acks {
        let seq = a["seq"].as_u64().unwrap();
        if a["dup"] == false {
            firsts += 1;
        }
        *seq_of.entry(seq).or_default() += 1;
    }
    assert_eq!(firsts, 200, "one original per msg_id");
    assert_eq!(seq_of.len(), 200, "200 distinct seqs, each acked 4 times");
    assert!(seq_of.values().all(|&n| n == 4));
    let mut ids = HashMap::new();
    for want in 1..=200 {
        let m = sub.expect_op("msg");
        assert_eq!(m["seq"], want);
        assert!(ids.insert(m["msg_id"].as_str().unwrap().to_string(), ()).is_none(), "delivered once");
    }
    sub.sync();
    assert_eq!(server.stats().sum(|s| s.counters.dedupe_hits), 600);
    server.shutdown();
}

/// One tenant far over its rate is refused with `rate_limited` and a
/// `retry_after_ms`, while another tenant on the same shards keeps flowing.
#[test]
fn noisy_tenant_is_limited_and_others_flow() {
    let server = server_with(|c| {
        high_rates(c);
        c.rates.tenant_per_sec = 200.0;
        c.rates.tenant_burst = 40.0;
    });
    let addr = server.local_addr();
    let mut noisy: Vec<Client> = (0..2).map(|s| Client::connect_to_shard(addr, s)).collect();
    let mut quiet: Vec<Client> = (0..2).map(|s| Client::connect_to_shard(addr, s)).collect();
    let (mut limited, mut ok) = (0, 0);
    for round in 0..300 {
        for c in &mut noisy {
            c.send(json!({"op":"pub","id":round,"topic":"noisy/room-1","data":round}));
        }
    }
    for c in &mut noisy {
        for _ in 0..300 {
            let v = c.recv();
            match v["op"].as_str() {
                Some("ack") => ok += 1,
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1), "{v}");
                    limited += 1;
                }
                _ => panic!("unexpected {v}"),
            }
        }
    }
    assert!(limited > 400, "most of the flood refused: {limited} refused, {ok} accepted");
    assert!(ok >= 40, "the burst got through: {ok}");
    // The quiet tenant, on both shards, is untouched.
    for (i, c) in quiet.iter_mut().enumerate() {
        for n in 0..10 {
            let a = c.publish(&format!("quiet/room-{i}"), json!(n));
            assert_eq!(a["op"], "ack");
        }
    }
    let stats = server.stats();
    let tenant = stats.shards.iter().map(|s| s.counters.rate_limited.get("tenant").copied().unwrap_or(0)).sum::<u64>();
    assert_eq!(tenant, limited, "every refusal counted by scope");
    server.shutdown();
}

#[test]
fn connection_rate_limit() {
    let server = server_with(|c| {
        c.rates.connection_per_sec = 50.0;
        c.rates.connection_burst = 5.0;
    });
    let mut c = Client::connect(server.local_addr());
    for i in 0..20 {
        c.send(json!({"op":"pub","id":i,"topic":"acme/r","data":i}));
    }
    let replies: Vec<_> = (0..20).map(|_| c.recv()).collect();
    let acked = replies.iter().filter(|v| v["op"] == "ack").count();
    assert!((5..=7).contains(&acked), "burst of 5 (plus what refilled): {acked}");
    assert!(replies.iter().any(|v| v["code"] == "rate_limited"));
    server.shutdown();
}
