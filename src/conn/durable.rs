//! Durable mode on a shard (`[cluster] nats_url`; docs/ARCHITECTURE.md,
//! "Cluster and durability"): the owner's side of the store.
//!
//! * A publication the owner sequenced is handed to the cluster participant
//!   (its own SPSC ring and doorbell) and held: it is acked **and
//!   delivered** only when the participant reports it stored (`Stored`,
//!   contiguous per topic). Nothing a subscriber sees can then be lost by
//!   a crash, and a crash loses only what nobody saw or was acked for.
//! * A topic that is not resident is loaded before anything creates it:
//!   the publish, subscribe or group join that needs it waits (bounded) for
//!   the participant's `Loaded`, which restores its epoch, seq and ring.
//! * Admission comes before sequencing: past `cluster.max_inflight` held
//!   publications or a full ring, a publish is refused `overloaded` and no
//!   seq is spent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::mesh::msg::{ClusterReq, StoredTopic};
use crate::mesh::{Doorbell, MeshMsg, PubReply, Requester, SharedPub};
use crate::proto::message::ErrorCode;

/// A shard's end of the cluster participant.
#[derive(Debug)]
pub struct Durable {
    /// Requests to the participant.
    pub to: rtrb::Producer<ClusterReq>,
    /// The participant's doorbell.
    pub bell: Arc<Doorbell>,
    /// Sequenced publications waiting to be stored, per topic, in seq order.
    pending: HashMap<Arc<str>, VecDeque<Held>>,
    /// Held publications in all.
    pub held: usize,
    /// Topics being loaded, and the mesh messages waiting for each.
    loading: HashMap<Box<str>, Vec<(usize, MeshMsg)>>,
    /// Messages waiting for loads in all.
    pub waiting: usize,
    /// Topics whose load was asked before their stream changed owner: its
    /// answer may predate the last appends of the old owner, so it is asked
    /// again (bounded by `loading`).
    redo: std::collections::HashSet<Box<str>>,
    /// `cluster.max_inflight`.
    pub max_inflight: usize,
    /// `cluster.max_loading`.
    pub max_loading: usize,
    /// Which streams (the units of ownership) this node owns now.
    owned: Vec<bool>,
    /// Requests that found the participant's ring full, in order (answers
    /// to remote publishers; bounded by the held publications).
    overflow: VecDeque<ClusterReq>,
}

/// A sequenced publication waiting for its store.
#[derive(Debug)]
pub struct Held {
    /// Where the publish came from.
    from: usize,
    /// Who waits for the ack.
    to: Requester,
    /// The publication.
    publ: SharedPub,
    /// When the publish was received (latency).
    received_at: Instant,
}

impl Durable {
    /// A shard's end: requests go on `to`, the participant is woken by `bell`.
    pub fn new(
        to: rtrb::Producer<ClusterReq>,
        bell: Arc<Doorbell>,
        streams: usize,
        max_inflight: usize,
        max_loading: usize,
    ) -> Self {
        Self {
            to,
            bell,
            pending: HashMap::new(),
            held: 0,
            loading: HashMap::new(),
            redo: Default::default(),
            waiting: 0,
            max_inflight,
            max_loading,
            owned: vec![false; streams.max(1)],
            overflow: VecDeque::new(),
        }
    }

    /// The stream (the unit of ownership) of `topic`.
    pub fn stream_of(map: &crate::topic::PartitionMap, streams: usize, topic: &str) -> usize {
        (map.partition(topic) as usize) % streams.max(1)
    }

    /// Whether this node owns stream `s`.
    pub fn owns(&self, s: usize) -> bool {
        self.owned.get(s).copied().unwrap_or(false)
    }

    /// Streams this node owns.
    pub fn owned_count(&self) -> usize {
        self.owned.iter().filter(|o| **o).count()
    }

    /// Sends what waited for room in the ring (called each loop turn).
    pub fn flush(&mut self) {
        let mut sent = false;
        while let Some(r) = self.overflow.pop_front() {
            match self.to.push(r) {
                Ok(()) => sent = true,
                Err(rtrb::PushError::Full(r)) => {
                    self.overflow.push_front(r);
                    break;
                }
            }
        }
        if sent {
            self.bell.notify();
        }
    }

    /// Whether requests still wait for room in the ring.
    pub fn has_overflow(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Sends `req`, queueing it behind earlier ones if the ring is full.
    fn send_queued(&mut self, req: ClusterReq) {
        if !self.overflow.is_empty() {
            return self.overflow.push_back(req);
        }
        if let Err(rtrb::PushError::Full(r)) = self.to.push(req) {
            self.overflow.push_back(r);
        }
        self.bell.notify();
    }

    /// Whether one more publication may be sequenced (room to hold it and
    /// to hand it over).
    pub fn admits(&self) -> bool {
        self.held < self.max_inflight && self.to.slots() > 0
    }

    /// The last stored seq of `topic` when some of its publications are
    /// still held (None: everything sequenced is stored).
    pub fn stored_through(&self, topic: &str) -> Option<u64> {
        self.pending.get(topic)?.front().map(|h| h.publ.seq - 1)
    }

    fn send(&mut self, req: ClusterReq) -> bool {
        let ok = self.to.push(req).is_ok();
        self.bell.notify();
        ok
    }
}

/// The topic a mesh message needs resident at its owner, if it creates one.
fn creates(msg: &MeshMsg) -> Option<&str> {
    match msg {
        MeshMsg::Publish(r) => Some(&r.topic),
        MeshMsg::Subscribe { topic, .. } | MeshMsg::GroupJoin { topic, .. } => Some(topic),
        _ => None,
    }
}

impl ShardCore {
    /// The mesh index of the cluster participant (after the shards).
    pub(crate) fn participant(&self) -> usize {
        self.map.shards
    }

    /// Sends a mesh message to the participant (an answer for a remote
    /// publisher).
    pub(crate) fn send_to_participant(&mut self, msg: MeshMsg) {
        let Some(d) = self.durable.as_mut() else { return self.counters.internal_errors += 1 };
        match msg {
            MeshMsg::Published { to, reply } => d.send_queued(ClusterReq::Answer { to, reply }),
            _ => self.counters.internal_errors += 1,
        }
    }

    /// Durable cluster mode, before anything else: ownership changes,
    /// replicated publications, forwarded answers, and publishes into a
    /// partition another node owns (forwarded there). Others go on.
    pub(crate) fn cluster_route(&mut self, from: usize, msg: MeshMsg) -> Option<MeshMsg> {
        let streams = self.durable.as_ref().map_or(1, |d| d.owned.len().max(1));
        match msg {
            MeshMsg::Ownership { stream, owned } => {
                self.on_ownership(stream as usize, owned);
                None
            }
            MeshMsg::Replicated(publ) => {
                self.on_replicated(publ);
                None
            }
            MeshMsg::Forwarded { from, to, reply } => {
                self.counters.cluster_forwarded += 1;
                if to.receipt {
                    // The owner node counts no deliveries for this node's
                    // publisher: no receipt (documented), the slot freed.
                    self.send_to(from, MeshMsg::ReceiptVoid { conn: to.conn });
                }
                let to = Requester { receipt: false, ..to };
                self.send_to(from, MeshMsg::Published { to, reply });
                None
            }
            MeshMsg::Publish(req) => {
                let s = Durable::stream_of(&self.map, streams, &req.topic);
                let participant = self.participant();
                let d = self.durable.as_mut()?;
                if d.owns(s) {
                    return Some(MeshMsg::Publish(req));
                }
                if from == participant {
                    // Forwarded here, but this node no longer owns it.
                    let reply = PubReply::Refused {
                        code: ErrorCode::Overloaded,
                        message: "the topic's partition is changing owner; retry later",
                        retry_after_ms: Some(OVERLOADED_RETRY_MS),
                    };
                    self.send_to(from, MeshMsg::Published { to: req.to, reply });
                    return None;
                }
                let to = req.to;
                if d.to.push(ClusterReq::Forward { from, req }).is_ok() {
                    d.bell.notify();
                    self.counters.cluster_forwards += 1;
                } else {
                    *self.counters.publishes_rejected.entry("store_backlog").or_default() += 1;
                    let reply = PubReply::Refused {
                        code: ErrorCode::Overloaded,
                        message: "engine overloaded (the store lags); retry later",
                        retry_after_ms: Some(OVERLOADED_RETRY_MS),
                    };
                    self.send_to(from, MeshMsg::Published { to, reply });
                }
                None
            }
            other => Some(other),
        }
    }

    /// This node took (or lost) stream `s`. Either way the topics of it
    /// held here may lag the stream: they are reloaded before they are used
    /// again. Losing it refuses what was still waiting for the store
    /// (never acked: the publishers retry, at the new owner).
    fn on_ownership(&mut self, s: usize, owned: bool) {
        let map = self.map;
        let Some(d) = self.durable.as_mut() else { return };
        let streams = d.owned.len();
        if s >= streams {
            return self.counters.internal_errors += 1;
        }
        if d.owned[s] == owned {
            d.send_queued(ClusterReq::OwnershipSeen(s as u32));
            return;
        }
        d.owned[s] = owned;
        // Loads in flight of this stream's topics are read again.
        for t in d.loading.keys().filter(|t| Durable::stream_of(&map, streams, t) == s) {
            d.redo.insert(t.clone());
        }
        let mut refused = Vec::new();
        let mut unpin = Vec::new();
        if !owned {
            let lost: Vec<Arc<str>> =
                d.pending.keys().filter(|t| Durable::stream_of(&map, streams, t) == s).cloned().collect();
            for t in lost {
                if let Some(q) = d.pending.remove(&t) {
                    d.held -= q.len();
                    let delivered = q.front().map_or(0, |h| h.publ.seq.saturating_sub(1));
                    refused.extend(q);
                    unpin.push((t, delivered));
                }
            }
        }
        d.send_queued(ClusterReq::OwnershipSeen(s as u32));
        for (t, delivered) in unpin {
            self.owner.rewind(&t, delivered);
            self.owner.pin(&t, false);
        }
        let n = self.owner.mark_stale(|t| Durable::stream_of(&map, streams, t) == s);
        self.counters.cluster_ownership_moves += 1;
        tracing::debug!(stream = s, owned, topics = n, "cluster: ownership changed");
        for h in refused {
            *self.counters.publishes_rejected.entry("owner_moved").or_default() += 1;
            let reply = PubReply::Refused {
                code: ErrorCode::Overloaded,
                message: "the topic's partition moved to another node before it was stored; retry",
                retry_after_ms: Some(OVERLOADED_RETRY_MS),
            };
            self.send_to(h.from, MeshMsg::Published { to: h.to, reply });
        }
    }

    /// A publication another node stored: a mirror held here applies it
    /// and delivers it; a gap reloads the topic first.
    fn on_replicated(&mut self, publ: SharedPub) {
        let streams = self.durable.as_ref().map_or(1, |d| d.owned.len().max(1));
        let s = Durable::stream_of(&self.map, streams, &publ.topic);
        let participant = self.participant();
        let Some(d) = self.durable.as_mut() else { return };
        if d.owns(s) {
            // Sequenced here: delivered when stored, not from the stream.
            return;
        }
        if let Some(w) = d.loading.get_mut(&*publ.topic) {
            // Applied after the load, in order.
            if d.waiting < d.max_loading {
                w.push((participant, MeshMsg::Replicated(publ)));
                d.waiting += 1;
            }
            return;
        }
        match self.owner.apply(&publ, self.now) {
            crate::topic::owner::Applied::Next => {
                self.counters.cluster_replicated += 1;
                // The shard's scratch list of targets, not one per publication.
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                targets.extend(self.owner.topic(&publ.topic).into_iter().flat_map(|t| t.interested()));
                self.deliver_mirrored(&targets, &publ);
                self.targets = targets;
            }
            crate::topic::owner::Applied::Old | crate::topic::owner::Applied::Absent => {}
            crate::topic::owner::Applied::Gap => {
                let topic = publ.topic.clone();
                self.reload(&topic, Some((self.participant(), MeshMsg::Replicated(publ))));
            }
        }
    }

    /// Delivers a mirrored publication to the interested shards and offers
    /// it to the topic's groups here (nobody is acked: the owner node did).
    fn deliver_mirrored(&mut self, targets: &[usize], publ: &SharedPub) {
        self.deliver_to(targets, publ, self.now);
        if !self.groups.is_empty() {
            self.groups_offer(publ);
        }
    }

    /// Asks the participant for `topic`'s stored state (a mirror that saw a
    /// gap); `waiter` runs after it.
    fn reload(&mut self, topic: &Arc<str>, waiter: Option<(usize, MeshMsg)>) {
        let Some(d) = self.durable.as_mut() else { return };
        if d.loading.contains_key(&**topic) || d.loading.len() >= d.max_loading || d.waiting >= d.max_loading {
            return;
        }
        if d.send(ClusterReq::Load(topic.clone())) {
            let w: Vec<(usize, MeshMsg)> = waiter.into_iter().collect();
            d.waiting += w.len();
            d.loading.insert((**topic).into(), w);
            self.counters.cluster_loads += 1;
            self.counters.cluster_reloads += 1;
        }
    }

    /// Durable mode: a message that would create a topic not resident here
    /// waits for its load (true: taken). Others go on.
    pub(crate) fn wait_for_load(&mut self, from: usize, msg: MeshMsg) -> Option<MeshMsg> {
        let Some(topic) = creates(&msg) else { return Some(msg) };
        if self.owner.is_resident(topic) {
            return Some(msg);
        }
        let Some(d) = self.durable.as_mut() else { return Some(msg) };
        if let Some(w) = d.loading.get_mut(topic) {
            if d.waiting < d.max_loading {
                w.push((from, msg));
                d.waiting += 1;
                return None;
            }
        } else if d.loading.len() < d.max_loading && d.waiting < d.max_loading {
            let name: Arc<str> = topic.into();
            if d.send(ClusterReq::Load(name.clone())) {
                d.loading.insert((*name).into(), vec![(from, msg)]);
                d.waiting += 1;
                self.counters.cluster_loads += 1;
                return None;
            }
        }
        *self.counters.publishes_rejected.entry("load_backlog").or_default() += 1;
        self.refuse_waiting(from, msg, "engine overloaded (topics loading from the store); retry later");
        None
    }

    /// Refuses a message that cannot wait for its topic's load.
    fn refuse_waiting(&mut self, from: usize, msg: MeshMsg, message: &'static str) {
        match msg {
            MeshMsg::Publish(req) => {
                let reply = PubReply::Refused {
                    code: ErrorCode::Overloaded,
                    message,
                    retry_after_ms: Some(OVERLOADED_RETRY_MS),
                };
                self.send_to(from, MeshMsg::Published { to: req.to, reply });
            }
            MeshMsg::Subscribe { conn, id, .. } | MeshMsg::GroupJoin { conn, id, .. } => {
                self.send_to(from, MeshMsg::SubscribeRefused { conn, id, code: ErrorCode::Overloaded, message });
            }
            _ => self.counters.internal_errors += 1,
        }
    }

    /// The participant loaded `topic`: restore it and run what waited.
    pub(crate) fn on_loaded(&mut self, topic: &str, state: Result<Option<Box<StoredTopic>>, String>) {
        let Some(d) = self.durable.as_mut() else { return };
        let Some(mut waiting) = d.loading.remove(topic) else { return };
        d.waiting -= waiting.len();
        let redo = d.redo.remove(topic);
        let restored = match state {
            // Asked before the stream changed owner: ask again.
            _ if redo => match self.load_again(topic, waiting) {
                None => return,
                Some(w) => {
                    waiting = w;
                    Err("engine overloaded (topics loading from the store); retry later")
                }
            },
            Ok(s) => match self.owner.restore(topic, s.map(|b| *b), self.now) {
                Err(crate::topic::owner::Refused::StaleRead) => {
                    // Older than what was given out: load again, the waiting
                    // commands with it.
                    self.counters.cluster_stale_reads += 1;
                    match self.load_again(topic, waiting) {
                        None => return,
                        Some(w) => {
                            waiting = w;
                            Err("the store answered with an older state; retry later")
                        }
                    }
                }
                Ok(newer) => {
                    // A mirror's subscribers get what it had not seen.
                    let targets: Vec<usize> =
                        self.owner.topic(topic).map(|t| t.interested().collect()).unwrap_or_default();
                    for p in &newer {
                        self.deliver_mirrored(&targets, p);
                    }
                    Ok(())
                }
                Err(_) => Err("the topic table is full"),
            },
            Err(e) => {
                self.counters.cluster_load_errors += 1;
                tracing::warn!(topic, error = %e, "loading a topic from the store failed");
                Err("the store could not be read; retry later")
            }
        };
        for (from, msg) in waiting {
            match (restored, msg) {
                (_, MeshMsg::Replicated(p)) => self.on_replicated(p),
                (Ok(()), msg) => self.on_mesh(from, msg),
                (Err(why), msg) => self.refuse_waiting(from, msg, why),
            }
        }
    }

    /// Asks the participant for `topic` again, with the commands that wait
    /// for it; gives them back if its ring is full.
    fn load_again(&mut self, topic: &str, waiting: Vec<(usize, MeshMsg)>) -> Option<Vec<(usize, MeshMsg)>> {
        let Some(d) = self.durable.as_mut() else { return Some(waiting) };
        if !d.send(ClusterReq::Load(topic.into())) {
            return Some(waiting);
        }
        d.waiting += waiting.len();
        d.loading.insert(topic.into(), waiting);
        self.counters.cluster_reloads += 1;
        None
    }

    /// Holds a sequenced publication until it is stored.
    pub(crate) fn hold_for_store(&mut self, from: usize, to: Requester, publ: &SharedPub, received_at: Instant) {
        let Some(d) = self.durable.as_mut() else { return };
        let held = Held { from, to, publ: publ.clone(), received_at };
        let q = d.pending.entry(publ.topic.clone()).or_default();
        let first = q.is_empty();
        q.push_back(held);
        d.held += 1;
        // Admission checked the ring has room: this cannot fail.
        if !d.send(ClusterReq::Append(publ.clone())) {
            self.counters.internal_errors += 1;
        }
        self.counters.cluster_appends += 1;
        if first {
            // Not evicted while it waits (a reload would come in below).
            self.owner.pin(&publ.topic, true);
        }
    }

    /// The participant stored `topic` through `through`: ack and deliver
    /// what was held, in seq order.
    pub(crate) fn on_stored(&mut self, topic: &str, through: u64) {
        let Some(d) = self.durable.as_mut() else { return };
        let Some(q) = d.pending.get_mut(topic) else { return };
        let mut ready = Vec::new();
        while q.front().is_some_and(|h| h.publ.seq <= through) {
            if let Some(h) = q.pop_front() {
                ready.push(h);
            }
        }
        let drained = q.is_empty();
        if drained {
            d.pending.remove(topic);
        }
        d.held -= ready.len();
        // Delivered to the shards interested now: a subscriber that came
        // while it was held was given the position before it.
        let targets: Vec<usize> = self.owner.topic(topic).map(|t| t.interested().collect()).unwrap_or_default();
        for h in ready {
            self.counters.record_store(h.received_at.elapsed());
            self.release_accepted(h.from, h.to, &h.publ, &targets, h.received_at);
        }
        if drained {
            self.owner.pin(topic, false);
        }
    }
}
