//! Regression test for executor stalls: thousands of request/reply round
//! trips over fresh servers. With a short glommio preemption timer this
//! wedged a shard within seconds (docs/GLOMMIO-NOTES.md); with the
//! configuration shardcast enforces it must never stall.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn round_trips_never_stall() {
    for round in 0..12 {
        let server = server();
        let addr = server.local_addr();
        let mut clients = [Client::connect_to_shard(addr, 0), Client::connect_to_shard(addr, 1)];
        for c in &mut clients {
            c.ws.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        for i in 0..150 {
            let topic = format!("tenant{}/room{i}", i % 7);
            for c in &mut clients {
                c.send(json!({"op":"sub","id":i,"topic":topic}));
                let v = c.ws.read().unwrap_or_else(|e| panic!("round {round} topic {i}: no reply within 5 s: {e}"));
                assert!(v.to_text().unwrap().contains("\"subscribed\""), "{v:?}");
            }
        }
        assert!(server.alive(Duration::from_secs(5)).is_ok(), "every shard answers the control plane");
        server.shutdown();
    }
}
