//! Presence (PROTOCOL-EXTENSIONS §6) over real sockets on a 2-shard server:
//! the exact count and the capped client list across shards, `join` and
//! `leave` events for subscribers that ask (on unsub and on disconnect),
//! the token's `sub` as the client, and the per-tenant watcher bound.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tungstenite::client::IntoClientRequest;

const SECRET: &str = "presence-test-secret";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": sub, "tenant": "acme", "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A client presenting a token for `sub`, on `shard`.
fn as_user(addr: std::net::SocketAddr, sub: &str, shard: usize) -> Client {
    for _ in 0..500 {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {}", token(sub)).parse().unwrap());
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, resp) = tungstenite::client::client(req, stream).unwrap();
        let s: usize = resp.headers().get("X-Shardcast-Shard").unwrap().to_str().unwrap().parse().unwrap();
        if s == shard {
            return Client { ws, shard: s };
        }
    }
    panic!("no connection on shard {shard}");
}

fn secure() -> shardcast::ServerHandle {
    server_with(|c| {
        high_rates(c);
        c.auth.required = true;
        c.auth.hs256_secrets = vec![SECRET.into()];
    })
}

#[test]
fn count_and_clients_across_shards_and_join_leave_events() {
    let server = secure();
    let addr = server.local_addr();
    let topic = "acme/room-9";
    let mut watcher = as_user(addr, "watcher", 0);
    let v = watcher.ask(json!({"op":"sub","id":1,"topic":topic,"presence":true}));
    assert_eq!(v["op"], "subscribed");
    let mut alice = as_user(addr, "alice", 1);
    alice.sub(topic);
    let j = watcher.expect_op("join");
    assert_eq!((&j["topic"], &j["client"]), (&json!(topic), &json!("alice")), "{j}");
    let alice_conn = j["conn"].as_str().unwrap().to_owned();
    let mut bob = as_user(addr, "bob", 0);
    bob.sub(topic);
    let j = watcher.expect_op("join");
    assert_eq!(j["client"], "bob");
    // The query, from either shard, with no subscription of its own.
    for shard in [0, 1] {
        let mut q = as_user(addr, "q", shard);
        let p = q.ask(json!({"op":"presence","id":4,"topic":topic}));
        assert_eq!((&p["op"], &p["id"], &p["count"]), (&json!("presence"), &json!(4), &json!(3)), "{p}");
        let clients: BTreeSet<&str> =
            p["clients"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
        assert_eq!(clients, BTreeSet::from(["alice", "bob", "watcher"]), "{p}");
        let conns: BTreeSet<&str> =
            p["clients"].as_array().unwrap().iter().map(|c| c["conn"].as_str().unwrap()).collect();
        assert_eq!(conns.len(), 3, "distinct connections: {p}");
        assert!(conns.contains(alice_conn.as_str()));
    }
    // Leave on unsub and on disconnect.
    let v = alice.ask(json!({"op":"unsub","id":2,"topic":topic}));
    assert_eq!(v["op"], "unsubscribed");
    let l = watcher.expect_op("leave");
    assert_eq!((&l["client"], &l["conn"]), (&json!("alice"), &json!(alice_conn)), "{l}");
    drop(bob);
    assert_eq!(watcher.expect_op("leave")["client"], "bob");
    let mut q = as_user(addr, "q", 1);
    let p = q.ask(json!({"op":"presence","id":5,"topic":topic}));
    assert_eq!(p["count"], 1, "{p}");
    // A plain subscriber (no `presence: true`) gets no events.
    let mut plain = as_user(addr, "plain", 1);
    plain.sub(topic);
    as_user(addr, "carol", 0).sub(topic);
    assert_eq!(watcher.expect_op("join")["client"], "plain");
    assert_eq!(watcher.expect_op("join")["client"], "carol");
    assert!(plain.quiet(Duration::from_millis(200)).iter().all(|m| m["op"] != "join" && m["op"] != "leave"));
    // A repeated `sub` is not a second join.
    plain.sub(topic);
    assert!(watcher.quiet(Duration::from_millis(200)).iter().all(|m| m["op"] != "join"));
    server.shutdown();
}

#[test]
fn the_list_is_capped_the_count_exact_and_watchers_bounded() {
    let server = server_with(|c| {
        high_rates(c);
        c.presence.max_list = 2;
        c.presence.max_watchers_per_tenant = 1;
    });
    let addr = server.local_addr();
    let topic = "acme/big-room";
    let mut subs: Vec<Client> = (0..5).map(|i| Client::connect_to_shard(addr, i % 2)).collect();
    for s in &mut subs {
        s.sub(topic);
    }
    let mut q = Client::connect(addr);
    let p = q.ask(json!({"op":"presence","id":1,"topic":topic}));
    assert_eq!(p["count"], 5, "{p}");
    assert_eq!(p["clients"].as_array().unwrap().len(), 2, "capped: {p}");
    assert!(p["clients"].as_array().unwrap().iter().all(|c| c["client"] == "anon"));
    let mut w1 = Client::connect(addr);
    assert_eq!(w1.ask(json!({"op":"sub","id":1,"topic":topic,"presence":true}))["op"], "subscribed");
    let mut w2 = Client::connect(addr);
    let v = w2.ask(json!({"op":"sub","id":1,"topic":topic,"presence":true}));
    assert_eq!(v["code"], "overloaded", "presence.max_watchers_per_tenant: {v}");
    // Refused, so not counted.
    let p = q.ask(json!({"op":"presence","id":2,"topic":topic}));
    assert_eq!(p["count"], 6, "{p}");
    // No subscriber: count 0, no clients.
    let p = q.ask(json!({"op":"presence","id":3,"topic":"acme/nobody"}));
    assert_eq!((&p["count"], &p["clients"]), (&json!(0), &json!([])), "{p}");
    server.shutdown();
}
