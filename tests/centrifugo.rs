//! The Centrifugo-compatible endpoint (issue 14, PROTOCOL-EXTENSIONS §7)
//! over real sockets, byte for byte as the SDKs speak it: connect, tokens
//! and caps, subscribe with recovery (exact, racing live publications,
//! failed, flag 2 → 112), publish, presence, join/leave, rpc, the server
//! API, mixed fanout with native `/ws` subscribers, and the close codes the
//! SDKs act on (3010 slow → recover, 3001 drain, 3005 expiry, 3500, 3501,
//! 3502). The unmodified SDKs themselves run in `tests/centrifugo/`.

mod common;

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const SECRET: &str = "hs256-test-secret-not-for-production";
const KEY: &str = "api-key-for-tests";

/// A Centrifugo JSON-protocol client (what centrifuge-js sends, by hand).
struct Cf {
    ws: WebSocket<TcpStream>,
    next: u32,
    pushes: VecDeque<Value>,
    shard: usize,
}

impl Cf {
    fn open(addr: SocketAddr) -> Cf {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, resp) =
            tungstenite::client::client(format!("ws://{addr}/connection/websocket"), stream).expect("upgrade");
        let shard = resp.headers().get("x-shardcast-shard").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        Cf { ws, next: 0, pushes: VecDeque::new(), shard }
    }

    /// Opens and connects; returns the client and the connect result.
    fn connect(addr: SocketAddr, token: Option<&str>) -> (Cf, Value) {
        let mut c = Cf::open(addr);
        let body = match token {
            Some(t) => json!({"token": t, "name": "test"}),
            None => json!({"name": "test"}),
        };
        let r = c.call("connect", body);
        assert!(r.get("error").is_none(), "connect refused: {r}");
        (c, r["connect"].clone())
    }

    fn send_line(&mut self, line: &str) {
        self.ws.send(Message::text(line.to_owned())).expect("send");
    }

    /// Next message from the server (every line of a frame), as JSON.
    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => {
                    let mut lines = t.as_str().split('\n').filter(|l| !l.is_empty());
                    let first = lines.next().expect("a line");
                    assert!(lines.next().is_none(), "one message per frame: {t}");
                    return serde_json::from_str(first).expect("JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends `{"id":N, method: body}`; returns the reply with that id
    /// (pushes that arrive first are kept for `push`).
    fn call(&mut self, method: &str, body: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send_line(&json!({"id": id, method: body}).to_string());
        loop {
            let v = self.read();
            if v["id"] == id {
                return v;
            }
            assert!(v.get("push").is_some() || v == json!({}), "unexpected reply {v}");
            if v.get("push").is_some() {
                self.pushes.push_back(v["push"].clone());
            }
        }
    }

    /// The next push (a ping `{}` is answered and skipped).
    fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let v = self.read();
            if v == json!({}) {
                self.send_line("{}");
                continue;
            }
            return v["push"].clone();
        }
    }

    /// The next `pub` push: (channel, offset, data).
    fn next_pub(&mut self) -> (String, u64, Value) {
        let p = self.push();
        assert!(p.get("pub").is_some(), "expected a pub push, got {p}");
        (p["channel"].as_str().unwrap().to_owned(), p["pub"]["offset"].as_u64().unwrap(), p["pub"]["data"].clone())
    }

    fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }
}

/// Publishes `data(i)` for each `i` in `range` from a native client,
/// pipelined in windows of 50, every ack read.
fn pump(p: &mut Client, topic: &str, range: std::ops::RangeInclusive<u64>, data: impl Fn(u64) -> Value) {
    let v: Vec<u64> = range.collect();
    for w in v.chunks(50) {
        for &i in w {
            p.send(json!({"op": "pub", "id": i, "topic": topic, "data": data(i)}));
        }
        for _ in w {
            p.expect_op("ack");
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn cf_server(tweak: impl FnOnce(&mut shardcast::Config)) -> shardcast::ServerHandle {
    server_with(|c| {
        high_rates(c);
        c.centrifugo.api_key = KEY.into();
        tweak(c);
    })
}

fn api(addr: SocketAddr, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.to_string();
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n",
        body.len()
    );
    use std::io::Write as _;
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut http = Http { stream: s, buf: Vec::new() };
    let r = http.read();
    (r.status, r.json())
}

#[test]
fn connect_subscribe_publish_and_the_server_api() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let (mut c, conn) = Cf::connect(addr, None);
    assert!(conn["client"].as_str().is_some_and(|s| !s.is_empty()), "{conn}");
    assert_eq!(conn["pong"], true);
    assert!(conn["ping"].as_u64().is_some_and(|p| p >= 1), "{conn}");
    assert!(conn.get("expires").is_none(), "an anonymous connection does not expire: {conn}");
    let s = c.call("subscribe", json!({"channel": "acme/room"}));
    let s = &s["subscribe"];
    assert_eq!((s["recoverable"].as_bool(), s["positioned"].as_bool()), (Some(true), Some(true)), "{s}");
    assert_eq!(s["offset"].as_u64(), Some(0));
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    assert!(s.get("was_recovering").is_none());

    // A client publish: an empty result, then the push with offset 1.
    let r = c.call("publish", json!({"channel": "acme/room", "data": {"n": 1}}));
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(c.next_pub(), ("acme/room".into(), 1, json!({"n": 1})));

    // The server API: the key, the Centrifugo shapes, idempotency_key.
    let body = json!({"channel": "acme/room", "data": {"n": 2}, "idempotency_key": "k-2"});
    assert_eq!(api(addr, "/api/publish", None, &body).0, 401);
    assert_eq!(api(addr, "/api/publish", Some("wrong"), &body).0, 401);
    let (st, v) = api(addr, "/api/publish", Some(KEY), &body);
    assert_eq!(
        (st, &v["result"]["offset"], v["result"]["epoch"].as_str()),
        (200, &json!(2), Some(epoch.as_str())),
        "{v}"
    );
    let (_, again) = api(addr, "/api/publish", Some(KEY), &body);
    assert_eq!(again["result"]["offset"], 2, "a repeated idempotency_key is the same publication: {again}");
    assert_eq!(c.next_pub(), ("acme/room".into(), 2, json!({"n": 2})));
    let b = json!({"channels": ["acme/room", "acme/other", "nope"], "data": "hi"});
    let (st, v) = api(addr, "/api/broadcast", Some(KEY), &b);
    let rs = v["result"]["responses"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(st, 200);
    assert_eq!((rs[0]["result"]["offset"].as_u64(), rs[1]["result"]["offset"].as_u64()), (Some(3), Some(1)), "{v}");
    assert_eq!(rs[2]["error"]["code"], 102, "a bad channel name is `unknown channel`: {v}");
    assert_eq!(c.next_pub(), ("acme/room".into(), 3, json!("hi")), "the duplicate was not delivered again");
    let (st, v) = api(addr, "/api/publish", Some(KEY), &json!({"channel": "acme/room"}));
    assert_eq!((st, &v["error"]["code"]), (400, &json!(107)), "{v}");

    // Unsubscribe; nothing more arrives for the channel; a repeated
    // unsubscribe is a success, as Centrifugo answers it.
    assert_eq!(c.call("unsubscribe", json!({"channel": "acme/room"}))["unsubscribe"], json!({}));
    assert_eq!(c.call("unsubscribe", json!({"channel": "acme/room"}))["unsubscribe"], json!({}));
    api(addr, "/api/publish", Some(KEY), &json!({"channel": "acme/room", "data": 4}));
    let r = c.call("publish", json!({"channel": "acme/probe", "data": 0}));
    assert_eq!(r["publish"], json!({}));
    assert!(c.pushes.is_empty(), "no push after unsubscribe: {:?}", c.pushes);

    // Methods the endpoint does not serve are answered, not fatal.
    assert_eq!(c.call("sub_refresh", json!({"channel": "acme/room"}))["error"]["code"], 104);
    let m = admin_get(&server, "/metrics").body;
    assert!(m.contains("shardcast_centrifugo_connects_total"), "metrics");
}

/// Native `/ws` and Centrifugo subscribers of one topic, on both shards,
/// see the same publications in the same order with the same seq/offset,
/// whoever published them (native, Centrifugo, `/v1/publish`, `/api`).
#[test]
fn mixed_fanout_gives_native_and_centrifugo_subscribers_one_sequence() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let topic = "acme/mixed";
    let mut natives: Vec<Client> = (0..2).map(|s| Client::connect_to_shard(addr, s)).collect();
    for n in &mut natives {
        n.sub(topic);
    }
    let mut cfs: Vec<Cf> = Vec::new();
    while cfs.len() < 4 {
        let (mut c, _) = Cf::connect(addr, None);
        let s = c.call("subscribe", json!({"channel": topic}));
        assert_eq!(s["subscribe"]["offset"], 0);
        cfs.push(c);
    }
    let mut npub = Client::connect(addr);
    let (mut cpub, _) = Cf::connect(addr, None);
    let mut http = Http::connect(addr);
    const N: u64 = 200;
    for i in 0..N {
        let data = json!({"i": i, "text": format!("line one\nline {i}")});
        match i % 4 {
            0 => {
                npub.publish(topic, data);
            }
            1 => {
                let r = cpub.call("publish", json!({"channel": topic, "data": data}));
                assert_eq!(r["publish"], json!({}), "{r}");
            }
            2 => {
                let r = http.post_json("/v1/publish", &json!({"topic": topic, "data": data}));
                assert_eq!(r.status, 200, "{}", r.body);
            }
            _ => {
                let (st, v) = api(addr, "/api/publish", Some(KEY), &json!({"channel": topic, "data": data}));
                assert_eq!(st, 200, "{v}");
            }
        }
    }
    let want: Vec<(u64, Value)> =
        (0..N).map(|i| (i + 1, json!({"i": i, "text": format!("line one\nline {i}")}))).collect();
    let mut seen_native = Vec::new();
    for n in &mut natives {
        let got: Vec<(u64, Value)> = (0..N)
            .map(|_| {
                let m = n.expect_op("msg");
                (m["seq"].as_u64().unwrap(), m["data"].clone())
            })
            .collect();
        seen_native.push(got);
    }
    for c in &mut cfs {
        let got: Vec<(u64, Value)> = (0..N)
            .map(|_| {
                let (ch, off, data) = c.next_pub();
                assert_eq!(ch, topic);
                (off, data)
            })
            .collect();
        assert_eq!(got, want, "a Centrifugo subscriber's sequence");
    }
    for got in seen_native {
        assert_eq!(got, want, "a native subscriber's sequence");
    }
}

#[test]
fn recovery_replays_exactly_what_was_missed() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let topic = "acme/recover";
    let (mut a, _) = Cf::connect(addr, None);
    let s = a.call("subscribe", json!({"channel": topic}));
    let epoch = s["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let mut p = Client::connect(addr);
    for i in 1..=5 {
        p.publish(topic, json!(i));
    }
    for i in 1..=5 {
        assert_eq!(a.next_pub().1, i);
    }
    drop(a);
    for i in 6..=40 {
        p.publish(topic, json!(i));
    }
    // Recover after offset 5: exactly 6..=40, in the reply, in order.
    let (mut b, _) = Cf::connect(addr, None);
    let r = b.call("subscribe", json!({"channel": topic, "recover": true, "epoch": epoch, "offset": 5}));
    let r = &r["subscribe"];
    assert_eq!((r["was_recovering"].as_bool(), r["recovered"].as_bool()), (Some(true), Some(true)), "{r}");
    assert_eq!(r["offset"], 5, "the position recovered from");
    let offsets: Vec<u64> =
        r["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (6..=40).collect::<Vec<_>>());
    let datas: Vec<Value> = r["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(datas, (6..=40).map(|i| json!(i)).collect::<Vec<_>>());
    p.publish(topic, json!(41));
    assert_eq!(b.next_pub().1, 41, "then live");

    // A wrong epoch: not recovered, nothing replayed, live from now on.
    let (mut c, _) = Cf::connect(addr, None);
    let r = c.call("subscribe", json!({"channel": topic, "recover": true, "epoch": "other", "offset": 5}));
    let r = &r["subscribe"];
    assert_eq!((r["was_recovering"].as_bool(), r["recovered"].as_bool()), (Some(true), Some(false)), "{r}");
    assert!(r.get("publications").is_none(), "{r}");
    assert_eq!((r["offset"].as_u64(), r["epoch"].as_str()), (Some(41), Some(epoch.as_str())));
    // Flag 2 (reject unrecovered): error 112, and the channel is not held.
    let (mut d, _) = Cf::connect(addr, None);
    let r = d.call("subscribe", json!({"channel": topic, "recover": true, "epoch": "other", "offset": 5, "flag": 3}));
    assert_eq!(r["error"]["code"], 112, "{r}");
    p.publish(topic, json!(42));
    assert_eq!(c.next_pub().1, 42);
    d.call("publish", json!({"channel": "acme/probe", "data": 0}));
    assert!(d.pushes.is_empty(), "a rejected subscribe holds nothing: {:?}", d.pushes);
    let r = d.call("subscribe", json!({"channel": topic, "recover": true, "epoch": epoch, "offset": 40, "flag": 3}));
    let offsets: Vec<u64> =
        r["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![41, 42], "{r}");
}

/// Publications racing a recovery are neither lost nor duplicated: a
/// publisher runs flat out while a subscriber drops and recovers over and
/// over; what it sees (reply publications, then pushes) is 1..=N exactly.
#[test]
fn live_publications_racing_a_recovery_are_neither_lost_nor_duplicated() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let topic = "acme/race";
    const N: u64 = 3000;
    let publisher = std::thread::spawn(move || {
        let mut p = Client::connect(addr);
        pump(&mut p, topic, 1..=N, |i| json!(i));
    });
    let (mut c, _) = Cf::connect(addr, None);
    let s = c.call("subscribe", json!({"channel": topic}));
    let epoch = s["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let mut last = s["subscribe"]["offset"].as_u64().unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let start = last;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while last < N && Instant::now() < deadline {
        // Read a little, then drop and recover from the last offset seen.
        for _ in 0..(7 + rounds % 13) {
            if last == N {
                break;
            }
            let (_, off, data) = c.next_pub();
            assert_eq!(data, json!(off));
            seen.push(off);
            last = off;
        }
        rounds += 1;
        let (mut n, _) = Cf::connect(addr, None);
        let r = n.call("subscribe", json!({"channel": topic, "recover": true, "epoch": epoch, "offset": last}));
        let r = &r["subscribe"];
        assert_eq!(r["recovered"], true, "{r}");
        for p in r["publications"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let off = p["offset"].as_u64().unwrap();
            seen.push(off);
            last = off;
        }
        c = n;
    }
    publisher.join().unwrap();
    while last < N {
        let (_, off, _) = c.next_pub();
        seen.push(off);
        last = off;
    }
    assert!(rounds > 10, "the race was exercised ({rounds} recoveries)");
    assert_eq!(seen, (start + 1..=N).collect::<Vec<_>>(), "every offset once, in order");
}

#[test]
fn tokens_caps_refresh_and_expiry() {
    let server = cf_server(|c| {
        c.auth.required = true;
        c.auth.hs256_secrets = vec![SECRET.into()];
        c.auth.leeway_secs = 0;
    });
    let addr = server.local_addr();
    // No token: error 101 (the SDKs stop: unauthorized).
    let mut c = Cf::open(addr);
    assert_eq!(c.call("connect", json!({}))["error"]["code"], 101);
    // A bad token: close 3500 (no reconnect).
    let mut c = Cf::open(addr);
    c.send_line(&json!({"id": 1, "connect": {"token": "not.a.token"}}).to_string());
    assert_eq!(c.expect_close().0, 3500);
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "eve", "tenant": "acme", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let mut c = Cf::open(addr);
    c.send_line(&json!({"id": 1, "connect": {"token": forged}}).to_string());
    assert_eq!(c.expect_close().0, 3500);
    // Expired: error 109 (the SDKs fetch a fresh token and connect again).
    let mut c = Cf::open(addr);
    let old = token(&json!({"sub": "bob", "tenant": "acme", "exp": now() - 10}));
    assert_eq!(c.call("connect", json!({"token": old}))["error"]["code"], 109);

    // A good token: expires/ttl, caps decide subscribe and publish, `info`
    // carries the publisher's sub.
    let caps = json!({"sub": ["acme/in/*"], "pub": ["acme/in/*"]});
    let t = token(&json!({"sub": "alice", "tenant": "acme", "exp": now() + 600, "caps": caps}));
    let (mut a, conn) = Cf::connect(addr, Some(&t));
    assert_eq!(conn["expires"], true);
    assert!(conn["ttl"].as_u64().is_some_and(|t| (590..=600).contains(&t)), "{conn}");
    assert_eq!(a.call("subscribe", json!({"channel": "acme/out/x"}))["error"]["code"], 103);
    assert_eq!(a.call("subscribe", json!({"channel": "globex/in/x"}))["error"]["code"], 103);
    assert_eq!(a.call("publish", json!({"channel": "acme/out/x", "data": 1}))["error"]["code"], 103);
    assert!(a.call("subscribe", json!({"channel": "acme/in/x"})).get("subscribe").is_some());
    a.call("publish", json!({"channel": "acme/in/x", "data": 1}));
    let p = a.push();
    assert_eq!(p["pub"]["info"]["user"], "alice", "{p}");

    // Refresh: the same sub → a new ttl; another sub → close 3500.
    let t2 = token(&json!({"sub": "alice", "tenant": "acme", "exp": now() + 1200, "caps": caps}));
    let r = a.call("refresh", json!({"token": t2}));
    assert!(r["refresh"]["ttl"].as_u64().is_some_and(|t| t > 1000), "{r}");
    let other = token(&json!({"sub": "mallory", "tenant": "acme", "exp": now() + 600}));
    a.send_line(&json!({"id": 99, "refresh": {"token": other}}).to_string());
    assert_eq!(a.expect_close().0, 3500);

    // Expiry without a refresh: close 3005 (the SDKs reconnect with a fresh token).
    let short = token(&json!({"sub": "carol", "tenant": "acme", "exp": now() + 1}));
    let (mut e, conn) = Cf::connect(addr, Some(&short));
    assert!(conn["ttl"].as_u64().is_some_and(|t| t <= 1), "{conn}");
    let started = Instant::now();
    assert_eq!(e.expect_close().0, 3005);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_input_gets_the_centrifugo_close_codes() {
    let server = cf_server(|c| c.centrifugo.connect_timeout_ms = 300);
    let addr = server.local_addr();
    let mut c = Cf::open(addr);
    c.send_line("{\"id\":1,\"connect\":");
    assert_eq!(c.expect_close().0, 3501, "a malformed command");
    let mut c = Cf::open(addr);
    c.send_line(&json!({"id": 1, "subscribe": {"channel": "acme/x"}}).to_string());
    assert_eq!(c.expect_close().0, 3501, "a command before connect");
    let (mut c, _) = Cf::connect(addr, None);
    c.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(c.expect_close().0, 3501, "a binary frame");
    let (mut c, _) = Cf::connect(addr, None);
    c.send_line(&json!({"id": 5, "connect": {}}).to_string());
    assert_eq!(c.expect_close().0, 3501, "a second connect");
    let mut c = Cf::open(addr);
    let started = Instant::now();
    assert_eq!(c.expect_close().0, 3502, "no connect in time");
    assert!(started.elapsed() < Duration::from_secs(8));
    // Several commands in one frame are each answered; a bad channel is an
    // error reply (102), not a close.
    let (mut c, _) = Cf::connect(addr, None);
    c.send_line(
        "{\"id\":7,\"subscribe\":{\"channel\":\"acme/a\"}}\n{\"id\":8,\"subscribe\":{\"channel\":\"bad\"}}\n{}",
    );
    // (Replies come in the order they are ready; the SDKs match them by id.)
    let (a, b) = (c.read(), c.read());
    let (r7, r8) = if a["id"] == 7 { (a, b) } else { (b, a) };
    assert_eq!((r7["id"].as_u64(), r7["subscribe"]["offset"].as_u64()), (Some(7), Some(0)), "{r7}");
    assert_eq!((r8["id"].as_u64(), r8["error"]["code"].as_u64()), (Some(8), Some(102)), "{r8}");
    // The endpoint can be turned off.
    let off = server_with(|c| c.centrifugo.enabled = false);
    let raw = raw_exchange(
        off.local_addr(),
        b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 404"));
}

/// A Centrifugo subscriber that stops reading is closed 3010 (Centrifugo
/// has no `gap`), and recovering from its last offset gives it everything
/// it missed, in one reply.
#[test]
fn a_slow_subscriber_is_closed_3010_and_recovers_everything() {
    let server = cf_server(|c| {
        c.limits.outbound_soft_bytes = 16 * 1024;
        c.limits.outbound_hard_bytes = 256 * 1024;
    });
    let addr = server.local_addr();
    let topic = "acme/slow";
    let (mut slow, _) = Cf::connect(addr, None);
    let s = slow.call("subscribe", json!({"channel": topic}));
    let epoch = s["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let mut p = Client::connect(addr);
    let blob = "x".repeat(500);
    // Publish until the server gives up on the reader (it reads nothing),
    // then a few more.
    let mut n = 0;
    let closed = |server: &shardcast::ServerHandle| server.stats().sum(|s| s.counters.cf_insufficient_state) >= 1;
    let deadline = Instant::now() + WAIT;
    while !closed(&server) {
        assert!(Instant::now() < deadline, "the slow reader was never closed");
        pump(&mut p, topic, n + 1..=n + 5, |i| json!({"i": i, "pad": blob}));
        n += 5;
    }
    pump(&mut p, topic, n + 1..=n + 10, |i| json!({"i": i, "pad": blob}));
    n += 10;
    // Whatever it got before the close is in order; then 3010.
    let mut last = 0;
    let code = loop {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let off = v["push"]["pub"]["offset"].as_u64().unwrap();
                assert_eq!(off, last + 1);
                last = off;
            }
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 3010);
    assert!(last < n, "it fell behind");
    let (mut again, _) = Cf::connect(addr, None);
    let r = again.call("subscribe", json!({"channel": topic, "recover": true, "epoch": epoch, "offset": last}));
    assert_eq!(r["subscribe"]["recovered"], true, "missed {} publications", n - last);
    let offsets: Vec<u64> =
        r["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (last + 1..=n).collect::<Vec<_>>());
}

/// `history` pages the topic's replay ring: forward, reverse, after a
/// position; a position from another epoch is error 112. A payload with raw
/// newlines (JSON whitespace) reaches a Centrifugo client as one line.
#[test]
fn history_pages_the_replay_ring() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let topic = "acme/hist";
    let mut p = Client::connect(addr);
    pump(&mut p, topic, 1..=10, |i| json!({"i": i}));
    let (mut c, _) = Cf::connect(addr, None);
    let offsets = |r: &Value| -> Vec<u64> {
        r["history"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect()
    };
    let r = c.call("history", json!({"channel": topic, "limit": 3}));
    assert_eq!(offsets(&r), vec![1, 2, 3], "{r}");
    assert_eq!(r["history"]["offset"], 10);
    let epoch = r["history"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(r["history"]["publications"][0]["data"], json!({"i": 1}));
    let r = c.call("history", json!({"channel": topic, "limit": 3, "reverse": true}));
    assert_eq!(offsets(&r), vec![10, 9, 8], "{r}");
    let r = c.call("history", json!({"channel": topic, "limit": -1, "since": {"offset": 7, "epoch": epoch}}));
    assert_eq!(offsets(&r), vec![8, 9, 10], "{r}");
    let r = c.call("history", json!({"channel": topic, "limit": 0}));
    assert_eq!((offsets(&r), &r["history"]["offset"]), (vec![], &json!(10)), "only the position: {r}");
    let r = c.call("history", json!({"channel": topic, "limit": 5, "since": {"offset": 7, "epoch": "other"}}));
    assert_eq!(r["error"]["code"], 112, "{r}");
    let r = c.call("history", json!({"channel": "acme/never", "limit": 5}));
    assert_eq!((offsets(&r), &r["history"]["offset"]), (vec![], &json!(0)), "{r}");
    assert_eq!(c.call("history", json!({"channel": "bad", "limit": 5}))["error"]["code"], 102);

    // Raw newlines in the JSON: one line for the SDK (Cf::read checks).
    c.call("subscribe", json!({"channel": topic}));
    p.send_raw(&client_frame(
        1,
        true,
        b"{\"op\":\"pub\",\"id\":99,\"topic\":\"acme/hist\",\"data\":{\n\"a\":\r\n[1,\n2]}}",
    ));
    p.expect_op("ack");
    let (_, off, data) = c.next_pub();
    assert_eq!((off, data), (11, json!({"a": [1, 2]})));
}

/// Every `[centrifugo]` limit: its config key, its error or close code,
/// its counter.
#[test]
fn the_centrifugo_limits_are_enforced_and_counted() {
    let server = cf_server(|c| {
        c.centrifugo.max_commands_per_frame = 3;
        c.centrifugo.max_pending_per_connection = 2;
        c.centrifugo.max_broadcast_channels = 2;
    });
    let addr = server.local_addr();
    let refused = |limit: &str| server.stats().sum(|s| s.counters.cf_refused.get(limit).copied().unwrap_or(0));
    // Three subscribes to topics owned by the other shard in one frame: the
    // third finds two waiting for their owner.
    let (mut c, _) = Cf::connect(addr, None);
    let other = 1 - c.shard;
    let topics: Vec<String> = (0..3).map(|i| topic_owned_by(&server, other, &format!("lim{i}"))).collect();
    let frame: Vec<String> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": 10 + i, "subscribe": {"channel": t}}).to_string())
        .collect();
    c.send_line(&frame.join("\n"));
    let mut replies: Vec<Value> = (0..3).map(|_| c.read()).collect();
    replies.sort_by_key(|r| r["id"].as_u64());
    assert!(replies[0].get("subscribe").is_some() && replies[1].get("subscribe").is_some(), "{replies:?}");
    assert_eq!(replies[2]["error"]["code"], 106, "{replies:?}");
    assert_eq!(refused("max_pending_per_connection"), 1);
    // Four commands in one frame: close 3501.
    c.send_line("{}\n{}\n{}\n{}");
    assert_eq!(c.expect_close().0, 3501);
    assert_eq!(refused("max_commands_per_frame"), 1);
    // A broadcast to three channels: 400.
    let (st, v) =
        api(addr, "/api/broadcast", Some(KEY), &json!({"channels": ["acme/a", "acme/b", "acme/c"], "data": 1}));
    assert_eq!((st, &v["error"]["code"]), (400, &json!(107)), "{v}");
    assert_eq!(refused("max_broadcast_channels"), 1);
    let m = admin_get(&server, "/metrics").body;
    assert!(m.contains("shardcast_centrifugo_refused_total"), "exported");
}

#[test]
fn drain_closes_3001_after_everything_acked() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let (mut c, _) = Cf::connect(addr, None);
    c.call("subscribe", json!({"channel": "acme/drain"}));
    let mut p = Client::connect(addr);
    for i in 1..=20 {
        p.publish("acme/drain", json!(i));
    }
    let h = std::thread::spawn(move || {
        server.drain(Duration::from_secs(5));
        server
    });
    for i in 1..=20 {
        assert_eq!(c.next_pub().1, i);
    }
    assert_eq!(c.expect_close(), (3001, "shutdown".to_owned()));
    h.join().unwrap().shutdown();
}

#[test]
fn presence_join_leave_and_rpc() {
    let server = cf_server(|_| {});
    let addr = server.local_addr();
    let topic = "acme/pres";
    let (mut w, _) = Cf::connect(addr, None);
    w.call("subscribe", json!({"channel": topic, "join_leave": true}));
    let (mut j, conn) = Cf::connect(addr, None);
    j.call("subscribe", json!({"channel": topic}));
    let p = w.push();
    assert_eq!(p["channel"], topic);
    assert_eq!(p["join"]["info"]["client"], conn["client"], "{p}");
    let pr = w.call("presence", json!({"channel": topic}));
    let clients = pr["presence"]["presence"].as_object().unwrap();
    assert_eq!(clients.len(), 2, "{pr}");
    assert!(clients.contains_key(conn["client"].as_str().unwrap()));
    let st = w.call("presence_stats", json!({"channel": topic}));
    assert_eq!(st["presence_stats"]["num_clients"], 2, "{st}");
    drop(j);
    let p = w.push();
    assert_eq!(p["leave"]["info"]["client"], conn["client"], "{p}");

    // rpc → request/reply: a native responder in a group on the method's topic.
    let mut resp = Client::connect(addr);
    resp.send(json!({"op": "sub", "id": 1, "topic": "acme/svc/echo", "group": "workers"}));
    resp.expect_op("subscribed");
    let caller = std::thread::spawn(move || {
        let r = w.call("rpc", json!({"method": "acme/svc/echo", "data": {"q": "ping"}}));
        let none = w.call("rpc", json!({"method": "acme/svc/nobody", "data": {}}));
        (r, none)
    });
    let req = resp.expect_op("request");
    assert_eq!(req["data"], json!({"q": "ping"}));
    resp.send(json!({"op": "reply", "req": req["req"], "data": {"part": 1}, "more": true}));
    resp.send(json!({"op": "reply", "req": req["req"], "data": {"a": "pong"}}));
    let (r, none) = caller.join().unwrap();
    assert_eq!(r["rpc"]["data"], json!({"a": "pong"}), "the final reply: {r}");
    assert_eq!(none["error"]["code"], 108, "no responders: {none}");
}
