//! Publish and fanout over real sockets with two shards: cross-shard
//! delivery, per-topic order under concurrent publishers, many topics,
//! ack ordering, unsubscribe.

mod common;

use std::collections::HashMap;
use std::thread;

use common::*;
use serde_json::json;

/// Every combination of owner shard, subscriber shard and publisher shard,
/// placed deliberately (not left to SO_REUSEPORT luck).
#[test]
fn cross_shard_delivery_in_every_placement() {
    let server = server();
    let addr = server.local_addr();
    for owner in 0..2 {
        for sub_shard in 0..2 {
            for pub_shard in 0..2 {
                let topic = topic_owned_by(&server, owner, &format!("x{owner}{sub_shard}{pub_shard}"));
                let mut sub = Client::connect_to_shard(addr, sub_shard);
                let mut publ = Client::connect_to_shard(addr, pub_shard);
                sub.sub(&topic);
                let ack = publ.publish(&topic, json!({"placement": [owner, sub_shard, pub_shard]}));
                let msg = sub.expect_op("msg");
                assert_eq!(msg["seq"], ack["seq"]);
                assert_eq!(msg["epoch"], ack["epoch"]);
                assert_eq!(msg["data"]["placement"], json!([owner, sub_shard, pub_shard]));
            }
        }
    }
    server.shutdown();
}

/// 4 publishers × 250 publishes, concurrently, to one topic: every
/// subscriber (on both shards) sees seqs 1..=1000 in order, each once, and
/// the acks hand out each seq exactly once.
#[test]
fn per_topic_order_with_concurrent_publishers() {
    let server = server();
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "order");
    let mut subs: Vec<Client> = (0..4).map(|i| Client::connect_to_shard(addr, i % 2)).collect();
    for s in &mut subs {
        s.sub(&topic);
    }
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let topic = topic.clone();
            thread::spawn(move || {
                let mut c = Client::connect_to_shard(addr, p % 2);
                for i in 0..250 {
                    c.send(json!({"op":"pub","id":i,"topic":topic,"data":{"p":p,"i":i}}));
                }
                (0..250).map(|_| c.expect_op("ack")["seq"].as_u64().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = publishers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=1000).collect::<Vec<_>>(), "each seq acked exactly once");
    for s in &mut subs {
        let mut last_i: HashMap<u64, i64> = HashMap::new();
        for want in 1..=1000u64 {
            let m = s.expect_op("msg");
            assert_eq!(m["seq"], want, "in order, no gap, no duplicate");
            // Each publisher's own publications keep their order too.
            let (p, i) = (m["data"]["p"].as_u64().unwrap(), m["data"]["i"].as_i64().unwrap());
            let prev = last_i.insert(p, i).unwrap_or(-1);
            assert!(i > prev, "publisher {p} reordered");
        }
    }
    server.shutdown();
}

/// 200 topics over many tenants spread over both owners; each subscriber
/// gets exactly the publications of its own topic.
#[test]
fn many_topics_across_all_shards() {
    let server = server();
    let addr = server.local_addr();
    let topics: Vec<String> = (0..200).map(|i| format!("tenant{}/room{}/sub{}", i % 17, i, i % 3)).collect();
    let owners: Vec<usize> = topics.iter().map(|t| server.owner_of(t)).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "topics land on both shards");
    let mut sub_a = Client::connect_to_shard(addr, 0);
    let mut sub_b = Client::connect_to_shard(addr, 1);
    for t in &topics {
        sub_a.sub(t);
        sub_b.sub(t);
    }
    let mut publ = Client::connect(addr);
    for (i, t) in topics.iter().enumerate() {
        for _ in 0..3 {
            publ.send(json!({"op":"pub","topic":t,"data":i}));
        }
    }
    for _ in 0..600 {
        publ.expect_op("ack");
    }
    for s in [&mut sub_a, &mut sub_b] {
        let mut per_topic: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..600 {
            let m = s.expect_op("msg");
            let t = m["topic"].as_str().unwrap().to_string();
            let i = topics.iter().position(|x| *x == t).unwrap();
            assert_eq!(m["data"], i, "payload belongs to its topic");
            per_topic.entry(t).or_default().push(m["seq"].as_u64().unwrap());
        }
        assert_eq!(per_topic.len(), 200);
        assert!(per_topic.values().all(|seqs| seqs == &[1, 2, 3]));
    }
    let stats = server.stats();
    assert!(stats.shards.iter().all(|s| s.owned_topics > 0), "both shards own topics");
    server.shutdown();
}

/// The publisher subscribed on its own connection gets the ack before (or
/// with) the delivery of its publication: local owner and remote owner.
#[test]
fn ack_comes_before_delivery() {
    let server = server();
    let addr = server.local_addr();
    for owner in 0..2 {
        let topic = topic_owned_by(&server, owner, "ackorder");
        let mut c = Client::connect_to_shard(addr, 0);
        c.sub(&topic);
        for i in 0..50 {
            c.send(json!({"op":"pub","id":i,"topic":topic,"data":i}));
            let ack = c.expect_op("ack");
            let msg = c.expect_op("msg");
            assert_eq!((ack["id"].as_u64(), ack["seq"].clone()), (Some(i), msg["seq"].clone()));
        }
    }
    server.shutdown();
}

/// After `unsubscribed`, no more `msg` for that topic; other topics go on.
#[test]
fn unsubscribe_stops_delivery() {
    let server = server();
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "unsub");
    let other = topic_owned_by(&server, 0, "unsub-other");
    let mut sub = Client::connect_to_shard(addr, 0);
    let mut publ = Client::connect_to_shard(addr, 1);
    sub.sub(&topic);
    sub.sub(&other);
    publ.publish(&topic, json!("before"));
    assert_eq!(sub.expect_op("msg")["data"], "before");
    sub.send(json!({"op":"unsub","id":11,"topic":topic}));
    let v = sub.expect_op("unsubscribed");
    assert_eq!((v["id"].as_u64(), v["topic"].as_str()), (Some(11), Some(topic.as_str())));
    publ.publish(&topic, json!("after"));
    publ.publish(&other, json!("still"));
    let m = sub.expect_op("msg");
    assert_eq!((m["topic"].as_str(), m["data"].as_str()), (Some(other.as_str()), Some("still")));
    sub.sync();
    // Unsubscribing again is an error, and the connection stays usable.
    sub.send(json!({"op":"unsub","id":12,"topic":topic}));
    let e = sub.expect_op("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("not_subscribed"), Some(12)));
    sub.sync();
    server.shutdown();
}

/// A repeated `sub` is answered again but never doubles deliveries.
#[test]
fn resubscribe_does_not_duplicate() {
    let server = server();
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "dupsub");
    let mut sub = Client::connect_to_shard(addr, 0);
    sub.sub(&topic);
    sub.sub(&topic);
    let mut publ = Client::connect(addr);
    publ.publish(&topic, json!(1));
    publ.publish(&topic, json!(2));
    assert_eq!(sub.expect_op("msg")["seq"], 1);
    assert_eq!(sub.expect_op("msg")["seq"], 2);
    sub.sync();
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.subscriptions), 1);
    assert_eq!(stats.sum(|s| s.owned_interest), 1, "the owner's count was given back");
    server.shutdown();
}
