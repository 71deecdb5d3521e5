//! HTTP strictness on the public listener (issue 9, defects 3, 4, 6, 7),
//! over real sockets against a 2-shard server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Defect 4: `Content-Length` + `Transfer-Encoding: chunked` was served by
/// Content-Length, so a request hidden in the chunked body was executed
/// and a subscriber received it. Now: 400, close, nothing published.
#[test]
fn smuggled_request_is_refused_and_never_executed() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "smuggle");
    let mut sub = Client::connect(addr);
    sub.sub(&topic);
    let hidden_body = format!(r#"{{"topic":"{topic}","data":"smuggled"}}"#);
    let hidden = format!(
        "POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{hidden_body}",
        hidden_body.len()
    );
    let chunked = format!("0\r\n\r\n{hidden}");
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n{chunked}"
    );
    let resp = String::from_utf8_lossy(&raw_exchange(addr, req.as_bytes())).to_string();
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "exactly one answer, then close: {resp}");
    for bad in ["Content-Length: 3\r\nContent-Length: 4", "Content-Length: +3"] {
        let req = format!("POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\n{bad}\r\n\r\n{{}}x");
        let resp = String::from_utf8_lossy(&raw_exchange(addr, req.as_bytes())).to_string();
        assert!(resp.starts_with("HTTP/1.1 400 "), "{bad}: {resp}");
    }
    // Nothing was published: the next publish is seq 1 and the subscriber's
    // first msg is it.
    let mut p = Client::connect(addr);
    let ack = p.publish(&topic, json!("real"));
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(sub.expect_op("msg")["data"], "real");
    server.shutdown();
}

/// Defect 7 over a socket: a bad key gets 400 and a wrong version 426 that
/// names version 13.
#[test]
fn upgrade_with_a_bad_key_or_version_is_refused() {
    let server = server();
    let addr = server.local_addr();
    let up = |key: &str, version: &str| {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        );
        String::from_utf8_lossy(&raw_exchange(addr, req.as_bytes())).to_string()
    };
    assert!(up("", "13").starts_with("HTTP/1.1 400 "));
    assert!(up("%%%%", "13").starts_with("HTTP/1.1 400 "));
    let v = up("dGhlIHNhbXBsZSBub25jZQ==", "8");
    assert!(v.starts_with("HTTP/1.1 426 ") && v.contains("Sec-WebSocket-Version: 13\r\n"), "{v}");
    assert!(up("dGhlIHNhbXBsZSBub25jZQ==", "13").starts_with("HTTP/1.1 101 "));
    server.shutdown();
}

/// Defect 6: a slow body on the second request of a keep-alive connection
/// was never cut off. Now every request has the whole-request deadline.
#[test]
fn slow_second_request_is_cut_off() {
    let server = server_with(|c| {
        high_rates(c);
        c.limits.handshake_timeout_ms = 300;
    });
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 0, "slowbody");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = format!(r#"{{"topic":"{topic}","data":1}}"#);
    let first = format!(
        "POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(first.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 "));
    // The second request's head arrives, its body never completes.
    s.write_all(b"POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to")
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the server never cut the slow request off: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(8), "within the deadline plus one sweep");
    server.shutdown();
}

/// Defect 3: pipelined requests were buffered without bound while one was
/// in flight (32 MiB sent → RSS +68–94 MiB). Now the connection stops
/// reading while busy: what the server holds for it stays within about one
/// request, however much the client pipelines.
#[test]
fn pipelined_input_is_bounded_while_busy() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = topic_owned_by(&server, 1, "pipe");
    let body = format!(r#"{{"topic":"{topic}","data":"{}"}}"#, "x".repeat(16_000));
    let one = format!(
        "POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let blob = one.repeat(64);
    let (mut written, mut max_held) = (0usize, 0u64);
    let t0 = Instant::now();
    while written < 32 << 20 && t0.elapsed() < Duration::from_secs(10) {
        match s.write(blob.as_bytes()) {
            Ok(n) => written += n,
            Err(_) => break,
        }
        max_held = max_held.max(server.stats().sum(|s| s.inbound_bytes));
    }
    std::thread::sleep(Duration::from_millis(200));
    max_held = max_held.max(server.stats().sum(|s| s.inbound_bytes));
    eprintln!("pipelined {written} bytes; the server held at most {max_held} bytes of input");
    // One request's bound (64 KiB body + 8 KiB head) plus one read chunk.
    let bound = (64 + 8 + 64) << 10;
    assert!(max_held <= bound, "inbound buffered {max_held} bytes");
    server.shutdown();
}
