//! `shardcast-loadgen`: the bundled load generator.
//!
//! The parent process splits the connections over worker processes (each
//! under the open-files cap, each with its own loopback source addresses),
//! holds them at a barrier until every worker is connected and subscribed,
//! starts them together, samples the server's CPU and RSS from /proc, and
//! merges what the workers measured and verified into a table and a JSON
//! document. Every run is bounded in connections and time and targets
//! loopback addresses only.

mod html;
mod http;
mod jobs;
mod link;
mod peers;
mod report;
mod rpc;
mod tokens;
mod window;
mod worker;
mod ws;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use worker::{Plan, WorkerResult};

/// Load generator for shardcast (loopback only).
#[derive(Parser)]
#[command(name = "shardcast-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// P publishers → one topic → N subscribers; latency, throughput, loss.
    Fanout(FanoutArgs),
    /// Hold N idle subscribed connections; the server's RSS per connection.
    Idle(IdleArgs),
    /// Many tenant/room topics with a few subscribers each (the chat and
    /// agent shape); publishers rotate over the rooms.
    Rooms(RoomsArgs),
    /// N clients connect and subscribe as fast as they can: handshakes/s and
    /// time to all-subscribed.
    Storm(IdleArgs),
    /// Publishes over one keep-alive HTTP connection (POST /v1/publish or
    /// /v1/publish/batch): publishes/s, verified contiguous seqs.
    Http(HttpArgs),
    /// A work queue on a consumer group with acks: failing and vanishing
    /// workers; verifies every job is settled done exactly once.
    Jobs(JobsArgs),
    /// Clients call a service group at a rate; responders stream chunks,
    /// some too slow (timeout → cancel → fallback): request → first chunk
    /// and → final percentiles, outcomes; `--proto nats` makes the same
    /// calls over NATS core request/reply.
    Rpc(RpcArgs),
    /// R rooms, an agent per room streaming answers of N tokens at T/s,
    /// browsers reading, joining late, reconnecting and stalling: every
    /// final text exact; token → screen latency; `--mode v1` does it with
    /// plain publications and `since`.
    Tokens(TokensArgs),
    /// `fanout` where, halfway through, every subscriber drops its
    /// connection at once and resumes with `since`: zero loss and time to
    /// full recovery.
    ReconnectStorm(FanoutArgs),
    /// `fanout` where a fraction of the subscribers stop reading (default
    /// every 10th): the others' latency and loss.
    Slow(FanoutArgs),
    /// `rooms` plus one tenant publishing far over its rate on its own
    /// topic: the other tenants' latency, and the noisy one's rejections.
    NoisyTenant(NoisyArgs),
    /// `rooms` over the nodes of a cluster (`--addr` and `--nodes`): each
    /// room's subscribers and publishers on different nodes; verifies one
    /// contiguous seq sequence per room as every subscriber sees it.
    Cluster(RoomsArgs),
    /// Merge JSON reports into one HTML page of latency percentile curves.
    Html(HtmlArgs),
    /// Internal: run one worker (the parent starts these).
    #[command(hide = true)]
    Worker { plan: String },
}

#[derive(Args, Clone)]
struct Common {
    /// Server address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Worker processes to spread connections over.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Loopback source addresses, comma-separated (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Seconds of measurement (bounded: at most 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// At most this many seconds of receiving after publishing stops (ends
    /// early once nothing has arrived for a second).
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// PID of the server, to sample its CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
    /// Pin workers round-robin to these CPUs.
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 256)]
    connect_window: usize,
    /// Sign an HS256 token with this secret for the topics' tenant and
    /// present it on every connection (servers with `[auth] required`).
    #[arg(long)]
    hs256_secret: Option<String>,
    /// Speak TLS (wss://) to the server, trusting the certificates in this
    /// PEM file; the server name checked is `localhost`.
    #[arg(long)]
    tls_ca: Option<String>,
    /// Fix the run id in tenant and topic names (default: from the clock,
    /// so each run starts on fresh topics). `noisy-tenant` names its
    /// tenants `quiet-<id>` and `noisy-<id>`: a fixed id lets a server
    /// config give the noisy one its own `[quotas.tenants."noisy-<id>"]`.
    #[arg(long)]
    run_id: Option<u64>,
    /// Label for this run in the report.
    #[arg(long, default_value = "shardcast")]
    label: String,
    /// Wire protocol of the server under test: ws (shardcast and the
    /// reference servers), redis (pub/sub), nats (core), or centrifugo
    /// (shardcast's Centrifugo endpoint for subscribers, `/ws` for publishers).
    #[arg(long, value_enum, default_value = "ws")]
    proto: peers::Proto,
    /// Write a self-contained HTML report (latency percentiles plotted) here.
    #[arg(long)]
    html: Option<String>,
    /// Cluster mode: more nodes of the same cluster (loopback), comma-
    /// separated; connections are spread round-robin over `--addr` and
    /// these (subscribers and publishers of one topic on different nodes).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscriber connections in all.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publishes per second in all (open loop); 0 for closed loop.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Closed loop: unacked publishes per publisher.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Closed loop bounded per subscriber (with --rate 0): publish while the
    /// slowest subscriber is fewer than this many publications behind.
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// Approximate publish payload size, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Every k-th subscriber stops reading once subscribed (the `slow`
    /// scenario; 10 means 10%). Their losses are expected and not counted.
    #[arg(long, default_value_t = 0)]
    slow_every: usize,
    /// Reconnect storm: this many seconds in, every subscriber drops and
    /// resumes with `since` at once (the `reconnect-storm` scenario).
    #[arg(long)]
    reconnect_at: Option<f64>,
}

#[derive(Args, Clone)]
struct RoomsArgs {
    #[command(flatten)]
    common: Common,
    /// Rooms (topics).
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 4)]
    per_room: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publishes per second in all.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Approximate publish payload size, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Every this many seconds, every subscriber drops its connection at
    /// once and resumes with `since` (periodic reconnect storms; a soak).
    #[arg(long)]
    reconnect_every: Option<f64>,
}

#[derive(Args, Clone)]
struct NoisyArgs {
    #[command(flatten)]
    rooms: RoomsArgs,
    /// Closed-loop publisher connections of the noisy tenant.
    #[arg(long, default_value_t = 4)]
    noisy: usize,
    /// Unacked publishes per noisy publisher.
    #[arg(long, default_value_t = 64)]
    noisy_inflight: usize,
}

#[derive(Args, Clone)]
struct HtmlArgs {
    /// The HTML file to write.
    #[arg(long)]
    out: String,
    /// Title of the page.
    #[arg(long, default_value = "shardcast latency")]
    title: String,
    /// JSON reports written by --json (one curve each, named by its label).
    reports: Vec<String>,
}

#[derive(Args, Clone)]
struct HttpArgs {
    /// Server address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Seconds to run (at most 600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Publications per request (1: POST /v1/publish; more: the batch API).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests written before waiting for an answer (HTTP pipelining).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Approximate payload size, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Distinct rooms the connections subscribe to.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
}

#[derive(Args)]
struct JobsArgs {
    /// Server address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Jobs to publish.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// Worker connections (one thread each).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Fraction of deliveries a worker answers `retry`.
    #[arg(long, default_value_t = 0.1)]
    fail: f64,
    /// Fraction of workers that vanish once mid-job (then rejoin).
    #[arg(long, default_value_t = 0.1)]
    vanish: f64,
    /// Unsettled jobs per worker.
    #[arg(long, default_value_t = 4)]
    max_inflight: u32,
    /// The group's settle deadline, ms (what a vanished worker's jobs wait).
    #[arg(long, default_value_t = 2000)]
    ack_wait_ms: u64,
    /// Attempts before a job goes to the dead-letter topic (the group's
    /// `max_deliver`; low values with a high --fail make dead letters).
    #[arg(long, default_value_t = 100)]
    max_deliver: u32,
    /// Upper bound on the run, seconds (at most 600).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args)]
struct RpcArgs {
    /// Server address (must be loopback): shardcast, or nats-server with --proto nats.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// ws (shardcast request/reply) or nats (NATS core request/reply).
    #[arg(long, value_enum, default_value = "ws")]
    proto: peers::Proto,
    /// Requester connections (one thread each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per second over all clients (open loop).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of requests (at most 600); the run then waits for the last outcomes.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Responder connections of the main service.
    #[arg(long, default_value_t = 8)]
    responders: usize,
    /// Fraction of the main responders that are too slow (answer after --slow-ms).
    #[arg(long, default_value_t = 0.1)]
    slow: f64,
    /// How late a slow responder answers, ms (past --timeout-ms: timeout, cancel, fallback).
    #[arg(long, default_value_t = 1000)]
    slow_ms: u64,
    /// Responder connections of the fallback service.
    #[arg(long, default_value_t = 2)]
    fallback_responders: usize,
    /// Chunks per answer (streamed; the last one is final).
    #[arg(long, default_value_t = 4)]
    chunks: u32,
    /// Padding bytes per chunk and per request.
    #[arg(long, default_value_t = 32)]
    chunk_bytes: usize,
    /// Request deadline, ms.
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args)]
struct TokensArgs {
    /// Server address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Rooms (one agent stream and one reading browser each).
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Tokens per second per room.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Answers per room, one after the other.
    #[arg(long, default_value_t = 1)]
    answers: usize,
    /// Fraction of rooms with a browser joining late.
    #[arg(long, default_value_t = 0.2)]
    late: f64,
    /// Fraction of rooms with a browser that drops and reconnects mid-answer.
    #[arg(long, default_value_t = 0.1)]
    reconnect: f64,
    /// Fraction of rooms with a browser that stalls for most of an answer.
    #[arg(long, default_value_t = 0.05)]
    slow: f64,
    /// stream (token streams, rollups) or v1 (plain publications, since).
    #[arg(long, default_value = "stream")]
    mode: String,
    /// Agent threads (each publishes for a share of the rooms).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Browser threads.
    #[arg(long, default_value_t = 8)]
    browser_threads: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
}

/// Writes a report's JSON if asked, and fails the run if it did not verify.
fn finish(rep: &serde_json::Value, json: Option<&str>) -> anyhow::Result<()> {
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(rep)?)?;
    }
    if rep["verify"]["ok"].as_bool() != Some(true) {
        bail!("verification failed: {}", rep["verify"]);
    }
    Ok(())
}

/// Largest connection count one run may open.
const MAX_CONNECTIONS: usize = 1_000_000;
/// Longest run, seconds.
const MAX_SECONDS: f64 = 600.0;

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Worker { plan } => worker::run(serde_json::from_str(&plan)?),
        Scenario::Http(a) => {
            if !(a.duration > 0.0 && a.duration <= MAX_SECONDS) || a.batch == 0 || a.pipeline == 0 {
                bail!("--duration must be in (0, {MAX_SECONDS}], --batch and --pipeline at least 1");
            }
            let topic = format!("bench/http-{}", worker::mono_ns() % 1_000_000_007);
            let run = http::HttpRun {
                addr: a.addr,
                duration: Duration::from_secs_f64(a.duration),
                batch: a.batch,
                pipeline: a.pipeline,
                payload: a.payload,
                topic,
            };
            let report = http::run(&run)?;
            println!(
                "http          batch {} pipeline {}: {} requests, {} publishes acked in {:.2} s = {:.0} publishes/s ({:.0} requests/s), errors {}, verify {}",
                report["batch"], report["pipeline"], report["requests"], report["acked"], report["secs"].as_f64().unwrap_or(0.0),
                report["publishes_per_sec"].as_f64().unwrap_or(0.0), report["requests_per_sec"].as_f64().unwrap_or(0.0), report["errors"],
                if report["verify"]["ok"].as_bool() == Some(true) { "OK" } else { "VIOLATIONS" }
            );
            finish(&report, a.json.as_deref())
        }
        Scenario::Tokens(a) => {
            let valid = (1..=15_000).contains(&a.rooms)
                && (1..=100_000).contains(&a.tokens)
                && a.rate > 0.0
                && a.rate <= 10_000.0
                && (1..=100).contains(&a.answers)
                && (a.mode == "stream" || a.mode == "v1")
                && (a.tokens as f64 / a.rate) * a.answers as f64 <= MAX_SECONDS;
            if !valid {
                bail!("--rooms 1..=15000, --tokens 1..=100000, --rate (0, 10000], --answers 1..=100, --mode stream|v1, at most {MAX_SECONDS} s of answers");
            }
            let run = tokens::TokensRun {
                addr: a.addr,
                rooms: a.rooms,
                tokens: a.tokens,
                rate: a.rate,
                answers: a.answers,
                late: a.late.clamp(0.0, 1.0),
                reconnect: a.reconnect.clamp(0.0, 1.0),
                slow: a.slow.clamp(0.0, 1.0),
                v1: a.mode == "v1",
                agents: a.agents.clamp(1, 64),
                browser_threads: a.browser_threads.clamp(1, 64),
            };
            let rep = tokens::run(&run)?;
            let us = |p: &str| rep["token_to_screen"][p].as_u64().unwrap_or(0);
            println!(
                "tokens        {}: {} rooms × {} answers × {} tokens at {}/s, {} browsers: {:.0} tokens/s sent; exact texts {}/{} {}; token→screen p50/p99/p99.9 {}/{}/{} µs; rollups {} ({} tokens, {} bytes; {} bytes saved vs appends); verify {}",
                rep["mode"].as_str().unwrap_or("?"), a.rooms, a.answers, a.tokens, a.rate, rep["browsers"],
                rep["tokens_per_sec"].as_f64().unwrap_or(0.0), rep["exact"], rep["texts"], rep["by_role"],
                us("p50_us"), us("p99_us"), us("p999_us"), rep["rollups"], rep["rollup_tokens"], rep["rollup_bytes"],
                rep["bytes_saved_by_rollup"],
                if rep["verify"]["ok"].as_bool() == Some(true) { "OK" } else { "VIOLATIONS" }
            );
            finish(&rep, a.json.as_deref())
        }
        Scenario::Rpc(a) => {
            let valid = a.duration > 0.0
                && a.duration <= MAX_SECONDS
                && (1..=256).contains(&a.clients)
                && (1..=256).contains(&a.responders)
                && a.fallback_responders <= 256
                && a.proto != peers::Proto::Redis
                && a.rate > 0.0
                && a.rate <= 1e6
                && a.chunks > 0
                && (1..=600_000).contains(&a.timeout_ms);
            if !valid {
                bail!("--duration in (0, {MAX_SECONDS}], --clients and --responders in 1..=256, --rate in (0, 1e6], --chunks ≥ 1, --timeout-ms in 1..=600000, --proto ws or nats");
            }
            let run = rpc::RpcRun {
                addr: a.addr,
                proto: a.proto,
                clients: a.clients,
                rate: a.rate,
                duration: Duration::from_secs_f64(a.duration),
                responders: a.responders,
                slow: a.slow.clamp(0.0, 1.0),
                slow_ms: a.slow_ms.min(60_000),
                fallback_responders: a.fallback_responders,
                chunks: a.chunks.min(1000),
                chunk_bytes: a.chunk_bytes.min(64 * 1024),
                timeout_ms: a.timeout_ms,
            };
            let rep = rpc::run(&run)?;
            let us = |k: &str, p: &str| rep[k][p].as_u64().unwrap_or(0);
            println!(
                "rpc           {}: {} requests at {}/s, {} chunks each: answered {} ({} by the fallback), timeouts {}, no_responders {}, fallbacks by client {}, cancels seen {}, wasted chunks {}, late ignored {}; first chunk p50/p99/p99.9 {}/{}/{} µs, final {}/{}/{} µs; verify {}",
                rep["proto"].as_str().unwrap_or("?"), rep["sent"], a.rate, a.chunks, rep["answered"], rep["answered_by_fallback"],
                rep["timeouts"], rep["no_responders"], rep["fallbacks_by_client"], rep["cancels_seen"], rep["wasted_chunks"], rep["late_ignored"],
                us("first_chunk", "p50_us"), us("first_chunk", "p99_us"), us("first_chunk", "p999_us"),
                us("final", "p50_us"), us("final", "p99_us"), us("final", "p999_us"),
                if rep["verify"]["ok"].as_bool() == Some(true) { "OK" } else { "VIOLATIONS" }
            );
            finish(&rep, a.json.as_deref())
        }
        Scenario::Jobs(a) => {
            if !(a.duration > 0.0 && a.duration <= MAX_SECONDS) || a.workers == 0 || a.workers > 1000 {
                bail!("--duration must be in (0, {MAX_SECONDS}], --workers in 1..=1000");
            }
            let run = jobs::JobsRun {
                addr: a.addr,
                jobs: a.jobs.min(10_000_000),
                workers: a.workers,
                fail: a.fail.clamp(0.0, 0.9),
                vanish: a.vanish.clamp(0.0, 1.0),
                max_inflight: a.max_inflight.clamp(1, 1024),
                ack_wait_ms: a.ack_wait_ms.clamp(1, 3_600_000),
                max_deliver: a.max_deliver.clamp(1, 1000),
                duration: Duration::from_secs_f64(a.duration),
            };
            let rep = jobs::run(&run)?;
            println!(
                "jobs          {} jobs, {} workers ({} vanished mid-job), fail {:.0}%, max_deliver {}: done once {}, dead-lettered once {}, lost {}, double-done {}, retries {}, redeliveries {}, {:.2} s = {:.0} jobs/s, enqueue→done p50/p99/p99.9 {}/{}/{} µs, verify {}",
                rep["jobs"], rep["workers"], rep["vanished"], run.fail * 100.0, run.max_deliver, rep["done_once"], rep["dead_lettered_once"], rep["lost"], rep["double_done"],
                rep["retries"], rep["redeliveries"], rep["secs"].as_f64().unwrap_or(0.0), rep["jobs_per_sec"].as_f64().unwrap_or(0.0),
                rep["enqueue_to_done"]["p50_us"], rep["enqueue_to_done"]["p99_us"], rep["enqueue_to_done"]["p999_us"],
                if rep["verify"]["ok"].as_bool() == Some(true) { "OK" } else { "VIOLATIONS" }
            );
            finish(&rep, a.json.as_deref())
        }
        Scenario::Fanout(a) => fanout(a, "fanout"),
        Scenario::Slow(mut a) => {
            if a.slow_every == 0 {
                a.slow_every = 10;
            }
            fanout(a, "slow")
        }
        Scenario::ReconnectStorm(mut a) => {
            a.reconnect_at.get_or_insert(a.common.duration / 2.0);
            fanout(a, "reconnect-storm")
        }
        Scenario::Rooms(a) => rooms(&a, None),
        Scenario::Cluster(a) => {
            if a.common.nodes.is_empty() {
                bail!("cluster: give the other nodes with --nodes (the first is --addr)");
            }
            rooms(&a, None)
        }
        Scenario::NoisyTenant(a) => rooms(&a.rooms, Some((a.noisy, a.noisy_inflight))),
        Scenario::Html(a) => {
            let mut runs = Vec::new();
            for path in &a.reports {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
                runs.push(serde_json::from_str::<serde_json::Value>(&text).with_context(|| format!("parsing {path}"))?);
            }
            std::fs::write(&a.out, html::page(&a.title, &runs))?;
            println!("html          {} ({} runs)", a.out, runs.len());
            Ok(())
        }
        Scenario::Storm(a) => {
            let run_id = worker::mono_ns() % 1_000_000_007;
            let topics = (0..a.rooms.max(1)).map(|r| format!("storm{run_id}/room-{r}")).collect();
            let plans = split(&a.common, a.connections, 0, topics, 0.0, 0, 0, 0)?;
            let extra = serde_json::json!({"scenario":"storm","connections":a.connections,"rooms":a.rooms});
            orchestrate(&a.common, plans, extra)
        }
        Scenario::Idle(a) => {
            let run_id = worker::mono_ns() % 1_000_000_007;
            let topics = (0..a.rooms.max(1)).map(|r| format!("idle{run_id}/room-{r}")).collect();
            let plans = split(&a.common, a.connections, 0, topics, 0.0, 0, 0, 0)?;
            let extra = serde_json::json!({"scenario":"idle","connections":a.connections,"rooms":a.rooms});
            orchestrate(&a.common, plans, extra)
        }
    }
}

fn fanout(a: FanoutArgs, scenario: &str) -> anyhow::Result<()> {
    let run_id = worker::mono_ns() % 1_000_000_007;
    let topics = vec![format!("bench/fanout-{run_id}")];
    let mut plans = split(&a.common, a.subscribers, a.publishers, topics, a.rate, a.inflight, a.payload, a.slow_every)?;
    if !a.common.proto.is_ws() && (a.publishers != 1 || a.reconnect_at.is_some()) {
        bail!("--proto redis/nats: one publisher (its own counter is the seq) and no resume");
    }
    if a.window > 0 && a.rate != 0.0 {
        bail!("--window is a closed loop: use it with --rate 0");
    }
    if let Some(at) = a.reconnect_at {
        if !(at > 0.0 && at < a.common.duration) {
            bail!("--reconnect-at must fall inside the run");
        }
        for p in &mut plans {
            p.reconnect_at = Some(Duration::from_secs_f64(at));
        }
    }
    for p in &mut plans {
        p.window = a.window;
    }
    let extra = serde_json::json!({"scenario":scenario,"subscribers":a.subscribers,"publishers":a.publishers,"rate":a.rate,"inflight":a.inflight,"window":a.window,"payload":a.payload,"slow_every":a.slow_every,"reconnect_at":a.reconnect_at});
    orchestrate(&a.common, plans, extra)
}

/// `rooms`, and with `noisy` = (publishers, in flight each) `noisy-tenant`:
/// one more topic, of its own tenant, hammered by closed-loop publishers.
fn rooms(a: &RoomsArgs, noisy: Option<(usize, usize)>) -> anyhow::Result<()> {
    if !a.common.proto.is_ws() {
        bail!("rooms and noisy-tenant speak shardcast's protocols only (several publishers per topic need its seq)");
    }
    let run_id = a.common.run_id.unwrap_or_else(|| worker::mono_ns() % 1_000_000_007);
    // Without tokens the rooms spread over 16 tenants; with tokens
    // (--hs256-secret) they belong to one quiet tenant, since publishers
    // rotate over every room and a token covers one tenant.
    let tenant_of = |r: usize| {
        if a.common.hs256_secret.is_some() {
            format!("quiet-{run_id}")
        } else {
            format!("t{}-{run_id}", r % 16)
        }
    };
    let mut topics: Vec<String> = (0..a.rooms.max(1)).map(|r| format!("{}/room-{r}", tenant_of(r))).collect();
    let (noisy_pubs, noisy_inflight) = noisy.unwrap_or((0, 0));
    if noisy.is_some() {
        topics.push(format!("noisy-{run_id}/room-0"));
    }
    let subs = topics.len() * a.per_room;
    let mut plans = split(&a.common, subs, a.publishers, topics.clone(), a.rate, noisy_inflight, a.payload, 0)?;
    if let Some(every) = a.reconnect_every {
        if !(every >= 1.0 && every < a.common.duration) {
            bail!("--reconnect-every must be at least 1 s and shorter than the run");
        }
        for p in &mut plans {
            p.reconnect_every = Some(Duration::from_secs_f64(every));
        }
    }
    if noisy.is_some() {
        for p in &mut plans {
            p.noisy_topic = Some(topics.len() - 1);
        }
        plans[0].noisy_publishers = noisy_pubs;
    }
    let scenario = match (noisy.is_some(), a.common.nodes.is_empty()) {
        (true, _) => "noisy-tenant",
        (false, true) => "rooms",
        (false, false) => "cluster",
    };
    let extra = serde_json::json!({"scenario":scenario,"nodes":a.common.nodes.len() + 1,"rooms":a.rooms,"per_room":a.per_room,"publishers":a.publishers,"rate":a.rate,"payload":a.payload,"noisy_publishers":noisy_pubs,"noisy_inflight":noisy_inflight,"reconnect_every":a.reconnect_every});
    orchestrate(&a.common, plans, extra)
}

/// Checks the bounds and splits the work over worker processes.
#[allow(clippy::too_many_arguments)]
fn split(
    c: &Common,
    subscribers: usize,
    publishers: usize,
    topics: Vec<String>,
    rate: f64,
    inflight: usize,
    payload: usize,
    slow_every: usize,
) -> anyhow::Result<Vec<Plan>> {
    if !c.addr.ip().is_loopback()
        || c.sources.iter().any(|s| !s.is_loopback())
        || c.nodes.iter().any(|n| !n.ip().is_loopback())
    {
        bail!("loopback only: --addr, --nodes and --sources must be in 127.0.0.0/8");
    }
    let targets: Vec<SocketAddr> = match c.nodes.is_empty() {
        true => Vec::new(),
        false => std::iter::once(c.addr).chain(c.nodes.iter().copied()).collect(),
    };
    if subscribers + publishers > MAX_CONNECTIONS {
        bail!("at most {MAX_CONNECTIONS} connections per run");
    }
    if !(c.duration > 0.0 && c.duration <= MAX_SECONDS && c.drain >= 0.0 && c.drain <= 120.0) {
        bail!("--duration must be in (0, {MAX_SECONDS}] and --drain in [0, 120]");
    }
    // One token per tenant of the topics; a connection presents its topic's.
    let mut tokens = std::collections::BTreeMap::new();
    if let Some(secret) = &c.hs256_secret {
        for t in &topics {
            let tenant = t.split('/').next().unwrap_or_default().to_owned();
            if let std::collections::btree_map::Entry::Vacant(e) = tokens.entry(tenant) {
                let token = ws::mint_token(secret, e.key())?;
                e.insert(token);
            }
        }
    }
    let k = c.processes.max(1);
    let per = subscribers.div_ceil(k);
    Ok((0..k)
        .map(|w| {
            let first = (w * per).min(subscribers);
            let n = per.min(subscribers - first);
            Plan {
                worker: w,
                target: c.addr,
                targets: targets.clone(),
                sources: c.sources.clone(),
                subscribers: n,
                first_subscriber: first,
                publishers: if w == 0 { publishers } else { 0 },
                topics: topics.clone(),
                rate,
                inflight,
                payload,
                duration: Duration::from_secs_f64(c.duration),
                drain: Duration::from_secs_f64(c.drain),
                connect_window: c.connect_window,
                pin: (!c.pin.is_empty()).then(|| c.pin[w % c.pin.len()]),
                slow_every,
                reconnect_at: None,
                reconnect_every: None,
                tokens: tokens.clone(),
                tls_ca: c.tls_ca.clone(),
                proto: c.proto,
                window: 0,
                slots: None,
                workers: k,
                noisy_publishers: 0,
                noisy_topic: None,
            }
        })
        .collect())
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn orchestrate(c: &Common, mut plans: Vec<Plan>, extra: serde_json::Value) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    // The window's shared slots live in /dev/shm (or the temp dir) for the
    // run and are removed after it.
    let slots_path = plans.iter().any(|p| p.window > 0).then(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        dir.join(format!("shardcast-loadgen-{}", std::process::id())).to_string_lossy().into_owned()
    });
    if let Some(path) = &slots_path {
        window::Slots::create(path, plans.len())?;
        for p in &mut plans {
            p.slots = Some(path.clone());
        }
    }
    let result = orchestrate_workers(c, &exe, plans, extra);
    if let Some(path) = &slots_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn orchestrate_workers(
    c: &Common,
    exe: &std::path::Path,
    plans: Vec<Plan>,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let server = c.server_pid.map(report::ProcSampler::new);
    let before = server.as_ref().map(|s| s.sample());
    let overflows = report::listen_overflows();
    let mut running = Vec::new();
    for p in &plans {
        let mut child = Command::new(exe)
            .arg("worker")
            .arg(serde_json::to_string(p)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        running.push(Running { child, stdin, lines });
    }
    let setup_timeout = std::time::Instant::now() + Duration::from_secs(300);
    for r in &mut running {
        loop {
            let line = r.lines.next().context("worker ended during setup")??;
            if line.starts_with("READY") {
                break;
            }
            if std::time::Instant::now() > setup_timeout {
                bail!("setup took longer than 300 s");
            }
        }
    }
    // Let the server settle, then read its memory with every connection up.
    std::thread::sleep(Duration::from_millis(500));
    let ready = server.as_ref().map(|s| s.sample());
    for r in &mut running {
        writeln!(r.stdin, "GO")?;
        r.stdin.flush()?;
    }
    let sampler = server.as_ref().map(|s| s.spawn_peak_rss());
    std::thread::sleep(Duration::from_secs_f64(c.duration));
    let end = server.as_ref().map(|s| s.sample());
    let mut results = Vec::new();
    for r in &mut running {
        for line in r.lines.by_ref() {
            let line = line?;
            if let Some(json) = line.strip_prefix("RESULT ") {
                results.push(serde_json::from_str::<WorkerResult>(json)?);
                break;
            }
        }
        let _ = r.child.wait();
    }
    let peak = sampler.map(|s| s.stop());
    let overflows = report::listen_overflows().saturating_sub(overflows);
    let report = report::Report::build(c, &plans, results, extra, before, ready, end, peak, overflows);
    report.print();
    if let Some(path) = &c.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)?)?;
    }
    if let Some(path) = &c.html {
        std::fs::write(
            path,
            html::page(&format!("{} — {}", c.label, extra_scenario(&report.json)), std::slice::from_ref(&report.json)),
        )?;
    }
    if report.json["verify"]["ok"].as_bool() != Some(true) {
        bail!("verification failed: {}", report.json["verify"]);
    }
    Ok(())
}

fn extra_scenario(j: &serde_json::Value) -> String {
    j["config"]["scenario"].as_str().unwrap_or("run").to_string()
}
