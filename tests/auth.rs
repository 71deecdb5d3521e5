//! Identity and isolation (issue 11, PROTOCOL-EXTENSIONS §1) over real
//! sockets: tokens signed with HS256, RS256, ES256 and EdDSA by
//! `jsonwebtoken` (test keys in tests/keys/), the isolation matrix
//! 2 tenants × {sub, pub} × {WebSocket, HTTP} × {inside caps, outside caps,
//! other tenant}, every kind of bad token, `from` stamping, refresh,
//! expiry (4001), origins and subprotocols.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

const SECRET: &str = "hs256-test-secret-not-for-production";
const AUD: &str = "sc-tests";

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token signed with `alg` (the test key of its family), optional `kid`.
fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let read = |f: &str| std::fs::read(keys_dir().join(f)).unwrap();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa-k1.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec-k2.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed-k3.key")).unwrap(),
        other => panic!("{other:?}"),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn claims(sub: &str, tenant: &str) -> Value {
    json!({"sub": sub, "tenant": tenant, "aud": AUD, "exp": now() + 600})
}

fn hs(c: &Value) -> String {
    mint(Algorithm::HS256, None, c)
}

fn secure_server(tweak: impl FnOnce(&mut shardcast::Config)) -> shardcast::ServerHandle {
    server_with(|c| {
        high_rates(c);
        c.auth.required = true;
        c.auth.hs256_secrets = vec![SECRET.into()];
        c.auth.public_keys = ["rsa-k1.pem", "ec-k2.pem", "ed-k3.pem"].iter().map(|f| keys_dir().join(f)).collect();
        c.auth.audience = AUD.into();
        tweak(c);
    })
}

/// Upgrades with `Authorization: Bearer` (or `?token=`), plus extra
/// headers; on refusal, the HTTP status and body.
fn ws(
    addr: SocketAddr,
    token: Option<&str>,
    query: bool,
    extra: &[(&'static str, &str)],
) -> Result<Client, (u16, String)> {
    let url = match (token, query) {
        (Some(t), true) => format!("ws://{addr}/ws?token={t}"),
        _ => format!("ws://{addr}/ws"),
    };
    let mut req = url.into_client_request().unwrap();
    if let (Some(t), false) = (token, query) {
        req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    for (k, v) in extra {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, resp)) => {
            let shard = resp.headers()["x-shardcast-shard"].to_str().unwrap().parse().unwrap();
            Ok(Client { ws, shard })
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            let body = r.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((r.status().as_u16(), body))
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// One HTTP publish with `Authorization: Bearer`; (status, body).
fn http_pub(addr: SocketAddr, token: Option<&str>, topic: &str) -> (u16, Value) {
    let body = json!({"topic": topic, "data": {"via": "http"}}).to_string();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut http = Http { stream: s, buf: Vec::new() };
    let r = http.read();
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

#[test]
fn isolation_matrix() {
    let server = secure_server(|_| {});
    let addr = server.local_addr();
    // Tenant acme with caps; tenant beta with the default (beta/#).
    let alice = claims("alice", "acme");
    let mut alice = alice.clone();
    alice["caps"] = json!({"sub": ["acme/public/#", "acme/in/*"], "pub": ["acme/in/*"]});
    let alice = hs(&alice);
    let bob = mint(Algorithm::RS256, None, &claims("bob", "beta"));
    let mut a = ws(addr, Some(&alice), false, &[]).expect("alice upgrades");
    let mut b = ws(addr, Some(&bob), true, &[]).expect("bob upgrades with ?token=");

    // (client, op, topic, allowed)
    let cases: [(&str, &str, &str, bool); 12] = [
        ("alice", "sub", "acme/public/news", true),  // inside caps
        ("alice", "sub", "acme/private/x", false),   // outside caps
        ("alice", "sub", "beta/room", false),        // other tenant
        ("alice", "pub", "acme/in/r1", true),        // inside caps
        ("alice", "pub", "acme/public/news", false), // outside caps (sub-only)
        ("alice", "pub", "beta/room", false),        // other tenant
        ("bob", "sub", "beta/room", true),
        ("bob", "sub", "beta/any/deep/topic", true),
        ("bob", "sub", "acme/public/news", false),
        ("bob", "pub", "beta/room", true),
        ("bob", "pub", "beta/other", true),
        ("bob", "pub", "acme/in/r1", false),
    ];
    for (who, op, topic, allowed) in cases {
        let c = if who == "alice" { &mut a } else { &mut b };
        let cmd = if op == "sub" {
            json!({"op":"sub","id":1,"topic":topic})
        } else {
            json!({"op":"pub","id":2,"topic":topic,"data":1})
        };
        let r = c.ask(cmd);
        let want = if !allowed {
            "error"
        } else if op == "sub" {
            "subscribed"
        } else {
            "ack"
        };
        assert_eq!(r["op"], want, "ws {who} {op} {topic}: {r}");
        if !allowed {
            assert_eq!(r["code"], "forbidden", "{r}");
        }
        // HTTP publish, same rules, same token.
        if op == "pub" {
            let token = if who == "alice" { &alice } else { &bob };
            let (status, body) = http_pub(addr, Some(token), topic);
            assert_eq!(status, if allowed { 200 } else { 403 }, "http {who} pub {topic}: {body}");
            if !allowed {
                assert_eq!(body["error"]["code"], "forbidden");
            }
        }
    }
    // The connections stayed open through the refusals.
    a.sync();
    b.sync();
    let t = server.stats();
    assert_eq!(t.sum(|s| s.counters.forbidden), 9, "6 WebSocket and 3 HTTP refusals");
    server.shutdown();
}

#[test]
fn bad_tokens_get_401_before_the_upgrade() {
    let server = secure_server(|_| {});
    let addr = server.local_addr();
    let good = claims("carol", "acme");
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let mut early = good.clone();
    early["nbf"] = json!(now() + 120);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut no_tenant = good.clone();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let b64 = |v: &Value| base64_url_encode(v.to_string().as_bytes());
    let alg_none = format!("{}.{}.", b64(&json!({"alg":"none","typ":"JWT"})), b64(&good));
    let forged = {
        let t = hs(&good);
        let (head, _) = t.rsplit_once('.').unwrap();
        format!("{head}.{}", base64_url_encode(b"not the signature of this token at all"))
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "a token is required"),
        ("malformed", Some("not-a-jwt".into()), "malformed"),
        ("alg none", Some(alg_none), "malformed"),
        ("bad signature", Some(forged), "bad signature"),
        ("expired", Some(hs(&expired)), "expired"),
        ("not yet valid", Some(hs(&early)), "not yet valid"),
        ("wrong audience", Some(hs(&wrong_aud)), "audience"),
        ("unknown kid", Some(mint(Algorithm::RS256, Some("nope"), &good)), "unknown key id"),
        ("no tenant", Some(hs(&no_tenant)), "tenant"),
    ];
    for (what, token, msg) in &cases {
        for query in [false, true] {
            let r = ws(addr, token.as_deref(), query, &[]);
            let Err((status, body)) = r else { panic!("{what}: upgraded") };
            assert_eq!(status, 401, "{what}");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert_eq!(v["error"]["code"], "unauthorized", "{what}: {body}");
            assert!(v["error"]["message"].as_str().unwrap_or("").contains(msg), "{what}: {body}");
        }
        let (status, body) = http_pub(addr, token.as_deref(), "acme/room");
        assert_eq!(status, 401, "http {what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Every configured algorithm and key works, by kid or without.
    for (alg, kid) in [
        (Algorithm::HS256, None),
        (Algorithm::HS512, None),
        (Algorithm::RS256, Some("rsa-k1")),
        (Algorithm::ES256, Some("ec-k2")),
        (Algorithm::ES256, None),
        (Algorithm::EdDSA, Some("ed-k3")),
    ] {
        let mut c = ws(addr, Some(&mint(alg, kid, &good)), false, &[]).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(c.ask(json!({"op":"pub","id":1,"topic":"acme/r","data":1}))["op"], "ack");
    }
    server.shutdown();
}

fn base64_url_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn from_is_stamped_and_cannot_be_spoofed() {
    let server = secure_server(|_| {});
    let addr = server.local_addr();
    let mut s = ws(addr, Some(&hs(&claims("watcher", "acme"))), false, &[]).unwrap();
    s.sub("acme/room");
    let mut p = ws(addr, Some(&mint(Algorithm::EdDSA, None, &claims("agent-7", "acme"))), false, &[]).unwrap();
    // A client-chosen `from` is ignored, at the top level and in data.
    p.send(json!({"op":"pub","id":1,"topic":"acme/room","from":"mallory","data":{"from":"mallory"}}));
    assert_eq!(p.expect_op("ack")["seq"], 1);
    let m = s.expect_op("msg");
    assert_eq!(m["from"], "agent-7", "{m}");
    assert_eq!(m["data"]["from"], "mallory", "data is verbatim");
    let (status, _) = http_pub(addr, Some(&hs(&claims("http-bot", "acme"))), "acme/room");
    assert_eq!(status, 200);
    assert_eq!(s.expect_op("msg")["from"], "http-bot");
    server.shutdown();
}

#[test]
fn refresh_keeps_identity_and_expiry_closes_4001() {
    let server = secure_server(|c| c.auth.leeway_secs = 0);
    let addr = server.local_addr();
    let mut short = claims("dave", "acme");
    // 4 s: room for a loaded CI box to upgrade and refresh `d` before it expires.
    short["exp"] = json!(now() + 4);
    let mut c = ws(addr, Some(&hs(&short)), false, &[]).unwrap();
    // A refresh for someone else is refused; a bad token too.
    let r = c.ask(json!({"op":"auth","id":5,"token":hs(&claims("eve", "acme"))}));
    assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("error"), Some("forbidden")), "{r}");
    let r = c.ask(json!({"op":"auth","id":6,"token":"garbage"}));
    assert_eq!(r["code"], "unauthorized", "{r}");
    // Another connection refreshes in time and stays.
    let mut d = ws(addr, Some(&hs(&short)), false, &[]).unwrap();
    let fresh = claims("dave", "acme");
    let r = d.ask(json!({"op":"auth","id":7,"token":hs(&fresh)}));
    assert_eq!(r["op"], "authed", "{r}");
    assert_eq!(r["exp"], fresh["exp"]);
    // The first is closed 4001 once its exp passes.
    assert_eq!(c.expect_close(), 4001);
    d.sync();
    assert!(server.stats().sum(|s| s.counters.tokens_expired) >= 1);
    server.shutdown();
}

#[test]
fn origins_and_subprotocols() {
    let server = secure_server(|c| c.auth.origins = vec!["https://app.example".into()]);
    let addr = server.local_addr();
    let t = hs(&claims("frank", "acme"));
    let r = ws(addr, Some(&t), true, &[("Origin", "https://evil.example")]);
    assert_eq!(r.err().map(|e| e.0), Some(403));
    assert!(ws(addr, Some(&t), true, &[("Origin", "https://app.example")]).is_ok());
    assert!(ws(addr, Some(&t), false, &[]).is_ok(), "no Origin: not a browser, judged by its token");
    // A requested subprotocol we speak is echoed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "GET /ws?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: chat, shardcast.v1\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: shardcast.v1\r\n"), "{head}");
    server.shutdown();
}

#[test]
fn a_public_address_without_tokens_refuses_to_start() {
    let mut cfg = shardcast::Config::default();
    cfg.server.listen = "0.0.0.0:0".parse().unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("auth.required") && err.contains("allow_anonymous_public"), "{err}");
    cfg.auth.allow_anonymous_public = true;
    cfg.validate().expect("explicitly anonymous");
    cfg.auth.allow_anonymous_public = false;
    cfg.auth.required = true;
    assert!(cfg.validate().unwrap_err().to_string().contains("needs at least one key"));
    cfg.auth.hs256_secrets = vec![SECRET.into()];
    cfg.validate().expect("tokens required");
    // The embedded default (loopback) needs nothing.
    shardcast::Config::default().validate().unwrap();
    let _ = Duration::ZERO;
}

/// With `required = false`: anonymous clients work as in v1, a given token
/// must still be valid, and an anonymous connection cannot become someone
/// with `auth` (it reconnects with a token instead).
#[test]
fn optional_tokens() {
    let server = secure_server(|c| c.auth.required = false);
    let addr = server.local_addr();
    let mut anon = ws(addr, None, false, &[]).expect("anonymous allowed");
    assert_eq!(anon.ask(json!({"op":"pub","id":1,"topic":"any/room","data":1}))["op"], "ack");
    let r = anon.ask(json!({"op":"auth","id":2,"token":hs(&claims("gina", "acme"))}));
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(ws(addr, Some("bad.token.here"), false, &[]).err().map(|e| e.0), Some(401));
    let mut id = ws(addr, Some(&hs(&claims("gina", "acme"))), false, &[]).unwrap();
    assert_eq!(id.ask(json!({"op":"pub","id":3,"topic":"any/room","data":1}))["code"], "forbidden");
    let (status, _) = http_pub(addr, None, "any/room");
    assert_eq!(status, 200, "anonymous HTTP publish");
    server.shutdown();
}

/// Repeated `auth` refreshes cannot grow the shard's expiry heap: the same
/// exp schedules nothing new, and stale entries are compacted away.
#[test]
fn refresh_spam_is_bounded() {
    let server = secure_server(|c| {
        c.rates.control_per_sec = 1e6;
        c.rates.control_burst = 1e6;
    });
    let addr = server.local_addr();
    let c = claims("hank", "acme");
    let mut conn = ws(addr, Some(&hs(&c)), false, &[]).unwrap();
    for i in 0..3000u64 {
        let mut fresh = c.clone();
        // Half repeat the exp, half move it (new tokens, new heap entries).
        fresh["exp"] = json!(now() + 600 + (i % 2) * i);
        conn.send(json!({"op":"auth","id":i,"token":hs(&fresh)}));
    }
    for _ in 0..3000 {
        assert_eq!(conn.expect_op("authed")["op"], "authed");
    }
    let t = server.stats();
    assert!(t.sum(|s| s.counters.expiry_compactions) >= 1, "stale entries were compacted");
    server.shutdown();
}

/// `auth` is metered like `sub`/`unsub` (each verifies a signature).
#[test]
fn refresh_is_rate_limited() {
    let server = secure_server(|c| {
        c.rates.control_per_sec = 1.0;
        c.rates.control_burst = 2.0;
    });
    let t = hs(&claims("ivy", "acme"));
    let mut conn = ws(server.local_addr(), Some(&t), false, &[]).unwrap();
    let ops: Vec<String> = (0..4)
        .map(|i| {
            let r = conn.ask(json!({"op":"auth","id":i,"token":t}));
            r["op"].as_str().unwrap().to_string() + ":" + r["code"].as_str().unwrap_or("")
        })
        .collect();
    assert_eq!(ops, ["authed:", "authed:", "error:rate_limited", "error:rate_limited"]);
    server.shutdown();
}
