//! Consumer groups (PROTOCOL-EXTENSIONS §2).
//!
//! The owner's side: a topic's groups live on the shard that owns the
//! topic, next to its seq. Each sequenced publication is offered to every
//! group of its topic and handed to exactly one member (the one with the
//! most free in-flight slots, ties round robin); with `ack` it stays in
//! flight until settled, redelivered after a jittered exponential backoff
//! on `retry`, on a missed `ack_wait_ms` deadline or when its member goes,
//! and published on the dead-letter topic after `max_deliver` attempts or
//! `dead`. Deadlines, backoffs and empty-group expiry are entries in one
//! timer wheel per shard (`topic::wheel`), never a timer per message.
//! What a group holds is bounded (`[groups]`); a publish that would pass a
//! bound is refused `overloaded` before it is sequenced.
//!
//! The edge's side: joins, leaves and settles go to the owner; a hand-off
//! is queued on its one connection (in the control lane: never dropped for
//! a slow reader, bounded by the member's `max_inflight` with `ack`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{ShardCore, OVERLOADED_RETRY_MS};
use super::stats::{GroupStats, Latency};
use crate::mesh::msg::GroupSpec;
use crate::mesh::{ConnRef, MeshMsg, PublishReq, ReplyKind, Requester, SharedPub};
use crate::proto::message::{self, ErrorCode, MsgFields, Outcome};
use crate::topic::owner::SubscribeOutcome;
use crate::topic::wheel::{TimerId, Wheel};

/// The wheel's tick: deadlines fire within about a millisecond of their
/// time (a request's `timeout_ms` is a promise to a caller).
pub const GROUP_TICK: Duration = Duration::from_millis(1);
/// Longest the sweeper sleeps (an insert due earlier wakes it at once).
pub const GROUP_IDLE_TICK: Duration = Duration::from_secs(1);
/// Wheel slots (a lap is about 4 s; longer deadlines wait laps).
const WHEEL_SLOTS: usize = 4096;
/// Timer expiries handled per poll before the shard does other work.
const TIMER_BUDGET: usize = 1024;

/// A member: its shard and connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    /// The member's shard.
    pub shard: usize,
    /// Its connection there.
    pub conn: ConnRef,
}

#[derive(Debug)]
struct Member {
    at: MemberRef,
    max_inflight: u32,
    inflight: u32,
}

/// A publication a group holds, with the attempts made so far.
#[derive(Debug)]
pub struct Job {
    publ: SharedPub,
    attempts: u32,
}

#[derive(Debug)]
struct Held {
    job: Job,
    member: MemberRef,
    timer: TimerId,
    handed_at: Instant,
}

/// One consumer group of one topic.
#[derive(Debug)]
struct Group {
    name: Arc<str>,
    ack: bool,
    ack_wait: Duration,
    max_deliver: u32,
    dead_letter: Arc<str>,
    members: Vec<Member>,
    cursor: usize,
    /// Not handed out yet, in order.
    ready: VecDeque<Job>,
    /// Waiting out a backoff in the wheel.
    backoff: usize,
    /// Handed out, not settled (ack groups), by seq.
    inflight: HashMap<u64, Held>,
    /// Bytes of every publication the group holds.
    bytes: usize,
    empty_since: Option<Instant>,
    stats: GroupCounters,
}

/// A group's own counters (its metrics).
#[derive(Debug, Default)]
struct GroupCounters {
    handoffs: u64,
    redeliveries: u64,
    done: u64,
    dead_lettered: u64,
    ack_latency: Latency,
}

/// An entry of the groups' timer wheel.
#[derive(Debug)]
pub enum GroupTimer {
    /// An in-flight publication's settle deadline.
    Deadline {
        /// Topic.
        topic: Arc<str>,
        /// Group.
        group: Arc<str>,
        /// The publication.
        seq: u64,
        /// Which hand-off (a stale deadline is ignored).
        attempts: u32,
    },
    /// A publication waiting out its redelivery backoff.
    Backoff {
        /// Topic.
        topic: Arc<str>,
        /// Group.
        group: Arc<str>,
        /// The publication.
        job: Job,
    },
    /// A request's deadline on its requester's shard.
    Request {
        /// Slot in the shard's request table.
        slot: u32,
        /// The slot's generation.
        gen: u32,
    },
    /// A retained value's TTL on its owner's shard.
    Retained {
        /// Topic.
        topic: Arc<str>,
        /// The value's seq (a replaced value's timer finds another seq).
        seq: u64,
    },
    /// A group without members may be dropped.
    Expire {
        /// Topic.
        topic: Arc<str>,
        /// Group.
        group: Arc<str>,
    },
}

/// Every group this shard owns, and their timers.
#[derive(Debug)]
pub struct Groups {
    topics: HashMap<Arc<str>, Vec<Group>>,
    /// The timer wheel (deadlines, backoffs, expiries).
    pub wheel: Wheel<GroupTimer>,
    fired: Vec<GroupTimer>,
    rng: u64,
}

impl Groups {
    /// No groups; the wheel starts at `now`.
    pub fn new(shard: usize, now: Instant) -> Self {
        Self {
            topics: HashMap::new(),
            wheel: Wheel::new(now, GROUP_TICK, WHEEL_SLOTS),
            fired: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ (shard as u64 + 1),
        }
    }

    /// Whether this shard owns no group.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Groups owned, publications they hold not handed out, in flight, bytes.
    pub fn totals(&self) -> (usize, usize, usize, usize) {
        let mut t = (0, 0, 0, 0);
        for g in self.topics.values().flatten() {
            t.0 += 1;
            t.1 += g.ready.len() + g.backoff;
            t.2 += g.inflight.len();
            t.3 += g.bytes;
        }
        t
    }

    /// Groups owned.
    pub fn len(&self) -> usize {
        self.topics.values().map(Vec::len).sum()
    }

    /// The `n` groups with the most hand-offs, with their figures.
    pub fn top(&self, n: usize) -> Vec<GroupStats> {
        let mut all: Vec<(&Arc<str>, &Group)> =
            self.topics.iter().flat_map(|(t, gs)| gs.iter().map(move |g| (t, g))).collect();
        all.sort_by_key(|(_, g)| std::cmp::Reverse(g.stats.handoffs));
        all.truncate(n);
        all.into_iter()
            .map(|(t, g)| GroupStats {
                topic: t.to_string(),
                group: g.name.to_string(),
                members: g.members.len() as u64,
                pending: (g.ready.len() + g.backoff) as u64,
                inflight: g.inflight.len() as u64,
                handoffs: g.stats.handoffs,
                redeliveries: g.stats.redeliveries,
                done: g.stats.done,
                dead_lettered: g.stats.dead_lettered,
                ack_latency: g.stats.ack_latency.clone(),
            })
            .collect()
    }

    /// A member to answer a request: round robin over the members of
    /// `topic`'s groups (or of `group`).
    pub(crate) fn pick_any(&mut self, topic: &str, group: Option<&str>) -> Option<MemberRef> {
        let gs = self.topics.get_mut(topic)?;
        let n = gs.len();
        let start = self.rng as usize % n.max(1);
        for k in 0..n {
            let g = &mut gs[(start + k) % n];
            if group.is_some_and(|name| *g.name != *name) || g.members.is_empty() {
                continue;
            }
            let i = g.cursor % g.members.len();
            g.cursor = i + 1;
            let at = g.members[i].at;
            self.random();
            return Some(at);
        }
        None
    }

    /// xorshift64: jitter without a clock or a syscall (deterministic per shard).
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A publication the server makes itself (dead letters, abandoned stream
/// ends, retained-value expiries): nobody waits for its answer.
pub(crate) fn internal_publish(
    topic: Box<str>,
    data: Box<str>,
    from: Option<Arc<str>>,
    received_at: Instant,
    extra: Option<Box<str>>,
) -> PublishReq {
    PublishReq {
        to: Requester { conn: ConnRef { idx: u32::MAX, gen: 0 }, id: None, kind: ReplyKind::Internal, receipt: false },
        topic,
        data,
        msg_id: None,
        prio: None,
        from,
        received_at,
        extra,
        stream: None,
        retain: None,
    }
}

/// Group `name` of `topic`.
fn find<'a>(topics: &'a mut HashMap<Arc<str>, Vec<Group>>, topic: &str, name: &str) -> Option<&'a mut Group> {
    topics.get_mut(topic)?.iter_mut().find(|g| &*g.name == name)
}

/// A member chosen for a hand-off: its index in the group.
fn pick(g: &mut Group) -> Option<usize> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    if !g.ack {
        let i = g.cursor % n;
        g.cursor = i + 1;
        return Some(i);
    }
    let mut best: Option<(usize, u32)> = None;
    for k in 0..n {
        let i = (g.cursor + k) % n;
        let m = &g.members[i];
        let free = m.max_inflight.saturating_sub(m.inflight);
        if free > 0 && best.is_none_or(|(_, f)| free > f) {
            best = Some((i, free));
        }
    }
    let (i, _) = best?;
    g.cursor = i + 1;
    Some(i)
}

impl ShardCore {
    /// Whether every group of `topic` can take one more publication
    /// (checked before it is sequenced: a refusal leaves no hole).
    pub(crate) fn groups_admit(&mut self, topic: &str, bytes: usize) -> bool {
        let lim = &self.policy.groups;
        let Some(gs) = self.groups.topics.get(topic) else { return true };
        let ok =
            gs.iter().all(|g| g.ready.len() + g.backoff < lim.max_pending && g.bytes + bytes <= lim.max_pending_bytes);
        if !ok {
            self.counters.group_backpressure += 1;
        }
        ok
    }

    /// Offers a sequenced publication to every group of its topic.
    pub(crate) fn groups_offer(&mut self, publ: &SharedPub) {
        let Some(gs) = self.groups.topics.get_mut(&publ.topic) else { return };
        let n = gs.len();
        for g in gs.iter_mut() {
            g.bytes += publ.bytes();
            g.ready.push_back(Job { publ: publ.clone(), attempts: 0 });
        }
        let topic = publ.topic.clone();
        for i in 0..n {
            self.dispatch(&topic, i);
        }
    }

    /// Hands out what group `gi` of `topic` holds ready, while a member
    /// has room.
    fn dispatch(&mut self, topic: &Arc<str>, gi: usize) {
        let now = self.now;
        loop {
            let Some(g) = self.groups.topics.get_mut(topic).and_then(|gs| gs.get_mut(gi)) else { return };
            if g.ready.is_empty() {
                return;
            }
            let Some(mi) = pick(g) else { return };
            let Some(mut job) = g.ready.pop_front() else { return };
            job.attempts += 1;
            let member = g.members[mi].at;
            let (name, ack, attempts, publ) = (g.name.clone(), g.ack, job.attempts, job.publ.clone());
            if ack {
                g.members[mi].inflight += 1;
                let key = GroupTimer::Deadline { topic: topic.clone(), group: name.clone(), seq: publ.seq, attempts };
                let timer = self.groups.wheel.insert(now + g.ack_wait, key);
                let g = find(&mut self.groups.topics, topic, &name).expect("group just used");
                g.inflight.insert(publ.seq, Held { job, member, timer, handed_at: now });
            } else {
                g.bytes -= publ.bytes();
            }
            let g = find(&mut self.groups.topics, topic, &name).expect("group just used");
            g.stats.handoffs += 1;
            if attempts > 1 {
                g.stats.redeliveries += 1;
                self.counters.group_redeliveries += 1;
            }
            self.counters.group_handoffs += 1;
            self.send_to(
                member.shard,
                MeshMsg::GroupDeliver { conn: member.conn, publ, group: name, attempt: attempts, ack },
            );
        }
    }

    /// A hand-off that did not succeed (retry, missed deadline, member
    /// gone): again after a backoff, or to the dead-letter topic once
    /// `max_deliver` attempts were made.
    fn redeliver(&mut self, topic: &Arc<str>, name: &Arc<str>, job: Job, delay: Option<Duration>, reason: &str) {
        let base = Duration::from_millis(self.policy.groups.backoff_base_ms);
        let now = self.now;
        let r = self.groups.random();
        let Some(g) = find(&mut self.groups.topics, topic, name) else { return };
        if job.attempts >= g.max_deliver {
            return self.dead_letter(topic, name, job, reason);
        }
        let wait = delay.unwrap_or_else(|| {
            // Full jitter over min(ack_wait, base * 2^(attempts-1)).
            let cap = base.saturating_mul(1 << job.attempts.saturating_sub(1).min(20)).min(g.ack_wait);
            let nanos = cap.as_nanos().max(1) as u64;
            Duration::from_nanos(r % nanos)
        });
        g.backoff += 1;
        let key = GroupTimer::Backoff { topic: topic.clone(), group: name.clone(), job };
        self.groups.wheel.insert(now + wait, key);
    }

    /// Publishes `job` on its group's dead-letter topic with `data` verbatim
    /// and the `dead` object, through the normal publish path.
    fn dead_letter(&mut self, topic: &Arc<str>, name: &Arc<str>, job: Job, reason: &str) {
        let Some(g) = find(&mut self.groups.topics, topic, name) else { return };
        g.bytes -= job.publ.bytes();
        g.stats.dead_lettered += 1;
        let dlq = g.dead_letter.clone();
        self.counters.group_dead_lettered += 1;
        let mut extra = String::from("\"dead\":{\"topic\":");
        extra.push_str(&serde_json::Value::from(&**topic).to_string());
        extra.push_str(",\"group\":");
        extra.push_str(&serde_json::Value::from(&**name).to_string());
        extra.push_str(&format!(",\"seq\":{},\"attempts\":{},\"reason\":\"{reason}\"}}", job.publ.seq, job.attempts));
        let req = internal_publish(
            (*dlq).into(),
            job.publ.data().into(),
            job.publ.from.clone(),
            self.now,
            Some(extra.into()),
        );
        self.route_to_owner(MeshMsg::Publish(Box::new(req)));
    }

    /// The owner: `conn` on shard `from` joins `spec.name` on `topic`.
    pub(crate) fn group_join(&mut self, from: usize, conn: ConnRef, id: Option<u64>, topic: &str, spec: GroupSpec) {
        let lim = self.policy.groups.clone();
        let refuse = |this: &mut Self, message: &'static str| {
            this.counters.group_joins_refused += 1;
            this.send_to(from, MeshMsg::GroupRefused { conn, id, code: ErrorCode::Overloaded, message });
        };
        let exists = find(&mut self.groups.topics, topic, &spec.name).is_some();
        if !exists && self.groups.topics.get(topic).is_some_and(|gs| gs.len() >= lim.max_per_topic) {
            return refuse(self, "the topic holds its maximum number of groups");
        }
        if !exists && self.groups.len() >= lim.max_groups {
            return refuse(self, "the shard holds its maximum number of groups");
        }
        // Read seq and epoch for the reply; a new group holds one interest
        // in the topic (so it is never evicted while the group lives).
        let (name, seq, epoch) = match self.owner.subscribe(self.id, topic, None, 0) {
            SubscribeOutcome::Refused(r) => return refuse(self, r.message()),
            SubscribeOutcome::Subscribed { topic: t, seq, epoch, .. } => {
                if exists {
                    self.owner.release(self.id, &t, self.now);
                } else {
                    let dead_letter: Arc<str> = match &spec.dead_letter {
                        Some(d) => (**d).into(),
                        None => format!("{topic}/dlq").into(),
                    };
                    let g = Group {
                        name: (*spec.name).into(),
                        ack: spec.ack,
                        ack_wait: Duration::from_millis(spec.ack_wait_ms),
                        max_deliver: spec.max_deliver,
                        dead_letter,
                        members: Vec::new(),
                        cursor: 0,
                        ready: VecDeque::new(),
                        backoff: 0,
                        inflight: HashMap::new(),
                        bytes: 0,
                        empty_since: None,
                        stats: GroupCounters::default(),
                    };
                    self.groups.topics.entry(t.clone()).or_default().push(g);
                    self.counters.groups_created += 1;
                }
                (t, seq, epoch)
            }
        };
        let at = MemberRef { shard: from, conn };
        let gi = self.groups.topics.get(&name).and_then(|gs| gs.iter().position(|g| *g.name == *spec.name));
        let Some(gi) = gi else { return refuse(self, "internal: group vanished") };
        let g = &mut self.groups.topics.get_mut(&name).expect("topic of the group")[gi];
        let full = g.members.len() >= lim.max_members;
        match g.members.iter_mut().find(|m| m.at == at) {
            Some(m) => m.max_inflight = spec.max_inflight,
            None if full => return refuse(self, "the group holds its maximum number of members"),
            None => g.members.push(Member { at, max_inflight: spec.max_inflight, inflight: 0 }),
        }
        g.empty_since = None;
        let group = g.name.clone();
        self.send_to(from, MeshMsg::GroupJoined { conn, id, topic: name.clone(), group, seq, epoch });
        self.dispatch(&name, gi);
    }

    /// The owner: `conn` on `from` leaves; what it held is given again.
    pub(crate) fn group_leave(
        &mut self,
        from: usize,
        conn: ConnRef,
        id: Option<u64>,
        topic: &str,
        group: &str,
        answer: bool,
    ) {
        let at = MemberRef { shard: from, conn };
        let now = self.now;
        let expire = Duration::from_millis(self.policy.groups.empty_expire_ms);
        let mut gave_back = Vec::new();
        let found = match find(&mut self.groups.topics, topic, group) {
            Some(g) => match g.members.iter().position(|m| m.at == at) {
                Some(i) => {
                    g.members.swap_remove(i);
                    let seqs: Vec<u64> = g.inflight.iter().filter(|(_, h)| h.member == at).map(|(s, _)| *s).collect();
                    for s in seqs {
                        if let Some(h) = g.inflight.remove(&s) {
                            gave_back.push(h);
                        }
                    }
                    if g.members.is_empty() {
                        g.empty_since = Some(now);
                    }
                    true
                }
                None => false,
            },
            None => false,
        };
        if answer {
            let msg = if found {
                MeshMsg::GroupLeft { conn, id, topic: topic.into(), group: group.into() }
            } else {
                MeshMsg::GroupRefused { conn, id, code: ErrorCode::NotMember, message: "not a member of this group" }
            };
            self.send_to(from, msg);
        }
        if !found {
            return;
        }
        let Some((t, name)) = self.group_names(topic, group) else { return };
        for h in gave_back {
            self.groups.wheel.cancel(h.timer);
            self.redeliver(&t, &name, h.job, None, "member_left");
        }
        if find(&mut self.groups.topics, topic, group).is_some_and(|g| g.members.is_empty()) {
            self.groups.wheel.insert(now + expire, GroupTimer::Expire { topic: t.clone(), group: name.clone() });
        }
        self.dispatch_named(&t, group);
    }

    /// Hands out what group `name` of `topic` holds ready, if it still exists.
    fn dispatch_named(&mut self, topic: &Arc<str>, name: &str) {
        if let Some(gi) = self.groups.topics.get(topic).and_then(|gs| gs.iter().position(|g| *g.name == *name)) {
            self.dispatch(topic, gi);
        }
    }

    /// The shared names of a group (for timer keys).
    fn group_names(&self, topic: &str, group: &str) -> Option<(Arc<str>, Arc<str>)> {
        let (t, gs) = self.groups.topics.get_key_value(topic)?;
        let g = gs.iter().find(|g| &*g.name == group)?;
        Some((t.clone(), g.name.clone()))
    }

    /// The owner: a member settles `seq`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn group_settle(
        &mut self,
        from: usize,
        conn: ConnRef,
        id: Option<u64>,
        topic: &str,
        group: &str,
        seq: u64,
        outcome: Outcome,
    ) {
        let at = MemberRef { shard: from, conn };
        let now = self.now;
        let refuse = |this: &mut Self, code, message| {
            this.send_to(from, MeshMsg::GroupSettleRefused { conn, id, code, message });
        };
        let Some((t, name)) = self.group_names(topic, group) else {
            return refuse(self, ErrorCode::NotMember, "not a member of this group");
        };
        let g = find(&mut self.groups.topics, topic, group).expect("named group");
        if !g.members.iter().any(|m| m.at == at) {
            return refuse(self, ErrorCode::NotMember, "not a member of this group");
        }
        if g.inflight.get(&seq).is_none_or(|h| h.member != at) {
            return refuse(self, ErrorCode::NotFound, "this member holds no such publication");
        }
        self.counters.group_settles += 1;
        if outcome == Outcome::Working {
            let ack_wait = g.ack_wait;
            let timer = g.inflight[&seq].timer;
            self.groups.wheel.reschedule(timer, now + ack_wait);
            return;
        }
        let h = g.inflight.remove(&seq).expect("checked above");
        if let Some(m) = g.members.iter_mut().find(|m| m.at == at) {
            m.inflight = m.inflight.saturating_sub(1);
        }
        self.groups.wheel.cancel(h.timer);
        match outcome {
            Outcome::Done => {
                g.bytes -= h.job.publ.bytes();
                g.stats.done += 1;
                g.stats.ack_latency.record(now.saturating_duration_since(h.handed_at));
            }
            Outcome::Retry(delay) => self.redeliver(&t, &name, h.job, delay.map(Duration::from_millis), "retry"),
            Outcome::Dead => self.dead_letter(&t, &name, h.job, "dead"),
            Outcome::Working => {}
        }
        self.dispatch_named(&t, &name);
    }

    /// Runs the groups' timers due by `now` (a bounded number); true if
    /// more are due.
    pub fn groups_tick(&mut self, now: Instant) -> bool {
        self.tick(now);
        let mut fired = std::mem::take(&mut self.groups.fired);
        let more = self.groups.wheel.poll(self.now, TIMER_BUDGET, &mut fired);
        for t in fired.drain(..) {
            match t {
                GroupTimer::Deadline { topic, group, seq, attempts } => {
                    let Some(g) = find(&mut self.groups.topics, &topic, &group) else { continue };
                    if g.inflight.get(&seq).is_none_or(|h| h.job.attempts != attempts) {
                        continue;
                    }
                    let h = g.inflight.remove(&seq).expect("checked");
                    if let Some(m) = g.members.iter_mut().find(|m| m.at == h.member) {
                        m.inflight = m.inflight.saturating_sub(1);
                    }
                    self.counters.group_deadlines_missed += 1;
                    self.redeliver(&topic, &group, h.job, None, "ack_wait");
                    self.dispatch_named(&topic, &group);
                }
                GroupTimer::Backoff { topic, group, job } => {
                    let Some(g) = find(&mut self.groups.topics, &topic, &group) else { continue };
                    g.backoff -= 1;
                    g.ready.push_back(job);
                    self.dispatch_named(&topic, &group);
                }
                GroupTimer::Retained { topic, seq } => self.expire_retained(&topic, seq),
                GroupTimer::Request { slot, gen } => {
                    let origin = crate::mesh::msg::ReqOrigin { shard: self.id, slot, gen };
                    self.on_req_failed(origin, true);
                }
                GroupTimer::Expire { topic, group } => {
                    let expire = Duration::from_millis(self.policy.groups.empty_expire_ms);
                    let now = self.now;
                    let Some(gs) = self.groups.topics.get_mut(&topic) else { continue };
                    let Some(gi) = gs.iter().position(|g| g.name == group) else { continue };
                    let g = &gs[gi];
                    if !g.members.is_empty() || g.empty_since.is_none_or(|t| t + expire > now) {
                        continue;
                    }
                    let g = gs.swap_remove(gi);
                    self.counters.groups_expired += 1;
                    self.counters.group_dropped_on_expiry += (g.ready.len() + g.backoff) as u64;
                    if gs.is_empty() {
                        self.groups.topics.remove(&topic);
                    }
                    self.owner.release(self.id, &topic, now);
                }
            }
        }
        self.groups.fired = fired;
        more
    }

    /// The owner's stream sweep: closed streams past `keep_closed_ms` go,
    /// and each open stream idle past `idle_timeout_ms` gets a last append
    /// the server makes: `"end":true,"reason":"abandoned"`, `data` "".
    pub fn sweep_streams(&mut self, now: Instant) {
        let mut abandoned = Vec::new();
        self.owner.sweep_streams(now, 4096, &mut abandoned);
        for (topic, name) in abandoned {
            self.counters.streams_abandoned += 1;
            let mut req = internal_publish((*topic).into(), "\"\"".into(), None, now, None);
            req.stream = Some(Box::new(crate::mesh::msg::StreamArg { name, end: true, reason: Some("abandoned") }));
            self.route_to_owner(MeshMsg::Publish(Box::new(req)));
        }
    }

    /// A retained value's TTL passed: the `expired` msg is published and
    /// the value cleared, in one step at the owner, if it is still `seq`.
    fn expire_retained(&mut self, topic: &Arc<str>, seq: u64) {
        let mut req =
            internal_publish((**topic).into(), "null".into(), None, self.now, Some("\"expired\":true".into()));
        let expire = crate::mesh::msg::RetainArg { retain: false, ttl_ms: None, if_seq: None, expire: Some(seq) };
        req.retain = Some(Box::new(expire));
        self.route_to_owner(MeshMsg::Publish(Box::new(req)));
    }

    // ---- the edge ----

    /// The edge: the owner answered a join.
    pub(crate) fn on_group_joined(
        &mut self,
        conn: ConnRef,
        id: Option<u64>,
        topic: Arc<str>,
        group: Arc<str>,
        seq: u64,
        epoch: crate::topic::owned::Epoch,
    ) {
        let Some(c) = self.conn_mut(conn) else {
            // Gone meanwhile: leave again.
            let msg =
                MeshMsg::GroupLeave { conn, id: None, topic: (*topic).into(), group: (*group).into(), answer: false };
            return self.route_to_owner(msg);
        };
        c.pending_subs = c.pending_subs.saturating_sub(1);
        if !c.groups.iter().any(|(t, g)| *t == topic && *g == group) {
            c.groups.push((topic.clone(), group.clone()));
        }
        self.counters.group_joins += 1;
        let idx = conn.idx as usize;
        self.reply(idx, |o| message::subscribed_group(o, id, &topic, epoch.as_str(), seq, &group));
    }

    /// The edge: a join or leave was refused.
    pub(crate) fn on_group_refused(&mut self, conn: ConnRef, id: Option<u64>, code: ErrorCode, msg: &str, join: bool) {
        let Some(c) = self.conn_mut(conn) else { return };
        if join {
            c.pending_subs = c.pending_subs.saturating_sub(1);
        }
        let retry = (code == ErrorCode::Overloaded).then_some(OVERLOADED_RETRY_MS);
        self.reply_error(conn.idx as usize, id, code, msg, retry);
    }

    /// The edge: a hand-off for one member.
    pub(crate) fn on_group_deliver(
        &mut self,
        conn: ConnRef,
        publ: SharedPub,
        group: Arc<str>,
        attempt: u32,
        ack: bool,
    ) {
        let Some(c) = self.conn_mut(conn) else { return };
        // Not (or no longer) a member here: the owner gives it to another
        // member once it handles the leave already on its way.
        if !c.groups.iter().any(|(t, g)| *t == publ.topic && *g == group) {
            return;
        }
        self.counters.group_deliveries += 1;
        let idx = conn.idx as usize;
        if ack {
            let m = MsgFields {
                topic: &publ.topic,
                seq: publ.seq,
                epoch: publ.epoch.as_str(),
                msg_id: publ.msg_id.as_deref(),
                prio: publ.prio_given.then_some(publ.prio),
                from: publ.from.as_deref(),
                data: publ.data(),
                extra: None,
            };
            self.reply(idx, |o| message::group_msg(o, &m, &group, attempt));
        } else {
            self.reply(idx, |o| o.extend_from_slice(&publ.frame));
        }
    }
}
