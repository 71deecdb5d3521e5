//! Merging worker results, sampling the server from /proc, and printing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::worker::{Plan, WorkerResult};
use crate::Common;

/// Reads a process's CPU time and RSS from /proc.
pub struct ProcSampler {
    pid: u32,
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    /// Resident set, bytes.
    pub rss: u64,
    /// When, for rates.
    pub at: std::time::Instant,
}

impl ProcSampler {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    pub fn sample(&self) -> Sample {
        let at = std::time::Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 (1-based), i.e. 11 and 12 after the ')'.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu_secs = (ticks(11) + ticks(12)) / tick;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        Sample { cpu_secs, rss, at }
    }

    /// Samples RSS every 250 ms in a thread; `stop` returns the peak.
    pub fn spawn_peak_rss(&self) -> PeakRss {
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let s = ProcSampler::new(self.pid);
        let (st, pk) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                pk.fetch_max(s.sample().rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        PeakRss { stop, peak, handle }
    }
}

/// A running peak-RSS sampler.
pub struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl PeakRss {
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// The merged outcome of a run.
pub struct Report {
    pub json: serde_json::Value,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        c: &Common,
        plans: &[Plan],
        results: Vec<WorkerResult>,
        extra: serde_json::Value,
        before: Option<Sample>,
        ready: Option<Sample>,
        end: Option<Sample>,
        peak_rss: Option<u64>,
        listen_overflows_delta: u64,
    ) -> Self {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut acks = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let sum = |f: &dyn Fn(&WorkerResult) -> u64| results.iter().map(f).sum::<u64>();
        for r in &results {
            for &(v, n) in &r.latency_us {
                let _ = hist.record_n(v, n);
            }
            for &(v, n) in &r.ack_us {
                let _ = acks.record_n(v, n);
            }
        }
        let ack_pct = |q: f64| if acks.is_empty() { 0 } else { acks.value_at_quantile(q) };
        let mut errors: HashMap<String, u64> = HashMap::new();
        let mut max_acked: HashMap<String, u64> = HashMap::new();
        for r in &results {
            for (k, v) in &r.pub_errors {
                *errors.entry(k.clone()).or_default() += v;
            }
            for (t, s) in &r.max_acked_seq {
                let m = max_acked.entry(t.clone()).or_default();
                *m = (*m).max(*s);
            }
        }
        // Every subscriber subscribed before the first publish on a fresh
        // topic, so it must see seqs 1..=max_acked of its topic.
        let mut expected = 0u64;
        for p in plans {
            for i in (0..p.subscribers).filter(|&i| !p.is_slow(i)) {
                let t = &p.topics[(p.first_subscriber + i) % p.topics.len()];
                expected += max_acked.get(t).copied().unwrap_or(0);
            }
        }
        let planned_subscribers: u64 = plans.iter().map(|p| p.subscribers as u64).sum();
        let received = sum(&|r| r.received);
        let gap_seqs = sum(&|r| r.gap_seqs);
        let lost = expected.saturating_sub(received + gap_seqs);
        let during = sum(&|r| r.received_during_run);
        let loadgen_cpu: f64 = results.iter().map(|r| r.cpu_secs).sum();
        let run_secs = results.iter().map(|r| r.run_secs).fold(0.0, f64::max).max(1e-9);
        let conns: usize = plans.iter().map(Plan::connections).sum();
        let server = match (before, ready, end) {
            (Some(b), Some(r), Some(e)) => {
                let cpu = e.cpu_secs - r.cpu_secs;
                let wall = e.at.duration_since(r.at).as_secs_f64().max(1e-9);
                json!({
                    "rss_before_bytes": b.rss,
                    "rss_ready_bytes": r.rss,
                    "rss_peak_bytes": peak_rss.unwrap_or(0).max(e.rss),
                    "rss_per_connection_bytes": (r.rss as f64 - b.rss as f64) / conns.max(1) as f64,
                    "cpu_secs_during_run": cpu,
                    "cpu_utilisation": cpu / wall,
                    "cpu_us_per_delivery": if during > 0 { cpu * 1e6 / during as f64 } else { 0.0 },
                })
            }
            _ => serde_json::Value::Null,
        };
        let pct = |q: f64| {
            if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(q)
            }
        };
        let json = json!({
            "label": c.label,
            "listen_overflows": listen_overflows_delta,
            "config": extra,
            "host": host_facts(),
            "processes": plans.len(),
            "sources": c.sources,
            "connections": conns,
            "connected": sum(&|r| r.connected),
            "subscribed": sum(&|r| r.subscribed),
            "slow_subscribers": sum(&|r| r.slow_subscribers),
            "connect_errors": sum(&|r| r.connect_errors),
            "handshake_errors": sum(&|r| r.handshake_errors),
            "pongs_sent": sum(&|r| r.pongs_sent),
            "closed_by_server": sum(&|r| r.closed_by_server),
            "setup_secs": results.iter().map(|r| r.setup_secs).fold(0.0, f64::max),
            "handshakes_per_sec": sum(&|r| r.subscribed) as f64 / results.iter().map(|r| r.setup_secs).fold(0.0, f64::max).max(1e-9),
            "run_secs": run_secs,
            "published": sum(&|r| r.published),
            "acked": sum(&|r| r.acked),
            "publishes_per_sec": sum(&|r| r.acked) as f64 / run_secs,
            "publish_errors": errors,
            "deliveries": received,
            "deliveries_per_sec": sum(&|r| r.received_during_run) as f64 / run_secs,
            "reconnect": {
                "resumed_ok": sum(&|r| r.resumed_ok),
                "resumed_failed": sum(&|r| r.resumed_failed),
                "recovery_secs": results.iter().map(|r| r.recovery_secs).fold(0.0, f64::max),
                "storms": results.iter().map(|r| r.storms).max().unwrap_or(0),
            },
            "verify": {
                "expected": expected,
                "lost": lost,
                "out_of_order": sum(&|r| r.out_of_order),
                "duplicates": sum(&|r| r.duplicates),
                "gap_notices": sum(&|r| r.gap_notices),
                "gap_seqs": gap_seqs,
                "all_subscribed": sum(&|r| r.subscribed) == planned_subscribers,
                "ok": sum(&|r| r.subscribed) == planned_subscribers && lost == 0 && sum(&|r| r.out_of_order) == 0 && sum(&|r| r.duplicates) == 0 && sum(&|r| r.resumed_failed) == 0,
            },
            "latency_us": {
                "samples": hist.len(),
                "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
                "max": hist.max(),
                // The percentile curve for plots: (quantile, µs) from the
                // median out to five nines, 0.1 "nines" apart, then the max.
                "curve": (0..=50).map(|k| {
                    let q = 1.0 - 10f64.powf(-(k as f64) / 10.0);
                    json!([q, pct(q)])
                }).chain(std::iter::once(json!([1.0, hist.max()]))).collect::<Vec<_>>(),
            },
            "ack_us": {
                "samples": acks.len(),
                "p50": ack_pct(0.5), "p90": ack_pct(0.9), "p99": ack_pct(0.99), "p999": ack_pct(0.999),
                "max": acks.max(),
            },
            "noisy_deliveries": sum(&|r| r.noisy_received),
            "server": server,
            "loadgen": {
                "cpu_secs": loadgen_cpu,
                "cpu_us_per_delivery": if during > 0 { loadgen_cpu * 1e6 / during as f64 } else { 0.0 },
            },
        });
        Self { json }
    }

    pub fn print(&self) {
        let j = &self.json;
        let v = &j["verify"];
        println!(
            "run           {} ({})",
            j["label"].as_str().unwrap_or(""),
            j["config"]["scenario"].as_str().unwrap_or("")
        );
        println!(
            "connections   {} ({} subscribed, {} connect errors, {} closed by server) over {} processes",
            j["connections"], j["subscribed"], j["connect_errors"], j["closed_by_server"], j["processes"]
        );
        println!(
            "setup         {:.2} s to all subscribed ({:.0} handshakes+subscribes/s), listen-queue overflows {}",
            j["setup_secs"].as_f64().unwrap_or(0.0),
            j["handshakes_per_sec"].as_f64().unwrap_or(0.0),
            j["listen_overflows"]
        );
        println!(
            "publishes     {} acked, {:.0}/s, errors {}",
            j["acked"],
            j["publishes_per_sec"].as_f64().unwrap_or(0.0),
            j["publish_errors"]
        );
        println!("deliveries    {}, {:.0}/s", j["deliveries"], j["deliveries_per_sec"].as_f64().unwrap_or(0.0));
        let l = &j["latency_us"];
        println!(
            "latency µs    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["samples"]
        );
        let a = &j["ack_us"];
        if a["samples"].as_u64().unwrap_or(0) > 0 {
            println!(
                "ack µs        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples; publish → ack)",
                a["p50"], a["p90"], a["p99"], a["p999"], a["max"], a["samples"]
            );
        }
        println!(
            "verify        {}{} (expected {}, lost {}, out of order {}, duplicates {}, gap-notified {})",
            if v["ok"].as_bool() == Some(true) { "OK" } else { "VIOLATIONS" },
            if v["all_subscribed"].as_bool() == Some(false) { ", not every subscriber subscribed" } else { "" },
            v["expected"],
            v["lost"],
            v["out_of_order"],
            v["duplicates"],
            v["gap_seqs"]
        );
        let rc = &j["reconnect"];
        if rc["resumed_ok"].as_u64().unwrap_or(0) + rc["resumed_failed"].as_u64().unwrap_or(0) > 0 {
            println!(
                "reconnect     {} resumed with since ({} not recovered), all back in {:.3} s",
                rc["resumed_ok"],
                rc["resumed_failed"],
                rc["recovery_secs"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "loadgen       cpu {:.3} s over its workers, {:.3} µs/delivery",
            j["loadgen"]["cpu_secs"].as_f64().unwrap_or(0.0),
            j["loadgen"]["cpu_us_per_delivery"].as_f64().unwrap_or(0.0)
        );
        let s = &j["server"];
        if !s.is_null() {
            println!(
                "server        cpu {:.3} s ({:.1}% of a core), {:.3} µs/delivery; rss before {} KiB, ready {} KiB, peak {} KiB; {:.0} B/connection",
                s["cpu_secs_during_run"].as_f64().unwrap_or(0.0),
                100.0 * s["cpu_utilisation"].as_f64().unwrap_or(0.0),
                s["cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
                s["rss_before_bytes"].as_u64().unwrap_or(0) / 1024,
                s["rss_ready_bytes"].as_u64().unwrap_or(0) / 1024,
                s["rss_peak_bytes"].as_u64().unwrap_or(0) / 1024,
                s["rss_per_connection_bytes"].as_f64().unwrap_or(0.0),
            );
        }
    }
}

/// The kernel's count of connections dropped because a listener's accept
/// queue was full (`TcpExt: ListenOverflows` in /proc/net/netstat): a storm
/// that overflows it waits for SYN-ACK retransmits (1 s, 3 s, …).
pub fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn host_facts() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "nofile_note": "per-process open files cap applies to each worker",
    })
}
