//! The deterministic multi-shard harness: N `ShardCore`s wired by a real
//! mesh of rtrb rings, simulated time, no sockets, no executors, no threads.
//! The test decides which shard runs next and what each connection's writer
//! takes, so interleavings that are rare over sockets are replayed exactly.
//!
//! The scripted tests cover subscribe/publish/resume/re-sync/overflow/fanout
//! slicing/drain ordering; the property test runs random interleavings and
//! checks the stream invariants of docs/PROTOCOL.md: per topic, a
//! subscriber sees seqs in order and contiguous from its `subscribed` seq
//! (a hole only as a `gap`), everything acked reaches every subscriber that
//! stayed, nothing follows `unsubscribed`, and interest counts return to
//! zero when everyone leaves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;
use shardcast::config::Limits;
use shardcast::conn::core::{Policy, ShardCore};
use shardcast::conn::Phase;
use shardcast::mesh::{self, MeshMsg};
use shardcast::topic::PartitionMap;

/// One connection as the harness sees it.
struct SimConn {
    shard: usize,
    idx: usize,
    /// Everything its writer took, decoded, in wire order.
    log: Vec<Value>,
    /// A close frame was written.
    closed: Option<u16>,
    /// The socket is gone (its slot may now hold another connection).
    gone: bool,
}

/// N shards, their rings, a clock.
struct Sim {
    cores: Vec<ShardCore>,
    inboxes: Vec<Vec<(usize, rtrb::Consumer<MeshMsg>)>>,
    now: Instant,
    conns: Vec<SimConn>,
}

impl Sim {
    fn new(shards: usize, ring: usize, tweak: impl Fn(&mut Limits, &mut Policy)) -> Sim {
        let map = PartitionMap { partitions: 1024, shards };
        let mut inboxes = Vec::new();
        let mut cores = Vec::new();
        let (mut limits, mut policy) = (Limits::default(), Policy::default());
        policy.rates.connection_per_sec = 1e9;
        policy.rates.connection_burst = 1e9;
        policy.rates.tenant_per_sec = 1e9;
        policy.rates.tenant_burst = 1e9;
        policy.rates.control_per_sec = 1e9;
        policy.rates.control_burst = 1e9;
        tweak(&mut limits, &mut policy);
        for (id, mut e) in mesh::build(shards, ring).unwrap().into_iter().enumerate() {
            let outboxes = std::mem::take(&mut e.outboxes);
            cores.push(ShardCore::with_policy(id, map, limits.clone(), outboxes, policy.clone()));
            inboxes.push(e.inboxes);
        }
        let now = Instant::now();
        for c in &mut cores {
            c.tick(now);
        }
        Sim { cores, inboxes, now, conns: Vec::new() }
    }

    /// A topic name owned by `shard`.
    fn topic_on(&self, shard: usize, prefix: &str) -> String {
        (0..10_000).map(|i| format!("{prefix}/r{i}")).find(|t| self.cores[0].map.owner(t) == shard).unwrap()
    }

    /// Opens a WebSocket connection on `shard` (the upgrade is skipped).
    fn connect(&mut self, shard: usize) -> usize {
        let r = self.cores[shard].accept(self.now).expect("below the connection limit");
        self.cores[shard].conns[r.idx as usize].phase = Phase::Open;
        self.conns.push(SimConn { shard, idx: r.idx as usize, log: Vec::new(), closed: None, gone: false });
        self.conns.len() - 1
    }

    /// The client of `c` sends one text frame.
    fn send(&mut self, c: usize, text: &str) {
        let mut frame = Vec::new();
        shardcast::proto::frame::write_client_frame(1, true, text.as_bytes(), [7, 1, 3, 5], &mut frame);
        let (s, idx) = (self.conns[c].shard, self.conns[c].idx);
        self.cores[s].on_bytes_at(idx, &mut frame, self.now);
    }

    /// Shard `s` takes one entry as its mesh task does: its parked
    /// fanouts, or else a batch of up to `max` messages from its rings; then
    /// it retries its overflow queues.
    fn step(&mut self, s: usize, max: usize) -> usize {
        let core = &mut self.cores[s];
        core.tick(self.now);
        let mut n = 0;
        if !core.run_fanout() {
            core.begin_batch();
            for (from, cons) in self.inboxes[s].iter_mut() {
                while n < max {
                    let Ok(m) = cons.pop() else { break };
                    core.on_mesh(*from, m);
                    n += 1;
                }
            }
            core.end_batch();
        }
        for o in core.outboxes.iter_mut().flatten() {
            o.flush_overflow();
        }
        n
    }

    /// Whether any shard has work left.
    fn busy(&self) -> bool {
        self.cores.iter().any(|c| c.fanout_pending() || c.outboxes.iter().flatten().any(|o| o.overflow_len() > 0))
            || self.inboxes.iter().flatten().any(|(_, c)| c.slots() > 0)
    }

    /// Runs every shard until the mesh is quiet.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.busy() {
                return;
            }
            for s in 0..self.cores.len() {
                self.step(s, usize::MAX);
            }
        }
        panic!("the mesh never went quiet");
    }

    /// The writer of `c` takes up to `max` bytes (a frame is never split).
    fn read(&mut self, c: usize, max: usize) {
        let (s, idx) = (self.conns[c].shard, self.conns[c].idx);
        if self.conns[c].gone {
            return;
        }
        let Some(conn) = self.cores[s].conns.get_mut(idx) else { return };
        let mut out = Vec::new();
        conn.out.fill(&mut out, max);
        let mut pos = 0;
        while pos < out.len() {
            let op = out[pos] & 0x0f;
            let (h, len) = match out[pos + 1] & 0x7f {
                126 => (4, u16::from_be_bytes([out[pos + 2], out[pos + 3]]) as usize),
                127 => (10, u64::from_be_bytes(out[pos + 2..pos + 10].try_into().unwrap()) as usize),
                n => (2, n as usize),
            };
            let body = &out[pos + h..pos + h + len];
            match op {
                1 => self.conns[c].log.push(serde_json::from_slice(body).expect("valid JSON")),
                8 => self.conns[c].closed = Some(u16::from_be_bytes([body[0], body[1]])),
                other => panic!("unexpected opcode {other}"),
            }
            pos += h + len;
        }
    }

    fn read_all(&mut self) {
        for c in 0..self.conns.len() {
            self.read(c, usize::MAX);
        }
    }

    /// The socket of `c` is gone.
    fn disconnect(&mut self, c: usize) {
        let (s, idx) = (self.conns[c].shard, self.conns[c].idx);
        if !std::mem::replace(&mut self.conns[c].gone, true) {
            self.cores[s].remove(idx);
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
    }

    /// The messages of `c` with `op`.
    fn ops<'a>(&'a self, c: usize, op: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.conns[c].log.iter().filter(move |m| m["op"] == op)
    }

    fn seqs(&self, c: usize, topic: &str) -> Vec<u64> {
        self.ops(c, "msg").filter(|m| m["topic"] == topic).map(|m| m["seq"].as_u64().unwrap()).collect()
    }

    fn sub(&mut self, c: usize, topic: &str) {
        self.send(c, &format!(r#"{{"op":"sub","id":1,"topic":"{topic}"}}"#));
    }

    fn publish(&mut self, c: usize, topic: &str, data: &str) {
        self.send(c, &format!(r#"{{"op":"pub","id":2,"topic":"{topic}","data":{data}}}"#));
    }

    /// Every shard runs its group/request timers due by now.
    fn timers(&mut self) {
        for c in &mut self.cores {
            while c.groups_tick(self.now) {}
        }
    }

    fn join(&mut self, c: usize, topic: &str, group: &str, extra: &str) {
        self.send(c, &format!(r#"{{"op":"sub","id":3,"topic":"{topic}","group":"{group}"{extra}}}"#));
    }

    fn settle_msg(&mut self, c: usize, topic: &str, group: &str, seq: u64, outcome: &str) {
        self.send(
            c,
            &format!(r#"{{"op":"settle","topic":"{topic}","group":"{group}","seq":{seq},"outcome":"{outcome}"}}"#),
        );
    }

    /// (seq, attempt) of the group msgs `c` got.
    fn handoffs(&self, c: usize) -> Vec<(u64, u64)> {
        self.ops(c, "msg")
            .filter(|m| m.get("group").is_some())
            .map(|m| (m["seq"].as_u64().unwrap(), m["attempt"].as_u64().unwrap()))
            .collect()
    }

    /// Advances `ms` in 10 ms steps, running timers and the mesh each step.
    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms.div_ceil(10) {
            self.advance(10);
            self.timers();
            self.settle();
        }
        self.read_all();
    }

    fn assert_clean(&self) {
        for c in &self.cores {
            assert_eq!(c.counters.internal_errors, 0, "shard {} internal errors", c.id);
        }
    }
}

/// A fanout larger than the slice budget goes out over several slices, in
/// order, and every subscriber gets every publication exactly once.
#[test]
fn fanout_over_the_budget_is_sliced_and_stays_in_order() {
    let mut sim = Sim::new(2, 1024, |l, _| l.fanout_budget = 10);
    let topic = sim.topic_on(0, "big");
    let subs: Vec<usize> = (0..35).map(|_| sim.connect(1)).collect();
    for &c in &subs {
        sim.sub(c, &topic);
    }
    sim.settle();
    let p = sim.connect(0);
    for i in 0..3 {
        sim.publish(p, &topic, &i.to_string());
    }
    // Shard 0 sequenced all three and pushed them to shard 1's ring.
    sim.step(0, usize::MAX);
    // One slice of shard 1: the first publication reaches 10 subscribers.
    sim.step(1, usize::MAX);
    let got = |sim: &Sim| sim.cores[1].counters.deliveries;
    assert_eq!(got(&sim), 10, "one slice makes at most fanout_budget deliveries");
    assert!(sim.cores[1].fanout_pending());
    sim.step(1, usize::MAX);
    assert_eq!(got(&sim), 20);
    sim.settle();
    assert_eq!(got(&sim), 105);
    sim.read_all();
    for &c in &subs {
        assert_eq!(sim.seqs(c, &topic), vec![1, 2, 3], "conn {c}");
    }
    assert!(sim.cores[1].counters.fanout_parked >= 10);
    sim.assert_clean();
}

/// A subscriber joining while a fanout is parked does not get the parked
/// publication (its `subscribed` seq already covers it), and one leaving
/// does not shift the others out of it.
#[test]
fn joins_and_leaves_during_a_parked_fanout() {
    let mut sim = Sim::new(2, 1024, |l, _| l.fanout_budget = 5);
    let topic = sim.topic_on(0, "join");
    let subs: Vec<usize> = (0..20).map(|_| sim.connect(1)).collect();
    for &c in &subs {
        sim.sub(c, &topic);
    }
    sim.settle();
    let p = sim.connect(0);
    sim.publish(p, &topic, "1");
    sim.step(0, usize::MAX);
    sim.step(1, usize::MAX);
    assert!(sim.cores[1].fanout_pending());
    // One leaves, one joins, before the fanout finishes.
    sim.disconnect(subs[0]);
    let late = sim.connect(1);
    sim.sub(late, &topic);
    sim.settle();
    sim.publish(p, &topic, "2");
    sim.settle();
    sim.read_all();
    for &c in &subs[1..] {
        assert_eq!(sim.seqs(c, &topic), vec![1, 2], "conn {c}");
    }
    let sub = sim.ops(late, "subscribed").next().unwrap_or_else(|| panic!("{:?}", sim.conns[late].log)).clone();
    assert_eq!(sub["seq"], 1);
    assert_eq!(sim.seqs(late, &topic), vec![2], "nothing at or below its subscribed seq");
    sim.assert_clean();
}

/// Resume after a reconnect: the missed publications are replayed in order,
/// then live ones follow with no duplicate; a re-sync of a live subscription
/// replaces what was queued for it.
#[test]
fn resume_and_resync_replay_in_order() {
    let mut sim = Sim::new(2, 1024, |_, _| {});
    let topic = sim.topic_on(1, "resume");
    let a = sim.connect(0);
    sim.sub(a, &topic);
    let p = sim.connect(1);
    sim.settle();
    for i in 1..=3 {
        sim.publish(p, &topic, &i.to_string());
    }
    sim.settle();
    sim.read_all();
    assert_eq!(sim.seqs(a, &topic), vec![1, 2, 3]);
    let epoch = sim.ops(a, "msg").last().unwrap()["epoch"].as_str().unwrap().to_string();
    sim.disconnect(a);
    for i in 4..=6 {
        sim.publish(p, &topic, &i.to_string());
    }
    let b = sim.connect(0);
    sim.send(b, &format!(r#"{{"op":"sub","id":9,"topic":"{topic}","since":{{"seq":3,"epoch":"{epoch}"}}}}"#));
    sim.publish(p, &topic, "7");
    sim.settle();
    sim.read_all();
    let subscribed = sim.ops(b, "subscribed").next().unwrap().clone();
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(sim.seqs(b, &topic), vec![4, 5, 6, 7]);
    // A re-sync while messages are still queued: only the replay remains.
    for i in 8..=9 {
        sim.publish(p, &topic, &i.to_string());
    }
    sim.settle();
    sim.send(b, &format!(r#"{{"op":"sub","id":10,"topic":"{topic}","since":{{"seq":7,"epoch":"{epoch}"}}}}"#));
    sim.settle();
    sim.read_all();
    assert_eq!(sim.seqs(b, &topic), vec![4, 5, 6, 7, 8, 9], "no duplicate after the re-sync");
    sim.assert_clean();
}

/// `unsubscribed` is the last word on a topic: what was queued for it is
/// not written after the reply (PROTOCOL.md: "no more msg for it").
#[test]
fn nothing_follows_unsubscribed() {
    let mut sim = Sim::new(2, 1024, |_, _| {});
    let topic = sim.topic_on(0, "unsub");
    let a = sim.connect(1);
    sim.sub(a, &topic);
    sim.settle();
    sim.read_all();
    let p = sim.connect(0);
    for i in 0..5 {
        sim.publish(p, &topic, &i.to_string());
    }
    sim.settle();
    // Five frames are queued (the writer has not run); the client unsubscribes.
    sim.send(a, &format!(r#"{{"op":"unsub","id":3,"topic":"{topic}"}}"#));
    sim.settle();
    sim.read_all();
    let log = &sim.conns[a].log;
    let at = log.iter().position(|m| m["op"] == "unsubscribed").expect("unsubscribed");
    assert!(log[at..].iter().all(|m| m["op"] != "msg"), "{log:?}");
    sim.assert_clean();
}

/// A subscriber shard that stops draining: the owner refuses publishes with
/// `overloaded` once the ring holds only the control reserve, no seq is
/// skipped, and control answers queue in order and all arrive.
#[test]
fn a_stalled_shard_gets_overloaded_refusals_and_no_hole() {
    let mut sim = Sim::new(2, 128, |_, _| {});
    let topic = sim.topic_on(0, "stall");
    let a = sim.connect(1);
    sim.sub(a, &topic);
    sim.settle();
    let p = sim.connect(0);
    for i in 0..200 {
        sim.publish(p, &topic, &i.to_string());
    }
    sim.read(p, usize::MAX);
    let acked = sim.ops(p, "ack").count();
    let refused = sim.ops(p, "error").filter(|e| e["code"] == "overloaded").count();
    assert_eq!(acked + refused, 200);
    assert_eq!(acked, 128 - mesh::ring::CONTROL_RESERVE);
    sim.settle();
    sim.read_all();
    assert_eq!(sim.seqs(a, &topic), (1..=acked as u64).collect::<Vec<_>>());
    sim.assert_clean();
}

/// A shard that reads its clients but does not drain its rings (stalled
/// mesh task) cannot make a peer queue answers without bound: requests stop
/// at the answer credit (the ring's capacity), are refused `overloaded`, and
/// the peer's control overflow for it stays under that credit. Before the
/// credit, the overflow grew by one answer per publish.
#[test]
fn answers_owed_to_a_stalled_shard_are_bounded() {
    let ring = 128;
    let mut sim = Sim::new(2, ring, |_, _| {});
    let topic = sim.topic_on(1, "credit");
    let p = sim.connect(0);
    for i in 0..2000 {
        sim.publish(p, &topic, &i.to_string());
        // The owner keeps up; shard 0 never takes its answers.
        sim.step(1, usize::MAX);
    }
    let high = sim.cores[1].outboxes[0].as_ref().unwrap().overflow_high_water;
    assert!(high <= ring, "overflow for the stalled shard reached {high} (> {ring})");
    let refused_credit = sim.cores[0].outboxes[1].as_ref().unwrap().credit_refusals;
    assert!(refused_credit > 0);
    sim.settle();
    sim.read(p, usize::MAX);
    let acked = sim.ops(p, "ack").count();
    let refused = sim.ops(p, "error").filter(|e| e["code"] == "overloaded").count();
    assert_eq!(acked + refused, 2000, "every publish answered once");
    assert!(acked <= ring, "acked {acked}");
    assert_eq!(sim.cores[0].outboxes[1].as_ref().unwrap().owed, 0, "all credit back");
    // The shard catches up and publishing works again.
    sim.publish(p, &topic, "0");
    sim.settle();
    sim.read(p, usize::MAX);
    assert_eq!(sim.ops(p, "ack").count(), acked + 1);
    sim.assert_clean();
}

/// The held-ack seam (`AckMode::AfterConfirm`, what durability and the
/// cluster plug into): subscribers get publications at once, the publisher's
/// ack waits for `confirm`, acks go out in seq order, and a retried
/// `msg_id` of an unconfirmed publication waits with it.
#[test]
fn acks_can_wait_for_a_confirmation() {
    let mut sim = Sim::new(2, 1024, |_, p| p.ack = shardcast::conn::core::AckMode::AfterConfirm);
    let topic = sim.topic_on(0, "durable");
    let s = sim.connect(1);
    sim.sub(s, &topic);
    let p = sim.connect(1);
    sim.settle();
    for i in 1..=3 {
        sim.send(p, &format!(r#"{{"op":"pub","id":{i},"topic":"{topic}","data":{i},"msg_id":"m{i}"}}"#));
    }
    // A retry of m2 before it is confirmed.
    sim.send(p, &format!(r#"{{"op":"pub","id":22,"topic":"{topic}","data":2,"msg_id":"m2"}}"#));
    sim.settle();
    sim.read_all();
    assert_eq!(sim.seqs(s, &topic), vec![1, 2, 3], "delivery does not wait");
    assert_eq!(sim.ops(p, "ack").count(), 0, "no ack before the confirmation");
    sim.cores[0].confirm(&topic, 2);
    sim.settle();
    sim.read_all();
    let acks: Vec<(u64, u64, bool)> =
        sim.ops(p, "ack").map(|a| (a["id"].as_u64().unwrap(), a["seq"].as_u64().unwrap(), a["dup"] == true)).collect();
    assert_eq!(acks, vec![(1, 1, false), (2, 2, false), (22, 2, true)]);
    sim.cores[0].confirm(&topic, 3);
    // Confirmed seqs are acked at once from now on.
    sim.send(p, &format!(r#"{{"op":"pub","id":5,"topic":"{topic}","data":5,"msg_id":"m1"}}"#));
    sim.settle();
    sim.read_all();
    let ids: Vec<u64> = sim.ops(p, "ack").map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 22, 3, 5]);
    assert_eq!(sim.cores[0].counters.acks_held, 4);
    sim.assert_clean();
}

/// Drain: every publication acked before the drain reaches each subscriber
/// before its `drain` notice and close 1012, on every shard.
#[test]
fn drain_delivers_everything_acked_before_closing() {
    let mut sim = Sim::new(3, 1024, |l, _| l.fanout_budget = 4);
    let topics: Vec<String> = (0..3).map(|s| sim.topic_on(s, "drain")).collect();
    let subs: Vec<usize> = (0..9).map(|i| sim.connect(i % 3)).collect();
    for &c in &subs {
        for t in &topics {
            sim.sub(c, t);
        }
    }
    sim.settle();
    let p = sim.connect(0);
    for i in 0..10 {
        sim.publish(p, &topics[i % 3], &i.to_string());
    }
    for s in 0..3 {
        sim.cores[s].begin_drain();
    }
    sim.settle();
    sim.read_all();
    for &c in &subs {
        for t in &topics {
            let n = (0..10).filter(|i| topics[i % 3] == *t).count() as u64;
            assert_eq!(sim.seqs(c, t), (1..=n).collect::<Vec<_>>(), "conn {c} {t}");
        }
        let log = &sim.conns[c].log;
        assert_eq!(log.last().unwrap()["op"], "drain", "{log:?}");
        assert_eq!(sim.conns[c].closed, Some(1012));
    }
    sim.assert_clean();
}

/// Idle topics past the table bound are evicted without touching a topic
/// with subscribers, in simulated time; quiet topics release their replay
/// memory once `replay.max_age` has passed (the sweep takes time in).
#[test]
fn eviction_and_age_in_simulated_time() {
    let mut sim = Sim::new(1, 1024, |l, p| {
        l.max_topics_per_shard = 8;
        p.replay.max_age_ms = 1000;
    });
    let kept = "t/kept".to_string();
    let a = sim.connect(0);
    sim.sub(a, &kept);
    let p = sim.connect(0);
    for i in 0..50 {
        sim.publish(p, &format!("t/idle{i}"), "1");
        sim.advance(1);
    }
    sim.publish(p, &kept, "1");
    sim.settle();
    assert!(sim.cores[0].owner.len() <= 8);
    assert!(sim.cores[0].owner.bytes() > 0);
    sim.advance(2000);
    let now = sim.now;
    while sim.cores[0].owner.sweep(now, 4096) {}
    assert_eq!(sim.cores[0].owner.retained(), (0, 0), "replay past max_age released by the sweep");
    sim.publish(p, &kept, "2");
    sim.read_all();
    assert_eq!(sim.seqs(a, &kept), vec![1, 2], "the subscribed topic kept its seq across evictions");
    sim.assert_clean();
}

// ---- randomized interleavings ----

#[derive(Debug, Clone)]
enum Op {
    Sub { c: usize, t: usize },
    Unsub { c: usize, t: usize },
    Pub { c: usize, t: usize },
    Step { s: usize, n: usize },
    Read { c: usize, max: usize },
    Reconnect { c: usize },
    Advance { ms: u64 },
}

const SHARDS: usize = 3;
const CONNS: usize = 6;
const TOPICS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..CONNS, 0..TOPICS).prop_map(|(c, t)| Op::Sub { c, t }),
        1 => (0..CONNS, 0..TOPICS).prop_map(|(c, t)| Op::Unsub { c, t }),
        6 => (0..CONNS, 0..TOPICS).prop_map(|(c, t)| Op::Pub { c, t }),
        6 => (0..SHARDS, 1..8usize).prop_map(|(s, n)| Op::Step { s, n }),
        3 => (0..CONNS, prop_oneof![Just(1usize), Just(200), Just(usize::MAX)]).prop_map(|(c, max)| Op::Read { c, max }),
        1 => (0..CONNS).prop_map(|c| Op::Reconnect { c }),
        1 => (1..50u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the model knows of one (connection, topic).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    None,
    Subscribing,
    Subscribed,
    Unsubscribing,
}

/// Checks one connection's log against the stream rules; returns, per
/// topic, the next seq it expects (None when not subscribed at the end).
fn check_log(log: &[Value]) -> Result<HashMap<String, Option<u64>>, String> {
    let mut next: HashMap<String, Option<u64>> = HashMap::new();
    let mut last_ack: HashMap<String, u64> = HashMap::new();
    for m in log {
        let topic = m["topic"].as_str().unwrap_or_default().to_string();
        match m["op"].as_str().unwrap() {
            "subscribed" => {
                next.insert(topic, Some(m["seq"].as_u64().unwrap() + 1));
            }
            "unsubscribed" => {
                next.insert(topic, None);
            }
            "msg" => {
                let seq = m["seq"].as_u64().unwrap();
                match next.get(&topic).copied().flatten() {
                    Some(n) if n == seq => {
                        next.insert(topic, Some(seq + 1));
                    }
                    other => return Err(format!("msg {topic} seq {seq}, expected {other:?}: {m}")),
                }
            }
            "gap" => {
                let (from, to) = (m["from"].as_u64().unwrap(), m["to"].as_u64().unwrap());
                match next.get(&topic).copied().flatten() {
                    Some(n) if n == from && to >= from => {
                        next.insert(topic, Some(to + 1));
                    }
                    other => return Err(format!("gap {topic} {from}..{to}, expected {other:?}")),
                }
            }
            "ack" => {
                let seq = m["seq"].as_u64().unwrap();
                if let Some(prev) = last_ack.insert(topic.clone(), seq) {
                    if seq <= prev {
                        return Err(format!("acks of {topic} out of order: {prev} then {seq}"));
                    }
                }
            }
            "error" => {
                let code = m["code"].as_str().unwrap();
                if code != "overloaded" {
                    return Err(format!("unexpected error {m}"));
                }
            }
            other => return Err(format!("unexpected op {other}: {m}")),
        }
    }
    Ok(next)
}

fn run_interleaving(ops: &[Op], budget: usize, ring: usize, soft: usize) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(SHARDS, ring, |l, _| {
        l.fanout_budget = budget;
        l.outbound_soft_bytes = soft;
        l.outbound_hard_bytes = 1 << 31;
    });
    let topics: Vec<String> = (0..TOPICS).map(|t| sim.topic_on(t % SHARDS, &format!("p{t}"))).collect();
    // Model: the sim connection id of each logical client, and what it asked.
    let mut ids: Vec<usize> = (0..CONNS).map(|c| sim.connect(c % SHARDS)).collect();
    let mut want = [[Want::None; TOPICS]; CONNS];
    let mut retired: Vec<usize> = Vec::new();
    let mut seen = [0usize; CONNS];
    for o in ops {
        match *o {
            Op::Sub { c, t } if want[c][t] == Want::None => {
                sim.send(ids[c], &format!(r#"{{"op":"sub","id":{},"topic":"{}"}}"#, 1000 + t, topics[t]));
                want[c][t] = Want::Subscribing;
            }
            Op::Unsub { c, t } if want[c][t] == Want::Subscribed => {
                sim.send(ids[c], &format!(r#"{{"op":"unsub","id":{},"topic":"{}"}}"#, 2000 + t, topics[t]));
                want[c][t] = Want::Unsubscribing;
            }
            Op::Pub { c, t } => sim.publish(ids[c], &topics[t], "{\"x\":1}"),
            Op::Step { s, n } => {
                sim.step(s, n);
            }
            Op::Read { c, max } => sim.read(ids[c], max),
            Op::Reconnect { c } => {
                sim.read(ids[c], usize::MAX);
                sim.disconnect(ids[c]);
                retired.push(ids[c]);
                ids[c] = sim.connect(c % SHARDS);
                want[c] = [Want::None; TOPICS];
                seen[c] = 0;
            }
            Op::Advance { ms } => sim.advance(ms),
            _ => {}
        }
        // The model learns answers as the logs show them.
        for c in 0..CONNS {
            let log = &sim.conns[ids[c]].log;
            for m in &log[seen[c]..] {
                let t = topics.iter().position(|t| m["topic"] == t.as_str());
                match (m["op"].as_str().unwrap(), t, m["id"].as_u64()) {
                    ("subscribed", Some(t), _) => want[c][t] = Want::Subscribed,
                    ("unsubscribed", Some(t), _) => want[c][t] = Want::None,
                    ("error", _, Some(id)) if (1000..1000 + TOPICS as u64).contains(&id) => {
                        want[c][(id - 1000) as usize] = Want::None
                    }
                    ("error", _, Some(id)) if (2000..2000 + TOPICS as u64).contains(&id) => {
                        want[c][(id - 2000) as usize] = Want::Subscribed
                    }
                    _ => {}
                }
            }
            seen[c] = log.len();
        }
    }
    sim.settle();
    sim.read_all();
    // The last seq of every topic, from the owners.
    let last_seq: BTreeMap<String, u64> =
        sim.cores.iter().flat_map(|c| c.owner.busiest(usize::MAX)).map(|(t, s)| (t.to_string(), s)).collect();
    for (i, conn) in sim.conns.iter().enumerate() {
        let next = check_log(&conn.log).map_err(|e| TestCaseError::fail(format!("conn {i}: {e}")))?;
        if retired.contains(&i) {
            continue;
        }
        // Still subscribed at the end: it saw everything up to the last seq.
        for (topic, n) in next {
            if let Some(n) = n {
                let last = last_seq.get(&topic).copied().unwrap_or(0);
                prop_assert_eq!(n, last + 1, "conn {} topic {} stopped short (no gap said so)", i, topic);
            }
        }
    }
    // Everyone leaves: interest returns to zero everywhere.
    for &c in &ids {
        sim.disconnect(c);
    }
    sim.settle();
    for core in &sim.cores {
        prop_assert_eq!(core.owner.total_interest(), 0, "shard {} interest", core.id);
        prop_assert_eq!(core.local.subscriptions(), 0);
        prop_assert!(!core.fanout_pending());
        prop_assert_eq!(core.counters.internal_errors, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random interleavings of subscribe, unsubscribe, publish, reconnect,
    /// shard steps and partial writes over 3 shards, with a tiny fanout
    /// budget (slicing everywhere), a small ring (refusals and control
    /// overflow) and a small soft limit (drops, which must show as `gap`).
    #[test]
    fn random_interleavings_keep_the_stream_rules(
        ops in proptest::collection::vec(op(), 1..160),
        budget in prop_oneof![Just(1usize), Just(2), Just(16384)],
        ring in prop_oneof![Just(80usize), Just(1024)],
        soft in prop_oneof![Just(1usize << 30), Just(400)],
    ) {
        run_interleaving(&ops, budget, ring, soft)?;
    }
}

/// Consumer groups in simulated time: a missed `ack_wait_ms` redelivers
/// (not a moment before), `max_deliver` ends in the dead-letter topic on
/// another shard with the `dead` object.
#[test]
fn group_deadlines_redeliver_and_dead_letter_in_simulated_time() {
    let mut sim = Sim::new(2, 1024, |_, p| p.groups.backoff_base_ms = 100);
    let topic = sim.topic_on(0, "jobs");
    let member = sim.connect(1);
    sim.join(member, &topic, "w", r#","ack":true,"ack_wait_ms":1000,"max_deliver":3"#);
    let dlq_reader = sim.connect(1);
    sim.sub(dlq_reader, &format!("{topic}/dlq"));
    sim.settle();
    let p = sim.connect(0);
    sim.publish(p, &topic, r#"{"job":1}"#);
    sim.settle();
    sim.read_all();
    assert_eq!(sim.handoffs(member), [(1, 1)]);
    sim.run_for(990);
    assert_eq!(sim.handoffs(member), [(1, 1)], "not before ack_wait_ms");
    // The deadline, then a backoff of at most min(ack_wait, 100 ms).
    sim.run_for(10 + 100 + 10);
    assert_eq!(sim.handoffs(member), [(1, 1), (1, 2)]);
    sim.run_for(1000 + 200 + 10);
    assert_eq!(sim.handoffs(member), [(1, 1), (1, 2), (1, 3)]);
    sim.run_for(1000 + 10);
    let dead: Vec<&Value> = sim.ops(dlq_reader, "msg").collect();
    assert_eq!(dead.len(), 1, "{:?}", sim.conns[dlq_reader].log);
    assert_eq!(dead[0]["data"], serde_json::json!({"job":1}));
    assert_eq!(dead[0]["dead"]["attempts"], 3);
    assert_eq!(dead[0]["dead"]["reason"], "ack_wait");
    sim.run_for(5000);
    assert_eq!(sim.handoffs(member).len(), 3, "nothing after the dead letter");
    sim.assert_clean();
}

/// Backoff: the wait before attempt n+1 is at most
/// min(ack_wait, base * 2^(n-1)) (one tick of slack), and it grows.
#[test]
fn group_backoff_is_capped_exponential_with_jitter() {
    let mut sim = Sim::new(2, 1024, |_, p| p.groups.backoff_base_ms = 100);
    let topic = sim.topic_on(1, "retry");
    let member = sim.connect(0);
    sim.join(member, &topic, "w", r#","ack":true,"ack_wait_ms":60000,"max_deliver":20"#);
    sim.settle();
    let p = sim.connect(1);
    sim.publish(p, &topic, "1");
    sim.settle();
    sim.read_all();
    let mut waits = Vec::new();
    for attempt in 1..=7u64 {
        assert_eq!(sim.handoffs(member).last(), Some(&(1, attempt)));
        sim.settle_msg(member, &topic, "w", 1, "retry");
        sim.settle();
        let cap = 100u64 << (attempt - 1);
        let mut waited = 0;
        while sim.handoffs(member).len() as u64 == attempt {
            sim.run_for(10);
            waited += 10;
            assert!(waited <= cap + 20, "attempt {attempt}: waited {waited} ms, cap {cap} ms");
        }
        waits.push(waited);
    }
    assert!(waits[4..].iter().any(|w| *w > 200), "the backoff grows: {waits:?}");
    sim.assert_clean();
}

/// Hand-over: a member that goes away gives what it held to the others,
/// who get it as a later attempt once they have room; every publication
/// is settled `done` exactly once.
#[test]
fn group_hand_over_on_disconnect_in_simulated_time() {
    let mut sim = Sim::new(2, 1024, |_, p| p.groups.backoff_base_ms = 10);
    let topic = sim.topic_on(0, "hand");
    let a = sim.connect(0);
    let b = sim.connect(1);
    sim.join(a, &topic, "w", r#","ack":true,"max_inflight":2"#);
    sim.join(b, &topic, "w", r#","ack":true,"max_inflight":2"#);
    sim.settle();
    let p = sim.connect(1);
    for i in 0..4 {
        sim.publish(p, &topic, &i.to_string());
    }
    sim.settle();
    sim.read_all();
    assert_eq!(sim.handoffs(a).len(), 2, "most free slots first: {:?}", sim.handoffs(a));
    assert_eq!(sim.handoffs(b).len(), 2);
    sim.disconnect(a);
    sim.settle();
    sim.run_for(50);
    assert_eq!(sim.handoffs(b).len(), 2, "b is full until it settles");
    let mut done = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let open: Vec<(u64, u64)> = sim.handoffs(b).into_iter().filter(|(s, _)| !done.contains(s)).collect();
        let Some(&(seq, _)) = open.first() else { break };
        sim.settle_msg(b, &topic, "w", seq, "done");
        assert!(done.insert(seq), "done twice: {seq}");
        sim.settle();
        sim.run_for(50);
    }
    assert_eq!(done.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
    let second: Vec<(u64, u64)> = sim.handoffs(b).into_iter().filter(|(_, at)| *at == 2).collect();
    assert_eq!(second.len(), 2, "a's two came again as attempt 2: {:?}", sim.handoffs(b));
    sim.assert_clean();
}

/// `groups.empty_expire_ms`: a group without members keeps its work that
/// long, then is dropped with it (counted) and its interest given back.
#[test]
fn an_empty_group_expires_in_simulated_time() {
    let mut sim = Sim::new(2, 1024, |_, p| p.groups.empty_expire_ms = 1000);
    let topic = sim.topic_on(0, "gone");
    let m = sim.connect(1);
    sim.join(m, &topic, "w", r#","ack":true"#);
    sim.settle();
    sim.disconnect(m);
    sim.settle();
    let p = sim.connect(0);
    sim.publish(p, &topic, "1");
    sim.settle();
    sim.run_for(900);
    assert_eq!(sim.cores[0].counters.groups_expired, 0, "kept until empty_expire_ms");
    sim.run_for(200);
    assert_eq!(sim.cores[0].counters.groups_expired, 1);
    assert_eq!(sim.cores[0].counters.group_dropped_on_expiry, 1);
    assert_eq!(sim.cores[0].groups.totals(), (0, 0, 0, 0));
    sim.assert_clean();
}
