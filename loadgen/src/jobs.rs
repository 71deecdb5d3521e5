//! The `jobs` scenario: a work queue on a consumer group with acks
//! (PROTOCOL-EXTENSIONS §2). One producer publishes N jobs; W workers (each
//! its own connection and thread) settle them, a fraction of deliveries
//! answered `retry` (failing workers) and a fraction of workers vanishing
//! once mid-job (the connection drops with work in flight, then rejoins as
//! a new member). Verifies that every job was settled `done` exactly once
//! or published on the dead-letter topic exactly once after exactly
//! `max_deliver` attempts, never both: a `done` the server refused
//! (`not_found`: the job had been handed to someone else meanwhile) does
//! not count. Reports enqueue (publish written) → `done` written latency.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// What a run is asked to do.
pub struct JobsRun {
    pub addr: SocketAddr,
    pub jobs: u64,
    pub workers: usize,
    pub fail: f64,
    pub vanish: f64,
    pub max_inflight: u32,
    pub ack_wait_ms: u64,
    pub max_deliver: u32,
    pub duration: Duration,
}

#[derive(Default)]
struct Shared {
    /// Per seq: `done` sent, and `done` refused `not_found`.
    done_sent: Vec<AtomicU32>,
    refused: Vec<AtomicU32>,
    /// Per seq: dead-letter publications seen, and those with attempts != max_deliver.
    dead: Vec<AtomicU32>,
    dead_wrong_attempts: AtomicU64,
    retries: AtomicU64,
    redeliveries: AtomicU64,
    vanished: AtomicU64,
    handoffs: AtomicU64,
    stop: AtomicBool,
}

fn connect(addr: SocketAddr) -> anyhow::Result<WebSocket<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), s).context("upgrade")?;
    Ok(ws)
}

fn text(ws: &mut WebSocket<TcpStream>, v: Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string()))?;
    Ok(())
}

/// Next text message, or None on a read timeout.
fn next(ws: &mut WebSocket<TcpStream>) -> anyhow::Result<Option<Value>> {
    match ws.read() {
        Ok(Message::Text(t)) => Ok(Some(serde_json::from_str(t.as_str())?)),
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn join(ws: &mut WebSocket<TcpStream>, topic: &str, r: &JobsRun) -> anyhow::Result<()> {
    let cmd = json!({"op":"sub","id":1,"topic":topic,"group":"jobs","ack":true,
        "max_inflight":r.max_inflight,"ack_wait_ms":r.ack_wait_ms,"max_deliver":r.max_deliver});
    text(ws, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(v) = next(ws)? {
            if v["op"] == "subscribed" {
                return Ok(());
            }
            bail!("join refused: {v}");
        }
    }
    bail!("no answer to the join")
}

fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn worker(r: &JobsRun, topic: &str, me: usize, sh: &Shared) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let vanishes = (me as f64) < r.vanish * r.workers as f64;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut ws = connect(r.addr)?;
    join(&mut ws, topic, r)?;
    let mut handled = 0u64;
    let mut vanished = false;
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(v) = next(&mut ws)? else { continue };
        match v["op"].as_str() {
            Some("msg") => {
                let seq = v["seq"].as_u64().unwrap_or(0);
                sh.handoffs.fetch_add(1, Ordering::Relaxed);
                if v["attempt"].as_u64().unwrap_or(1) > 1 {
                    sh.redeliveries.fetch_add(1, Ordering::Relaxed);
                }
                handled += 1;
                if vanishes && !vanished && handled == 20 {
                    // Gone mid-job, work in flight; back as a new member.
                    vanished = true;
                    sh.vanished.fetch_add(1, Ordering::Relaxed);
                    drop(ws);
                    ws = connect(r.addr)?;
                    join(&mut ws, topic, r)?;
                    continue;
                }
                let retry = random() < r.fail;
                let outcome = if retry { "retry" } else { "done" };
                if retry {
                    sh.retries.fetch_add(1, Ordering::Relaxed);
                } else if let Some(c) = sh.done_sent.get(seq as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                    let t = v["data"]["t"].as_u64().unwrap_or(0);
                    let us = crate::worker::mono_ns().saturating_sub(t) / 1000;
                    latency.saturating_record(us.clamp(1, 600_000_000));
                }
                text(
                    &mut ws,
                    json!({"op":"settle","id":seq,"topic":topic,"group":"jobs","seq":seq,"outcome":outcome,"delay_ms":0}),
                )?;
            }
            Some("error") if v["code"] == "not_found" => {
                if let Some(c) = v["id"].as_u64().and_then(|s| sh.refused.get(s as usize)) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    Ok(latency)
}

/// Watches the dead-letter topic: per seq, how many times it came, and
/// whether it came after exactly `max_deliver` attempts.
fn dead_letters(r: &JobsRun, topic: &str, sh: &Shared, ready: &AtomicBool) -> anyhow::Result<()> {
    let mut ws = connect(r.addr)?;
    text(&mut ws, json!({"op":"sub","id":1,"topic":format!("{topic}/dlq")}))?;
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(v) = next(&mut ws)? else { continue };
        match v["op"].as_str() {
            Some("subscribed") => ready.store(true, Ordering::Relaxed),
            Some("msg") => {
                let d = &v["dead"];
                if let Some(c) = d["seq"].as_u64().and_then(|s| sh.dead.get(s as usize)) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if d["attempts"].as_u64() != Some(r.max_deliver as u64) && d["reason"] != "dead" {
                    sh.dead_wrong_attempts.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs the scenario; the report as JSON.
pub fn run(r: &JobsRun) -> anyhow::Result<Value> {
    if !r.addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let topic = format!("bench/jobs-{}", crate::worker::mono_ns() % 1_000_000_007);
    let n = r.jobs as usize + 1;
    let sh = Arc::new(Shared {
        done_sent: (0..n).map(|_| AtomicU32::new(0)).collect(),
        refused: (0..n).map(|_| AtomicU32::new(0)).collect(),
        dead: (0..n).map(|_| AtomicU32::new(0)).collect(),
        ..Default::default()
    });
    let start = Instant::now();
    let r = Arc::new(JobsRun { ..*r });
    let dlq_ready = Arc::new(AtomicBool::new(false));
    let dlq = {
        let (r, sh, topic, ready) = (r.clone(), sh.clone(), topic.clone(), dlq_ready.clone());
        std::thread::spawn(move || dead_letters(&r, &topic, &sh, &ready))
    };
    let workers: Vec<_> = (0..r.workers)
        .map(|me| {
            let (r, sh, topic) = (r.clone(), sh.clone(), topic.clone());
            std::thread::spawn(move || worker(&r, &topic, me, &sh))
        })
        .collect();
    // Let every worker join before the first job.
    std::thread::sleep(Duration::from_millis(300));
    while !dlq_ready.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut p = connect(r.addr)?;
    let mut published = 0u64;
    let mut backpressure = 0u64;
    while published < r.jobs && start.elapsed() < r.duration {
        let data = json!({"job": published + 1, "t": crate::worker::mono_ns()});
        text(&mut p, json!({"op":"pub","id":published + 1,"topic":topic,"data":data}))?;
        loop {
            let Some(v) = next(&mut p)? else { continue };
            match v["op"].as_str() {
                Some("ack") => {
                    published += 1;
                    break;
                }
                Some("error") if v["code"] == "overloaded" || v["code"] == "rate_limited" => {
                    backpressure += 1;
                    std::thread::sleep(Duration::from_millis(v["retry_after_ms"].as_u64().unwrap_or(10).min(100)));
                    break;
                }
                _ => bail!("publish: {v}"),
            }
        }
    }
    let accepted =
        |s: usize| sh.done_sent[s].load(Ordering::Relaxed) as i64 - sh.refused[s].load(Ordering::Relaxed) as i64;
    let dead = |s: usize| sh.dead[s].load(Ordering::Relaxed) as i64;
    // Until every job is settled done or dead-lettered (or the bound), then
    // a quiet moment for refusals still on their way.
    while start.elapsed() < r.duration && (1..=published as usize).any(|s| accepted(s) < 1 && dead(s) < 1) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    sh.stop.store(true, Ordering::Relaxed);
    let mut latency = histogram();
    for w in workers {
        let h = w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        latency.add(&h).ok();
    }
    dlq.join().map_err(|_| anyhow::anyhow!("the dead-letter watcher panicked"))??;
    let (mut once, mut dead_once, mut lost, mut double) = (0u64, 0u64, 0u64, 0u64);
    for s in 1..=published as usize {
        match (accepted(s), dead(s)) {
            (1, 0) => once += 1,
            (0, 1) => dead_once += 1,
            (a, 0) if a < 1 => lost += 1,
            _ => double += 1,
        }
    }
    let wrong = sh.dead_wrong_attempts.load(Ordering::Relaxed);
    let ok = published == r.jobs && lost == 0 && double == 0 && wrong == 0;
    let q = |p: f64| if latency.is_empty() { 0 } else { latency.value_at_quantile(p) };
    Ok(json!({
        "scenario": "jobs", "jobs": r.jobs, "published": published, "workers": r.workers,
        "fail": r.fail, "vanish": r.vanish, "max_deliver": r.max_deliver, "done_once": once,
        "dead_lettered_once": dead_once, "dead_wrong_attempts": wrong, "lost": lost, "double_done": double,
        "enqueue_to_done": {"count": latency.len(), "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": latency.max()},
        "retries": sh.retries.load(Ordering::Relaxed), "redeliveries": sh.redeliveries.load(Ordering::Relaxed),
        "handoffs": sh.handoffs.load(Ordering::Relaxed), "vanished": sh.vanished.load(Ordering::Relaxed),
        "backpressure": backpressure, "secs": elapsed, "jobs_per_sec": once as f64 / elapsed.max(1e-9),
        "verify": {"ok": ok},
    }))
}
