//! `shardcast-loadgen`: the bundled load generator.
//!
//! The parent process splits the connections over worker processes (each
//! under the open-files cap, each with its own loopback source addresses),
//! holds them at a barrier until every worker is connected and subscribed,
//! starts them together, samples the server's CPU and RSS from /proc, and
//! merges what the workers measured and verified into a table and a JSON
//! document. Every run is bounded in connections and time and targets
//! loopback addresses only.

mod http;
mod report;
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
    /// `fanout` where, halfway through, every subscriber drops its
    /// connection at once and resumes with `since`: zero loss and time to
    /// full recovery.
    ReconnectStorm(FanoutArgs),
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
    /// Seconds to keep receiving after publishing stops.
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
    /// Label for this run in the report.
    #[arg(long, default_value = "shardcast")]
    label: String,
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
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
            }
            if report["verify"]["ok"].as_bool() != Some(true) {
                bail!("verification failed: {}", report["verify"]);
            }
            Ok(())
        }
        Scenario::Fanout(a) => fanout(a, "fanout"),
        Scenario::ReconnectStorm(mut a) => {
            a.reconnect_at.get_or_insert(a.common.duration / 2.0);
            fanout(a, "reconnect-storm")
        }
        Scenario::Rooms(a) => {
            let run_id = worker::mono_ns() % 1_000_000_007;
            let topics: Vec<String> = (0..a.rooms.max(1)).map(|r| format!("t{}-{run_id}/room-{r}", r % 16)).collect();
            let subs = a.rooms.max(1) * a.per_room;
            let plans = split(&a.common, subs, a.publishers, topics, a.rate, 0, a.payload, 0)?;
            let extra = serde_json::json!({"scenario":"rooms","rooms":a.rooms,"per_room":a.per_room,"publishers":a.publishers,"rate":a.rate,"payload":a.payload});
            orchestrate(&a.common, plans, extra)
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
    if let Some(at) = a.reconnect_at {
        if !(at > 0.0 && at < a.common.duration) {
            bail!("--reconnect-at must fall inside the run");
        }
        for p in &mut plans {
            p.reconnect_at = Some(Duration::from_secs_f64(at));
        }
    }
    let extra = serde_json::json!({"scenario":scenario,"subscribers":a.subscribers,"publishers":a.publishers,"rate":a.rate,"inflight":a.inflight,"payload":a.payload,"slow_every":a.slow_every,"reconnect_at":a.reconnect_at});
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
    if !c.addr.ip().is_loopback() || c.sources.iter().any(|s| !s.is_loopback()) {
        bail!("loopback only: --addr and --sources must be in 127.0.0.0/8");
    }
    if subscribers + publishers > MAX_CONNECTIONS {
        bail!("at most {MAX_CONNECTIONS} connections per run");
    }
    if !(c.duration > 0.0 && c.duration <= MAX_SECONDS && c.drain >= 0.0 && c.drain <= 60.0) {
        bail!("--duration must be in (0, {MAX_SECONDS}] and --drain in [0, 60]");
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
            }
        })
        .collect())
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn orchestrate(c: &Common, plans: Vec<Plan>, extra: serde_json::Value) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server = c.server_pid.map(report::ProcSampler::new);
    let before = server.as_ref().map(|s| s.sample());
    let mut running = Vec::new();
    for p in &plans {
        let mut child = Command::new(&exe)
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
    let report = report::Report::build(c, &plans, results, extra, before, ready, end, peak);
    report.print();
    if let Some(path) = &c.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)?)?;
    }
    if report.json["verify"]["ok"].as_bool() != Some(true) {
        bail!("verification failed: {}", report.json["verify"]);
    }
    Ok(())
}
