//! Deterministic tests of the shard logic without sockets or executors: two
//! `ShardCore`s wired by a real mesh, driven by hand.

use std::time::Instant;

use serde_json::Value;
use shardcast::config::Limits;
use shardcast::conn::core::ShardCore;
use shardcast::conn::Phase;
use shardcast::mesh::{self, MeshEnds};
use shardcast::topic::PartitionMap;

/// A masked client text frame.
fn frame(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    shardcast::proto::frame::write_client_frame(1, true, text.as_bytes(), [1, 2, 3, 4], &mut out);
    out
}

/// Everything queued on connection `idx`, as JSON messages.
fn replies(core: &mut ShardCore, idx: usize) -> Vec<Value> {
    let mut out = Vec::new();
    core.conns[idx].out.fill(&mut out, usize::MAX);
    let mut msgs = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        let (h, len) = match out[pos + 1] {
            126 => (4, u16::from_be_bytes([out[pos + 2], out[pos + 3]]) as usize),
            n => (2, n as usize),
        };
        msgs.push(serde_json::from_slice(&out[pos + h..pos + h + len]).unwrap());
        pos += h + len;
    }
    msgs
}

fn open_conn(core: &mut ShardCore) -> usize {
    let r = core.accept(Instant::now()).unwrap();
    core.conns[r.idx as usize].phase = Phase::Open;
    r.idx as usize
}

/// Moves every message waiting on `to`'s inbound rings into `to`.
fn pump(core: &mut ShardCore, inboxes: &mut [(usize, rtrb::Consumer<mesh::MeshMsg>)]) -> usize {
    let mut n = 0;
    for (from, cons) in inboxes.iter_mut() {
        while let Ok(m) = cons.pop() {
            core.on_mesh(*from, m);
            n += 1;
        }
    }
    n
}

fn two_shards(ring: usize) -> (ShardCore, ShardCore, MeshEnds, MeshEnds) {
    let map = PartitionMap { partitions: 1024, shards: 2 };
    let mut ends = mesh::build(2, ring).unwrap();
    let mut e1 = ends.pop().unwrap();
    let mut e0 = ends.pop().unwrap();
    let c0 = ShardCore::new(0, map, Limits::default(), std::mem::take(&mut e0.outboxes));
    let c1 = ShardCore::new(1, map, Limits::default(), std::mem::take(&mut e1.outboxes));
    (c0, c1, e0, e1)
}

/// When the ring to an interested shard is full, a publish is refused with
/// `overloaded` and `retry_after_ms` before any seq is assigned (no hole in
/// the stream), the event is counted, and publishing resumes once the ring
/// drains.
#[test]
fn full_ring_refuses_with_overloaded_and_leaves_no_hole() {
    let (mut s0, mut s1, mut e0, mut e1) = two_shards(128);
    let topic = (0..1000).map(|i| format!("acme/r{i}")).find(|t| s0.map.owner(t) == 0).unwrap();
    // A subscriber on shard 1, publisher on shard 0 (the owner).
    let sub = open_conn(&mut s1);
    let publ = open_conn(&mut s0);
    s1.on_bytes(sub, &mut frame(&format!(r#"{{"op":"sub","id":1,"topic":"{topic}"}}"#)));
    pump(&mut s0, &mut e0.inboxes);
    pump(&mut s1, &mut e1.inboxes);
    assert_eq!(replies(&mut s1, sub)[0]["op"], "subscribed");

    // Shard 1 stops draining its rings; shard 0 publishes until refused.
    let mut acked: u64 = 0;
    let mut refused = None;
    for i in 0..200 {
        s0.on_bytes(publ, &mut frame(&format!(r#"{{"op":"pub","id":{i},"topic":"{topic}","data":{i}}}"#)));
        for r in replies(&mut s0, publ) {
            match r["op"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => {
                    refused.get_or_insert(r);
                }
                _ => panic!("{r}"),
            }
        }
    }
    let refused = refused.expect("the ring filled up");
    assert_eq!(refused["code"], "overloaded");
    assert_eq!(refused["retry_after_ms"], 50);
    assert_eq!(acked as usize, 128 - mesh::ring::CONTROL_RESERVE, "data stops at the control reserve");
    assert_eq!(s0.outboxes[1].as_ref().unwrap().full_events, 200 - acked);
    assert_eq!(s0.counters.publishes_rejected.get("overloaded").copied(), Some(200 - acked));

    // Shard 1 catches up: it saw seqs 1..=acked with no hole, and the next
    // publish is accepted as seq acked+1.
    pump(&mut s1, &mut e1.inboxes);
    let seqs: Vec<u64> = replies(&mut s1, sub).iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=acked).collect::<Vec<_>>());
    s0.on_bytes(publ, &mut frame(&format!(r#"{{"op":"pub","id":999,"topic":"{topic}","data":0}}"#)));
    assert_eq!(replies(&mut s0, publ)[0]["seq"], acked + 1);
}

/// Disconnecting a subscriber whose subscribe is still in flight gives the
/// owner's count back when the answer arrives.
#[test]
fn subscribe_answer_for_a_gone_connection_is_given_back() {
    let (mut s0, mut s1, mut e0, mut e1) = two_shards(1024);
    let topic = (0..1000).map(|i| format!("acme/r{i}")).find(|t| s0.map.owner(t) == 0).unwrap();
    let sub = open_conn(&mut s1);
    s1.on_bytes(sub, &mut frame(&format!(r#"{{"op":"sub","id":1,"topic":"{topic}"}}"#)));
    s1.remove(sub);
    pump(&mut s0, &mut e0.inboxes); // owner counts it and answers
    assert_eq!(s0.owner.total_interest(), 1);
    pump(&mut s1, &mut e1.inboxes); // answer finds no connection → Release
    pump(&mut s0, &mut e0.inboxes);
    assert_eq!(s0.owner.total_interest(), 0);
    assert_eq!(s1.local.subscriptions(), 0);
    assert_eq!(s0.counters.internal_errors + s1.counters.internal_errors, 0);
}

/// Issue 9 defect 2: after a shard stall, the liveness sweep ran before the
/// input that arrived meanwhile was read, and closed active connections
/// with 1001. A sweep that runs more than two periods late now judges
/// nobody; the input is read, and the next sweep finds the connection live.
#[test]
fn a_late_liveness_sweep_after_a_stall_closes_nobody() {
    let (mut s0, _s1, _e0, _e1) = two_shards(1024);
    s0.policy.liveness.ping_interval_ms = 1000;
    s0.policy.liveness.ping_timeout_ms = 1000;
    let c = open_conn(&mut s0);
    let t0 = s0.conns[c].last_seen;
    s0.sweep_liveness(t0);
    // The shard stalls for 10 s (the sweep period is 500 ms); the client
    // kept sending, but nothing was read yet when the sweep finally runs.
    s0.sweep_liveness(t0 + std::time::Duration::from_secs(10));
    assert_eq!(s0.conns[c].phase, Phase::Open, "judged against a stalled shard's clock");
    assert_eq!(s0.counters.liveness_sweeps_deferred, 1);
    s0.on_bytes_at(c, &mut frame(r#"{"op":"ping","id":1}"#), t0 + std::time::Duration::from_millis(10_100));
    s0.sweep_liveness(t0 + std::time::Duration::from_millis(10_400));
    assert_eq!(s0.conns[c].phase, Phase::Open);
    assert_eq!(s0.counters.ping_timeouts, 0);
    // A connection that really went quiet is still closed, on time.
    for ms in [10_800, 11_200, 11_600, 12_000, 12_400] {
        s0.sweep_liveness(t0 + std::time::Duration::from_millis(ms));
    }
    assert_eq!(s0.conns[c].phase, Phase::Closing);
    assert_eq!(s0.counters.ping_timeouts, 1);
}
