//! The `http` scenario: publishes over ONE keep-alive HTTP connection to
//! `POST /v1/publish` (or `/v1/publish/batch`), optionally pipelined, for a
//! bounded time; verifies every acked seq is new and the run is contiguous.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Settings of one run.
pub struct HttpRun {
    pub addr: SocketAddr,
    pub duration: Duration,
    pub batch: usize,
    pub pipeline: usize,
    pub payload: usize,
    pub topic: String,
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads one response; returns (status, body).
    fn response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).context("status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Ok((status, body));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Runs the scenario and returns a JSON report.
pub fn run(r: &HttpRun) -> anyhow::Result<serde_json::Value> {
    if !r.addr.ip().is_loopback() {
        bail!("loopback only");
    }
    let s = TcpStream::connect(r.addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut c = Conn { s, buf: Vec::new() };
    let pad = "x".repeat(r.payload.saturating_sub(30));
    let one = |n: u64| format!(r#"{{"topic":"{}","data":{{"n":{n},"p":"{pad}"}}}}"#, r.topic);
    let (path, batch) = if r.batch > 1 { ("/v1/publish/batch", r.batch) } else { ("/v1/publish", 1) };
    let mut next = 0u64;
    let request = |next: &mut u64| {
        let body = if batch > 1 {
            let items: Vec<String> = (0..batch)
                .map(|_| {
                    *next += 1;
                    one(*next)
                })
                .collect();
            format!("[{}]", items.join(","))
        } else {
            *next += 1;
            one(*next)
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (mut acked, mut errors, mut requests) = (0u64, 0u64, 0u64);
    let mut seqs: Vec<u64> = Vec::new();
    let start = Instant::now();
    let mut in_flight = 0;
    while start.elapsed() < r.duration || in_flight > 0 {
        while in_flight < r.pipeline && start.elapsed() < r.duration {
            c.s.write_all(request(&mut next).as_bytes())?;
            in_flight += 1;
            requests += 1;
        }
        let (status, body) = c.response()?;
        in_flight -= 1;
        if status != 200 {
            errors += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let items = if batch > 1 { v["results"].as_array().cloned().unwrap_or_default() } else { vec![v] };
        for it in items {
            match it["seq"].as_u64() {
                Some(seq) => {
                    seqs.push(seq);
                    acked += 1;
                }
                None => errors += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    seqs.sort_unstable();
    let distinct = seqs.windows(2).all(|w| w[0] < w[1]);
    let contiguous = seqs.windows(2).all(|w| w[1] == w[0] + 1);
    Ok(serde_json::json!({
        "scenario": "http", "batch": batch, "pipeline": r.pipeline, "payload": r.payload,
        "requests": requests, "acked": acked, "errors": errors, "secs": secs,
        "publishes_per_sec": acked as f64 / secs, "requests_per_sec": requests as f64 / secs,
        "verify": {"ok": distinct && contiguous && errors == 0, "distinct": distinct, "contiguous": contiguous},
    }))
}
