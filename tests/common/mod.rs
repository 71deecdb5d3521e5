//! Test harness: a real server on loopback (2 shards, port 0) and real
//! WebSocket clients (tungstenite over std TCP), plus raw-socket helpers for
//! byte streams no well-behaved client would send.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardcast::{Config, ServerHandle};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A 2-shard server on 127.0.0.1 with a free port; `tweak` edits the config.
pub fn server_with(tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg =
        Config::from_toml("[server]\nlisten = \"127.0.0.1:0\"\n[shards]\ncpus = [0, 1]\nring_capacity = 4096\n[admin]\nlisten = \"127.0.0.1:0\"\n")
            .expect("test config");
    tweak(&mut cfg);
    shardcast::start(cfg).expect("server starts")
}

/// A 2-shard server with the test defaults.
pub fn server() -> ServerHandle {
    server_with(|_| {})
}

/// A WebSocket client that knows which shard it landed on.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub shard: usize,
}

impl Client {
    /// Connects and upgrades at /ws.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, resp) = tungstenite::client::client(format!("ws://{addr}/ws"), stream).expect("upgrade");
        let shard = resp
            .headers()
            .get("x-shardcast-shard")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("X-Shardcast-Shard header");
        Client { ws, shard }
    }

    /// Connects until the kernel's SO_REUSEPORT spreading lands the
    /// connection on `shard` (bounded: fails the test after 500 tries).
    pub fn connect_to_shard(addr: SocketAddr, shard: usize) -> Client {
        for _ in 0..500 {
            let c = Client::connect(addr);
            if c.shard == shard {
                return c;
            }
        }
        panic!("could not land a connection on shard {shard}");
    }

    /// Sends one JSON command.
    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// Next text message as JSON (pings are answered by tungstenite).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Next text message, raw.
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Next message whose op is `op`; fails on any other op in between.
    pub fn expect_op(&mut self, op: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["op"], op, "expected {op}, got {v}");
        v
    }

    /// Subscribes and waits for `subscribed`.
    pub fn sub(&mut self, topic: &str) -> Value {
        self.send(json!({"op":"sub","id":1,"topic":topic}));
        let v = self.expect_op("subscribed");
        assert_eq!(v["topic"], topic);
        v
    }

    /// Publishes and waits for the ack (the connection must not be
    /// subscribed to the topic, or the msg may come first... it never does:
    /// see the ack-order test).
    pub fn publish(&mut self, topic: &str, data: Value) -> Value {
        self.send(json!({"op":"pub","id":7,"topic":topic,"data":data}));
        self.expect_op("ack")
    }

    /// Publishes and returns the answer, `ack` or `error`.
    pub fn publish_or_error(&mut self, topic: &str, data: Value) -> Value {
        self.ask(json!({"op":"pub","id":7,"topic":topic,"data":data}))
    }

    /// Sends one command and returns the first reply that is not a `msg`.
    pub fn ask(&mut self, cmd: Value) -> Value {
        self.send(cmd);
        loop {
            let v = self.recv();
            if v["op"] != "msg" {
                return v;
            }
        }
    }

    /// Every text message that arrives until none has for `quiet`.
    #[allow(dead_code)]
    pub fn quiet(&mut self, quiet: Duration) -> Vec<Value> {
        self.ws.get_ref().set_read_timeout(Some(quiet)).unwrap();
        let mut out = Vec::new();
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => out.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        self.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        out
    }

    /// A round trip: everything sent before this has been handled.
    pub fn sync(&mut self) {
        self.send(json!({"op":"ping","id":424242}));
        let v = self.expect_op("pong");
        assert_eq!(v["id"], 424242);
    }

    /// Reads until the close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// Writes raw bytes under the WebSocket (hand-made frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).unwrap();
    }
}

/// A masked client frame with opcode `op`, `fin`, and `payload`.
pub fn client_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    shardcast::proto::frame::write_client_frame(op, fin, payload, [0x37, 0xfa, 0x21, 0x3d], &mut out);
    out
}

/// Lifts the publish rate limits (for tests that publish in bulk).
pub fn high_rates(c: &mut Config) {
    c.rates.connection_per_sec = 1e6;
    c.rates.connection_burst = 1e6;
}

/// Sends raw bytes on a fresh TCP connection and reads until EOF (bounded).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Polls the server's stats until `cond` holds (fails after WAIT).
pub fn wait_stats(
    server: &ServerHandle,
    what: &str,
    cond: impl Fn(&shardcast::conn::stats::Totals) -> bool,
) -> shardcast::conn::stats::Totals {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = server.stats();
        if cond(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "stats never showed {what}: {:#?}", summary(&t));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The headline figures of a stats snapshot, for failure messages.
pub fn summary(t: &shardcast::conn::stats::Totals) -> Value {
    json!({
        "connections_open": t.sum(|s| s.connections_open),
        "subscriptions": t.sum(|s| s.subscriptions),
        "local_topics": t.sum(|s| s.local_topics),
        "owned_interest": t.sum(|s| s.owned_interest),
        "owned_topics": t.sum(|s| s.owned_topics),
        "internal_errors": t.sum(|s| s.counters.internal_errors),
    })
}

/// A topic owned by `shard`.
pub fn topic_owned_by(server: &ServerHandle, shard: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}/room-{i}"))
        .find(|t| server.owner_of(t) == shard)
        .expect("some topic hashes to every shard")
}

/// A minimal HTTP/1.1 client over one keep-alive connection.
pub struct Http {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Http { stream, buf: Vec::new() }
    }

    /// Writes a request without waiting (for pipelining).
    pub fn send(&mut self, method: &str, path: &str, ctype: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
    }

    /// Reads one response (Content-Length framed).
    pub fn read(&mut self) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                if self.buf.len() >= n + len {
                    let status = resp.code.unwrap();
                    let body = String::from_utf8_lossy(&self.buf[n..n + len]).into_owned();
                    self.buf.drain(..n + len);
                    return Response { status, headers, body };
                }
            }
            let mut chunk = [0u8; 16384];
            let k = self.stream.read(&mut chunk).expect("read response");
            assert!(k > 0, "connection closed before a full response");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }

    pub fn request(&mut self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Response {
        self.send(method, path, ctype, body);
        self.read()
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> Response {
        self.request("POST", path, "application/json", body.to_string().as_bytes())
    }
}

/// GET on the admin listener.
pub fn admin_get(server: &ServerHandle, path: &str) -> Response {
    Http::connect(server.admin_addr().expect("admin listener")).request("GET", path, "text/plain", b"")
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}
