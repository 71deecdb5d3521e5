//! Slow consumers: a subscriber that stops reading loses normal
//! publications (and is told exactly which, with `gap`) or, for critical
//! ones, is closed with 4000; publishers and the other subscribers never
//! wait for it and lose nothing.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A client whose socket receive buffer is tiny, so the server's queue for
/// it fills quickly once it stops reading.
fn slow_client(addr: SocketAddr, shard: usize) -> Client {
    for _ in 0..500 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, resp) = tungstenite::client::client(format!("ws://{addr}/ws"), stream).unwrap();
        let s: usize = resp.headers()["x-shardcast-shard"].to_str().unwrap().parse().unwrap();
        if s == shard {
            return Client { ws, shard };
        }
    }
    panic!("no connection landed on shard {shard}");
}

fn small_queues(c: &mut shardcast::Config) {
    c.limits.outbound_soft_bytes = 64 * 1024;
    c.limits.outbound_hard_bytes = 256 * 1024;
    c.rates.connection_per_sec = 1e6;
    c.rates.connection_burst = 1e6;
}

const N: u64 = 3000;

/// Subscribers on both shards that read everything as it comes, each on
/// its own thread, checking they get every seq in order.
fn fast_readers(addr: SocketAddr, topic: &str, prio: &'static str) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|s| {
            let mut c = Client::connect_to_shard(addr, s);
            c.sub(topic);
            std::thread::spawn(move || {
                for want in 1..=N {
                    let m = c.expect_op("msg");
                    assert_eq!(m["seq"], want, "fast subscribers lose nothing");
                    assert_eq!(m["prio"], prio);
                }
            })
        })
        .collect()
}

/// Publishes N ~1 KB publications at about 2,500/s: a pace any reading
/// subscriber keeps up with, and far more than a stalled one can hold.
fn publish_all(p: &mut Client, topic: &str, prio: &str) {
    let pad = "x".repeat(1000);
    for batch in 0..N / 50 {
        for i in 1..=50 {
            let n = batch * 50 + i;
            p.send(json!({"op":"pub","topic":topic,"prio":prio,"data":{"n":n,"pad":pad}}));
        }
        for _ in 0..50 {
            p.expect_op("ack");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_subscriber_gets_gaps_and_nobody_else_notices() {
    let server = server_with(small_queues);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "slow-normal");
    let mut slow = slow_client(addr, 1);
    slow.sub(&topic);
    let fast = fast_readers(addr, &topic, "normal");
    let mut p = Client::connect(addr);
    // The slow subscriber reads nothing while all of this is published and
    // acked: the publisher never waits for it.
    publish_all(&mut p, &topic, "normal");
    for f in fast {
        f.join().unwrap();
    }
    // Now the slow one reads: every seq is either delivered, in order, or
    // covered by a gap notice; nothing vanishes silently.
    let mut covered = vec![false; N as usize + 1];
    let (mut last, mut gaps) = (0u64, 0);
    while !covered[1..].iter().all(|&c| c) {
        let v = slow.recv();
        match v["op"].as_str() {
            Some("msg") => {
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > last, "in order: {seq} after {last}");
                last = seq;
                covered[seq as usize] = true;
            }
            Some("gap") => {
                gaps += 1;
                for s in v["from"].as_u64().unwrap()..=v["to"].as_u64().unwrap() {
                    assert!(!covered[s as usize], "a gap never covers a delivered seq");
                    covered[s as usize] = true;
                }
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(gaps >= 1, "the slow subscriber was told what it lost");
    let stats = server.stats();
    assert!(stats.sum(|s| s.counters.dropped_slow) > 0);
    assert_eq!(stats.sum(|s| s.counters.slow_consumer_closes), 0);
    server.shutdown();
}

#[test]
fn slow_subscriber_of_critical_publications_is_closed_4000() {
    let server = server_with(small_queues);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "slow-critical");
    let mut slow = slow_client(addr, 0);
    slow.sub(&topic);
    let fast = fast_readers(addr, &topic, "critical");
    let mut p = Client::connect(addr);
    publish_all(&mut p, &topic, "critical");
    for f in fast {
        f.join().unwrap();
    }
    // Critical frames are never dropped: the slow one is closed instead,
    // after an in-order prefix.
    let mut last = 0;
    let code = loop {
        match slow.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["op"], "msg", "no gap for critical publications: {v}");
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
            }
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => continue,
            Err(e) => panic!("ended without a close frame after seq {last}: {e}"),
        }
    };
    assert_eq!(code, 4000);
    assert!(last < N, "it could not have kept up");
    let stats = wait_stats(&server, "the slow connection gone", |t| t.sum(|s| s.connections_open) == 2);
    assert_eq!(stats.sum(|s| s.counters.slow_consumer_closes), 1);
    std::thread::sleep(Duration::from_millis(10));
    server.shutdown();
}
