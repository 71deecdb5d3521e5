//! Delivery receipts (PROTOCOL-EXTENSIONS §6) over real sockets on a
//! 2-shard server: one `receipt` per publish with `receipt: true`, after
//! its ack, once every subscriber of that moment on every shard had the
//! frame written to its socket or dropped for slowness; none without
//! asking; the per-connection bound.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn pub_receipt(p: &mut Client, topic: &str, id: u64, data: Value) {
    p.send(json!({"op":"pub","id":id,"topic":topic,"data":data,"receipt":true}));
}

/// A subscriber with a tiny receive buffer that stops reading after `sub`.
fn stalled(addr: SocketAddr, topic: &str) -> tungstenite::WebSocket<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream).unwrap();
    ws.send(tungstenite::Message::text(json!({"op":"sub","id":1,"topic":topic}).to_string())).unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            assert!(t.contains("subscribed"), "{t}");
            return ws;
        }
    }
}

#[test]
fn a_receipt_counts_every_subscriber_on_every_shard_after_the_ack() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/receipted";
    let mut subs: Vec<Client> = (0..3).map(|i| Client::connect_to_shard(addr, i % 2)).collect();
    for s in &mut subs {
        s.sub(topic);
    }
    let mut p = Client::connect_to_shard(addr, 1);
    pub_receipt(&mut p, topic, 7, json!("hi"));
    let ack = p.recv();
    assert_eq!((&ack["op"], &ack["id"]), (&json!("ack"), &json!(7)), "the ack first: {ack}");
    let r = p.expect_op("receipt");
    assert_eq!((&r["id"], &r["topic"], &r["seq"]), (&json!(7), &json!(topic), &ack["seq"]), "{r}");
    assert_eq!((&r["delivered"], &r["dropped"]), (&json!(3), &json!(0)), "{r}");
    for s in &mut subs {
        assert_eq!(s.expect_op("msg")["data"], "hi");
    }
    // Nobody subscribed: delivered 0 at once.
    pub_receipt(&mut p, "acme/empty", 8, json!(1));
    p.expect_op("ack");
    let r = p.expect_op("receipt");
    assert_eq!((&r["id"], &r["delivered"], &r["dropped"]), (&json!(8), &json!(0), &json!(0)), "{r}");
    // Without `receipt`: none.
    let a = p.publish(topic, json!("plain"));
    assert_eq!(a["op"], "ack");
    p.sync();
    assert_eq!(server.stats().sum(|s| s.counters.receipts_sent), 2);
    server.shutdown();
}

#[test]
fn a_slow_subscriber_counts_dropped_and_a_stalled_one_holds_the_receipt() {
    let server = server_with(|c| {
        high_rates(c);
        c.limits.outbound_soft_bytes = 64 * 1024;
        c.limits.outbound_hard_bytes = 64 << 20;
    });
    let addr = server.local_addr();
    let topic = "acme/slow-receipts";
    let mut fast = Client::connect(addr);
    fast.sub(topic);
    let slow = stalled(addr, topic);
    let mut p = Client::connect(addr);
    // Fill the stalled reader's socket buffers and then its queue past the
    // soft limit, in batches, until a receipt reports a drop.
    let big = "x".repeat(16 * 1024);
    let (mut n, mut acks) = (0u64, 0u64);
    let mut receipts: Vec<Value> = Vec::new();
    while n < 3000 && !receipts.iter().any(|r| r["dropped"] == 1) {
        for _ in 0..50 {
            n += 1;
            pub_receipt(&mut p, topic, n, json!(big));
        }
        while acks < n {
            let v = p.recv();
            match v["op"].as_str() {
                Some("ack") => acks += 1,
                Some("receipt") => receipts.push(v),
                _ => panic!("{v}"),
            }
        }
    }
    // The early receipts wait for the stalled reader's queued frames: they
    // come once it goes (its queue is dropped).
    drop(slow);
    while receipts.len() < n as usize {
        let v = p.expect_op("receipt");
        receipts.push(v);
    }
    assert!(receipts.iter().any(|r| r["dropped"] == 1 && r["delivered"] == 1), "drops were counted");
    for r in &receipts {
        assert_eq!(
            r["delivered"].as_u64().unwrap() + r["dropped"].as_u64().unwrap(),
            2,
            "two subscribers at that moment: {r}"
        );
    }
    let mut ids: Vec<u64> = receipts.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "one receipt per publish");
    drop(fast);
    server.shutdown();
}

#[test]
fn outstanding_receipts_per_connection_are_bounded() {
    let server = server_with(|c| {
        high_rates(c);
        c.limits.max_receipts_per_connection = 1;
        c.limits.outbound_soft_bytes = 8 << 20;
        c.limits.outbound_hard_bytes = 64 << 20;
    });
    let addr = server.local_addr();
    let topic = "acme/held";
    let _slow = stalled(addr, topic);
    let mut p = Client::connect(addr);
    // Enough to leave frames queued on the server for the stalled reader.
    let big = "y".repeat(30_000);
    for _ in 0..128 {
        p.publish(topic, json!(big));
    }
    wait_stats(&server, "frames queued for the stalled reader", |t| t.sum(|s| s.outbound_bytes) > 0);
    pub_receipt(&mut p, topic, 1, json!(1));
    assert_eq!(p.expect_op("ack")["id"], 1);
    pub_receipt(&mut p, topic, 2, json!(2));
    let v = p.expect_op("error");
    assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("overloaded"), Some(2)), "{v}");
    assert!(v["retry_after_ms"].as_u64().is_some());
    std::thread::sleep(Duration::from_millis(50));
    server.shutdown();
}
