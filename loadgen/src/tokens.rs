//! The `tokens` scenario (issue 13): R rooms, one agent per room streaming
//! answers of N tokens at T tokens/s, one browser per room reading from the
//! start, plus late joiners, browsers that drop and reconnect mid-answer,
//! and slow readers that stall. Verifies that every browser's final text of
//! every answer equals the agent's text exactly; reports tokens/s, token →
//! screen p50/p99/p99.9 (live appends to browsers that do not stall), and
//! what rollups carried.
//!
//! `--mode stream` uses token streams (PROTOCOL-EXTENSIONS §4: `stream`,
//! `sub` with `streams: true`, rollups). `--mode v1` does the same work the
//! v1 way: plain publications, reconnects resume with `since`; a late
//! joiner has no way to learn what came before it joined, so its text is
//! incomplete — the report counts exact texts per role.
//!
//! Agents and browsers live in this process (threads over non-blocking
//! sockets waited on with poll(2)), so the send time of every token is
//! known to the browser that shows it.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// What a run is asked to do.
#[derive(Clone)]
pub struct TokensRun {
    pub addr: SocketAddr,
    pub rooms: usize,
    pub tokens: usize,
    pub rate: f64,
    pub answers: usize,
    pub late: f64,
    pub reconnect: f64,
    pub slow: f64,
    pub v1: bool,
    pub agents: usize,
    pub browser_threads: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Reader,
    Late,
    Reconnecting,
    Slow,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Late => "late",
            Role::Reconnecting => "reconnecting",
            Role::Slow => "slow",
        }
    }
}

fn token(room: usize, answer: usize, i: usize) -> String {
    format!("r{room}a{answer}t{i} ")
}

fn full_text(room: usize, answer: usize, n: usize) -> String {
    (0..n).map(|i| token(room, answer, i)).collect()
}

/// (answer, index) of a token's text; None for anything else.
fn parse_token(t: &str) -> Option<(usize, usize)> {
    let a = t.find('a')?;
    let ti = t.find('t')?;
    let answer = t.get(a + 1..ti)?.parse().ok()?;
    let i = t.get(ti + 1..)?.trim_end().parse().ok()?;
    Some((answer, i))
}

fn topic(run: &str, room: usize) -> String {
    format!("bench/tok-{run}/room-{room}")
}

fn connect(addr: SocketAddr) -> anyhow::Result<WebSocket<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), s).context("upgrade")?;
    ws.get_ref().set_nonblocking(true)?;
    Ok(ws)
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn send(ws: &mut WebSocket<TcpStream>, v: &Value) -> anyhow::Result<()> {
    let mut r = ws.send(Message::text(v.to_string()));
    loop {
        match r {
            Ok(()) => return Ok(()),
            Err(tungstenite::Error::Io(e)) if would_block(&e) => {
                std::thread::sleep(Duration::from_micros(200));
                r = ws.flush();
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every complete message now readable, with its size on the wire.
fn drain(ws: &mut WebSocket<TcpStream>, out: &mut Vec<(Value, usize)>) -> anyhow::Result<()> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => out.push((serde_json::from_str(t.as_str())?, t.len())),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn wait_readable(fds: &[i32], ms: i32) {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: valid pollfds for the duration of the call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
}

/// Send times of every token, ns (0: not sent yet): [room][answer][i].
struct Clock {
    sent: Vec<AtomicU64>,
    answers: usize,
    tokens: usize,
}

impl Clock {
    fn at(&self, room: usize, answer: usize, i: usize) -> &AtomicU64 {
        &self.sent[(room * self.answers + answer) * self.tokens + i]
    }
}

fn agent(r: &TokensRun, run: &str, rooms: Vec<usize>, clock: &Clock, start: Instant) -> anyhow::Result<u64> {
    let mut ws = connect(r.addr)?;
    let gap = Duration::from_secs_f64(1.0 / r.rate);
    let answer_len = gap * r.tokens as u32 + Duration::from_millis(500);
    // Each room's clock is offset so the rooms do not publish in lockstep.
    let offset = |room: usize| gap.mul_f64((room % 97) as f64 / 97.0);
    let mut next: Vec<(usize, usize)> = rooms.iter().map(|_| (0, 0)).collect(); // (answer, i)
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut sink = Vec::new();
    loop {
        let now = Instant::now();
        let mut pending = false;
        for (k, &room) in rooms.iter().enumerate() {
            let (answer, i) = next[k];
            if answer >= r.answers {
                continue;
            }
            pending = true;
            let due = start + offset(room) + answer_len * answer as u32 + gap * i as u32;
            if now < due {
                continue;
            }
            let t = token(room, answer, i);
            let last = i + 1 == r.tokens;
            let mut cmd = json!({"op":"pub","topic":topic(run, room),"data":t});
            if !r.v1 {
                cmd["stream"] = json!(format!("answer-{answer}"));
                if last {
                    cmd["end"] = json!(true);
                }
            }
            clock.at(room, answer, i).store(crate::worker::mono_ns(), Ordering::Relaxed);
            send(&mut ws, &cmd)?;
            sent += 1;
            next[k] = if last { (answer + 1, 0) } else { (answer, i + 1) };
        }
        drain(&mut ws, &mut sink)?;
        for (v, _) in sink.drain(..) {
            if v["op"] == "error" {
                bail!("publish refused: {v}");
            }
            if v["op"] == "ack" {
                acked += 1;
            }
        }
        if !pending {
            // Every ack read before the socket closes: closing with unread
            // input makes the kernel reset the connection, and the server
            // would lose what it had not read yet.
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked < sent && Instant::now() < deadline {
                wait_readable(&[ws.get_ref().as_raw_fd()], 10);
                drain(&mut ws, &mut sink)?;
                acked += sink.drain(..).filter(|(v, _)| v["op"] == "ack").count() as u64;
            }
            if acked < sent {
                bail!("{} publishes never acked", sent - acked);
            }
            return Ok(sent);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

struct Browser {
    room: usize,
    role: Role,
    ws: Option<WebSocket<TcpStream>>,
    /// When to connect (late joiners), or to come back (reconnecting).
    connect_at: Instant,
    drop_at: Option<Instant>,
    /// Slow: not read before this.
    stall_until: Option<Instant>,
    texts: Vec<String>,
    ended: Vec<bool>,
    last_seq: u64,
    epoch: String,
}

#[derive(Default)]
struct BrowserReport {
    exact: HashMap<&'static str, (u64, u64)>,
    rollups: u64,
    rollup_bytes: u64,
    rollup_tokens: u64,
    append_frames: u64,
    append_bytes: u64,
    examples: Vec<String>,
}

fn browsers(
    r: &TokensRun,
    run: &str,
    mut list: Vec<Browser>,
    clock: &Clock,
    stop_at: Instant,
    done: &AtomicBool,
) -> anyhow::Result<(BrowserReport, Histogram<u64>)> {
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rep = BrowserReport::default();
    let mut got = Vec::new();
    // Which connections poll(2) said are readable (all, at first).
    let mut ready = vec![true; list.len()];
    let mut polls: Vec<libc::pollfd> = Vec::new();
    let mut who: Vec<usize> = Vec::new();
    while Instant::now() < stop_at {
        let now = Instant::now();
        polls.clear();
        who.clear();
        let mut all_done = true;
        for (k, b) in list.iter_mut().enumerate() {
            if b.ended.iter().any(|e| !e) {
                all_done = false;
            }
            if b.ws.is_none() && now >= b.connect_at && b.ended.iter().any(|e| !e) {
                let mut ws = connect(r.addr)?;
                let mut cmd = json!({"op":"sub","id":1,"topic":topic(run, b.room)});
                if r.v1 {
                    if b.last_seq > 0 {
                        cmd["since"] = json!({"seq": b.last_seq, "epoch": b.epoch});
                    }
                } else {
                    cmd["streams"] = json!(true);
                }
                send(&mut ws, &cmd)?;
                b.ws = Some(ws);
                ready[k] = true;
            }
            if let (Some(d), Some(_)) = (b.drop_at, &b.ws) {
                if now >= d {
                    b.ws = None;
                    b.drop_at = None;
                    b.connect_at = now + Duration::from_millis(300);
                    continue;
                }
            }
            if b.stall_until.is_some_and(|s| now < s) {
                continue;
            }
            let Some(ws) = b.ws.as_mut() else { continue };
            polls.push(libc::pollfd { fd: ws.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 });
            who.push(k);
            if !std::mem::take(&mut ready[k]) {
                continue;
            }
            drain(ws, &mut got)?;
            for (v, len) in got.drain(..) {
                match v["op"].as_str() {
                    Some("subscribed") => {
                        if !r.v1 {
                            // Streams: the rollups that follow carry the whole text.
                            for t in b.texts.iter_mut() {
                                t.clear();
                            }
                        }
                        if v["recovered"] == false {
                            if let Some(e) = v["epoch"].as_str() {
                                b.epoch = e.to_owned();
                            }
                        }
                        if b.epoch.is_empty() {
                            b.epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                        }
                    }
                    Some("msg") => {
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        let data = v["data"].as_str().unwrap_or("");
                        let rollup = v["rollup"] == true;
                        let Some((answer, i)) = data.split(' ').next().and_then(parse_token) else { continue };
                        if answer >= b.texts.len() {
                            continue;
                        }
                        if rollup {
                            rep.rollups += 1;
                            rep.rollup_bytes += len as u64;
                            rep.rollup_tokens += data.matches(' ').count() as u64;
                        } else {
                            rep.append_frames += 1;
                            rep.append_bytes += len as u64;
                            let t0 = clock.at(b.room, answer, i).load(Ordering::Relaxed);
                            // Stalled readers are late by design: not in the figure.
                            if t0 > 0 && b.role != Role::Slow {
                                lat.saturating_record((crate::worker::mono_ns().saturating_sub(t0) / 1000).max(1));
                            }
                        }
                        b.texts[answer].push_str(data);
                        b.last_seq = b.last_seq.max(seq);
                        let last_token = data.trim_end().rsplit(' ').next().and_then(parse_token);
                        let ended =
                            if r.v1 { last_token.is_some_and(|(_, i)| i + 1 == r.tokens) } else { v["end"] == true };
                        if ended {
                            b.ended[answer] = true;
                        }
                    }
                    _ => {}
                }
            }
            if b.role == Role::Slow && b.stall_until.is_none() {
                // Stall once for most of an answer, then catch up.
                b.stall_until = Some(now + Duration::from_secs_f64(r.tokens as f64 / r.rate * 0.6));
            }
        }
        if all_done || done.load(Ordering::Relaxed) && list.iter().all(|b| b.ended.iter().all(|e| *e)) {
            break;
        }
        if polls.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            // SAFETY: valid pollfds for the duration of the call.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 2) };
            for (p, &k) in polls.iter().zip(&who) {
                if p.revents != 0 {
                    ready[k] = true;
                }
            }
        }
    }
    for b in &list {
        let e = rep.exact.entry(b.role.name()).or_default();
        for (a, t) in b.texts.iter().enumerate() {
            e.1 += 1;
            if *t == full_text(b.room, a, r.tokens) {
                e.0 += 1;
            } else if rep.examples.len() < 5 && !r.v1 {
                rep.examples.push(format!(
                    "room {} answer {a} ({}): {} of {} bytes",
                    b.room,
                    b.role.name(),
                    t.len(),
                    full_text(b.room, a, r.tokens).len()
                ));
            }
        }
    }
    Ok((rep, lat))
}

/// Runs the scenario; the report as JSON.
pub fn run(r: &TokensRun) -> anyhow::Result<Value> {
    if !r.addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let run = (crate::worker::mono_ns() % 1_000_000_007).to_string();
    let n = r.rooms * r.answers * r.tokens;
    let clock =
        Arc::new(Clock { sent: (0..n).map(|_| AtomicU64::new(0)).collect(), answers: r.answers, tokens: r.tokens });
    let answer_secs = r.tokens as f64 / r.rate + 0.5;
    let total = Duration::from_secs_f64(answer_secs * r.answers as f64);
    let start = Instant::now() + Duration::from_millis(1500);
    let stop_at = start + total + Duration::from_secs(15);
    // Browsers: one reader per room; late joiners, reconnecting and slow ones
    // on top (fractions of the rooms).
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut all = Vec::new();
    let mk = |room, role, connect_at, drop_at| Browser {
        room,
        role,
        ws: None,
        connect_at,
        drop_at,
        stall_until: None,
        texts: vec![String::new(); r.answers],
        ended: vec![false; r.answers],
        last_seq: 0,
        epoch: String::new(),
    };
    let before = start - Duration::from_millis(1000);
    for room in 0..r.rooms {
        all.push(mk(room, Role::Reader, before, None));
        if random() < r.late {
            all.push(mk(room, Role::Late, start + total.mul_f64(random() * 0.8), None));
        }
        if random() < r.reconnect {
            all.push(mk(room, Role::Reconnecting, before, Some(start + total.mul_f64(0.2 + random() * 0.6))));
        }
        if random() < r.slow {
            all.push(mk(room, Role::Slow, before, None));
        }
    }
    let browsers_n = all.len();
    let threads = r.browser_threads.max(1);
    let mut chunks: Vec<Vec<Browser>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, b) in all.into_iter().enumerate() {
        chunks[i % threads].push(b);
    }
    let done = Arc::new(AtomicBool::new(false));
    let bh: Vec<_> = chunks
        .into_iter()
        .map(|list| {
            let (r, run, clock, done) = (r.clone(), run.clone(), clock.clone(), done.clone());
            std::thread::spawn(move || browsers(&r, &run, list, &clock, stop_at, &done))
        })
        .collect();
    let agents = r.agents.max(1);
    let ah: Vec<_> = (0..agents)
        .map(|k| {
            let rooms: Vec<usize> = (0..r.rooms).filter(|room| room % agents == k).collect();
            let (r, run, clock) = (r.clone(), run.clone(), clock.clone());
            std::thread::spawn(move || agent(&r, &run, rooms, &clock, start))
        })
        .collect();
    let mut sent = 0;
    for h in ah {
        sent += h.join().map_err(|_| anyhow::anyhow!("an agent panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rep = BrowserReport::default();
    for h in bh {
        let (b, l) = h.join().map_err(|_| anyhow::anyhow!("a browser thread panicked"))??;
        lat.add(&l).ok();
        for (k, (e, t)) in b.exact {
            let x = rep.exact.entry(k).or_default();
            x.0 += e;
            x.1 += t;
        }
        rep.rollups += b.rollups;
        rep.rollup_bytes += b.rollup_bytes;
        rep.rollup_tokens += b.rollup_tokens;
        rep.append_frames += b.append_frames;
        rep.append_bytes += b.append_bytes;
        rep.examples.extend(b.examples.into_iter().take(5));
    }
    let q = |p: f64| if lat.is_empty() { 0 } else { lat.value_at_quantile(p) };
    let per_append = rep.append_bytes as f64 / rep.append_frames.max(1) as f64;
    let (exact, texts): (u64, u64) = rep.exact.values().fold((0, 0), |a, e| (a.0 + e.0, a.1 + e.1));
    let ok = !r.v1 && exact == texts && sent as usize == n;
    let by_role: serde_json::Map<String, Value> =
        rep.exact.iter().map(|(k, (e, t))| (k.to_string(), json!({"exact": e, "texts": t}))).collect();
    Ok(json!({
        "scenario": "tokens", "mode": if r.v1 { "v1" } else { "stream" }, "rooms": r.rooms, "tokens": r.tokens,
        "rate": r.rate, "answers": r.answers, "browsers": browsers_n, "sent": sent, "secs": secs,
        "tokens_per_sec": sent as f64 / secs.max(1e-9),
        "token_to_screen": {"count": lat.len(), "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": lat.max()},
        "texts": texts, "exact": exact, "by_role": by_role,
        "rollups": rep.rollups, "rollup_bytes": rep.rollup_bytes, "rollup_tokens": rep.rollup_tokens,
        "append_frames": rep.append_frames, "append_bytes": rep.append_bytes,
        "bytes_saved_by_rollup": (rep.rollup_tokens as f64 * per_append - rep.rollup_bytes as f64).max(0.0) as u64,
        "verify": {"ok": ok || r.v1, "exact_all": exact == texts, "examples": rep.examples},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back() {
        assert_eq!(parse_token(&token(12, 3, 45)), Some((3, 45)));
        assert_eq!(parse_token("r1a0t7"), Some((0, 7)));
        assert_eq!(parse_token("nonsense"), None);
        assert_eq!(full_text(1, 0, 2), "r1a0t0 r1a0t1 ");
    }
}
