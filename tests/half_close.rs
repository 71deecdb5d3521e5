//! Issue 9, defect 10 (EOF part): a peer that shuts its write side right
//! after sending still gets every answer it is owed — queued ones and ones
//! an owner on another shard has not sent yet. Before the fix the read of
//! EOF ended the connection at once and these answers were dropped.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::*;
use serde_json::{json, Value};

/// An HTTP client that sends two pipelined publishes (one per owner shard)
/// and half-closes gets both answers, then EOF.
#[test]
fn http_answers_survive_a_half_close() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let mut reqs = String::new();
    for shard in 0..2 {
        let topic = topic_owned_by(&server, shard, "eof-http");
        let body = json!({"topic": topic, "data": {"n": shard}}).to_string();
        reqs.push_str(&format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(reqs.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "both answers before EOF: {text}");
        assert_eq!(text.matches("\"seq\":").count(), 2, "{text}");
    }
    wait_stats(&server, "20 peer EOFs counted", |t| t.sum(|s| s.counters.peer_eofs) >= 20);
    server.shutdown();
}

/// A WebSocket client that publishes to a topic owned by the other shard
/// and half-closes still reads its ack (sent once the owner answers).
#[test]
fn websocket_acks_survive_a_half_close() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    for round in 0..20 {
        let mut c = Client::connect(addr);
        let other = 1 - c.shard;
        let topic = topic_owned_by(&server, other, "eof-ws");
        for i in 0..3 {
            c.send(json!({"op": "pub", "id": i + 1, "topic": topic, "data": {"round": round, "i": i}}));
        }
        c.ws.flush().unwrap();
        c.ws.get_mut().shutdown(Shutdown::Write).unwrap();
        let mut acks = Vec::new();
        while acks.len() < 3 {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["op"], "ack", "{v}");
                    acks.push(v["id"].as_u64().unwrap());
                }
                Ok(_) => {}
                Err(e) => panic!("round {round}: connection ended after {} of 3 acks: {e}", acks.len()),
            }
        }
        assert_eq!(acks, vec![1, 2, 3]);
    }
    server.shutdown();
}
