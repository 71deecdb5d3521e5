//! The owner of a shard's partitions, as a pure state machine.
//!
//! Sequencing, epochs, replay, dedupe, interest, eviction and the memory
//! sweep of every topic this shard owns. Commands and the current time come
//! in (`publish`, `subscribe`, `release`, `sweep`), typed outcomes go out;
//! it reads no clock, does no I/O and knows no wire format (the caller
//! passes the encoder that builds a publication's frames, once per publish).
//! Run by the owning shard's thread only; the deterministic harness in
//! `tests/harness.rs` drives several of them with simulated time.
//!
//! Every total is bounded (config key → field):
//! * topics per shard (`limits.max_topics_per_shard`) and per tenant per
//!   shard (`limits.max_topics_per_tenant`), O(1) LRU eviction of idle
//!   topics within the rules of [`table`];
//! * replay per topic (`replay.max_count`, `replay.max_bytes`), age
//!   (`replay.max_age_ms`), dedupe per topic (`replay.dedupe_count`,
//!   `replay.dedupe_age_ms`), and replay + dedupe bytes per shard
//!   (`replay.shard_budget_bytes`), enforced oldest-first by [`sweep`] on
//!   every publish and on the shard's timer, not only when a topic is
//!   touched; a quiet topic with nothing left is released.

pub mod sweep;
pub mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self::sweep::{Entry, SweepLog};
use self::table::Table;
pub use self::table::{CreateError, Evicted, TableLimits};
use super::owned::{Epoch, EpochSource, OwnedTopic};
use super::publication::{PubMeta, Publication, SharedPub};
use super::replay::{ReplayLimits, ResumeError};
use super::streams::{StreamLimits, StreamRefused};
use crate::proto::message::Prio;

/// The owner's three sweep logs.
#[derive(Debug, Clone, Copy)]
enum Log {
    /// Retained publications (age: `replay.max_age`).
    Replay,
    /// Remembered `msg_id`s (age: `replay.dedupe_age_ms`).
    Dedupe,
    /// Topics that went idle (released once quiet for `replay.max_age`).
    Idle,
}

/// The owner's bounds.
#[derive(Debug, Clone)]
pub struct OwnerLimits {
    /// Topic table bounds.
    pub table: TableLimits,
    /// Per-tenant topic quotas that differ from `table.max_per_tenant`
    /// (`[quotas.tenants.NAME] topics`), consulted only when a topic is created.
    pub tenant_topics: Arc<std::collections::HashMap<Box<str>, usize>>,
    /// Per-topic replay bounds.
    pub replay: ReplayLimits,
    /// `msg_id`s remembered per topic.
    pub dedupe_count: usize,
    /// How long a `msg_id` is remembered.
    pub dedupe_age: Duration,
    /// Replay + dedupe bytes per shard.
    pub budget_bytes: usize,
    /// Token stream bounds.
    pub streams: StreamLimits,
    /// Retained values per tenant per shard.
    pub retained_per_tenant: usize,
    /// Retained value bytes per shard.
    pub retained_budget_bytes: usize,
    /// Subscribers a topic's presence list names at most.
    pub presence_max_list: usize,
    /// Presence watchers (`presence: true`) per tenant per shard.
    pub presence_max_watchers_per_tenant: usize,
}

/// A publication as the owner receives it.
#[derive(Debug, Clone, Copy)]
pub struct PublishIn<'a> {
    /// Validated topic.
    pub topic: &'a str,
    /// Verbatim, validated JSON payload.
    pub data: &'a str,
    /// Idempotency key.
    pub msg_id: Option<&'a str>,
    /// Priority as given.
    pub prio: Option<Prio>,
    /// The authenticated publisher's `sub`, stamped into the frame.
    pub from: Option<&'a Arc<str>>,
    /// Extra JSON fields stamped before `data` (server-made publications,
    /// a stream append's `stream` and `end`).
    pub extra: Option<&'a str>,
    /// An append to a token stream.
    pub stream: Option<StreamIn<'a>>,
    /// Retained-value fields.
    pub retain: Option<RetainIn>,
}

/// What a publish asks of the topic's retained value.
#[derive(Debug, Clone, Copy)]
pub struct RetainIn {
    /// Make it the retained value.
    pub retain: bool,
    /// Expires this long after now.
    pub ttl: Option<Duration>,
    /// Only if the retained value's seq is this (0: none).
    pub if_seq: Option<u64>,
    /// The server's expiry of the value of this seq: the publication (the
    /// `expired` msg) goes out and the value is cleared only if it is still
    /// that one.
    pub expire: Option<u64>,
}

/// An append to a token stream, as the owner receives it.
#[derive(Debug, Clone, Copy)]
pub struct StreamIn<'a> {
    /// The stream's name.
    pub name: &'a str,
    /// The appended text (the JSON string `data`, unescaped).
    pub text: &'a str,
    /// This append closes the stream.
    pub end: bool,
}

/// What a mirror did with a replicated publication ([`Owner::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The next seq: kept, to be delivered.
    Next,
    /// Already held.
    Old,
    /// A gap, another epoch, or the topic is stale: reload it.
    Gap,
    /// Not held here (nobody here needs it).
    Absent,
}

/// Why the owner refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// `max_topics_per_shard` reached and nothing may be evicted.
    TableFull,
    /// The tenant's `max_topics_per_tenant` reached, none of its own idle.
    TenantQuota,
    /// A ring to an interested shard is full (the caller's `room` said no).
    RingFull,
    /// A token stream bound.
    Stream(StreamRefused),
    /// `if_seq` did not match (or an expiry of a value already replaced).
    Conflict,
    /// `retained.max_per_tenant` or `retained.shard_budget_bytes`.
    RetainedFull,
    /// Durable cluster mode: a load answered with a state older than what
    /// the topic already gave its subscribers (a lagging replica): load
    /// again.
    StaleRead,
}

impl Refused {
    /// The counter label.
    pub fn label(self) -> &'static str {
        match self {
            Self::TableFull => "too_many_topics",
            Self::TenantQuota => "tenant_topic_quota",
            Self::RingFull => "overloaded",
            Self::Stream(r) => r.label(),
            Self::Conflict => "conflict",
            Self::RetainedFull => "retained_full",
            Self::StaleRead => "stale_read",
        }
    }

    /// The explanation sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Self::TableFull => "the owner shard holds its maximum number of topics",
            Self::TenantQuota => "the tenant holds its maximum number of topics on this shard",
            Self::RingFull => "engine overloaded (mesh ring full); retry later",
            Self::Stream(r) => r.message(),
            Self::Conflict => "the retained value's seq is not if_seq",
            Self::RetainedFull => "the tenant or shard holds its maximum of retained values",
            Self::StaleRead => "the store answered with an older state; retry later",
        }
    }
}

impl From<CreateError> for Refused {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::TableFull => Self::TableFull,
            CreateError::TenantQuota => Self::TenantQuota,
        }
    }
}

/// What a publish came to.
#[derive(Debug)]
pub enum PublishOutcome {
    /// Sequenced and retained; deliver to the shards put in `targets`.
    Accepted(SharedPub),
    /// A repeated `msg_id` inside the window: not delivered again.
    Duplicate {
        /// The topic.
        topic: Arc<str>,
        /// The original seq.
        seq: u64,
        /// The topic's epoch.
        epoch: Epoch,
    },
    /// Refused; nothing changed but perhaps a new empty topic.
    Refused(Refused),
}

/// How a `since` resume turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No `since` was given.
    NotAsked,
    /// Recovered: this many replayed publications follow.
    Recovered(u64),
    /// Not recovered, for this reason (`epoch_mismatch`, `expired`, `limit`).
    Failed(&'static str),
}

/// What a subscribe came to.
#[derive(Debug)]
pub enum SubscribeOutcome {
    /// Counted. Every publication sequenced after this has a seq above `seq`.
    Subscribed {
        /// The topic's shared name.
        topic: Arc<str>,
        /// Last assigned seq.
        seq: u64,
        /// Current epoch.
        epoch: Epoch,
        /// How a `since` resume turned out.
        recovery: Recovery,
        /// With `Recovered`: the missed publications, in order.
        replay: Vec<SharedPub>,
    },
    /// Refused; nothing was counted.
    Refused(Refused),
}

/// Counters of one owner.
#[derive(Debug, Clone, Default)]
pub struct OwnerStats {
    /// Topics created.
    pub topics_created: u64,
    /// Idle topics of the creating tenant evicted to make room.
    pub evicted_own: u64,
    /// Other tenants' empty idle topics evicted to make room.
    pub evicted_empty: u64,
    /// Quiet topics released by the sweep (no subscriber, nothing held).
    pub released_idle: u64,
    /// Creates refused at `max_topics_per_shard`.
    pub refused_table_full: u64,
    /// Creates refused at `max_topics_per_tenant`.
    pub refused_tenant_quota: u64,
    /// Retained publications dropped for age.
    pub replay_aged: u64,
    /// Retained publications dropped for the shard budget.
    pub replay_budget: u64,
    /// `msg_id`s forgotten for age.
    pub dedupe_aged: u64,
    /// `msg_id`s forgotten for the shard budget.
    pub dedupe_budget: u64,
    /// Duplicate publishes answered with their original seq.
    pub dedupe_hits: u64,
    /// Sweep runs that stopped at their work budget.
    pub sweep_budget_hits: u64,
    /// Topics made resident from stored state (durable mode).
    pub topics_restored: u64,
    /// Token streams opened.
    pub streams_opened: u64,
    /// Closed streams dropped after `streams.keep_closed_ms`.
    pub streams_dropped: u64,
    /// Appends refused at a stream bound.
    pub streams_refused: u64,
    /// Retained values expired (their TTL passed).
    pub retained_expired: u64,
    /// Retaining publishes refused at `retained.max_per_tenant` / `shard_budget_bytes`.
    pub retained_refused: u64,
}

/// What a subscribe asks for beyond the subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubOpts {
    /// A rollup of each token stream first.
    pub streams: bool,
    /// The retained value first.
    pub last: bool,
}

/// The owner state of one shard.
#[derive(Debug)]
pub struct Owner {
    shards: usize,
    lim: OwnerLimits,
    table: Table,
    epochs: EpochSource,
    replay_log: SweepLog,
    dedupe_log: SweepLog,
    /// Topics that became idle holding nothing, to release after a grace.
    idle_log: SweepLog,
    replay_items: usize,
    dedupe_items: usize,
    bytes: usize,
    /// Open streams (key: uid), checked for idleness after `idle_timeout`.
    open_log: SweepLog,
    /// Closed streams (key: uid), dropped after `keep_closed`.
    closed_log: SweepLog,
    stream_bytes: usize,
    next_stream: u64,
    /// Retained values per tenant, and their bytes.
    retained_tenants: std::collections::HashMap<Box<str>, usize>,
    retained_bytes: usize,
    /// Presence watchers per tenant.
    watchers: std::collections::HashMap<Box<str>, usize>,
    /// Counters.
    pub stats: OwnerStats,
}

/// The tenant of a valid topic: its first segment.
pub fn tenant_of(topic: &str) -> &str {
    topic.split('/').next().unwrap_or(topic)
}

impl Owner {
    /// The owner of shard `shard` in a mesh of `shards`.
    pub fn new(shard: usize, shards: usize, lim: OwnerLimits) -> Self {
        Self {
            shards,
            lim,
            table: Table::default(),
            epochs: EpochSource::new(shard),
            replay_log: SweepLog::default(),
            dedupe_log: SweepLog::default(),
            idle_log: SweepLog::default(),
            replay_items: 0,
            dedupe_items: 0,
            bytes: 0,
            open_log: SweepLog::default(),
            closed_log: SweepLog::default(),
            stream_bytes: 0,
            next_stream: 0,
            retained_tenants: std::collections::HashMap::new(),
            retained_bytes: 0,
            watchers: std::collections::HashMap::new(),
            stats: OwnerStats::default(),
        }
    }

    /// The topic's slot, created (with a fresh epoch) if new.
    fn slot_for(&mut self, topic: &str) -> Result<u32, Refused> {
        if let Some(i) = self.table.find(topic) {
            return Ok(i);
        }
        let (shards, epoch) = (self.shards, self.epochs.next_epoch());
        let tenant = tenant_of(topic);
        let mut lim = self.lim.table;
        if let Some(&q) = self.lim.tenant_topics.get(tenant) {
            lim.max_per_tenant = q;
        }
        let created = self.table.create(topic, tenant, lim, |n| OwnedTopic::new(n, epoch, shards));
        match created {
            Ok((idx, ev, gone)) => {
                self.stats.topics_created += 1;
                match ev {
                    Evicted::None => {}
                    Evicted::Own => self.stats.evicted_own += 1,
                    Evicted::Empty => self.stats.evicted_empty += 1,
                }
                if let Some(t) = gone {
                    self.forget(&t);
                }
                Ok(idx)
            }
            Err(e) => {
                match e {
                    CreateError::TableFull => self.stats.refused_table_full += 1,
                    CreateError::TenantQuota => self.stats.refused_tenant_quota += 1,
                }
                Err(e.into())
            }
        }
    }

    /// Takes a removed topic's state out of the shard totals (its sweep log
    /// entries go stale: the slot's generation no longer matches).
    fn forget(&mut self, t: &OwnedTopic) {
        self.bytes -= t.replay.bytes() + t.dedupe.bytes();
        self.stream_bytes -= t.streams.bytes();
        if let Some(r) = &t.retained {
            self.retained_bytes -= r.publ.bytes();
            let tenant = tenant_of(&t.name);
            if let Some(n) = self.retained_tenants.get_mut(tenant) {
                *n -= 1;
                if *n == 0 {
                    self.retained_tenants.remove(tenant);
                }
            }
        }
        self.replay_items -= t.replay.len();
        self.dedupe_items -= t.dedupe.len();
    }

    /// Sequences a publication: dedupe, ring room for every interested
    /// shard (`room(shard)`), seq, encode once (`encode`), retain, budget.
    /// On `Accepted`, `targets` holds the interested shards.
    pub fn publish(
        &mut self,
        p: &PublishIn<'_>,
        now: Instant,
        targets: &mut Vec<usize>,
        mut room: impl FnMut(usize) -> bool,
        encode: impl FnOnce(Arc<str>, &PubMeta<'_>) -> Publication,
    ) -> PublishOutcome {
        targets.clear();
        let idx = match self.slot_for(p.topic) {
            Ok(i) => i,
            Err(r) => return PublishOutcome::Refused(r),
        };
        let Some(slot) = self.table.get_mut(idx) else {
            return PublishOutcome::Refused(Refused::TableFull);
        };
        let gen = slot.gen;
        let t = &mut slot.topic;
        if let Some(seq) = p.msg_id.and_then(|m| t.dedupe.lookup(m)) {
            self.stats.dedupe_hits += 1;
            return PublishOutcome::Duplicate { topic: t.name.clone(), seq, epoch: t.epoch };
        }
        let admit = match p.stream {
            None => None,
            Some(s) => match t.streams.admit(s.name, s.text.len(), self.stream_bytes, &self.lim.streams) {
                Ok(a) => Some(a),
                Err(r) => {
                    self.stats.streams_refused += 1;
                    return PublishOutcome::Refused(Refused::Stream(r));
                }
            },
        };
        if let Some(r) = p.retain {
            let current = t.retained.as_ref().map_or(0, |v| v.publ.seq);
            if r.expire.is_some_and(|s| s != current) || r.if_seq.is_some_and(|s| s != current) {
                return PublishOutcome::Refused(Refused::Conflict);
            }
            let tenant = tenant_of(p.topic);
            let held = self.retained_tenants.get(tenant).copied().unwrap_or(0);
            let new = r.retain && t.retained.is_none();
            let add = p.data.len() + p.topic.len() + 256;
            if r.retain
                && ((new && held >= self.lim.retained_per_tenant)
                    || self.retained_bytes + add > self.lim.retained_budget_bytes)
            {
                self.stats.retained_refused += 1;
                return PublishOutcome::Refused(Refused::RetainedFull);
            }
        }
        targets.extend(t.interested());
        if targets.iter().any(|&s| !room(s)) {
            targets.clear();
            return PublishOutcome::Refused(Refused::RingFull);
        }
        t.seq += 1;
        if let (Some(how), Some(s)) = (admit, p.stream) {
            let uid = self.next_stream;
            let (added, freed, uid, new) = t.streams.apply(how, s.name, s.text, t.seq, s.end, now, uid);
            self.stream_bytes = self.stream_bytes + added - freed;
            if new {
                self.next_stream += 1;
                self.stats.streams_opened += 1;
                self.open_log.push(Entry { slot: idx, gen, key: uid, at: now });
            }
            if s.end {
                self.closed_log.push(Entry { slot: idx, gen, key: uid, at: now });
            }
        }
        let meta = PubMeta {
            topic: &t.name,
            seq: t.seq,
            epoch: t.epoch,
            prio: p.prio,
            msg_id: p.msg_id,
            from: p.from,
            data: p.data,
            extra: p.extra,
            stream: p.stream.map(|s| (s.name, s.end)),
        };
        let publ: SharedPub = Arc::new(encode(t.name.clone(), &meta));
        if let Some(r) = p.retain {
            let tenant = tenant_of(p.topic);
            if let Some(old) = t.retained.take() {
                self.retained_bytes -= old.publ.bytes();
                if let Some(n) = self.retained_tenants.get_mut(tenant) {
                    *n -= 1;
                    if *n == 0 {
                        self.retained_tenants.remove(tenant);
                    }
                }
                if r.expire.is_some() {
                    self.stats.retained_expired += 1;
                }
            }
            if r.retain {
                self.retained_bytes += publ.bytes();
                *self.retained_tenants.entry(tenant.into()).or_default() += 1;
                t.retained =
                    Some(super::owned::Retained { publ: publ.clone(), expires: r.ttl.map(|d| now + d), timer: None });
            }
        }
        self.keep(idx, &publ, now);
        self.table.touch(idx);
        self.enforce_budget(usize::MAX);
        PublishOutcome::Accepted(publ)
    }

    /// Keeps a publication of the topic at `idx` for resume and dedupe
    /// (its ring and its `msg_id` window), with the shard's accounting.
    fn keep(&mut self, idx: u32, publ: &SharedPub, now: Instant) {
        let Some(slot) = self.table.get_mut(idx) else { return };
        let gen = slot.gen;
        let t = &mut slot.topic;
        let (dropped, freed) = t.replay.push(publ.clone(), now, &self.lim.replay);
        self.bytes = self.bytes + publ.bytes() - freed;
        self.replay_items = self.replay_items + 1 - dropped;
        self.replay_log.push(Entry { slot: idx, gen, key: publ.seq, at: now });
        if let Some(mid) = publ.msg_id.as_deref() {
            let before = t.dedupe.bytes();
            let key = t.dedupe.insert(mid, publ.seq, now);
            self.dedupe_items += 1;
            while t.dedupe.len() > self.lim.dedupe_count {
                t.dedupe.pop_oldest();
                self.dedupe_items -= 1;
            }
            self.bytes = self.bytes + t.dedupe.bytes() - before;
            self.dedupe_log.push(Entry { slot: idx, gen, key, at: now });
        }
    }

    /// Whether `topic` is held here and current (a durable owner loads a
    /// topic that is not before it publishes into or subscribes to it).
    pub fn is_resident(&self, topic: &str) -> bool {
        self.table.find(topic).and_then(|i| self.table.get(i)).is_some_and(|s| !s.topic.stale)
    }

    /// Whether `topic` is held here, current or not.
    pub fn holds(&self, topic: &str) -> bool {
        self.table.find(topic).is_some()
    }

    /// Records that `topic`'s subscribers were given seqs up to `seq` only
    /// (later ones were sequenced and given up): its next reload delivers
    /// from there.
    pub fn rewind(&mut self, topic: &str, seq: u64) {
        if let Some(slot) = self.table.find(topic).and_then(|i| self.table.get_mut(i)) {
            let r = slot.topic.rewound.map_or(seq, |r| r.min(seq));
            slot.topic.rewound = Some(r);
        }
    }

    /// Marks every topic held here that `pick` selects as stale (reloaded
    /// before its next publish or subscribe). Returns how many.
    pub fn mark_stale(&mut self, mut pick: impl FnMut(&str) -> bool) -> usize {
        let names: Vec<Arc<str>> = self.table.iter().filter(|t| pick(&t.name)).map(|t| t.name.clone()).collect();
        for n in &names {
            if let Some(slot) = self.table.find(n).and_then(|i| self.table.get_mut(i)) {
                slot.topic.stale = true;
            }
        }
        names.len()
    }

    /// Makes `topic` resident with the state stored for it: its epoch, last
    /// seq, and its most recent publications in seq order (ring and dedupe
    /// window refilled, within the usual bounds). A topic never stored
    /// (`None`) gets the epoch every node gives it ([`Epoch::first_of`]). A
    /// topic already
    /// held (a stale one, or a mirror that saw a gap) takes the stored
    /// state in place of its own, keeping its subscribers; the returned
    /// publications are the ones it did not have (to deliver to them).
    pub fn restore(
        &mut self,
        topic: &str,
        state: Option<(Epoch, u64, Vec<SharedPub>)>,
        now: Instant,
    ) -> Result<Vec<SharedPub>, Refused> {
        let held = self.table.find(topic).is_some();
        let idx = self.slot_for(topic)?;
        let Some(slot) = self.table.get_mut(idx) else {
            return Err(Refused::TableFull);
        };
        // What this topic's subscribers were given (it came from the store):
        // seqs after it, if any, were sequenced here and given up.
        let floor = slot.topic.rewound.unwrap_or(slot.topic.seq).min(slot.topic.seq);
        if let Some((epoch, seq, _)) = &state {
            // A state behind what was given, in the same epoch, is a stale read.
            if held && *epoch == slot.topic.epoch && *seq < floor {
                return Err(Refused::StaleRead);
            }
        }
        slot.topic.stale = false;
        slot.topic.rewound = None;
        let old_seq = floor;
        if held {
            // The ring and window are replaced by what the store holds: what
            // was sequenced here and given up (never stored, never acked) must
            // not be replayed, nor its `msg_id` answered as a duplicate.
            let t = &mut slot.topic;
            while !t.replay.is_empty() {
                self.bytes -= t.replay.pop_oldest();
                self.replay_items -= 1;
            }
            while !t.dedupe.is_empty() {
                self.bytes -= t.dedupe.pop_oldest();
                self.dedupe_items -= 1;
            }
        }
        let Some(slot) = self.table.get_mut(idx) else {
            return Err(Refused::TableFull);
        };
        let Some((epoch, seq, pubs)) = state else {
            if slot.topic.seq == 0 {
                slot.topic.epoch = Epoch::first_of(topic);
            }
            // Nothing stored: the next seq follows what was given out (the
            // ones given up are sequenced again, never skipped).
            slot.topic.seq = floor;
            return Ok(Vec::new());
        };
        let old_epoch = slot.topic.epoch;
        slot.topic.epoch = epoch;
        slot.topic.seq = seq;
        let newer: Vec<SharedPub> = match held && old_epoch == epoch {
            true => pubs.iter().filter(|p| p.seq > old_seq).cloned().collect(),
            false => Vec::new(),
        };
        for publ in pubs {
            self.keep(idx, &publ, now);
        }
        self.stats.topics_restored += 1;
        self.enforce_budget(usize::MAX);
        Ok(newer)
    }

    /// A mirror (durable cluster mode, a topic another node sequences)
    /// takes a publication the owner node stored: the next seq is kept
    /// (ring, dedupe) and is to be delivered; an older one is ignored; a
    /// gap, another epoch or a stale topic asks for a reload.
    pub fn apply(&mut self, publ: &SharedPub, now: Instant) -> Applied {
        let Some(idx) = self.table.find(&publ.topic) else { return Applied::Absent };
        let Some(slot) = self.table.get_mut(idx) else { return Applied::Absent };
        let t = &mut slot.topic;
        if t.stale {
            return Applied::Gap;
        }
        if t.epoch == publ.epoch && publ.seq <= t.seq {
            return Applied::Old;
        }
        if t.epoch != publ.epoch || publ.seq != t.seq + 1 {
            return Applied::Gap;
        }
        t.seq = publ.seq;
        self.keep(idx, publ, now);
        self.table.touch(idx);
        self.enforce_budget(usize::MAX);
        Applied::Next
    }

    /// Counts one more subscription of `shard` and answers with the
    /// position (and, with `since`, the replay up to `max_replay` bytes).
    pub fn subscribe(
        &mut self,
        shard: usize,
        topic: &str,
        since: Option<(u64, &str)>,
        max_replay: usize,
    ) -> SubscribeOutcome {
        self.subscribe_with(shard, topic, since, max_replay, SubOpts::default())
    }

    /// A subscriber of `topic` (already counted by `subscribe`) joins its
    /// presence: listed if the list has room, a watcher with `watch`.
    /// Returns the watchers to tell (not the joiner), or false when the
    /// tenant holds `presence_max_watchers_per_tenant` watchers.
    pub fn presence_join(
        &mut self,
        topic: &str,
        at: super::presence::Place,
        client: Arc<str>,
        watch: bool,
        tell: &mut Vec<super::presence::Place>,
    ) -> bool {
        tell.clear();
        let tenant = tenant_of(topic);
        let held = self.watchers.get(tenant).copied().unwrap_or(0);
        if watch && held >= self.lim.presence_max_watchers_per_tenant {
            return false;
        }
        let max = self.lim.presence_max_list;
        let Some(i) = self.table.find(topic) else { return true };
        let Some(slot) = self.table.get_mut(i) else { return true };
        let p = &mut slot.topic.presence;
        tell.extend(p.watchers_but(at));
        let before = p.watcher_count();
        p.join(at, client, watch, max);
        if p.watcher_count() > before {
            *self.watchers.entry(tenant.into()).or_default() += 1;
        }
        true
    }

    /// A subscriber of `topic` leaves its presence; the watchers to tell.
    pub fn presence_leave(&mut self, topic: &str, at: super::presence::Place, tell: &mut Vec<super::presence::Place>) {
        tell.clear();
        let Some(i) = self.table.find(topic) else { return };
        let Some(slot) = self.table.get_mut(i) else { return };
        let p = &mut slot.topic.presence;
        if p.leave(at) {
            let tenant = tenant_of(topic);
            if let Some(n) = self.watchers.get_mut(tenant) {
                *n -= 1;
                if *n == 0 {
                    self.watchers.remove(tenant);
                }
            }
        }
        tell.extend(p.watchers_but(at));
    }

    /// `topic`'s subscriber count (exact) and its listed subscribers.
    pub fn presence_of(&self, topic: &str) -> (u64, Vec<(super::presence::Place, Arc<str>)>) {
        match self.topic(topic) {
            Some(t) => (t.subscriptions(), t.presence.list().to_vec()),
            None => (0, Vec::new()),
        }
    }

    /// A page of `topic`'s replay ring (a history query), with the topic's
    /// epoch and last seq (None and 0 for a topic not held). `since` from
    /// another epoch, or past the last seq, is `Ahead`; older than the ring
    /// holds, `Expired`.
    pub fn history(
        &self,
        topic: &str,
        since: Option<(u64, &str)>,
        limit: usize,
        reverse: bool,
        max_bytes: usize,
    ) -> Result<(Option<super::owned::Epoch>, u64, Vec<SharedPub>), ResumeError> {
        let Some(t) = self.topic(topic) else {
            return match since {
                Some(_) => Err(ResumeError::Ahead),
                None => Ok((None, 0, Vec::new())),
            };
        };
        if since.is_some_and(|(seq, epoch)| epoch != t.epoch.as_str() || seq > t.seq) {
            return Err(ResumeError::Ahead);
        }
        let page = t.replay.page(since.map(|s| s.0), limit, reverse, max_bytes)?;
        Ok((Some(t.epoch), t.seq, page))
    }

    /// The retained value of `topic` and its time to live at `now`.
    pub fn get(&self, topic: &str, now: Instant) -> Option<(SharedPub, Option<Duration>)> {
        let r = self.topic(topic)?.retained.as_ref()?;
        Some((r.publ.clone(), r.expires.map(|e| e.saturating_duration_since(now))))
    }

    /// The expiry timer of `topic`'s retained value, taken (to cancel it
    /// when the value is replaced or expired).
    pub fn take_retained_timer(&mut self, topic: &str) -> Option<super::wheel::TimerId> {
        let i = self.table.find(topic)?;
        self.table.get_mut(i)?.topic.retained.as_mut()?.timer.take()
    }

    /// Records the expiry timer of `topic`'s retained value.
    pub fn set_retained_timer(&mut self, topic: &str, timer: super::wheel::TimerId) {
        let Some(i) = self.table.find(topic) else { return };
        if let Some(r) = self.table.get_mut(i).and_then(|s| s.topic.retained.as_mut()) {
            r.timer = Some(timer);
        }
    }

    /// Retained values held on this shard, and their bytes.
    pub fn retained_values(&self) -> (usize, usize) {
        (self.retained_tenants.values().sum(), self.retained_bytes)
    }

    /// [`Owner::subscribe`]; with `streams`, and unless a `since` resume
    /// recovered, the replay is one rollup publication per stream of the
    /// topic (its whole text so far, `upto` its last append's seq), in
    /// order of `upto`: every append after that has a higher seq and comes
    /// live.
    pub fn subscribe_with(
        &mut self,
        shard: usize,
        topic: &str,
        since: Option<(u64, &str)>,
        max_replay: usize,
        opts: SubOpts,
    ) -> SubscribeOutcome {
        let idx = match self.slot_for(topic) {
            Ok(i) => i,
            Err(r) => return SubscribeOutcome::Refused(r),
        };
        let Some(slot) = self.table.get_mut(idx) else {
            return SubscribeOutcome::Refused(Refused::TableFull);
        };
        let t = &mut slot.topic;
        t.add_interest(shard);
        let (recovery, replay) = match since {
            None => (Recovery::NotAsked, Vec::new()),
            Some((_, epoch)) if epoch != t.epoch.as_str() => (Recovery::Failed("epoch_mismatch"), Vec::new()),
            Some((seq, _)) => match t.replay.resume(seq, t.seq, max_replay) {
                Ok(frames) => (Recovery::Recovered(frames.len() as u64), frames),
                Err(ResumeError::Expired) => (Recovery::Failed("expired"), Vec::new()),
                Err(ResumeError::Ahead) => (Recovery::Failed("epoch_mismatch"), Vec::new()),
                Err(ResumeError::Limit) => (Recovery::Failed("limit"), Vec::new()),
            },
        };
        let mut replay = replay;
        if opts.last {
            if let Some(r) = &t.retained {
                let p = &r.publ;
                let meta = PubMeta {
                    topic: &t.name,
                    seq: p.seq,
                    epoch: p.epoch,
                    prio: p.prio_given(),
                    msg_id: p.msg_id.as_deref(),
                    from: p.from.as_ref(),
                    data: p.data(),
                    extra: Some("\"retained\":true"),
                    stream: None,
                };
                replay.insert(0, Arc::new(Publication::native(t.name.clone(), &meta, &mut Vec::new())));
            }
        }
        if opts.streams && !matches!(recovery, Recovery::Recovered(_)) && !t.streams.is_empty() {
            let mut list: Vec<&super::streams::Stream> = t.streams.iter().collect();
            list.sort_by_key(|s| s.upto);
            let mut scratch = Vec::new();
            for s in list {
                replay.push(Arc::new(rollup(t, s, &mut scratch)));
            }
        }
        let out = SubscribeOutcome::Subscribed { topic: t.name.clone(), seq: t.seq, epoch: t.epoch, recovery, replay };
        self.table.set_idle(idx, false);
        out
    }

    /// Gives back one subscription of `shard`. False if there was none to
    /// give back (a bookkeeping bug the caller counts). A topic left with no
    /// subscriber and nothing retained is released by the sweep after
    /// `replay.max_age` (so a client that resumes within the replay window
    /// still finds its epoch).
    pub fn release(&mut self, shard: usize, topic: &str, now: Instant) -> bool {
        let Some(idx) = self.table.find(topic) else { return false };
        let Some(slot) = self.table.get_mut(idx) else { return false };
        if !slot.topic.release_interest(shard) {
            return false;
        }
        if slot.topic.subscriptions() == 0 {
            if slot.topic.holds_nothing() {
                self.idle_log.push(Entry { slot: idx, gen: slot.gen, key: 0, at: now });
            }
            if slot.topic.pins == 0 {
                self.table.set_idle(idx, true);
            }
        }
        true
    }

    /// Pins (`true`) or unpins `topic`: a pinned topic is never evicted
    /// (durable mode pins one while publications of it wait for the store,
    /// so a reload can never come in below seqs still being stored).
    pub fn pin(&mut self, topic: &str, on: bool) {
        let Some(idx) = self.table.find(topic) else { return };
        let Some(slot) = self.table.get_mut(idx) else { return };
        let t = &mut slot.topic;
        t.pins = if on { t.pins + 1 } else { t.pins.saturating_sub(1) };
        let idle = t.pins == 0 && t.subscriptions() == 0;
        self.table.set_idle(idx, idle);
    }

    /// Ages out retained publications and `msg_id`s, enforces the shard
    /// budget and releases quiet topics left with nothing, doing at most
    /// `max_work` steps. Returns whether work is left (call again soon).
    pub fn sweep(&mut self, now: Instant, max_work: usize) -> bool {
        let mut work = 0;
        let replay_cutoff = now.checked_sub(self.lim.replay.max_age);
        let dedupe_cutoff = now.checked_sub(self.lim.dedupe_age);
        for (log, cutoff) in [(Log::Replay, replay_cutoff), (Log::Dedupe, dedupe_cutoff), (Log::Idle, replay_cutoff)] {
            while work < max_work {
                let Some(e) = self.log_mut(log).pop_older_than(cutoff) else { break };
                self.age_out(log, e);
                work += 1;
            }
        }
        work += self.enforce_budget(max_work.saturating_sub(work));
        self.compact_logs();
        let more = work >= max_work;
        if more {
            self.stats.sweep_budget_hits += 1;
        }
        more
    }

    /// Drops closed streams kept `keep_closed`, and names (topic, stream)
    /// the open streams without an append for `idle_timeout` in `abandoned`
    /// (the caller publishes their `end`; one not ended is named again
    /// after another `idle_timeout`). An open stream is thus ended between
    /// one and two `idle_timeout`s after its last append.
    pub fn sweep_streams(&mut self, now: Instant, max_work: usize, abandoned: &mut Vec<(Arc<str>, Box<str>)>) {
        let keep = now.checked_sub(self.lim.streams.keep_closed);
        let mut work = 0;
        while work < max_work {
            let Some(e) = self.closed_log.pop_older_than(keep) else { break };
            work += 1;
            let Some(slot) = self.table.get_mut(e.slot).filter(|s| s.gen == e.gen) else { continue };
            if slot.topic.streams.by_uid(e.key).is_some_and(|s| s.ended) {
                self.stream_bytes -= slot.topic.streams.remove(e.key);
                self.stats.streams_dropped += 1;
                self.release_if_quiet(e.slot);
            }
        }
        let idle = self.lim.streams.idle_timeout;
        let cutoff = now.checked_sub(idle);
        while work < max_work {
            let Some(e) = self.open_log.pop_older_than(cutoff) else { break };
            work += 1;
            let Some(slot) = self.table.get(e.slot).filter(|s| s.gen == e.gen) else { continue };
            let Some(s) = slot.topic.streams.by_uid(e.key).filter(|s| !s.ended) else { continue };
            if s.last + idle <= now {
                abandoned.push((slot.topic.name.clone(), s.name.clone()));
            }
            self.open_log.push(Entry { at: now, ..e });
        }
    }

    /// Stream text bytes held on this shard (what `streams.shard_budget_bytes` bounds).
    pub fn stream_bytes(&self) -> usize {
        self.stream_bytes
    }

    fn log_mut(&mut self, log: Log) -> &mut SweepLog {
        match log {
            Log::Replay => &mut self.replay_log,
            Log::Dedupe => &mut self.dedupe_log,
            Log::Idle => &mut self.idle_log,
        }
    }

    /// Applies one entry that reached its age.
    fn age_out(&mut self, log: Log, e: Entry) {
        match log {
            Log::Replay if self.expire_replay(e) => self.stats.replay_aged += 1,
            Log::Dedupe if self.expire_dedupe(e) => self.stats.dedupe_aged += 1,
            Log::Idle if self.table.get(e.slot).is_some_and(|s| s.gen == e.gen) => self.release_if_quiet(e.slot),
            _ => {}
        }
    }

    /// Drops the oldest retained state, shard-wide, while over budget.
    /// Returns the steps taken.
    fn enforce_budget(&mut self, max_work: usize) -> usize {
        let mut work = 0;
        while self.bytes > self.lim.budget_bytes && work < max_work {
            work += 1;
            if let Some(e) = self.replay_log.pop() {
                if self.expire_replay(e) {
                    self.stats.replay_budget += 1;
                }
            } else if let Some(e) = self.dedupe_log.pop() {
                if self.expire_dedupe(e) {
                    self.stats.dedupe_budget += 1;
                }
            } else {
                break;
            }
        }
        work
    }

    /// Applies one replay log entry: drops that publication if the topic
    /// still holds it. Returns whether it did.
    fn expire_replay(&mut self, e: Entry) -> bool {
        let Some(slot) = self.table.get_mut(e.slot).filter(|s| s.gen == e.gen) else { return false };
        let t = &mut slot.topic;
        if t.replay.front().is_none_or(|f| f.publ.seq > e.key) {
            return false;
        }
        self.bytes -= t.replay.pop_oldest();
        self.replay_items -= 1;
        self.release_if_quiet(e.slot);
        true
    }

    fn expire_dedupe(&mut self, e: Entry) -> bool {
        let Some(slot) = self.table.get_mut(e.slot).filter(|s| s.gen == e.gen) else { return false };
        let t = &mut slot.topic;
        if t.dedupe.is_empty() || t.dedupe.front_key() > e.key {
            return false;
        }
        self.bytes -= t.dedupe.pop_oldest();
        self.dedupe_items -= 1;
        self.release_if_quiet(e.slot);
        true
    }

    fn release_if_quiet(&mut self, idx: u32) {
        if self.table.get(idx).is_some_and(|s| s.topic.holds_nothing()) {
            self.table.remove(idx);
            self.stats.released_idle += 1;
        }
    }

    /// Drops stale log entries once they outnumber live ones (amortized
    /// O(1) per publish; keeps the logs within twice the retained state).
    fn compact_logs(&mut self) {
        let table = &self.table;
        if self.replay_log.len() > 2 * self.replay_items + sweep::COMPACT_SLACK {
            self.replay_log.retain(|e| {
                table
                    .get(e.slot)
                    .is_some_and(|s| s.gen == e.gen && s.topic.replay.front().is_some_and(|f| f.publ.seq <= e.key))
            });
        }
        if self.dedupe_log.len() > 2 * self.dedupe_items + sweep::COMPACT_SLACK {
            self.dedupe_log.retain(|e| {
                table.get(e.slot).is_some_and(|s| {
                    s.gen == e.gen && !s.topic.dedupe.is_empty() && s.topic.dedupe.front_key() <= e.key
                })
            });
        }
        if self.idle_log.len() > 2 * self.table.len() + sweep::COMPACT_SLACK {
            self.idle_log.retain(|e| table.get(e.slot).is_some_and(|s| s.gen == e.gen && s.topic.holds_nothing()));
        }
    }

    /// The topic's state, if it exists.
    pub fn topic(&self, name: &str) -> Option<&OwnedTopic> {
        self.table.find(name).and_then(|i| self.table.get(i)).map(|s| &s.topic)
    }

    /// Topics held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no topic is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Topics of `tenant` held here.
    pub fn tenant_topics(&self, tenant: &str) -> usize {
        self.table.tenant_topics(tenant)
    }

    /// Replay + dedupe bytes held (what `budget_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sweep log entries held (bounded by twice the retained state).
    pub fn log_len(&self) -> usize {
        self.replay_log.len() + self.dedupe_log.len() + self.idle_log.len()
    }

    /// The bounds in force.
    pub fn limits(&self) -> &OwnerLimits {
        &self.lim
    }

    /// Sum of all interest counts (subscriptions on all shards to topics this
    /// shard owns). Used by tests and metrics to prove nothing leaks.
    pub fn total_interest(&self) -> u64 {
        self.table.iter().map(OwnedTopic::subscriptions).sum()
    }

    /// Publications retained over all owned topics, and their bytes.
    pub fn retained(&self) -> (u64, u64) {
        let bytes = self.table.iter().map(|t| t.replay.bytes() as u64).sum();
        (self.replay_items as u64, bytes)
    }

    /// The `n` owned topics with the highest seqs: (topic, last seq).
    /// Linear in the number of topics (a selection, not a sort), since it
    /// runs on the shard thread for every metrics scrape.
    pub fn busiest(&self, n: usize) -> Vec<(String, u64)> {
        if n == 0 {
            return Vec::new();
        }
        let mut v: Vec<(&Arc<str>, u64)> = self.table.iter().map(|t| (&t.name, t.seq)).collect();
        if v.len() > n {
            v.select_nth_unstable_by_key(n - 1, |t| std::cmp::Reverse(t.1));
            v.truncate(n);
        }
        v.sort_by_key(|t| std::cmp::Reverse(t.1));
        v.into_iter().map(|(t, s)| (t.to_string(), s)).collect()
    }
}

/// A stream's rollup: one `msg` with its whole text so far.
fn rollup(t: &OwnedTopic, s: &super::streams::Stream, scratch: &mut Vec<u8>) -> Publication {
    let data = serde_json::Value::from(s.text.as_str()).to_string();
    let name = serde_json::Value::from(&*s.name).to_string();
    let extra = format!("\"stream\":{name},\"end\":{},\"upto\":{},\"rollup\":true", s.ended, s.upto);
    let meta = PubMeta {
        topic: &t.name,
        seq: s.upto,
        epoch: t.epoch,
        prio: None,
        msg_id: None,
        from: None,
        data: &data,
        extra: Some(&extra),
        stream: None,
    };
    Publication::native(t.name.clone(), &meta, scratch)
}

#[cfg(test)]
mod tests;
