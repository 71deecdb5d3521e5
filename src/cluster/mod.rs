//! The cluster participant: the NATS JetStream client, on its own thread
//! (async-nats needs tokio), joined to the mesh like a shard — an SPSC ring
//! from and to every shard and a doorbell each way. Shards never touch an
//! async-nats type or a lock; this thread never touches shard state.
//! (docs/ARCHITECTURE.md, "Cluster and durability on NATS JetStream".)
//!
//! This first slice is the durable single node: appends (stored in seq
//! order per topic, retried with the same `Nats-Msg-Id` until stored,
//! reported stored as a contiguous prefix) and loads (a topic's epoch, last
//! seq and recent publications, with a crash's orphans cut by incarnation).

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use base64::Engine as _;

use crate::config::Config;
use crate::conn::core::OVERLOADED_RETRY_MS;
use crate::conn::durable::Durable;
use crate::mesh::msg::{ClusterReq, StoredTopic};
use crate::mesh::{Doorbell, MeshMsg, PubReply, Requester, SharedPub};
use crate::proto::message::ErrorCode;
use crate::topic::owned::Epoch;
use crate::topic::publication::{PubMeta, Publication};
use crate::topic::PartitionMap;

pub mod forward;
pub mod leases;

use leases::{Keeper, LeaseEvent};

/// The participant's own figures (one participant per process), read by
/// `/metrics`: atomics written by its thread only, off the data path.
pub mod stats {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// 1 while connected to NATS.
    pub static CONNECTED: AtomicU64 = AtomicU64::new(0);
    /// Connections to NATS lost.
    pub static DISCONNECTS: AtomicU64 = AtomicU64::new(0);
    /// Connections to NATS (re)established after the first.
    pub static RECONNECTS: AtomicU64 = AtomicU64::new(0);
    /// Largest store → delivery delay of a mirrored publication since the
    /// last scrape, ms (the stream's replication lag to this node).
    pub static MIRROR_LAG_MAX_MS: AtomicU64 = AtomicU64::new(0);
    /// Forwards in flight now.
    pub static FORWARDS_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
    /// Replicated publications dropped for a shard whose queue was full
    /// (its mirror reloads on the gap).
    pub static MIRROR_DROPPED: AtomicU64 = AtomicU64::new(0);

    /// Prometheus text for these (called by the metrics renderer).
    pub fn render(out: &mut String) {
        use std::fmt::Write as _;
        let rows: [(&str, &str, &str, u64); 6] = [
            (
                "cluster_nats_connected",
                "gauge",
                "Cluster: 1 while connected to NATS.",
                CONNECTED.load(Ordering::Relaxed),
            ),
            (
                "cluster_nats_disconnects_total",
                "counter",
                "Cluster: connections to NATS lost.",
                DISCONNECTS.load(Ordering::Relaxed),
            ),
            (
                "cluster_nats_reconnects_total",
                "counter",
                "Cluster: connections to NATS made again.",
                RECONNECTS.load(Ordering::Relaxed),
            ),
            (
                "cluster_mirror_lag_max_ms",
                "gauge",
                "Cluster: largest store-to-mirror delay since the last scrape, ms.",
                MIRROR_LAG_MAX_MS.swap(0, Ordering::Relaxed),
            ),
            (
                "cluster_forwards_in_flight",
                "gauge",
                "Cluster: forwarded publishes waiting for the owner.",
                FORWARDS_IN_FLIGHT.load(Ordering::Relaxed),
            ),
            (
                "cluster_mirror_dropped_total",
                "counter",
                "Cluster: replicated publications dropped for a shard that lagged (its mirrors reload).",
                MIRROR_DROPPED.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ =
                writeln!(out, "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}\nshardcast_{name} {v}");
        }
    }
}

/// A shard's ends of the participant's rings.
#[derive(Debug)]
pub struct ShardEnd {
    /// Requests to the participant.
    pub to: rtrb::Producer<ClusterReq>,
    /// The participant's doorbell (rung after a push).
    pub bell: Arc<Doorbell>,
    /// Answers from the participant (read with the shard's mesh rings).
    pub from: rtrb::Consumer<MeshMsg>,
}

/// The running participant.
#[derive(Debug)]
pub struct Participant {
    stop: Arc<AtomicBool>,
    bell: Arc<Doorbell>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Participant {
    /// Stops the thread and waits for it (call it after the shards have
    /// stopped): appends in flight get up to `cluster.request_timeout_ms` to
    /// be stored (never acked now: the shards are gone), then the leases of
    /// the streams with none left are given back.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.bell.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.bell.poke();
    }
}

/// Why the participant could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS unreachable, JetStream off, or a stream could not be made.
    #[error("cluster: {0}")]
    Nats(String),
}

/// What a shard needs to know to talk to JetStream.
#[derive(Debug, Clone)]
struct Plan {
    /// `[cluster] node_id` (or its default), the lease holder's name and
    /// part of every append's incarnation.
    node: Arc<str>,
    streams: u32,
    map: PartitionMap,
    timeout: Duration,
    max_count: usize,
    /// `cluster.max_inflight`: forwards in flight, remote publishes waiting.
    max_inflight: usize,
}

/// `[cluster] node_id`, or by default `<host name>-<listen port>` (stable
/// across restarts, so a restarted node takes its own leases back at once).
/// It is a key of the KV bucket `SC_NODES`, so only `A-Z a-z 0-9 - _ .`
/// are kept (config validation refuses others in a given `node_id`).
pub fn node_id(cfg: &Config) -> String {
    if !cfg.cluster.node_id.is_empty() {
        return cfg.cluster.node_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| valid_node_char(*c)).collect();
    format!("{}-{}", if host.is_empty() { "localhost" } else { &host }, cfg.server.listen.port())
}

/// A character a `node_id` may hold (a NATS KV key's).
pub fn valid_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The stream a topic lives in and its subject there.
fn subject_of(plan: &Plan, topic: &str) -> (usize, String) {
    let s = Durable::stream_of(&plan.map, plan.streams as usize, topic);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic);
    (s, format!("sc.d.{s}.{token}"))
}

/// Starts the participant: connects to `[cluster] nats_url`, makes sure the
/// streams exist, and returns each shard's ends (`bells` are the shards'
/// mesh doorbells). Fails, saying why, if NATS or JetStream is not there.
pub fn start(
    cfg: &Config,
    map: PartitionMap,
    bells: Vec<Arc<Doorbell>>,
) -> Result<(Participant, Vec<ShardEnd>), ClusterError> {
    let (bell, bell_rx) = Doorbell::new().map_err(|e| ClusterError::Nats(e.to_string()))?;
    let cap = cfg.shards.ring_capacity.max(1024);
    let mut ends = Vec::new();
    let mut rings = Vec::new();
    for shard_bell in bells {
        let (to, req_rx) = rtrb::RingBuffer::new(cap);
        let (ans_tx, from) = rtrb::RingBuffer::new(cap);
        ends.push(ShardEnd { to, bell: bell.clone(), from });
        rings.push(Link { rx: req_rx, tx: ans_tx, bell: shard_bell, backlog: VecDeque::new(), rung: false });
    }
    let plan = Plan {
        node: node_id(cfg).into(),
        streams: cfg.cluster.streams.max(1),
        map,
        timeout: Duration::from_millis(cfg.cluster.request_timeout_ms.max(100)),
        max_count: cfg.replay.max_count,
        max_inflight: cfg.cluster.max_inflight.max(1),
    };
    let lease = Duration::from_millis(cfg.cluster.lease_ms.max(300));
    let replicas = cfg.cluster.replicas.max(1);
    let stream_cfg = |i: u32| stream::Config {
        name: format!("SC_{i}"),
        subjects: vec![format!("sc.d.{i}.>")],
        max_messages_per_subject: cfg.replay.max_count as i64,
        max_age: Duration::from_millis(cfg.replay.max_age_ms),
        duplicate_window: Duration::from_millis(cfg.replay.dedupe_age_ms.max(120_000)),
        storage: stream::StorageType::File,
        num_replicas: cfg.cluster.replicas.max(1),
        allow_direct: true,
        ..Default::default()
    };
    let configs: Vec<stream::Config> = (0..plan.streams).map(stream_cfg).collect();
    let url = cfg.cluster.nats_url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop2, bell2) = (stop.clone(), bell.clone());
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
            };
            rt.block_on(async move {
                let js = match connect(&url, configs, plan.timeout).await {
                    Ok(js) => js,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let mut keeper = match Keeper::open(&js, &plan.node, plan.streams as usize, lease, replicas).await {
                    Ok(k) => k,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                // The first round before serving: a lone node owns every
                // stream from its first connection on.
                let mut first = Vec::new();
                keeper.round(&[], &mut first).await;
                tracing::info!(node = %plan.node, owned = keeper.held(), live = keeper.live, careful = keeper.careful(), "cluster: joined");
                let _ = ready_tx.send(Ok(()));
                run(js, keeper, first, plan, rings, bell2, bell_rx, stop2).await;
            });
        })
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
    match ready_rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Ok(())) => Ok((Participant { stop, bell, thread: Some(thread) }, ends)),
        Ok(Err(e)) => Err(ClusterError::Nats(e)),
        Err(_) => Err(ClusterError::Nats(format!("no answer from {} within 15 s", cfg.cluster.nats_url))),
    }
}

/// `shardcast check-cluster`: NATS reachable, JetStream on, and the state
/// of each of the config's streams, as lines of text.
pub fn check(cfg: &Config) -> Result<String, String> {
    use std::fmt::Write as _;
    if cfg.cluster.nats_url.is_empty() {
        return Err("[cluster] nats_url is not set (the engine runs in memory)".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let timeout = Duration::from_millis(cfg.cluster.request_timeout_ms.max(100));
        let opts = async_nats::ConnectOptions::new().connection_timeout(timeout);
        let client = tokio::time::timeout(timeout, opts.connect(servers(&cfg.cluster.nats_url)?))
            .await
            .map_err(|_| format!("cannot reach NATS at {}", cfg.cluster.nats_url))?
            .map_err(|e| format!("cannot reach NATS at {}: {e}", cfg.cluster.nats_url))?;
        let info = client.server_info();
        let mut out = format!(
            "shardcast check-cluster: {} (nats-server {}, server {}, JetStream {})\n",
            cfg.cluster.nats_url,
            info.version,
            info.server_name,
            if info.jetstream { "on" } else { "OFF" }
        );
        if !info.jetstream {
            return Err(format!("{out}JetStream is off on this server (run nats-server -js)"));
        }
        if leases::cas_is_racy(&info.version, info.cluster.is_some()) {
            let _ = writeln!(
                out,
                "  note  clustered nats-server {} is older than 2.11: its compare-and-set can let two nodes take a released lease, so a released lease is taken only once it expires (up to {} ms); nats-server >= 2.11 hands over at once",
                info.version, cfg.cluster.lease_ms
            );
        }
        let js = jetstream::new(client);
        for i in 0..cfg.cluster.streams.max(1) {
            let name = format!("SC_{i}");
            match js.get_stream(&name).await {
                Ok(mut st) => {
                    let info = st.info().await.map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        out,
                        "  ok    {name}: {} messages, {} bytes, {} topics, replicas {} (config {}), max {} per topic, max age {} s",
                        info.state.messages,
                        info.state.bytes,
                        info.state.subjects_count,
                        info.config.num_replicas,
                        cfg.cluster.replicas,
                        info.config.max_messages_per_subject,
                        info.config.max_age.as_secs()
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "  new   {name}: not created yet (the engine creates it at start: {e})");
                }
            }
        }
        // Who owns which stream, and which nodes are alive.
        let lease_ms = cfg.cluster.lease_ms;
        match (js.get_key_value("SC_LEASES").await, js.get_key_value("SC_NODES").await) {
            (Ok(leases), Ok(nodes)) => {
                let mut owners = Vec::new();
                for i in 0..cfg.cluster.streams.max(1) {
                    let holder = match leases.entry(format!("s{i}")).await {
                        Ok(Some(e)) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                            String::from_utf8_lossy(&e.value).into_owned()
                        }
                        Ok(_) => "(free)".to_owned(),
                        Err(e) => format!("(unreadable: {e})"),
                    };
                    owners.push(format!("SC_{i} {holder}"));
                }
                let _ = writeln!(out, "  leases (lease_ms {lease_ms}) {}", owners.join(", "));
                let mut alive = std::collections::BTreeSet::new();
                if let Ok(mut keys) = nodes.keys().await {
                    while let Some(k) = futures_lite::StreamExt::next(&mut keys).await {
                        if let Ok(k) = k {
                            alive.insert(k);
                        }
                    }
                }
                let alive: Vec<String> = alive.into_iter().collect();
                let _ = writeln!(out, "  nodes alive {} ({})", alive.len(), alive.join(", "));
            }
            _ => {
                let _ = writeln!(out, "  leases none yet (no node has started on this NATS)");
            }
        }
        Ok(out)
    })
}

/// `[cluster] nats_url`: one server, or several comma-separated (the
/// servers of a NATS cluster; the client also learns the others from them).
fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| format!("[cluster] nats_url {u:?}: {e}")))
        .collect()
}

async fn connect(url: &str, configs: Vec<stream::Config>, timeout: Duration) -> Result<jetstream::Context, String> {
    // Reconnect attempts back off from 50 ms to at most 500 ms, so a NATS that
    // returns is found within half a second.
    let backoff = |n: usize| Duration::from_millis((50u64 << n.min(4)).min(500));
    let opts = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .reconnect_delay_callback(backoff)
        .event_callback(|ev| async move {
            match ev {
                async_nats::Event::Connected => {
                    if stats::CONNECTED.swap(1, Ordering::Relaxed) == 0
                        && stats::DISCONNECTS.load(Ordering::Relaxed) > 0
                    {
                        stats::RECONNECTS.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!("cluster: connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    stats::CONNECTED.store(0, Ordering::Relaxed);
                    stats::DISCONNECTS.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cluster: disconnected from NATS");
                }
                other => tracing::info!(event = %other, "cluster: NATS"),
            }
        });
    let client = tokio::time::timeout(timeout, opts.connect(servers(url)?))
        .await
        .map_err(|_| format!("cannot reach NATS at {url}"))?
        .map_err(|e| format!("cannot reach NATS at {url}: {e}"))?;
    stats::CONNECTED.store(1, Ordering::Relaxed);
    let mut js = jetstream::new(client);
    js.set_timeout(timeout);
    for c in configs {
        let name = c.name.clone();
        ensure_stream(&js, c)
            .await
            .map_err(|e| format!("JetStream stream {name} (is JetStream enabled, nats-server -js?): {e}"))?;
    }
    Ok(js)
}

/// Gets or makes a stream, trying a timed-out request twice more: on a
/// JetStream cluster, nodes starting together make replicated streams at
/// once and the meta leader can be slow to answer (measured: one of three
/// nodes failed to start on three servers with replicas 3).
pub(crate) async fn ensure_stream(js: &jetstream::Context, c: stream::Config) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..3 {
        match js.get_or_create_stream(c.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    Err(last)
}

/// One shard's rings, on the participant's side.
struct Link {
    rx: rtrb::Consumer<ClusterReq>,
    tx: rtrb::Producer<MeshMsg>,
    bell: Arc<Doorbell>,
    /// Answers that found the ring full, in order.
    backlog: VecDeque<MeshMsg>,
    /// Something was pushed since the last doorbell.
    rung: bool,
}

impl Link {
    fn send(&mut self, msg: MeshMsg) {
        self.rung = true;
        if !self.backlog.is_empty() {
            return self.backlog.push_back(msg);
        }
        if let Err(rtrb::PushError::Full(m)) = self.tx.push(msg) {
            self.backlog.push_back(m);
        }
    }

    fn flush(&mut self) {
        while let Some(m) = self.backlog.pop_front() {
            if let Err(rtrb::PushError::Full(m)) = self.tx.push(m) {
                self.backlog.push_front(m);
                break;
            }
            self.rung = true;
        }
    }
}

/// Most messages waiting for room in one shard's ring before replicated
/// publications for it are dropped (its mirrors reload on the gap).
const MAX_LINK_BACKLOG: usize = 65_536;

/// Replicated messages taken per loop turn (the rest wait in the bounded
/// channel, holding the consumers back).
const REPLICAS_PER_TURN: usize = 4096;

/// What comes in from NATS on its own (bounded: a loop that lags holds the
/// consumers and subscriptions back instead of growing a queue).
enum Inbound {
    /// A message another node stored, from stream `.0`'s ordered consumer.
    Replica(usize, Box<jetstream::Message>),
    /// A publish another node forwarded to this one (it owns the stream).
    Remote(Box<async_nats::Message>),
}

/// What a task reports to the loop.
enum Done {
    /// A writer stored `topic` through `through`; `fenced` if its stream
    /// was lost since it started (the shard refused those; never released).
    Stored {
        shard: usize,
        topic: Arc<str>,
        through: u64,
        fenced: bool,
    },
    Loaded {
        shard: usize,
        topic: Arc<str>,
        state: Result<Option<Box<StoredTopic>>, String>,
    },
    /// A writer gave up its topic's unstored appends (the stream was lost).
    Abandoned {
        topic: Arc<str>,
    },
    Lease(LeaseEvent),
    /// The answer to a publish this node forwarded.
    Forwarded {
        shard: usize,
        from: usize,
        to: Requester,
        reply: PubReply,
    },
}

/// This node's standing on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Another node's (or nobody's): forward its publishes, mirror it.
    Free,
    /// Ours: sequence its topics.
    Owned,
    /// Being given up: `seen` shards have stopped sequencing it.
    Releasing { seen: usize },
    /// Given up by every shard, appends drained; the key is being deleted.
    Draining,
}

/// A topic's writer task and the stream it writes.
struct Writer {
    tx: tokio::sync::mpsc::UnboundedSender<SharedPub>,
    stream: usize,
}

/// The participant's state, on its thread.
struct Node {
    js: jetstream::Context,
    client: async_nats::Client,
    plan: Plan,
    links: Vec<Link>,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
    incarnation: Arc<str>,
    writers: HashMap<Arc<str>, Writer>,
    /// Per topic with appends not yet stored: its stream and last append.
    unstored: HashMap<Arc<str>, (usize, u64)>,
    own: Vec<Own>,
    /// Bumped when a stream is lost: its writers stop retrying.
    gens: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// The `sc.own.<s>` subscription of each owned stream.
    serving: Vec<Option<tokio::task::JoinHandle<()>>>,
    /// Remote publishers waiting for their answer, by token.
    remote: HashMap<u64, async_nats::Subject>,
    next_token: u64,
    /// Forwards in flight.
    forwards: Arc<std::sync::atomic::AtomicUsize>,
    /// Drained streams, to the lease keeper.
    drained: tokio::sync::mpsc::UnboundedSender<usize>,
    /// The keeper's renewal times: the loop fences on them.
    fence: Arc<leases::Fence>,
    /// Where the subscriptions of owned streams put forwarded publishes.
    inbound: tokio::sync::mpsc::Sender<Inbound>,
}

impl Node {
    fn broadcast(&mut self, msg: impl Fn() -> MeshMsg) {
        for l in &mut self.links {
            l.send(msg());
        }
    }

    fn stream_of(&self, topic: &str) -> usize {
        Durable::stream_of(&self.plan.map, self.plan.streams as usize, topic)
    }

    fn on_req(&mut self, shard: usize, req: ClusterReq) {
        match req {
            ClusterReq::Append(publ) => {
                let s = self.stream_of(&publ.topic);
                tracing::debug!(topic = &*publ.topic, seq = publ.seq, stream = s, own = ?self.own[s], "cluster: append");
                if self.own[s] == Own::Free {
                    // Sequenced before the shard heard the stream was lost:
                    // refused there, never written.
                    return;
                }
                let topic = publ.topic.clone();
                self.unstored.insert(topic.clone(), (s, publ.seq));
                let publ = match self.writers.get(&topic) {
                    Some(w) => match w.tx.send(publ) {
                        Ok(()) => return,
                        Err(e) => e.0,
                    },
                    None => publ,
                };
                // No writer (or it ended, idle): start one.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let fence = self.gens[s].clone();
                let gen = fence.load(Ordering::SeqCst);
                let w = WriterTask {
                    js: self.js.clone(),
                    plan: self.plan.clone(),
                    shard,
                    topic: topic.clone(),
                    inc: self.incarnation.clone(),
                    done: self.done.clone(),
                    fence,
                    gen,
                };
                tokio::spawn(w.run(rx));
                let _ = tx.send(publ);
                self.writers.insert(topic, Writer { tx, stream: s });
            }
            ClusterReq::Load(topic) => {
                tracing::debug!(topic = &*topic, "cluster: load");
                let (js, plan, done) = (self.js.clone(), self.plan.clone(), self.done.clone());
                tokio::spawn(async move {
                    let state = load(&js, &plan, &topic).await;
                    let _ = done.send(Done::Loaded { shard, topic, state });
                });
            }
            ClusterReq::Forward { from, req } => {
                tracing::debug!(topic = &*req.topic, "cluster: forward");
                let down = self.client.connection_state() != async_nats::connection::State::Connected;
                if down || self.forwards.load(Ordering::SeqCst) >= self.plan.max_inflight {
                    // Not sent (NATS is not there, or too many in flight):
                    // safe to retry as is.
                    let reply = forward::refused(ErrorCode::Overloaded, Some(OVERLOADED_RETRY_MS));
                    return self.links[shard].send(MeshMsg::Forwarded { from, to: req.to, reply });
                }
                let subject = forward::subject(self.stream_of(&req.topic));
                let payload = bytes::Bytes::from(forward::encode_publish(&req));
                let (client, done, timeout) = (self.client.clone(), self.done.clone(), self.plan.timeout);
                let (to, topic) = (req.to, req.topic);
                let inflight = self.forwards.clone();
                inflight.fetch_add(1, Ordering::SeqCst);
                stats::FORWARDS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let reply = forward_once(&client, subject, payload, &topic, timeout).await;
                    inflight.fetch_sub(1, Ordering::SeqCst);
                    stats::FORWARDS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
                    let _ = done.send(Done::Forwarded { shard, from, to, reply });
                });
            }
            ClusterReq::Answer { to, reply } => {
                tracing::debug!(?reply, "cluster: answer to a remote publish");
                let token = u64::from(to.conn.idx) | (u64::from(to.conn.gen) << 32);
                if let Some(subject) = self.remote.remove(&token) {
                    let client = self.client.clone();
                    let body = bytes::Bytes::from(forward::encode_reply(&reply));
                    tokio::spawn(async move {
                        let _ = client.publish(subject, body).await;
                    });
                }
            }
            ClusterReq::OwnershipSeen(s) => {
                if let Some(Own::Releasing { seen }) = self.own.get_mut(s as usize) {
                    *seen += 1;
                }
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        match d {
            Done::Stored { fenced: true, .. } => {
                // Stored after its stream was lost: its publishers were
                // refused, and the shard may hold newer ones of the topic
                // under a new ownership, which this must not release.
            }
            Done::Stored { shard, topic, through, .. } => {
                tracing::debug!(topic = &*topic, through, "cluster: stored");
                if self.unstored.get(&topic).is_some_and(|(_, last)| *last <= through) {
                    self.unstored.remove(&topic);
                }
                if let Some(l) = self.links.get_mut(shard) {
                    l.send(MeshMsg::Stored { topic, through });
                }
            }
            Done::Loaded { shard, topic, state } => {
                tracing::debug!(topic = &*topic, ok = state.is_ok(), "cluster: loaded");
                if let Some(l) = self.links.get_mut(shard) {
                    l.send(MeshMsg::Loaded { topic, state });
                }
            }
            Done::Abandoned { topic } => {
                self.unstored.remove(&topic);
            }
            Done::Lease(ev) => self.on_lease(ev),
            Done::Forwarded { shard, from, to, reply } => {
                tracing::debug!(?reply, "cluster: forwarded, answered");
                if let Some(l) = self.links.get_mut(shard) {
                    l.send(MeshMsg::Forwarded { from, to, reply });
                }
            }
        }
    }

    fn on_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Replica(s, m) => self.on_replica(s, &m),
            Inbound::Remote(m) => self.on_remote(*m),
        }
    }

    /// A message another node stored, from stream `s`'s ordered consumer:
    /// to the topic's shard here (its mirror applies it). Dropped when that
    /// shard's queue is long (the mirror sees the gap and reloads).
    fn on_replica(&mut self, s: usize, m: &jetstream::Message) {
        if self.own.get(s) != Some(&Own::Free) {
            // Ours: delivered when stored, not from the stream.
            return;
        }
        let Some(publ) = replica(m) else { return };
        let shard = self.plan.map.owner(&publ.topic);
        if let Some(l) = self.links.get_mut(shard) {
            if l.backlog.len() >= MAX_LINK_BACKLOG {
                stats::MIRROR_DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            l.send(MeshMsg::Replicated(Arc::new(publ)));
        }
    }

    fn on_lease(&mut self, ev: LeaseEvent) {
        tracing::info!(?ev, node = %self.plan.node, "cluster: lease");
        match ev {
            LeaseEvent::Acquired(s) => {
                self.own[s] = Own::Owned;
                self.serve(s);
                self.broadcast(|| MeshMsg::Ownership { stream: s as u32, owned: true });
            }
            LeaseEvent::Lost(s) => {
                self.own[s] = Own::Free;
                self.stop_serving(s);
                self.gens[s].fetch_add(1, Ordering::SeqCst);
                self.writers.retain(|_, w| w.stream != s);
                self.unstored.retain(|_, (st, _)| *st != s);
                self.broadcast(|| MeshMsg::Ownership { stream: s as u32, owned: false });
            }
            LeaseEvent::Release(s) => {
                self.own[s] = Own::Releasing { seen: 0 };
                self.stop_serving(s);
                self.broadcast(|| MeshMsg::Ownership { stream: s as u32, owned: false });
            }
            LeaseEvent::Freed(s) => self.own[s] = Own::Free,
        }
    }

    /// Fences every stream whose lease has not been renewed for half a lease
    /// (NATS unreachable, or the keeper stuck): the shards stop sequencing
    /// it now, not when a round of the keeper gets through.
    fn check_fence(&mut self) {
        let now = std::time::Instant::now();
        for s in 0..self.own.len() {
            if matches!(self.own[s], Own::Owned | Own::Releasing { .. } | Own::Draining) && self.fence.expired(s, now) {
                tracing::warn!(stream = s, "cluster: lease not renewed for half a lease: fenced");
                self.on_lease(LeaseEvent::Lost(s));
            }
        }
    }

    /// Streams being given up whose shards all stopped and whose appends
    /// are all stored go to the keeper to be freed.
    fn check_drained(&mut self) {
        for s in 0..self.own.len() {
            if self.own[s] == (Own::Releasing { seen: self.links.len() })
                && !self.unstored.values().any(|(st, _)| *st == s)
            {
                self.own[s] = Own::Draining;
                let _ = self.drained.send(s);
            }
        }
    }

    /// Answers forwarded publishes of stream `s` (queue group: one owner).
    fn serve(&mut self, s: usize) {
        let (client, inbound) = (self.client.clone(), self.inbound.clone());
        let task = tokio::spawn(async move {
            let Ok(mut sub) = client.queue_subscribe(forward::subject(s), "sc-own".into()).await else { return };
            while let Some(m) = futures_lite::StreamExt::next(&mut sub).await {
                if inbound.send(Inbound::Remote(Box::new(m))).await.is_err() {
                    break;
                }
            }
        });
        if let Some(old) = self.serving[s].replace(task) {
            old.abort();
        }
    }

    fn stop_serving(&mut self, s: usize) {
        if let Some(t) = self.serving[s].take() {
            t.abort();
        }
    }

    /// A publish another node forwarded: to the topic's owner shard here,
    /// answered on the request's reply subject.
    fn on_remote(&mut self, m: async_nats::Message) {
        tracing::debug!(subject = %m.subject, "cluster: remote publish");
        let Some(reply_to) = m.reply.clone() else { return };
        let refuse = |client: &async_nats::Client, reply: PubReply| {
            let (client, body) = (client.clone(), bytes::Bytes::from(forward::encode_reply(&reply)));
            let to = m.reply.clone();
            tokio::spawn(async move {
                if let Some(to) = to {
                    let _ = client.publish(to, body).await;
                }
            });
        };
        if self.remote.len() >= self.plan.max_inflight {
            return refuse(&self.client, forward::refused(ErrorCode::Overloaded, Some(OVERLOADED_RETRY_MS)));
        }
        self.next_token += 1;
        let token = self.next_token;
        let to = Requester {
            conn: crate::mesh::ConnRef { idx: token as u32, gen: (token >> 32) as u32 },
            id: None,
            kind: crate::mesh::ReplyKind::Ws,
            receipt: false,
        };
        let Some(req) = forward::decode_publish(&m.payload, to) else {
            return refuse(&self.client, forward::refused(ErrorCode::BadRequest, None));
        };
        let shard = self.plan.map.owner(&req.topic);
        self.remote.insert(token, reply_to);
        if let Some(l) = self.links.get_mut(shard) {
            l.send(MeshMsg::Publish(Box::new(req)));
        }
    }
}

/// Forwards one publish to the owner of its stream: its answer, or a
/// refusal when nobody owns it within the timeout (`overloaded`, safe to
/// retry) or the owner did not answer (`timeout`: it may be stored).
async fn forward_once(
    client: &async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
    topic: &str,
    timeout: Duration,
) -> PubReply {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, client.request(subject.clone(), payload.clone())).await {
            Ok(Ok(m)) => return forward::decode_reply(topic, &m.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                // Nobody owns the stream this instant (a lease moving).
                if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                    return forward::refused(ErrorCode::Overloaded, Some(OVERLOADED_RETRY_MS));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return forward::refused(ErrorCode::Timeout, None),
        }
    }
}

/// Reads stream `s` from now on (an ordered consumer: in order, without
/// gaps, recreated by the client after a reconnect) and hands each message
/// to the loop.
async fn replicate(js: jetstream::Context, s: usize, done: tokio::sync::mpsc::Sender<Inbound>) {
    use jetstream::consumer::{pull, DeliverPolicy};
    let mut next: Option<u64> = None;
    loop {
        let policy = match next {
            None => DeliverPolicy::New,
            Some(n) => DeliverPolicy::ByStartSequence { start_sequence: n },
        };
        let consumer = async {
            let stream = js.get_stream(format!("SC_{s}")).await.ok()?;
            let c = stream
                .create_consumer(pull::OrderedConfig { deliver_policy: policy, ..Default::default() })
                .await
                .ok()?;
            c.messages().await.ok()
        };
        let Some(mut msgs) = consumer.await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while let Some(m) = futures_lite::StreamExt::next(&mut msgs).await {
            let Ok(m) = m else { continue };
            if let Ok(info) = m.info() {
                next = Some(info.stream_sequence + 1);
            }
            // Bounded: a loop that lags holds the consumer back (JetStream
            // keeps the messages), it does not grow a queue here.
            if done.send(Inbound::Replica(s, Box::new(m))).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A stored message as the publication it holds.
fn replica(m: &jetstream::Message) -> Option<Publication> {
    let h = m.headers.as_ref()?;
    let hv = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    if let Some(at) = hv("Sc-At").and_then(|v| v.parse::<u64>().ok()) {
        stats::MIRROR_LAG_MAX_MS.fetch_max(unix_ms().saturating_sub(at), Ordering::Relaxed);
    }
    let topic = hv("Sc-Topic")?;
    let seq = hv("Sc-Seq")?.parse::<u64>().ok()?;
    let epoch = Epoch::parse(&hv("Sc-Epoch")?)?;
    let mut scratch = Vec::new();
    rebuild(&topic, seq, epoch, h, &m.payload, &mut scratch)
}

async fn lease_loop(
    mut keeper: Keeper,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
    mut drained: tokio::sync::mpsc::UnboundedReceiver<usize>,
    mut stop: tokio::sync::oneshot::Receiver<Vec<usize>>,
) {
    let mut events = Vec::new();
    let mut ready = Vec::new();
    // Rounds start a tick apart, however long the last one took (a round
    // that slept a whole tick *after* a slow one renewed late).
    let mut next = tokio::time::Instant::now() + keeper.tick();
    let keep = loop {
        tokio::select! {
            keep = &mut stop => break keep.unwrap_or_default(),
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now().max(next) + keeper.tick();
        while let Ok(s) = drained.try_recv() {
            ready.push(s);
        }
        // A round never runs past a tick (NATS unreachable: its operations
        // time out, and the loop fences on the renewal times meanwhile).
        let tick = keeper.tick();
        if tokio::time::timeout(tick, keeper.round(&ready, &mut events)).await.is_ok() {
            ready.clear();
        }
        for ev in events.drain(..) {
            if done.send(Done::Lease(ev)).is_err() {
                return;
            }
        }
    };
    keeper.release_all(&keep).await;
}

#[allow(clippy::too_many_arguments)]
async fn run(
    js: jetstream::Context,
    keeper: Keeper,
    first: Vec<LeaseEvent>,
    plan: Plan,
    links: Vec<Link>,
    bell: Arc<Doorbell>,
    bell_rx: UnixStream,
    stop: Arc<AtomicBool>,
) {
    let Ok(bell_rx) = tokio::net::UnixStream::from_std(bell_rx) else { return };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let (inbound_tx, mut inbound_rx) = tokio::sync::mpsc::channel::<Inbound>(REPLICAS_PER_TURN);
    let (drained_tx, drained_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (stop_leases, stop_rx) = tokio::sync::oneshot::channel();
    let streams = plan.streams as usize;
    for s in 0..streams {
        tokio::spawn(replicate(js.clone(), s, inbound_tx.clone()));
    }
    let mut node = Node {
        client: js.client(),
        js,
        incarnation: incarnation_id(&plan.node),
        plan,
        links,
        done: done_tx.clone(),
        writers: HashMap::new(),
        unstored: HashMap::new(),
        own: vec![Own::Free; streams],
        fence: keeper.fence.clone(),
        inbound: inbound_tx.clone(),
        gens: (0..streams).map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0))).collect(),
        serving: (0..streams).map(|_| None).collect(),
        remote: HashMap::new(),
        next_token: 0,
        forwards: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        drained: drained_tx,
    };
    for ev in first {
        node.on_lease(ev);
    }
    let leases = tokio::spawn(lease_loop(keeper, done_tx, drained_rx, stop_rx));
    let mut buf = [0u8; 64];
    let mut last_sweep = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut any = false;
        for shard in 0..node.links.len() {
            while let Ok(req) = node.links[shard].rx.pop() {
                any = true;
                node.on_req(shard, req);
            }
        }
        while let Ok(d) = done_rx.try_recv() {
            any = true;
            node.on_done(d);
        }
        for _ in 0..REPLICAS_PER_TURN {
            let Ok(m) = inbound_rx.try_recv() else { break };
            any = true;
            node.on_inbound(m);
        }
        node.check_fence();
        node.check_drained();
        for l in node.links.iter_mut() {
            if !l.backlog.is_empty() {
                l.flush();
            }
            if std::mem::take(&mut l.rung) {
                l.bell.notify();
            }
        }
        // Idle writers end on their own; their entries go about once a
        // second (not a scan of every topic's writer each turn).
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            node.writers.retain(|_, w| !w.tx.is_closed());
            last_sweep = std::time::Instant::now();
        }
        if any {
            tokio::task::yield_now().await;
            continue;
        }
        bell.park();
        if node.links.iter().any(|l| l.rx.slots() > 0) || !done_rx.is_empty() || !inbound_rx.is_empty() {
            bell.unpark();
            continue;
        }
        let backlog = node.links.iter().any(|l| !l.backlog.is_empty());
        let nap = if backlog { Duration::from_millis(1) } else { Duration::from_millis(200) };
        tokio::select! {
            r = bell_rx.readable() => {
                if r.is_ok() {
                    while matches!(bell_rx.try_read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            d = done_rx.recv() => {
                if let Some(d) = d {
                    node.on_done(d);
                }
            }
            r = inbound_rx.recv() => {
                if let Some(m) = r {
                    node.on_inbound(m);
                }
            }
            _ = tokio::time::sleep(nap) => {}
        }
        bell.unpark();
    }
    // A graceful stop (the shards have stopped: no append comes any more)
    // first lets the appends in flight be stored, bounded by the request
    // timeout, then gives back the leases of the streams with none left, so
    // other nodes take over at once. A stream still holding an unconfirmed
    // append keeps its key until it expires, like after a kill -9: deleting
    // it would let another node load the topic before that append lands
    // and sequence the same seq again.
    let deadline = tokio::time::Instant::now() + node.plan.timeout;
    while !node.unstored.is_empty() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(d)) => node.on_done(d),
            _ => break,
        }
    }
    for g in &node.gens {
        g.fetch_add(1, Ordering::SeqCst);
    }
    node.writers.clear();
    let mut keep: Vec<usize> = node.unstored.values().map(|(s, _)| *s).collect();
    keep.sort_unstable();
    keep.dedup();
    if !keep.is_empty() {
        tracing::warn!(streams = ?keep, "cluster: appends still unconfirmed at stop: their leases are left to expire");
    }
    let _ = stop_leases.send(keep);
    let _ = tokio::time::timeout(Duration::from_secs(2), leases).await;
}

/// A per-process incarnation id: appends carry it, so a seq reused after a
/// crash is not taken for a duplicate of an orphan, and loads can cut
/// orphans (docs/ARCHITECTURE.md, rule 6). Unix nanoseconds: a later
/// incarnation has a larger id.
fn incarnation_id(node: &str) -> Arc<str> {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{ns:024}.{node}").into()
}

/// The stored form of a publication: headers, and the native `msg` JSON
/// as the payload (the frame without its WebSocket header).
fn stored_form(publ: &Publication, incarnation: &str) -> (HeaderMap, bytes::Bytes) {
    let mut h = HeaderMap::new();
    h.insert("Sc-Topic", &*publ.topic);
    h.insert("Sc-Seq", publ.seq.to_string().as_str());
    h.insert("Sc-Epoch", publ.epoch.as_str());
    h.insert("Sc-Inc", incarnation);
    h.insert("Sc-Data-Len", publ.data().len().to_string().as_str());
    h.insert("Sc-At", unix_ms().to_string().as_str());
    if let Some(m) = &publ.msg_id {
        h.insert("Sc-Msg-Id", &**m);
    }
    if let Some(f) = &publ.from {
        h.insert("Sc-From", &**f);
    }
    if let Some(p) = publ.prio_given() {
        h.insert("Sc-Prio", if p == crate::proto::message::Prio::Critical { "critical" } else { "normal" });
    }
    if let Some((s, end)) = publ.stream.as_deref() {
        h.insert("Sc-Stream", &**s);
        h.insert("Sc-End", if *end { "true" } else { "false" });
    }
    let body = &publ.frame[ws_header_len(&publ.frame)..];
    (h, bytes::Bytes::copy_from_slice(body))
}

fn ws_header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// One topic's writer: its appends in seq order; on a failure it writes
/// again every unstored one from it, in order, with the same ids, until
/// stored — or until its stream is lost (`fence` moved), when it gives them
/// up (never acked). Reports "stored through" in order. Ends after a
/// minute idle.
struct WriterTask {
    js: jetstream::Context,
    plan: Plan,
    shard: usize,
    topic: Arc<str>,
    inc: Arc<str>,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
    fence: Arc<std::sync::atomic::AtomicU64>,
    gen: u64,
}

impl WriterTask {
    async fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<SharedPub>) {
        let (js, plan, shard, topic, inc, done) =
            (&self.js, &self.plan, self.shard, &self.topic, &self.inc, &self.done);
        let (_, subject) = subject_of(plan, topic);
        // Sent and not yet confirmed, in seq order.
        let mut unacked: VecDeque<(SharedPub, Option<jetstream::context::PublishAckFuture>)> = VecDeque::new();
        let mut backoff = Duration::from_millis(10);
        loop {
            // Take what is queued (waiting only when nothing is in flight).
            if unacked.is_empty() {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(p)) => unacked.push_back((p, None)),
                    _ => return,
                }
            }
            while let Ok(p) = rx.try_recv() {
                unacked.push_back((p, None));
            }
            // Send every unsent one, in order (none once the stream is lost).
            let mut failed = self.fence.load(Ordering::SeqCst) != self.gen;
            for (p, fut) in unacked.iter_mut().filter(|(_, f)| f.is_none()) {
                if failed || self.fence.load(Ordering::SeqCst) != self.gen {
                    // Fenced meanwhile: nothing more goes out.
                    failed = true;
                    break;
                }
                let (headers, payload) = stored_form(p, inc);
                let id = format!("{} {} {} {}", p.topic, p.epoch.as_str(), p.seq, inc);
                let msg = jetstream::message::PublishMessage::build().payload(payload).headers(headers).message_id(id);
                match js.send_publish(subject.clone(), msg).await {
                    Ok(f) => *fut = Some(f),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            // Confirm in order.
            while !failed {
                let Some((p, fut)) = unacked.front_mut() else { break };
                let Some(f) = fut.take() else { break };
                let seq = p.seq;
                match tokio::time::timeout(plan.timeout, std::future::IntoFuture::into_future(f)).await {
                    Ok(Ok(_)) => {
                        unacked.pop_front();
                        backoff = Duration::from_millis(10);
                        let last_in_run = unacked.front().is_none_or(|(_, f)| f.is_none());
                        if last_in_run || rx.is_empty() {
                            let fenced = self.fence.load(Ordering::SeqCst) != self.gen;
                            let _ = done.send(Done::Stored { shard, topic: topic.clone(), through: seq, fenced });
                        }
                    }
                    _ => failed = true,
                }
            }
            if failed {
                if self.fence.load(Ordering::SeqCst) != self.gen {
                    // The stream was lost: another node sequences it now;
                    // what was not stored was refused to its publishers.
                    let _ = done.send(Done::Abandoned { topic: topic.clone() });
                    return;
                }
                // Everything not confirmed goes again, in order.
                for (_, f) in unacked.iter_mut() {
                    *f = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Reads a topic's stored state: every message of its subject, in stream
/// order (one ordered consumer filtered to the subject: a batch, not a
/// round trip per message), orphans of an older incarnation cut (rule 6),
/// the contiguous run of seqs that remains.
async fn load(js: &jetstream::Context, plan: &Plan, topic: &str) -> Result<Option<Box<StoredTopic>>, String> {
    use jetstream::consumer::{pull, DeliverPolicy};
    let (s, subject) = subject_of(plan, topic);
    let stream = js.get_stream(format!("SC_{s}")).await.map_err(|e| e.to_string())?;
    // The subject's last message says where the read ends (or that there
    // is nothing to read). Asked of the stream's leader: a direct get may
    // be answered by a replica that lags (replicas > 1), and a load that
    // ends early would take the topic back in time.
    let last = match stream.get_last_raw_message_by_subject(subject.as_str()).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(None)
        }
        Err(e) => return Err(e.to_string()),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut scan = Scan::default();
    let mut scratch = Vec::new();
    // The subject holds at most max_count messages (the stream's limit).
    for _ in 0..plan.max_count.saturating_mul(4).max(16) {
        let m = match tokio::time::timeout(plan.timeout, futures_lite::StreamExt::next(&mut msgs)).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => break,
            Err(_) => return Err(format!("reading {subject} timed out")),
        };
        let at = m.info().map(|i| i.stream_sequence).unwrap_or(last);
        if let Some(h) = m.headers.as_ref() {
            scan.take(topic, h, &m.payload, &mut scratch);
        }
        if at >= last {
            break;
        }
    }
    Ok(scan.finish(plan.max_count))
}

/// A subject's messages taken in stream order: by seq, the newest
/// incarnation cutting older ones from where it started (rule 6).
#[derive(Default)]
struct Scan {
    by_seq: std::collections::BTreeMap<u64, (String, SharedPub)>,
    current_inc: String,
    epoch: Option<Epoch>,
}

impl Scan {
    fn take(&mut self, topic: &str, h: &HeaderMap, payload: &[u8], scratch: &mut Vec<u8>) {
        let hv = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        let (Some(seq), Some(ep), Some(inc)) = (
            hv("Sc-Seq").and_then(|v| v.parse::<u64>().ok()),
            hv("Sc-Epoch").and_then(|e| Epoch::parse(&e)),
            hv("Sc-Inc"),
        ) else {
            return;
        };
        if inc != self.current_inc {
            // A later incarnation's first write at seq s: older ones from s on
            // were never acked (orphans).
            let cut: Vec<u64> = self.by_seq.range(seq..).filter(|(_, (i, _))| *i != inc).map(|(k, _)| *k).collect();
            for k in cut {
                self.by_seq.remove(&k);
            }
            self.current_inc = inc.clone();
        }
        if self.epoch.is_some_and(|e| e != ep) {
            // Another epoch replaced the topic: start over with it.
            self.by_seq.clear();
        }
        self.epoch = Some(ep);
        let Some(publ) = rebuild(topic, seq, ep, h, payload, scratch) else { return };
        self.by_seq.insert(seq, (inc, Arc::new(publ)));
    }

    /// The contiguous run ending at the highest seq, at most `max` of it.
    fn finish(self, max: usize) -> Option<Box<StoredTopic>> {
        let epoch = self.epoch?;
        let mut pubs: Vec<SharedPub> = Vec::new();
        let mut last = 0;
        for (seq, (_, p)) in self.by_seq.into_iter().rev() {
            if last != 0 && seq + 1 != pubs.last().map_or(0, |p: &SharedPub| p.seq) {
                break;
            }
            if last == 0 {
                last = seq;
            }
            pubs.push(p);
        }
        pubs.reverse();
        let keep = pubs.len().saturating_sub(max);
        pubs.drain(..keep);
        Some(Box::new((epoch, last, pubs)))
    }
}

/// A stored message back into a publication (its native frame rebuilt
/// byte for byte from the stored JSON).
fn rebuild(
    topic: &str,
    seq: u64,
    epoch: Epoch,
    h: &HeaderMap,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<Publication> {
    let hv = |k: &str| h.get(k).map(|v| v.as_str());
    let data_len: usize = hv("Sc-Data-Len")?.parse().ok()?;
    let end = body.len().checked_sub(1)?;
    let start = end.checked_sub(data_len)?;
    let data = std::str::from_utf8(body.get(start..end)?).ok()?;
    let from: Option<Arc<str>> = hv("Sc-From").map(Into::into);
    let prio = match hv("Sc-Prio") {
        Some("critical") => Some(crate::proto::message::Prio::Critical),
        Some("normal") => Some(crate::proto::message::Prio::Normal),
        _ => None,
    };
    let stream = hv("Sc-Stream").map(|s| (s, hv("Sc-End") == Some("true")));
    let meta =
        PubMeta { topic, seq, epoch, prio, msg_id: hv("Sc-Msg-Id"), from: from.as_ref(), data, extra: None, stream };
    scratch.clear();
    crate::proto::message::append_text_frame(scratch, |o| o.extend_from_slice(body));
    let frame: Box<[u8]> = scratch.as_slice().into();
    let hl = ws_header_len(&frame);
    Some(Publication::new(topic.into(), &meta, frame, (hl + start, hl + end)))
}
