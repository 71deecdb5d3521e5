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
use crate::mesh::msg::{ClusterReq, StoredTopic};
use crate::mesh::{Doorbell, MeshMsg, SharedPub};
use crate::topic::owned::Epoch;
use crate::topic::publication::{PubMeta, Publication};
use crate::topic::PartitionMap;

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
    /// Stops the thread (appends in flight are abandoned: they were never
    /// acked) and waits for it.
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
    /// `[cluster] node_id`, part of every append's incarnation.
    node: Arc<str>,
    streams: u32,
    map: PartitionMap,
    timeout: Duration,
    max_count: usize,
}

/// The stream a topic lives in and its subject there.
fn subject_of(plan: &Plan, topic: &str) -> (usize, String) {
    let s = plan.map.partition(topic) % plan.streams;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic);
    (s as usize, format!("sc.d.{s}.{token}"))
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
        rings.push(Link { rx: req_rx, tx: ans_tx, bell: shard_bell, backlog: VecDeque::new() });
    }
    let plan = Plan {
        node: cfg.cluster.node_id.as_str().into(),
        streams: cfg.cluster.streams.max(1),
        map,
        timeout: Duration::from_millis(cfg.cluster.request_timeout_ms.max(100)),
        max_count: cfg.replay.max_count,
    };
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
                let _ = ready_tx.send(Ok(()));
                run(js, plan, rings, bell2, bell_rx, stop2).await;
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
        let client = tokio::time::timeout(timeout, opts.connect(cfg.cluster.nats_url.as_str()))
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
        Ok(out)
    })
}

async fn connect(url: &str, configs: Vec<stream::Config>, timeout: Duration) -> Result<jetstream::Context, String> {
    let opts = async_nats::ConnectOptions::new().connection_timeout(timeout);
    let client = tokio::time::timeout(timeout, opts.connect(url))
        .await
        .map_err(|_| format!("cannot reach NATS at {url}"))?
        .map_err(|e| format!("cannot reach NATS at {url}: {e}"))?;
    let mut js = jetstream::new(client);
    js.set_timeout(timeout);
    for c in configs {
        let name = c.name.clone();
        js.get_or_create_stream(c)
            .await
            .map_err(|e| format!("JetStream stream {name} (is JetStream enabled, nats-server -js?): {e}"))?;
    }
    Ok(js)
}

/// One shard's rings, on the participant's side.
struct Link {
    rx: rtrb::Consumer<ClusterReq>,
    tx: rtrb::Producer<MeshMsg>,
    bell: Arc<Doorbell>,
    /// Answers that found the ring full, in order.
    backlog: VecDeque<MeshMsg>,
}

impl Link {
    fn send(&mut self, msg: MeshMsg) {
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
        }
    }
}

/// What a task reports to the loop.
enum Done {
    Stored { shard: usize, topic: Arc<str>, through: u64 },
    Loaded { shard: usize, topic: Arc<str>, state: Result<Option<Box<StoredTopic>>, String> },
}

async fn run(
    js: jetstream::Context,
    plan: Plan,
    mut links: Vec<Link>,
    bell: Arc<Doorbell>,
    bell_rx: UnixStream,
    stop: Arc<AtomicBool>,
) {
    let Ok(bell_rx) = tokio::net::UnixStream::from_std(bell_rx) else { return };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    // One writer task per topic, fed in seq order.
    let mut writers: HashMap<Arc<str>, tokio::sync::mpsc::UnboundedSender<SharedPub>> = HashMap::new();
    let incarnation = incarnation_id(&plan.node);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        let mut any = false;
        for (shard, l) in links.iter_mut().enumerate() {
            while let Ok(req) = l.rx.pop() {
                any = true;
                match req {
                    ClusterReq::Append(publ) => {
                        let topic = publ.topic.clone();
                        let w = writers.entry(topic.clone()).or_insert_with(|| {
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            let (js, plan, done) = (js.clone(), plan.clone(), done_tx.clone());
                            tokio::spawn(writer(js, plan, shard, topic.clone(), incarnation.clone(), rx, done));
                            tx
                        });
                        if let Err(e) = w.send(publ) {
                            // The writer ended (idle): start a fresh one.
                            let publ = e.0;
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            let (js, plan, done) = (js.clone(), plan.clone(), done_tx.clone());
                            tokio::spawn(writer(js, plan, shard, topic.clone(), incarnation.clone(), rx, done));
                            let _ = tx.send(publ);
                            writers.insert(topic, tx);
                        }
                    }
                    ClusterReq::Load(topic) => {
                        let (js, plan, done) = (js.clone(), plan.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let state = load(&js, &plan, &topic).await;
                            let _ = done.send(Done::Loaded { shard, topic, state });
                        });
                    }
                }
            }
        }
        let mut rung = vec![false; links.len()];
        while let Ok(d) = done_rx.try_recv() {
            any = true;
            let (shard, msg) = match d {
                Done::Stored { shard, topic, through } => (shard, MeshMsg::Stored { topic, through }),
                Done::Loaded { shard, topic, state } => (shard, MeshMsg::Loaded { topic, state }),
            };
            if let Some(l) = links.get_mut(shard) {
                l.send(msg);
                rung[shard] = true;
            }
        }
        for (i, l) in links.iter_mut().enumerate() {
            if !l.backlog.is_empty() {
                l.flush();
                rung[i] = true;
            }
            if rung[i] {
                l.bell.notify();
            }
        }
        writers.retain(|_, w| !w.is_closed());
        if any {
            tokio::task::yield_now().await;
            continue;
        }
        bell.park();
        if links.iter().any(|l| l.rx.slots() > 0) || !done_rx.is_empty() {
            bell.unpark();
            continue;
        }
        let backlog = links.iter().any(|l| !l.backlog.is_empty());
        let nap = if backlog { Duration::from_millis(1) } else { Duration::from_millis(200) };
        tokio::select! {
            r = bell_rx.readable() => {
                if r.is_ok() {
                    while matches!(bell_rx.try_read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            d = done_rx.recv() => {
                if let Some(d) = d {
                    let (shard, msg) = match d {
                        Done::Stored { shard, topic, through } => (shard, MeshMsg::Stored { topic, through }),
                        Done::Loaded { shard, topic, state } => (shard, MeshMsg::Loaded { topic, state }),
                    };
                    if let Some(l) = links.get_mut(shard) {
                        l.send(msg);
                        l.bell.notify();
                    }
                }
            }
            _ = tokio::time::sleep(nap) => {}
        }
        bell.unpark();
    }
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

/// Writes one topic's appends in seq order; on a failure writes again
/// every unstored one from it, in order, with the same ids, until stored.
/// Reports "stored through" in order. Ends after a minute idle.
async fn writer(
    js: jetstream::Context,
    plan: Plan,
    shard: usize,
    topic: Arc<str>,
    inc: Arc<str>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SharedPub>,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
) {
    let (_, subject) = subject_of(&plan, &topic);
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
        // Send every unsent one, in order.
        let mut failed = false;
        for (p, fut) in unacked.iter_mut().filter(|(_, f)| f.is_none()) {
            let (headers, payload) = stored_form(p, &inc);
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
                        let _ = done.send(Done::Stored { shard, topic: topic.clone(), through: seq });
                    }
                }
                _ => failed = true,
            }
        }
        if failed {
            // Everything not confirmed goes again, in order.
            for (_, f) in unacked.iter_mut() {
                *f = None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Reads a topic's stored state: every message of its subject, in stream
/// order, orphans of an older incarnation cut (rule 6), the contiguous run
/// of seqs that remains.
async fn load(js: &jetstream::Context, plan: &Plan, topic: &str) -> Result<Option<Box<StoredTopic>>, String> {
    let (s, subject) = subject_of(plan, topic);
    let stream = js.get_stream(format!("SC_{s}")).await.map_err(|e| e.to_string())?;
    // By seq: (incarnation, publication); newest incarnation cuts older.
    let mut by_seq: std::collections::BTreeMap<u64, (String, SharedPub)> = std::collections::BTreeMap::new();
    let mut current_inc = String::new();
    let mut epoch: Option<Epoch> = None;
    let mut next = 1u64;
    let mut scratch = Vec::new();
    for _ in 0..plan.max_count.saturating_mul(4).max(16) {
        let m = match stream.direct_get_next_for_subject(subject.as_str(), Some(next)).await {
            Ok(m) => m,
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(e.to_string()),
        };
        next = m.sequence + 1;
        let hv = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned());
        let (Some(seq), Some(ep), Some(inc)) = (
            hv("Sc-Seq").and_then(|v| v.parse::<u64>().ok()),
            hv("Sc-Epoch").and_then(|e| Epoch::parse(&e)),
            hv("Sc-Inc"),
        ) else {
            continue;
        };
        if inc != current_inc {
            // A later incarnation's first write at seq s: older ones from s on
            // were never acked (orphans).
            let cut: Vec<u64> = by_seq.range(seq..).filter(|(_, (i, _))| *i != inc).map(|(k, _)| *k).collect();
            for k in cut {
                by_seq.remove(&k);
            }
            current_inc = inc.clone();
        }
        if epoch.is_some_and(|e| e != ep) {
            // Another epoch replaced the topic: start over with it.
            by_seq.clear();
        }
        epoch = Some(ep);
        let Some(publ) = rebuild(topic, seq, ep, &m.headers, &m.payload, &mut scratch) else { continue };
        by_seq.insert(seq, (inc, Arc::new(publ)));
    }
    let Some(epoch) = epoch else { return Ok(None) };
    // The contiguous run ending at the highest seq.
    let mut pubs: Vec<SharedPub> = Vec::new();
    let mut last = 0;
    for (seq, (_, p)) in by_seq.into_iter().rev() {
        if last != 0 && seq + 1 != pubs.last().map_or(0, |p: &SharedPub| p.seq) {
            break;
        }
        if last == 0 {
            last = seq;
        }
        pubs.push(p);
    }
    pubs.reverse();
    let keep = pubs.len().saturating_sub(plan.max_count);
    pubs.drain(..keep);
    Ok(Some(Box::new((epoch, last, pubs))))
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
