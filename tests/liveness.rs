//! Liveness limits over real sockets: unanswered pings, slowloris
//! handshakes, and the per-shard connection limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn quick_pings(c: &mut shardcast::Config) {
    c.liveness.ping_interval_ms = 200;
    c.liveness.ping_timeout_ms = 300;
}

/// A raw client that upgrades and then never reads or answers: it gets a
/// ping, then close 1001. A real client (which answers pings) stays.
#[test]
fn unanswered_pings_close_1001_and_answered_ones_keep_the_connection() {
    let server = server_with(quick_pings);
    let addr = server.local_addr();
    let mut alive = Client::connect(addr);
    alive.sub("acme/alive");
    // A well-behaved but silent client: it sends nothing and only keeps
    // reading, so tungstenite answers the server's pings with pongs, for
    // well past interval + timeout.
    let alive = std::thread::spawn(move || {
        alive.ws.get_mut().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (start, mut pings) = (Instant::now(), 0);
        while start.elapsed() < Duration::from_millis(1800) {
            match alive.ws.read() {
                Ok(tungstenite::Message::Ping(p)) => {
                    assert_eq!(&p[..], b"sc");
                    pings += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("closed: {e}"),
            }
        }
        alive.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        (alive, pings)
    });

    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let body = &got[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(&body[..4], &[0x89, 2, b's', b'c'], "a ping first");
    assert_eq!(&body[4..8], &[0x88, 14, 0x03, 0xe9], "then close 1001");
    assert!(start.elapsed() < Duration::from_secs(3));

    let (mut alive, pings) = alive.join().expect("the reading client was never closed");
    assert!(pings >= 2, "it was pinged while silent: {pings}");
    alive.sync();
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.counters.ping_timeouts), 1);
    assert!(stats.sum(|s| s.counters.pings_sent) >= 2);
    server.shutdown();
}

/// A client that trickles an upgrade that never completes is answered 408
/// and closed at the handshake deadline.
#[test]
fn slowloris_gets_408() {
    let server = server_with(|c| c.limits.handshake_timeout_ms = 300);
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(50));
        let _ = s.write_all(b"X-Slow: 1\r\n");
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(start.elapsed() >= Duration::from_millis(250) && start.elapsed() < Duration::from_secs(3));
    assert_eq!(server.stats().sum(|s| s.counters.handshake_timeouts), 1);
    // And the server still serves.
    Client::connect(addr).sync();
    server.shutdown();
}

/// Past the per-shard connection limit new connections are refused with an
/// HTTP 503 before any upgrade, and the others are unaffected.
#[test]
fn connection_limit_answers_503() {
    let server = server_with(|c| c.limits.max_connections_per_shard = 3);
    let addr = server.local_addr();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        match &head[9..12] {
            b"101" => held.push(s),
            b"503" => refused += 1,
            other => panic!("unexpected status {}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(held.len(), 6, "3 per shard");
    assert_eq!(refused, 34);
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.counters.connections_refused), 34);
    server.shutdown();
}
