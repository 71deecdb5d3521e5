//! Who owns which stream (docs/ARCHITECTURE.md, "One writer per
//! partition"): leases in the JetStream KV bucket `SC_LEASES` (key `s<i>`,
//! value the node id, history 1, max age `cluster.lease_ms`), taken with
//! `create` and renewed with `update(revision)`; live nodes announce
//! themselves in `SC_NODES` (same max age). Each node takes its share,
//! `ceil(streams / live nodes)`, and gives up extras so a new node gets
//! work. A node stops sequencing a stream as soon as it has not renewed
//! its lease for half a lease (it fences itself before the key can expire
//! and another node take it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_lite::StreamExt as _;

/// A change of this node's ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Taken: sequence its topics.
    Acquired(usize),
    /// Lost (not renewed in time, or taken by another node): stop at once.
    Lost(usize),
    /// To be given up: stop sequencing, let appends drain, then `Freed`.
    Release(usize),
    /// Given up (the key is deleted; another node may take it).
    Freed(usize),
}

/// When each held lease was last renewed, shared with the participant's
/// loop, which fences a stream the moment its lease is half a lease old —
/// even while a round of the keeper is stuck on a NATS that does not answer.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    renewed_ms: Vec<AtomicU64>,
    /// Set by the loop when it fenced the stream; the keeper then lets the
    /// lease go (and may take it again later, as a new acquisition).
    fenced: Vec<AtomicBool>,
    half: Duration,
}

impl Fence {
    fn new(streams: usize, lease: Duration) -> Self {
        Self {
            base: Instant::now(),
            renewed_ms: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            fenced: (0..streams).map(|_| AtomicBool::new(false)).collect(),
            half: lease / 2,
        }
    }

    fn renewed(&self, s: usize, at: Instant) {
        self.renewed_ms[s].store(at.duration_since(self.base).as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether stream `s`'s lease was last renewed more than half a lease
    /// ago (then it is marked fenced).
    pub fn expired(&self, s: usize, now: Instant) -> bool {
        let at = self.base + Duration::from_millis(self.renewed_ms[s].load(Ordering::SeqCst));
        let gone = now.duration_since(at) > self.half;
        if gone {
            self.fenced[s].store(true, Ordering::SeqCst);
        }
        gone
    }
}

/// The lease keeper's state (run by one task of the participant).
pub struct Keeper {
    leases: kv::Store,
    nodes: kv::Store,
    node: String,
    streams: usize,
    lease: Duration,
    /// Held leases: revision and when last renewed.
    held: BTreeMap<usize, (u64, Instant)>,
    /// Held leases being given up.
    releasing: BTreeSet<usize>,
    /// Live nodes at the last look.
    pub live: usize,
    /// The live count when the last two looks agreed.
    steady: Option<usize>,
    /// Shared with the loop.
    pub fence: Arc<Fence>,
    /// Takes only a key that is absent (never over a delete marker): see
    /// [`cas_is_racy`].
    careful: bool,
}

/// Whether a compare-and-set on a revision other than 0 can succeed twice
/// on this server: nats-server before 2.11, clustered, checks
/// `Nats-Expected-Last-Subject-Sequence` > 0 only before the raft proposal,
/// against the applied state, so two nodes taking a released lease (its
/// delete marker's revision) at once could both win (seen: two nodes took
/// the same stream 3 ms apart on three 2.9.10 servers). An expected
/// revision of 0 (the key absent) is checked when applied, in raft order,
/// so it stays exact. Fixed in 2.11.0 (nats-server 469f834).
pub fn cas_is_racy(version: &str, clustered: bool) -> bool {
    let mut parts = version.trim_start_matches('v').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    clustered && (major, minor) < (2, 11)
}

/// How a renewal went.
enum Renewal {
    /// Stored at revision `rev`; the lease runs from `sent`.
    Renewed { rev: u64, sent: Instant },
    /// Another node holds the key.
    Taken,
    /// No answer in time (it may have been stored: the next renewal finds
    /// this node's own value at a newer revision and goes on from there).
    Unanswered,
}

/// Renews stream `s`'s lease held at revision `rev`. The lease runs from
/// when the update was *sent*: the server may have stored it long before
/// its answer came back (a slow NATS), and the key expires counting from
/// then. A revision mismatch with this node's own value in the key is this
/// node's earlier renewal, stored after its answer timed out: the update
/// is sent again on that revision (no other node writes a key that holds a
/// value, so it cannot be anyone else's).
async fn renew(kv: &kv::Store, node: &str, s: usize, rev: u64, op: Duration) -> Renewal {
    let value = bytes::Bytes::from(node.to_owned());
    let sent = Instant::now();
    match tokio::time::timeout(op, kv.update(key(s), value.clone(), rev)).await {
        Ok(Ok(rev)) => return Renewal::Renewed { rev, sent },
        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
        _ => return Renewal::Unanswered,
    }
    let entry = match tokio::time::timeout(op, kv.entry(key(s))).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => return Renewal::Taken,
        _ => return Renewal::Unanswered,
    };
    if entry.revision <= rev {
        // A replica behind the leader answered: nothing is known.
        return Renewal::Unanswered;
    }
    if entry.operation != kv::Operation::Put || &entry.value[..] != node.as_bytes() {
        return Renewal::Taken;
    }
    let sent = Instant::now();
    match tokio::time::timeout(op, kv.update(key(s), value, entry.revision)).await {
        Ok(Ok(rev)) => Renewal::Renewed { rev, sent },
        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Renewal::Taken,
        _ => Renewal::Unanswered,
    }
}

fn key(s: usize) -> String {
    format!("s{s}")
}

impl Keeper {
    /// Opens (or makes) the buckets.
    pub async fn open(
        js: &jetstream::Context,
        node: &str,
        streams: usize,
        lease: Duration,
        replicas: usize,
    ) -> Result<Self, String> {
        // The bucket's stream made here, as async-nats would make it: its
        // create_key_value asks for account info first, which it cannot
        // parse from nats-server 2.9.
        let bucket = |name: &str| jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age: lease,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let mut stores = Vec::new();
        for name in ["SC_LEASES", "SC_NODES"] {
            super::ensure_stream(js, bucket(name)).await.map_err(|e| format!("KV bucket {name}: {e}"))?;
            let store = js.get_key_value(name).await.map_err(|e| format!("KV bucket {name}: {e}"))?;
            stores.push(store);
        }
        let info = js.client().server_info();
        let careful = cas_is_racy(&info.version, info.cluster.is_some());
        if careful {
            tracing::warn!(
                version = %info.version,
                "cluster: clustered nats-server older than 2.11: a released lease is taken only once its delete marker expires (up to lease_ms)"
            );
        }
        let nodes = stores.pop().ok_or("no bucket")?;
        let leases = stores.pop().ok_or("no bucket")?;
        Ok(Self {
            leases,
            nodes,
            node: node.into(),
            streams,
            lease,
            held: BTreeMap::new(),
            releasing: BTreeSet::new(),
            live: 1,
            steady: None,
            fence: Arc::new(Fence::new(streams, lease)),
            careful,
        })
    }

    /// How often a round runs.
    pub fn tick(&self) -> Duration {
        self.lease / 3
    }

    /// Streams held now (releasing ones included).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// One round: fence what was not renewed in time, renew (all at once),
    /// announce this node, give up what `drained` says is drained, take a
    /// share, mark extras for release. Bounded by about one tick.
    pub async fn round(&mut self, drained: &[usize], events: &mut Vec<LeaseEvent>) {
        let start = Instant::now();
        let op = (self.lease / 6).max(Duration::from_millis(50));
        // Fence first: a lease not renewed for half its life is gone.
        let stale: Vec<usize> = self
            .held
            .iter()
            .filter(|(_, (_, at))| start.duration_since(*at) > self.lease / 2)
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            self.drop_lease(s, events);
        }
        // Every held lease renewed at once, first thing in the round (one
        // round trip, not one per stream: measured, renewals one after
        // another behind the heartbeat, on three NATS servers under load,
        // came late enough to fence streams every few seconds).
        let mut renewals = tokio::task::JoinSet::new();
        for (&s, &(rev, _)) in &self.held {
            let (kv, node) = (self.leases.clone(), self.node.clone());
            renewals.spawn(async move { (s, renew(&kv, &node, s, rev, op).await) });
        }
        while let Some(done) = renewals.join_next().await {
            let Ok((s, result)) = done else { continue };
            match result {
                Renewal::Renewed { rev, sent } if !self.fence.fenced[s].load(Ordering::SeqCst) => {
                    self.held.insert(s, (rev, sent));
                    self.fence.renewed(s, sent);
                }
                Renewal::Renewed { .. } | Renewal::Taken => self.drop_lease(s, events),
                Renewal::Unanswered => {}
            }
        }
        let _ = tokio::time::timeout(op, self.nodes.put(&self.node, bytes::Bytes::new())).await;
        if let Ok(Some(n)) = tokio::time::timeout(op, self.count_nodes()).await {
            // Extras are given up only on a count seen twice in a row (a
            // heartbeat late under load must not move streams around).
            self.steady = if n.max(1) == self.live { Some(self.live) } else { None };
            self.live = n.max(1);
        }
        let mut freed = BTreeSet::new();
        for &s in drained {
            if self.releasing.remove(&s) && self.held.remove(&s).is_some() {
                let _ = tokio::time::timeout(op, self.leases.delete(key(s))).await;
                events.push(LeaseEvent::Freed(s));
                freed.insert(s);
            }
        }
        let share = self.streams.div_ceil(self.live);
        let mut s = 0;
        while self.held.len() < share && s < self.streams && start.elapsed() < self.tick() {
            // A stream given up this round is left for the others.
            if !self.held.contains_key(&s) && !freed.contains(&s) {
                let sent = Instant::now();
                if let Some(rev) = self.try_take(s, op).await {
                    self.fence.fenced[s].store(false, Ordering::SeqCst);
                    self.fence.renewed(s, sent);
                    self.held.insert(s, (rev, sent));
                    events.push(LeaseEvent::Acquired(s));
                }
            }
            s += 1;
        }
        // Extras go, highest first, so a joining node gets work.
        let Some(steady) = self.steady else { return };
        let keep = self.held.len().saturating_sub(self.releasing.len());
        let extra = keep.saturating_sub(self.streams.div_ceil(steady));
        let give: Vec<usize> =
            self.held.keys().rev().filter(|s| !self.releasing.contains(s)).take(extra).copied().collect();
        for s in give {
            self.releasing.insert(s);
            events.push(LeaseEvent::Release(s));
        }
    }

    fn drop_lease(&mut self, s: usize, events: &mut Vec<LeaseEvent>) {
        if self.held.remove(&s).is_some() {
            self.releasing.remove(&s);
            events.push(LeaseEvent::Lost(s));
        }
    }

    async fn count_nodes(&self) -> Option<usize> {
        let mut keys = self.nodes.keys().await.ok()?;
        // A key put again while the listing runs can come twice.
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = keys.next().await {
            if let Ok(k) = k {
                seen.insert(k);
            }
        }
        Some(seen.len())
    }

    /// Takes stream `s` if its lease is free (or is this node's own, left
    /// by an earlier run of it): the new revision.
    async fn try_take(&self, s: usize, op: Duration) -> Option<u64> {
        let value = bytes::Bytes::from(self.node.clone());
        let entry = tokio::time::timeout(op, self.leases.entry(key(s))).await.ok()?.ok()?;
        let r = match entry {
            Some(e) if e.operation == kv::Operation::Put && &e.value[..] != self.node.as_bytes() => return None,
            Some(e) if e.operation == kv::Operation::Put => {
                tokio::time::timeout(op, self.leases.update(key(s), value, e.revision)).await.ok()?.ok()?
            }
            // Released (a delete marker): on a server whose compare-and-set
            // is racy, wait until the marker expires and the key is absent.
            Some(_) if self.careful => return None,
            _ => tokio::time::timeout(op, self.leases.create(key(s), value)).await.ok()?.ok()?,
        };
        Some(r)
    }

    /// Whether takes wait for released keys to expire (see [`cas_is_racy`]).
    pub fn careful(&self) -> bool {
        self.careful
    }

    /// Gives every lease back but those of `keep` (a graceful stop): the
    /// keys are deleted so other nodes take them at once; `keep`'s expire.
    pub async fn release_all(&mut self, keep: &[usize]) {
        let op = (self.lease / 6).max(Duration::from_millis(50));
        for s in std::mem::take(&mut self.held).into_keys().filter(|s| !keep.contains(s)) {
            let _ = tokio::time::timeout(op, self.leases.delete(key(s))).await;
        }
        let _ = tokio::time::timeout(op, self.nodes.delete(&self.node)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::cas_is_racy;

    #[test]
    fn compare_and_set_is_racy_only_on_clustered_servers_before_2_11() {
        assert!(cas_is_racy("2.9.10", true));
        assert!(cas_is_racy("2.10.29", true));
        assert!(!cas_is_racy("2.9.10", false), "a lone server applies every check in order");
        assert!(!cas_is_racy("2.11.0", true));
        assert!(!cas_is_racy("2.15.1", true));
        assert!(!cas_is_racy("v2.12.3-beta", true));
        assert!(cas_is_racy("garbage", true), "unknown versions are treated as old");
    }
}
