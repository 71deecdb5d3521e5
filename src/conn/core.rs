//! `ShardCore`: everything one shard owns, and nothing any other thread
//! touches: its connections (a slab of [`Conn`]), its local subscriber
//! index, the topics it owns, its ends of the mesh, and its counters.
//!
//! Run only by the shard's own thread. No glommio here: I/O tasks call in
//! with bytes and get bytes queued; the mesh task calls in with messages.
//! A `RefCell` around it is borrowed only inside one poll, never across an
//! `.await`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::stats::Counters;
use crate::config::{Limits, LivenessConfig, RateConfig, ReplayConfig};
use crate::conn::outbound::Push;
use crate::conn::{Conn, Phase};
use crate::mesh::{ConnRef, Outbox};
use crate::proto::frame::{self, CloseCode};
use crate::proto::message::{self, ErrorCode};
use crate::topic::local::LocalSubs;
use crate::topic::owner::{Owner, OwnerLimits, TableLimits};
use crate::topic::replay::ReplayLimits;
use crate::topic::PartitionMap;

/// How long a publisher refused with `overloaded` is asked to wait.
pub const OVERLOADED_RETRY_MS: u64 = 50;

/// One shard's state.
#[derive(Debug)]
pub struct ShardCore {
    /// This shard's index.
    pub id: usize,
    /// Topic → owner shard.
    pub map: PartitionMap,
    /// Limits from the config.
    pub limits: Limits,
    /// Connections on this shard.
    pub conns: Slab<Conn>,
    /// Next slot generation.
    next_gen: u32,
    /// Local subscribers by topic.
    pub local: LocalSubs,
    /// The owner state machine of the partitions this shard owns.
    pub owner: Owner,
    /// Consumer groups of the topics this shard owns, and their timers.
    pub groups: super::groups::Groups,
    /// Requests this shard's connections made, and requests it serves.
    pub requests: super::requests::Requests,
    /// Delivery receipts: parts finished here, and receipts being assembled.
    pub receipts: super::receipts::Receipts,
    /// Reused list of presence watchers to tell.
    pub(crate) presence_tell: Vec<crate::topic::presence::Place>,
    /// Outboxes to the other shards (None at `id`).
    pub outboxes: Vec<Option<Outbox>>,
    /// Counters and latency histograms.
    pub counters: Counters,
    /// Reused buffer for encoding one publication frame.
    pub(crate) encode_buf: Vec<u8>,
    /// Reused list of target shards of one publish.
    pub(crate) targets: Vec<usize>,
    /// Draining: no new connections, no new work.
    pub draining: bool,
    /// Replay, dedupe, rate and liveness settings.
    pub policy: Policy,
    /// Per-tenant publish buckets (this shard's share of each budget).
    pub tenants: crate::conn::rate::TenantBuckets,
    /// Graceful drain progress.
    pub(super) drain: super::drain::DrainState,
    /// Throttled warnings for limit hits.
    pub hits: super::logs::HitLog,
    /// When the liveness sweep last ran (a late sweep means a stall).
    pub last_liveness_sweep: Option<Instant>,
    /// The time of the entry being handled: set by [`ShardCore::tick`] (and
    /// the `*_at` entry points), read by everything inside. The core never
    /// reads the clock itself, so the harness can drive it with simulated time.
    pub now: Instant,
    /// Fanouts parked when a slice's budget ran out, resumed in order.
    pub(crate) parked: std::collections::VecDeque<super::deliver::Parked>,
    /// Deliveries the current slice may still make (reset by `tick`).
    pub(crate) fanout_left: usize,
    /// Connections given frames by a parked fanout, woken once no fanout is
    /// parked: a slice boundary lets the reactor run (reads, timers) without
    /// making every writer flush a small batch (one send per few frames).
    pub(crate) wake_later: Vec<u32>,
    /// Inside a batch of mesh messages: wakes are deferred to its end too,
    /// since the writers could not run before the batch yields anyway.
    pub(crate) batching: bool,
    /// Acks held until their seq is confirmed ([`AckMode::AfterConfirm`]).
    pub(crate) held: super::routing::HeldAcks,
    /// `now` as Unix seconds is `unix0 + (now - instant0)` (token times).
    clock0: (Instant, u64),
    /// Durable mode (`[cluster] nats_url`): this shard's end of the store.
    pub durable: Option<super::durable::Durable>,
    /// Token expiries of this shard's connections, soonest first:
    /// (exp + leeway, slot, generation). One heap per shard, swept by one
    /// timer; refreshed or gone connections leave stale entries, skipped.
    pub(crate) expiries: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32, u32)>>,
    /// What each token tenant holds on this shard (entries leave at zero,
    /// so the map is bounded by the tenants connected here).
    pub(crate) tenant_usage: std::collections::HashMap<Arc<str>, TenantUsage>,
}

/// One tenant's holdings on one shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct TenantUsage {
    /// Connections.
    pub connections: u64,
    /// Subscriptions held or asked for.
    pub subscriptions: u64,
}

/// This shard's share of a process-wide quota `q` over `shards` (0: none).
pub fn share(q: u64, shards: usize) -> u64 {
    if q == 0 {
        u64::MAX
    } else {
        q.div_ceil(shards as u64).max(1)
    }
}

/// When the owner answers a publisher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// As soon as the publication is sequenced (in memory). The default.
    #[default]
    Immediate,
    /// Only once [`ShardCore::confirm`] says the seq is confirmed (stored
    /// durably, or accepted by a broker): the seam durability and the
    /// cluster plug into. Delivery to subscribers does not wait.
    AfterConfirm,
}

/// The config sections a shard applies beyond `limits`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// When publishers are acked.
    pub ack: AckMode,
    /// Tokens, origins, subprotocols.
    pub access: Arc<crate::auth::Access>,
    /// `[server] echo_path`: the RFC 6455 conformance endpoint (None: off).
    pub echo_path: Option<Arc<str>>,
    /// `[replay]`.
    pub replay: ReplayConfig,
    /// `[rates]`.
    pub rates: RateConfig,
    /// `[liveness]`.
    pub liveness: LivenessConfig,
    /// `[groups]`.
    pub groups: crate::config::GroupsConfig,
    /// `[requests]`.
    pub requests: crate::config::RequestsConfig,
    /// Token stream bounds.
    pub streams: crate::config::StreamsConfig,
    /// Retained value bounds.
    pub retained: crate::config::RetainedConfig,
    /// Presence bounds.
    pub presence: crate::config::PresenceConfig,
    /// `[centrifugo]`.
    pub centrifugo: crate::config::CentrifugoConfig,
}

impl Policy {
    /// The replay ring bounds.
    pub fn replay_limits(&self) -> ReplayLimits {
        ReplayLimits {
            max_count: self.replay.max_count,
            max_bytes: self.replay.max_bytes,
            max_age: Duration::from_millis(self.replay.max_age_ms),
        }
    }

    /// The owner's bounds.
    pub fn owner_limits(&self, limits: &Limits) -> OwnerLimits {
        OwnerLimits {
            table: TableLimits {
                max_topics: limits.max_topics_per_shard,
                max_per_tenant: match self.access.quotas.default.topics {
                    0 => limits.max_topics_per_tenant,
                    q => q as usize,
                },
            },
            tenant_topics: Arc::new(self.access.quotas.topic_overrides()),
            replay: self.replay_limits(),
            dedupe_count: self.replay.dedupe_count,
            dedupe_age: Duration::from_millis(self.replay.dedupe_age_ms),
            budget_bytes: self.replay.shard_budget_bytes,
            streams: crate::topic::streams::StreamLimits {
                max_stream_bytes: self.streams.max_stream_bytes,
                max_per_topic: self.streams.max_per_topic,
                shard_budget_bytes: self.streams.shard_budget_bytes,
                keep_closed: Duration::from_millis(self.streams.keep_closed_ms),
                idle_timeout: Duration::from_millis(self.streams.idle_timeout_ms),
            },
            retained_per_tenant: self.retained.max_per_tenant,
            retained_budget_bytes: self.retained.shard_budget_bytes,
            presence_max_list: self.presence.max_list,
            presence_max_watchers_per_tenant: self.presence.max_watchers_per_tenant,
        }
    }
}

impl ShardCore {
    /// A shard with no connections.
    pub fn new(id: usize, map: PartitionMap, limits: Limits, outboxes: Vec<Option<Outbox>>) -> Self {
        Self::with_policy(id, map, limits, outboxes, Policy::default())
    }

    /// A shard with no connections, applying `policy`.
    pub fn with_policy(
        id: usize,
        map: PartitionMap,
        limits: Limits,
        outboxes: Vec<Option<Outbox>>,
        policy: Policy,
    ) -> Self {
        let owner = Owner::new(id, map.shards, policy.owner_limits(&limits));
        Self {
            id,
            map,
            limits,
            conns: Slab::new(),
            next_gen: 0,
            local: LocalSubs::default(),
            owner,
            groups: super::groups::Groups::new(id, Instant::now()),
            requests: Default::default(),
            outboxes,
            counters: Counters::new(),
            encode_buf: Vec::new(),
            targets: Vec::new(),
            draining: false,
            tenants: crate::conn::rate::TenantBuckets::new(policy.rates.max_tenants),
            policy,
            drain: Default::default(),
            hits: Default::default(),
            last_liveness_sweep: None,
            now: Instant::now(),
            parked: Default::default(),
            fanout_left: 0,
            wake_later: Vec::new(),
            receipts: Default::default(),
            presence_tell: Vec::new(),
            batching: false,
            held: Default::default(),
            clock0: (Instant::now(), unix_secs()),
            expiries: Default::default(),
            durable: None,
            tenant_usage: Default::default(),
        }
    }

    /// Advances the core's time to `now` (never backwards). The scheduling
    /// layer calls it once per entry (a read, a batch of mesh messages, a
    /// timer); the deterministic harness calls it with simulated time.
    ///
    /// Each entry is a new slice: its fanout budget starts full.
    pub fn tick(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.fanout_left = self.limits.fanout_budget;
    }

    /// The core's `now` in Unix seconds.
    pub fn unix_now(&self) -> u64 {
        self.clock0.1 + self.now.saturating_duration_since(self.clock0.0).as_secs()
    }

    /// Closes (4001) every connection whose token has expired by `now`
    /// (a refresh with `auth` moves a connection's expiry; its old entry is
    /// skipped). Returns how many were closed.
    pub fn sweep_expiry(&mut self, now: Instant) -> usize {
        self.tick(now);
        let unix = self.unix_now();
        let leeway = self.policy.access.verifier.leeway();
        let mut closed = 0;
        while let Some(&std::cmp::Reverse((at, idx, gen))) = self.expiries.peek() {
            if at >= unix {
                break;
            }
            self.expiries.pop();
            let live = self.conns.get(idx as usize).is_some_and(|c| {
                c.gen == gen && c.identity.as_ref().and_then(|i| i.exp).is_some_and(|e| e.saturating_add(leeway) == at)
            });
            if live {
                self.counters.tokens_expired += 1;
                self.close(idx as usize, CloseCode::TOKEN_EXPIRED, "token expired");
                closed += 1;
            }
        }
        closed
    }

    /// Whether the identity's tenant may hold one more connection here.
    pub(crate) fn tenant_connection_room(&self, id: &crate::auth::Identity) -> bool {
        let used = self.tenant_usage.get(&id.tenant).map_or(0, |u| u.connections);
        used < share(id.quota.connections, self.map.shards)
    }

    /// Moves a tenant's holdings on this shard by the given amounts.
    pub(crate) fn tenant_add(&mut self, tenant: &Arc<str>, connections: i64, subscriptions: i64) {
        let u = self.tenant_usage.entry(tenant.clone()).or_default();
        u.connections = u.connections.saturating_add_signed(connections);
        u.subscriptions = u.subscriptions.saturating_add_signed(subscriptions);
        if u.connections == 0 && u.subscriptions == 0 {
            self.tenant_usage.remove(tenant);
        }
    }

    /// Counts a refusal by a tenant's quota (per tenant and kind; past 1,024
    /// distinct series they are counted as tenant "other").
    pub(crate) fn quota_refused(&mut self, tenant: &str, kind: &'static str) {
        let key = (tenant.to_owned(), kind);
        let m = &mut self.counters.quota_refused;
        if m.len() >= 1024 && !m.contains_key(&key) {
            *m.entry(("other".into(), kind)).or_default() += 1;
        } else {
            *m.entry(key).or_default() += 1;
        }
    }

    /// Sets the identity of connection `idx` and schedules its expiry.
    pub(crate) fn set_identity(&mut self, idx: usize, id: crate::auth::Identity) {
        let leeway = self.policy.access.verifier.leeway();
        let Some(c) = self.conns.get_mut(idx) else { return };
        let old = c.identity.as_ref().and_then(|i| i.exp);
        // A refresh to the same exp schedules nothing new: repeated `auth`
        // commands cannot grow the heap.
        if let Some(exp) = id.exp.filter(|e| old != Some(*e)) {
            self.expiries.push(std::cmp::Reverse((exp.saturating_add(leeway), idx as u32, c.gen)));
        }
        c.identity = Some(Box::new(id));
        // Refreshes to new exps leave stale entries; past twice the live
        // connections (plus slack) the heap keeps only the live ones.
        if self.expiries.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.expiries.retain(|&std::cmp::Reverse((at, i, gen))| {
                conns.get(i as usize).is_some_and(|c| {
                    c.gen == gen
                        && c.identity.as_ref().and_then(|id| id.exp).is_some_and(|e| e.saturating_add(leeway) == at)
                })
            });
            self.counters.expiry_compactions += 1;
        }
    }

    /// Registers a new connection, or `None` at the connection limit.
    pub fn accept(&mut self, now: Instant) -> Option<ConnRef> {
        if self.draining || self.conns.len() >= self.limits.max_connections_per_shard {
            self.counters.connections_refused += 1;
            return None;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let idx = self.conns.insert(Conn::new(self.next_gen, now));
        self.counters.connections_opened += 1;
        tracing::debug!(shard = self.id, conn = idx, "connection opened");
        Some(ConnRef { idx: idx as u32, gen: self.next_gen })
    }

    /// The connection `r` refers to, if it is still there.
    pub fn conn_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)
    }

    /// Forgets a connection whose socket is gone: its subscriptions are
    /// removed from the local index and given back to their owners.
    pub fn remove(&mut self, idx: usize) {
        if !self.conns.contains(idx) {
            return;
        }
        // Its topics' lists change: parked fanouts walking them finish first.
        self.settle_fanout();
        let Some(conn) = self.conns.try_remove(idx) else {
            return;
        };
        if let Some(id) = &conn.identity {
            let held = conn.subs.len() as u64 + u64::from(conn.pending_subs);
            self.tenant_add(&id.tenant, -1, -(held as i64));
        }
        let member = conn.member(ConnRef { idx: idx as u32, gen: conn.gen });
        for sub in conn.subs {
            self.unlink(idx as u32, &sub.topic, sub.pos);
            self.release(sub.topic, Some(member.clone()));
        }
        self.requests_on_close(conn.requests, conn.serving);
        let me = ConnRef { idx: idx as u32, gen: conn.gen };
        if conn.receipts > 0 {
            self.receipts_on_close(me);
        }
        for (topic, group) in conn.groups {
            // What the member held goes to the group's other members.
            let msg = crate::mesh::MeshMsg::GroupLeave {
                conn: me,
                id: None,
                topic: (*topic).into(),
                group: (*group).into(),
                answer: false,
            };
            self.route_to_owner(msg);
        }
        self.counters.connections_closed += 1;
        tracing::debug!(shard = self.id, conn = idx, close_code = conn.close_code, "connection closed");
        *self.counters.closed_by_code.entry(conn.close_code.unwrap_or(0)).or_default() += 1;
    }

    /// Removes `conn` at `pos` from `topic`'s local list, fixing the position
    /// of the connection that took its place.
    pub(crate) fn unlink(&mut self, conn: u32, topic: &Arc<str>, pos: u32) {
        self.settle_fanout();
        let Some(moved) = self.local.remove(topic, pos) else {
            return;
        };
        debug_assert_ne!(moved, conn);
        if let Some(m) = self.conns.get_mut(moved as usize) {
            if let Some(s) = m.subs.iter_mut().find(|s| Arc::ptr_eq(&s.topic, topic)) {
                s.pos = pos;
            }
        }
    }

    /// The peer of connection `idx` shut its write side. Returns whether the
    /// connection is settled (nothing owed: close now); otherwise its task
    /// keeps writing until [`Conn::settled`], within the close linger.
    pub fn peer_eof(&mut self, idx: usize) -> bool {
        let Some(c) = self.conns.get_mut(idx) else {
            return true;
        };
        c.peer_eof = true;
        c.settled()
    }

    /// Queues a control reply on connection `idx` (which must exist).
    pub fn reply(&mut self, idx: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let hard = self.limits.outbound_hard_bytes;
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        let was_empty = conn.out.is_empty();
        match conn.out.push_control(hard, write) {
            Push::Overflow => self.close_slow(idx),
            _ if was_empty => conn.wake(),
            _ => {}
        }
    }

    /// Queues an `error` reply.
    pub fn reply_error(&mut self, idx: usize, id: Option<u64>, code: ErrorCode, msg: &str, retry: Option<u64>) {
        *self.counters.errors_sent.entry(code.as_str()).or_default() += 1;
        if let Some(c) = self.conns.get_mut(idx).and_then(|c| c.cf.as_mut()) {
            // The command is answered: forget how its reply was to be shaped.
            c.take_sub(id);
            c.stats.retain(|s| Some(u64::from(*s)) != id);
            let e = crate::proto::centrifugo::error_of(code);
            let id = id.unwrap_or(0) as u32;
            if id != 0 {
                self.reply(idx, |o| crate::proto::centrifugo::error(o, id, e, msg));
            }
            return;
        }
        self.reply(idx, |o| message::error(o, id, code, msg, retry));
    }

    /// Queues a close frame and stops reading; the writer flushes and shuts
    /// the socket down.
    pub fn close(&mut self, idx: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        let (code, reason) = match conn.cf.is_some() {
            // Centrifugo's codes: the SDKs decide on them whether to reconnect.
            true => match crate::proto::centrifugo::close_of(code) {
                (c, "") => (c, reason),
                mapped => mapped,
            },
            false => (code, reason),
        };
        let was_empty = conn.out.is_empty();
        conn.out.push_control(usize::MAX, |o| frame::write_close(code, reason, o));
        conn.phase = Phase::Closing;
        conn.close_code = Some(code.0);
        if was_empty {
            conn.wake();
        }
    }

    /// Answers a connection still in its HTTP phase and closes it.
    pub fn close_http(&mut self, idx: usize, response: &[u8]) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        conn.out.push_control(usize::MAX, |o| o.extend_from_slice(response));
        conn.phase = Phase::Closing;
        conn.wake();
    }

    /// Closes a connection that cannot keep up: what is queued is dropped
    /// (but a partly sent frame is finished) and 4000 is sent.
    pub fn close_slow(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        conn.out.discard_queued();
        self.counters.slow_consumer_closes += 1;
        self.hits.hit(self.id, super::logs::Hit::SlowConsumer, "closing a slow consumer (4000)");
        self.close(idx, CloseCode::SLOW_CONSUMER, "slow consumer");
    }
}

/// The wall clock as Unix seconds (read once per shard, at start).
fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_wide_quota_is_split_over_the_shards() {
        use super::share;
        assert_eq!(share(0, 4), u64::MAX, "0: no quota");
        assert_eq!(share(10, 1), 10);
        assert_eq!(share(10, 4), 3, "rounded up");
        assert_eq!(share(2, 4), 1, "never 0");
    }
}
