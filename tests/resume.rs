//! Replay and resume over real sockets, two shards.

mod common;

use std::net::SocketAddr;
use std::thread;

use common::*;
use serde_json::{json, Value};

/// The seq of a `msg` text without a full JSON parse (the churn test reads
/// a million of them in a debug build).
fn msg_seq(text: &str) -> Option<u64> {
    if !text.starts_with(r#"{"op":"msg""#) {
        return None;
    }
    let at = text.find(r#""seq":"#)? + 6;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn resubscribe(addr: SocketAddr, topic: &str, last: u64, epoch: &str) -> (Client, Value) {
    let mut c = Client::connect(addr);
    c.send(json!({"op":"sub","id":1,"topic":topic,"since":{"seq":last,"epoch":epoch}}));
    let v = c.expect_op("subscribed");
    (c, v)
}

/// 50 subscribers, each dropping its connection at random and resuming with
/// `since`, while one publisher sends 20,000 publications: every subscriber
/// ends with every seq exactly once, in order.
#[test]
fn zero_loss_through_churn() {
    const PUBLISHES: u64 = 20_000;
    const SUBSCRIBERS: u64 = 50;
    let server = server_with(|c| {
        c.rates.connection_per_sec = 1e6;
        c.rates.connection_burst = 1e6;
    });
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "churn");
    let mut first = Client::connect(addr);
    let epoch = first.sub(&topic)["epoch"].as_str().unwrap().to_string();
    drop(first);

    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let (topic, epoch) = (topic.clone(), epoch.clone());
            thread::spawn(move || {
                let mut rng = 0x9e37_79b9_u32 ^ (i as u32 + 1).wrapping_mul(0x85eb_ca6b);
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    rng
                };
                let (mut last, mut reconnects) = (0u64, 0u32);
                let (mut c, v) = resubscribe(addr, &topic, 0, &epoch);
                assert_eq!(v["recovered"], true, "{v}");
                let mut drop_after = 200 + next() % 2000;
                while last < PUBLISHES {
                    let text = c.recv_text();
                    if let Some(seq) = msg_seq(&text) {
                        assert_eq!(seq, last + 1, "subscriber {i}: gap or duplicate after {reconnects} reconnects");
                        last = seq;
                        drop_after -= 1;
                    }
                    if drop_after == 0 && last < PUBLISHES {
                        // Vanish without a close handshake, come back with since.
                        drop(c);
                        reconnects += 1;
                        let (c2, v) = resubscribe(addr, &topic, last, &epoch);
                        assert_eq!(v["recovered"], true, "subscriber {i} could not resume: {v}");
                        c = c2;
                        drop_after = 200 + next() % 2000;
                    }
                }
                reconnects
            })
        })
        .collect();

    let mut publ = Client::connect(addr);
    let mut acked = 0;
    for n in 1..=PUBLISHES {
        publ.send(json!({"op":"pub","topic":topic,"data":{"n":n}}));
        // Closed loop, 64 in flight: fast, but within the replay window.
        if n > 64 {
            publ.expect_op("ack");
            acked += 1;
        }
    }
    while acked < PUBLISHES {
        publ.expect_op("ack");
        acked += 1;
    }
    let reconnects: u32 = subs.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(reconnects >= 200, "the churn really happened: {reconnects} reconnects");
    let stats = server.stats();
    assert!(stats.sum(|s| s.counters.replay_hits) >= u64::from(reconnects));
    eprintln!(
        "zero loss through churn: {SUBSCRIBERS} subscribers x {PUBLISHES} seqs, {reconnects} reconnects, replayed {}",
        stats.sum(|s| s.counters.replayed)
    );
    server.shutdown();
}

#[test]
fn resume_outside_the_window_reports_expired() {
    let server = server_with(|c| c.replay.max_count = 10);
    let addr = server.local_addr();
    let topic = "acme/expiry";
    let mut s = Client::connect(addr);
    let epoch = s.sub(topic)["epoch"].as_str().unwrap().to_string();
    let mut p = Client::connect(addr);
    for i in 0..5 {
        p.publish(topic, json!(i));
    }
    for _ in 0..5 {
        s.expect_op("msg");
    }
    drop(s);
    // Inside the window: exactly the missed run.
    for i in 5..8 {
        p.publish(topic, json!(i));
    }
    let (mut s, v) = resubscribe(addr, topic, 5, &epoch);
    assert_eq!((v["recovered"].as_bool(), v["replayed"].as_u64(), v["seq"].as_u64()), (Some(true), Some(3), Some(8)));
    for want in 6..=8 {
        assert_eq!(s.expect_op("msg")["seq"], want);
    }
    // Nothing missed: recovered with nothing to replay.
    let (_, v) = resubscribe(addr, topic, 8, &epoch);
    assert_eq!((v["recovered"].as_bool(), v["replayed"].as_u64()), (Some(true), Some(0)));
    // Outside: more than 10 publications missed.
    for i in 8..40 {
        p.publish(topic, json!(i));
    }
    let (_, v) = resubscribe(addr, topic, 8, &epoch);
    assert_eq!((v["recovered"].as_bool(), v["reason"].as_str()), (Some(false), Some("expired")), "{v}");
    let stats = server.stats();
    assert_eq!(
        stats.shards.iter().map(|s| s.counters.replay_misses.get("expired").copied().unwrap_or(0)).sum::<u64>(),
        1
    );
    server.shutdown();
}

/// After a restart the engine cannot vouch for earlier seqs: the epoch
/// changes and a resume says so instead of replaying the wrong stream.
#[test]
fn resume_across_a_restart_reports_epoch_mismatch() {
    let topic = "acme/restart";
    let first = server();
    let mut s = Client::connect(first.local_addr());
    s.sub(topic);
    let ack = Client::connect(first.local_addr()).publish(topic, json!("before"));
    let old_epoch = ack["epoch"].as_str().unwrap().to_string();
    first.shutdown();

    let server = server();
    let addr = server.local_addr();
    Client::connect(addr).publish(topic, json!("after restart"));
    let (mut c, v) = resubscribe(addr, topic, 1, &old_epoch);
    assert_eq!((v["recovered"].as_bool(), v["reason"].as_str()), (Some(false), Some("epoch_mismatch")), "{v}");
    assert_ne!(v["epoch"].as_str(), Some(old_epoch.as_str()));
    // Live delivery still works on the new epoch, and nothing was replayed.
    Client::connect(addr).publish(topic, json!("live"));
    let m = c.expect_op("msg");
    assert_eq!((m["seq"].as_u64(), m["data"].as_str()), (Some(2), Some("live")));
    // A seq this epoch never reached is refused the same way.
    let epoch = v["epoch"].as_str().unwrap();
    let (_, v) = resubscribe(addr, topic, 99, epoch);
    assert_eq!(v["reason"], "epoch_mismatch");
    server.shutdown();
}

/// `sub` with `since` on a topic the connection already has re-syncs: the
/// requested run is replayed in order and the live stream continues without
/// duplicates.
#[test]
fn resubscribe_with_since_resyncs_in_place() {
    let server = server();
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "resync");
    let mut s = Client::connect_to_shard(addr, 1);
    let epoch = s.sub(&topic)["epoch"].as_str().unwrap().to_string();
    let mut p = Client::connect(addr);
    for i in 1..=10 {
        p.publish(&topic, json!(i));
    }
    for want in 1..=10 {
        assert_eq!(s.expect_op("msg")["seq"], want);
    }
    s.send(json!({"op":"sub","id":5,"topic":topic,"since":{"seq":6,"epoch":epoch}}));
    let v = s.expect_op("subscribed");
    assert_eq!((v["recovered"].as_bool(), v["replayed"].as_u64()), (Some(true), Some(4)), "{v}");
    for want in 7..=10 {
        assert_eq!(s.expect_op("msg")["seq"], want);
    }
    p.publish(&topic, json!(11));
    assert_eq!(s.expect_op("msg")["seq"], 11);
    s.sync();
    let stats = server.stats();
    assert_eq!((stats.sum(|s| s.subscriptions), stats.sum(|s| s.owned_interest)), (1, 1));
    server.shutdown();
}
