//! Per-tenant quotas (issue 11 item 4): connections, subscriptions, topics
//! and publish rate, configured per tenant over a default, keyed by the
//! token's tenant; each refusal counted per tenant.

mod common;

use std::net::TcpStream;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shardcast::auth::TenantQuota;
use tungstenite::client::IntoClientRequest;

const SECRET: &str = "quota-test-secret-0123456789";

fn token(sub: &str, tenant: &str) -> String {
    let c = json!({"sub": sub, "tenant": tenant, "exp": 4_000_000_000u64});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// Upgrades with a token; Err with the HTTP status if refused.
fn connect(addr: std::net::SocketAddr, t: &str) -> Result<Client, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(Client { ws, shard: 0 }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// One shard, so a process-wide quota is exactly what the shard enforces
/// (the split over shards, ceil(q / shards), has its own unit test).
fn quota_server(topics: u64) -> shardcast::ServerHandle {
    server_with(|c| {
        high_rates(c);
        c.shards.cpus = shardcast::config::Cpus::List(vec![0]);
        c.auth.required = true;
        c.auth.hs256_secrets = vec![SECRET.into()];
        c.quotas.default = TenantQuota { connections: 100, ..Default::default() };
        c.quotas.tenants.insert(
            "small".into(),
            TenantQuota { connections: 2, subscriptions: 2, topics, publish_per_sec: 0.5, publish_burst: 2.0 },
        );
    })
}

#[test]
fn a_tenant_is_held_to_its_quota_and_others_are_not() {
    let server = quota_server(0);
    let addr = server.local_addr();
    let small = token("s1", "small");
    let big = token("b1", "big");
    // Connections: 2.
    let mut s0 = connect(addr, &small).expect("first small connection");
    let mut s1 = connect(addr, &small).expect("second small connection");
    for _ in 0..4 {
        assert_eq!(connect(addr, &small).err(), Some(429));
    }
    // Another tenant is unaffected.
    let mut b = connect(addr, &big).expect("big connects");

    // Subscriptions: 2 over the tenant's connections.
    assert_eq!(s0.ask(json!({"op":"sub","id":1,"topic":"small/a"}))["op"], "subscribed");
    let r = s1.ask(json!({"op":"sub","id":1,"topic":"small/c"}));
    assert_eq!(r["op"], "subscribed", "{r}");
    let r = s0.ask(json!({"op":"sub","id":2,"topic":"small/b"}));
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    assert_eq!(s0.ask(json!({"op":"unsub","id":3,"topic":"small/a"}))["op"], "unsubscribed");
    let r = s0.ask(json!({"op":"sub","id":4,"topic":"small/b"}));
    assert_eq!(r["op"], "subscribed", "freed by unsub: {r}");
    for i in 0..5 {
        assert_eq!(b.ask(json!({"op":"sub","id":i,"topic":format!("big/r{i}")}))["op"], "subscribed");
    }

    // Publish rate: burst 2, 0.5/s.
    for i in 0..2 {
        let r = s0.ask(json!({"op":"pub","id":10 + i,"topic":"small/b","data":i}));
        assert_eq!(r["op"], "ack", "{r}");
    }
    let third = s1.ask(json!({"op":"pub","id":12,"topic":"small/c","data":2}));
    assert_eq!(third["code"], "rate_limited", "the tenant's bucket, whichever connection: {third}");
    for i in 0..20 {
        assert_eq!(b.ask(json!({"op":"pub","id":i,"topic":"big/r1","data":i}))["op"], "ack");
    }

    let t = server.stats();
    let refused = |kind: &str| -> u64 {
        t.shards
            .iter()
            .flat_map(|s| s.counters.quota_refused.iter())
            .filter(|((tn, k), _)| tn == "small" && *k == kind)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(refused("connections"), 4);
    assert_eq!(refused("subscriptions"), 1);
    assert_eq!(refused("publish_rate"), 1);
    assert!(
        t.shards.iter().all(|s| s.counters.quota_refused.keys().all(|(tn, _)| tn == "small")),
        "big was never refused"
    );
    server.shutdown();
}

#[test]
fn topic_quota_per_tenant() {
    let server = quota_server(1);
    let addr = server.local_addr();
    let (first, second) = ("small/t0", "small/t1");
    let mut s = connect(addr, &token("s1", "small")).unwrap();
    // The first topic has a subscriber, so it cannot be evicted for the second.
    assert_eq!(s.ask(json!({"op":"sub","id":1,"topic":first}))["op"], "subscribed");
    let r = s.ask(json!({"op":"pub","id":2,"topic":second,"data":1}));
    assert_eq!(r["code"], "overloaded", "topics quota 1 per shard: {r}");
    // A tenant without the override creates as many as it likes.
    let mut b = connect(addr, &token("b1", "big")).unwrap();
    for i in 0..10 {
        assert_eq!(b.ask(json!({"op":"pub","id":i,"topic":format!("big/t{i}"),"data":1}))["op"], "ack");
    }
    let t = server.stats();
    assert!(t.sum(|s| s.owner.refused_tenant_quota) >= 1);
    server.shutdown();
}
