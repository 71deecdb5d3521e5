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
    /// `cluster.max_inflight`.
    pub max_inflight: usize,
    /// `cluster.max_loading`.
    pub max_loading: usize,
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
    pub fn new(to: rtrb::Producer<ClusterReq>, bell: Arc<Doorbell>, max_inflight: usize, max_loading: usize) -> Self {
        Self {
            to,
            bell,
            pending: HashMap::new(),
            held: 0,
            loading: HashMap::new(),
            waiting: 0,
            max_inflight,
            max_loading,
        }
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
        let Some(waiting) = d.loading.remove(topic) else { return };
        d.waiting -= waiting.len();
        let restored = match state {
            Ok(s) => {
                let now = self.now;
                self.owner.restore(topic, s.map(|b| *b), now).map_err(|_| "the topic table is full")
            }
            Err(e) => {
                self.counters.cluster_load_errors += 1;
                tracing::warn!(topic, error = %e, "loading a topic from the store failed");
                Err("the store could not be read; retry later")
            }
        };
        for (from, msg) in waiting {
            match restored {
                Ok(()) => self.on_mesh(from, msg),
                Err(why) => self.refuse_waiting(from, msg, why),
            }
        }
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
