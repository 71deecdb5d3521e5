//! Encode-once fanout and exact interest bookkeeping through churn.

mod common;

use std::thread;

use common::*;
use serde_json::json;

/// Two subscribers on different shards receive byte-identical `msg` frames,
/// and the engine encoded one frame per publish, not one per subscriber.
#[test]
fn msg_frames_are_encoded_once_and_identical_everywhere() {
    let server = server();
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "encode");
    let mut a = Client::connect_to_shard(addr, 0);
    let mut b = Client::connect_to_shard(addr, 1);
    let mut extra: Vec<Client> = (0..6).map(|i| Client::connect_to_shard(addr, i % 2)).collect();
    a.sub(&topic);
    b.sub(&topic);
    for c in &mut extra {
        c.sub(&topic);
    }
    let mut p = Client::connect(addr);
    let before = server.stats().sum(|s| s.counters.frames_encoded);
    for i in 0..20 {
        p.send(json!({"op":"pub","topic":topic,"data":{"i":i,"x":2.5e-3,"s":"ü\"\\n"},"msg_id":format!("m-{i}")}));
    }
    for _ in 0..20 {
        p.expect_op("ack");
    }
    for _ in 0..20 {
        let (fa, fb) = (a.recv_text(), b.recv_text());
        assert_eq!(fa.as_bytes(), fb.as_bytes(), "same bytes on both shards");
        for c in &mut extra {
            assert_eq!(c.recv_text(), fa);
        }
    }
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.counters.frames_encoded) - before, 20, "one encode per publish");
    assert_eq!(stats.sum(|s| s.counters.deliveries), 20 * 8, "eight deliveries per publish");
    server.shutdown();
}

/// 10,000 connect → subscribe → disconnect cycles (over both shards and
/// many topics, from 8 threads): afterwards no connection, subscription,
/// local topic or owner interest count is left behind.
#[test]
fn interest_sets_stay_exact_through_10000_cycles() {
    let server = server();
    let addr = server.local_addr();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            thread::spawn(move || {
                for i in 0..1250 {
                    let mut c = Client::connect(addr);
                    let n = w * 1250 + i;
                    c.sub(&format!("tenant{}/room{}", n % 13, n % 97));
                    if n % 3 == 0 {
                        c.sub(&format!("tenant{}/room{}/extra", n % 13, n % 97));
                    }
                    if n % 5 == 0 {
                        // Leave with a subscribe still in flight.
                        c.send(json!({"op":"sub","topic":format!("tenant{}/inflight{}", n % 11, n % 89)}));
                    }
                    // Drop without a close handshake half the time.
                    if n % 2 == 0 {
                        let _ = c.ws.close(None);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let t = wait_stats(&server, "everything released", |t| {
        t.sum(|s| s.connections_open) == 0
            && t.sum(|s| s.subscriptions) == 0
            && t.sum(|s| s.owned_interest) == 0
            && t.sum(|s| s.local_topics) == 0
    });
    assert_eq!(t.sum(|s| s.counters.connections_opened), 10_000);
    assert_eq!(t.sum(|s| s.counters.connections_closed), 10_000);
    assert!(t.sum(|s| s.counters.subscribes) >= 13_334);
    assert_eq!(t.sum(|s| s.counters.internal_errors), 0);
    eprintln!("after 10000 cycles: {}", summary(&t));
    server.shutdown();
}

/// Issue 9 defect 11: a second server on a taken address started (SO_REUSEPORT
/// across processes) and the kernel split clients between two engines. Now
/// it fails at start, naming the listener; a taken admin port names the
/// admin listener.
#[test]
fn a_taken_address_fails_start_naming_the_listener() {
    let first = common::server();
    let addr = first.local_addr();
    let admin = first.admin_addr().expect("admin runs");
    let second = shardcast::Config::from_toml(&format!(
        "[server]\nlisten = \"{addr}\"\n[shards]\ncpus = [0, 1]\n[admin]\nenabled = false\n"
    ))
    .map(shardcast::start)
    .expect("config");
    let e = second.err().expect("the second start must fail").to_string();
    assert!(e.contains("public listener") && e.contains(&addr.to_string()), "{e}");
    let third = shardcast::Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = \"{admin}\"\n"
    ))
    .map(shardcast::start)
    .expect("config");
    let e = third.err().expect("a taken admin port must fail").to_string();
    assert!(e.contains("admin listener") && e.contains("--no-admin"), "{e}");
    // The first server is untouched.
    let mut c = common::Client::connect(addr);
    c.sub("acme/still-here");
    first.shutdown();
}
