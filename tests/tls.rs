//! TLS on the public listener (`[tls]`): wss and https through a real
//! rustls client, plaintext refused, the handshake deadline, large frames
//! both ways, and certificate reload (the handle's and the binary's SIGHUP)
//! without dropping open connections.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost`, written to `dir`.
struct Cert {
    der: Vec<u8>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn make_cert(dir: &Path, name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, ck.cert.pem()).unwrap();
    std::fs::write(&key_file, ck.key_pair.serialize_pem()).unwrap();
    Cert { der: ck.cert.der().to_vec(), cert_file, key_file }
}

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shardcast-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A rustls client config that trusts exactly `ders`.
fn client_config(ders: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for d in ders {
        roots.add(CertificateDer::from(d.to_vec())).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_connect(addr: SocketAddr, trust: &Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn = rustls::ClientConnection::new(trust.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

struct Wss {
    ws: WebSocket<TlsStream>,
}

impl Wss {
    fn connect(addr: SocketAddr, trust: &Arc<rustls::ClientConfig>) -> Wss {
        let (ws, _) = tungstenite::client::client("wss://localhost/ws", tls_connect(addr, trust)).expect("wss upgrade");
        Wss { ws }
    }

    /// The certificate the server presented.
    fn server_cert(&self) -> Vec<u8> {
        self.ws.get_ref().conn.peer_certificates().expect("certificates")[0].to_vec()
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn expect_op(&mut self, op: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["op"], op, "expected {op}, got {v}");
        v
    }
}

fn tls_server(cert: &Cert, tweak: impl FnOnce(&mut shardcast::Config)) -> shardcast::ServerHandle {
    server_with(|c| {
        c.tls.cert_file = cert.cert_file.clone();
        c.tls.key_file = cert.key_file.clone();
        high_rates(c);
        tweak(c);
    })
}

fn counter(server: &shardcast::ServerHandle, f: impl Fn(&shardcast::conn::stats::Counters) -> u64) -> u64 {
    server.stats().shards.iter().map(|s| f(&s.counters)).sum()
}

#[test]
fn wss_publish_and_subscribe() {
    let dir = temp_dir("basic");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |_| {});
    let trust = client_config(&[&cert.der]);
    let mut sub = Wss::connect(server.local_addr(), &trust);
    let mut publ = Wss::connect(server.local_addr(), &trust);
    assert_eq!(sub.server_cert(), cert.der);
    sub.send(json!({"op":"sub","id":1,"topic":"t/tls"}));
    sub.expect_op("subscribed");
    for i in 0..500 {
        publ.send(json!({"op":"pub","id":i,"topic":"t/tls","data":{"n":i}}));
    }
    for i in 0..500 {
        assert_eq!(publ.expect_op("ack")["id"], i);
    }
    for i in 0..500u64 {
        let m = sub.expect_op("msg");
        assert_eq!(m["data"]["n"], i);
        assert_eq!(m["seq"], i + 1);
    }
    assert!(counter(&server, |c| c.tls_handshakes) >= 2);
    server.shutdown();
}

#[test]
fn large_frames_cross_many_records_both_ways() {
    let dir = temp_dir("large");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |c| {
        c.limits.max_message_bytes = 1 << 20;
        // 2.4 MB queue at once for a debug-build reader: past the default
        // soft limit a busy machine would (rightly) turn some into a gap.
        c.limits.outbound_soft_bytes = 16 << 20;
        c.limits.outbound_hard_bytes = 64 << 20;
    });
    let trust = client_config(&[&cert.der]);
    let mut sub = Wss::connect(server.local_addr(), &trust);
    let mut publ = Wss::connect(server.local_addr(), &trust);
    sub.send(json!({"op":"sub","id":1,"topic":"t/big"}));
    sub.expect_op("subscribed");
    // 300 KiB strings: each crosses ~19 TLS records and several reads.
    let big: String = (0..300 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for i in 0..8 {
        publ.send(json!({"op":"pub","id":i,"topic":"t/big","data":{"i":i,"s":big}}));
    }
    for i in 0..8 {
        assert_eq!(publ.expect_op("ack")["id"], i);
    }
    for i in 0..8 {
        let m = sub.expect_op("msg");
        assert_eq!(m["data"]["i"], i);
        assert_eq!(m["data"]["s"].as_str().unwrap(), big);
    }
    server.shutdown();
}

#[test]
fn https_publish() {
    let dir = temp_dir("https");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |_| {});
    let trust = client_config(&[&cert.der]);
    let mut sub = Wss::connect(server.local_addr(), &trust);
    sub.send(json!({"op":"sub","id":1,"topic":"t/http"}));
    sub.expect_op("subscribed");
    let mut s = tls_connect(server.local_addr(), &trust);
    let body = json!({"topic":"t/http","data":{"via":"https"}}).to_string();
    write!(
        s,
        "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"seq\"") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(sub.expect_op("msg")["data"]["via"], "https");
    server.shutdown();
}

#[test]
fn plaintext_on_the_tls_listener_is_refused_and_nothing_else_breaks() {
    let dir = temp_dir("plain");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |_| {});
    let trust = client_config(&[&cert.der]);
    let before = counter(&server, |c| c.tls_errors);
    // A plain WebSocket upgrade: not a TLS record.
    let mut plain = TcpStream::connect(server.local_addr()).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("101"), "upgraded without TLS");
    // What came back, if anything, is a TLS alert record (content type 21).
    assert!(buf.is_empty() || buf[0] == 21, "{buf:?}");
    assert!(counter(&server, |c| c.tls_errors) > before);
    // A client that trusts another certificate fails its handshake.
    let other = make_cert(&dir, "other");
    let wrong = client_config(&[&other.der]);
    assert!(tungstenite::client::client("wss://localhost/ws", tls_connect(server.local_addr(), &wrong)).is_err());
    // And TLS clients are served as before.
    let mut c = Wss::connect(server.local_addr(), &trust);
    c.send(json!({"op":"ping","id":3}));
    assert_eq!(c.expect_op("pong")["id"], 3);
    server.shutdown();
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_the_deadline() {
    let dir = temp_dir("slow");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |c| c.limits.handshake_timeout_ms = 300);
    // Half a ClientHello record header, then silence.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[22, 3, 1]).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(5), "closed after {took:?}");
    wait_stats(&server, "a handshake timeout", |t| t.shards.iter().any(|s| s.counters.handshake_timeouts > 0));
    server.shutdown();
}

#[test]
fn reload_swaps_the_certificate_for_new_connections_only() {
    let dir = temp_dir("reload");
    let a = make_cert(&dir, "a");
    let b = make_cert(&dir, "b");
    let live = Cert { der: a.der.clone(), cert_file: dir.join("live.crt"), key_file: dir.join("live.key") };
    std::fs::copy(&a.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&a.key_file, &live.key_file).unwrap();
    let server = tls_server(&live, |_| {});
    let trust = client_config(&[&a.der, &b.der]);
    let mut old = Wss::connect(server.local_addr(), &trust);
    assert_eq!(old.server_cert(), a.der);
    old.send(json!({"op":"sub","id":1,"topic":"t/reload"}));
    old.expect_op("subscribed");

    std::fs::copy(&b.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&b.key_file, &live.key_file).unwrap();
    server.reload_tls().expect("reload");
    wait_stats(&server, "every shard took the new config", |t| t.shards.iter().all(|s| s.counters.tls_reloads == 1));
    let mut new = Wss::connect(server.local_addr(), &trust);
    assert_eq!(new.server_cert(), b.der);
    // The old connection was not dropped: it still gets what the new one publishes.
    new.send(json!({"op":"pub","id":1,"topic":"t/reload","data":"after"}));
    new.expect_op("ack");
    assert_eq!(old.expect_op("msg")["data"], "after");

    // A broken reload keeps the current certificate.
    std::fs::write(&live.key_file, "not a key").unwrap();
    let err = server.reload_tls().unwrap_err();
    assert!(err.contains("tls.key_file"), "{err}");
    let again = Wss::connect(server.local_addr(), &trust);
    assert_eq!(again.server_cert(), b.der);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_binary_without_dropping_connections() {
    let dir = temp_dir("sighup");
    let a = make_cert(&dir, "a");
    let b = make_cert(&dir, "b");
    let crt = dir.join("live.crt");
    let key = dir.join("live.key");
    std::fs::copy(&a.cert_file, &crt).unwrap();
    std::fs::copy(&a.key_file, &key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = dir.join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{addr}\"\n[shards]\ncpus = [0, 1]\n[admin]\nenabled = false\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < WAIT, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let trust = client_config(&[&a.der, &b.der]);
    let mut old = Wss::connect(addr, &trust);
    assert_eq!(old.server_cert(), a.der);
    old.send(json!({"op":"sub","id":1,"topic":"t/hup"}));
    old.expect_op("subscribed");
    std::fs::copy(&b.cert_file, &crt).unwrap();
    std::fs::copy(&b.key_file, &key).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    let mut new = loop {
        let c = Wss::connect(addr, &trust);
        if c.server_cert() == b.der {
            break c;
        }
        assert!(Instant::now() < deadline, "SIGHUP never reloaded the certificate");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped the server");
    new.send(json!({"op":"pub","id":1,"topic":"t/hup","data":"after"}));
    new.expect_op("ack");
    assert_eq!(old.expect_op("msg")["data"], "after");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_config_errors_name_the_field() {
    let err = |t: &str| shardcast::Config::from_toml(t).unwrap_err().to_string();
    assert!(err("[tls]\ncert_file = \"/x.crt\"").contains("both cert_file and key_file"));
    assert!(err("[tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"").contains("tls.cert_file"));
    let dir = temp_dir("cfg");
    let a = make_cert(&dir, "a");
    let b = make_cert(&dir, "b");
    let mismatch = format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"", a.cert_file.display(), b.key_file.display());
    assert!(err(&mismatch).contains("does not fit"), "{}", err(&mismatch));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parked_fanouts_and_pipelined_input_lose_nothing_through_tls() {
    // A fanout budget of 1 parks every fanout, so input read in one TLS
    // read stops mid-buffer again and again (the held-back ciphertext path).
    let dir = temp_dir("parked");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |c| c.limits.fanout_budget = 1);
    let trust = client_config(&[&cert.der]);
    let mut subs: Vec<Wss> = (0..6).map(|_| Wss::connect(server.local_addr(), &trust)).collect();
    for s in subs.iter_mut() {
        s.send(json!({"op":"sub","id":1,"topic":"t/parked"}));
        s.expect_op("subscribed");
    }
    let mut publ = Wss::connect(server.local_addr(), &trust);
    // One write of 400 publishes: many records in few TCP reads.
    for i in 0..400 {
        publ.ws.write(Message::text(json!({"op":"pub","id":i,"topic":"t/parked","data":i}).to_string())).unwrap();
    }
    publ.ws.flush().unwrap();
    for i in 0..400 {
        assert_eq!(publ.expect_op("ack")["id"], i);
    }
    for s in subs.iter_mut() {
        for i in 0..400u64 {
            let m = s.expect_op("msg");
            assert_eq!(m["seq"], i + 1);
        }
    }
    assert!(counter(&server, |c| c.fanout_parked) > 0, "the budget never parked a fanout");
    server.shutdown();
}

#[test]
fn a_stalled_tls_reader_is_bounded_and_closed_while_others_flow() {
    let dir = temp_dir("stalled");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert, |c| {
        c.limits.outbound_soft_bytes = 64 * 1024;
        c.limits.outbound_hard_bytes = 256 * 1024;
    });
    let trust = client_config(&[&cert.der]);
    // A subscriber with a tiny receive buffer that stops reading.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.local_addr().into()).unwrap();
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn = rustls::ClientConnection::new(trust.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let (mut stalled, _) =
        tungstenite::client::client("wss://localhost/ws", rustls::StreamOwned::new(conn, tcp)).unwrap();
    stalled.send(Message::text(json!({"op":"sub","id":1,"topic":"t/stall"}).to_string())).unwrap();
    let mut fast = Wss::connect(server.local_addr(), &trust);
    fast.send(json!({"op":"sub","id":1,"topic":"t/stall"}));
    fast.expect_op("subscribed");
    let mut publ = Wss::connect(server.local_addr(), &trust);
    let pad = "x".repeat(1000);
    for batch in 0..80u64 {
        for i in 0..50u64 {
            let n = batch * 50 + i;
            publ.send(json!({"op":"pub","topic":"t/stall","prio":"critical","data":{"n":n,"pad":pad}}));
        }
        for _ in 0..50 {
            publ.expect_op("ack");
        }
        for i in 0..50u64 {
            assert_eq!(fast.expect_op("msg")["data"]["n"], batch * 50 + i);
        }
    }
    let t = wait_stats(&server, "the stalled TLS reader closed", |t| {
        t.shards.iter().map(|s| s.counters.slow_consumer_closes).sum::<u64>() == 1
    });
    let worst: u64 = t.shards.iter().map(|s| s.outbound_max_bytes).max().unwrap();
    assert!(worst <= 256 * 1024 + 64 * 1024, "a queue grew past the hard bound: {worst}");
    server.shutdown();
}
