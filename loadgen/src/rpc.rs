//! The `rpc` scenario: clients call a service at a fixed rate (open loop),
//! responders stream N chunks per answer, a fraction of the responders are
//! too slow (they answer after `--slow-ms`, past the timeout), and a
//! fallback service answers what the slow ones did not.
//!
//! Two wire protocols, the same calls:
//!
//! * `ws`: shardcast request/reply (PROTOCOL-EXTENSIONS §3). The server
//!   keeps the deadline, cancels the slow responder, sends the request to
//!   the fallback once, and streams the chunks back.
//! * `nats`: NATS core request/reply (`nats-server`): responders are a
//!   queue group on a subject, each chunk is a `PUB` to the request's
//!   reply inbox; NATS has no deadline, fallback or cancel of its own, so
//!   the *client* keeps the deadline and re-sends to the fallback subject
//!   itself, and the slow responder, never told, still does its work and
//!   sends chunks nobody waits for (counted as `late_ignored` / `wasted`).
//!
//! Reports request → first chunk and request → final p50/p99/p99.9 (µs,
//! from the moment the request was written), outcomes (answered, by whom,
//! timeouts, fallbacks, cancels seen by responders, no_responders), and
//! verifies that every request got exactly one final outcome, that its
//! chunks arrived complete and in order from one responder, and (ws) that
//! nothing arrived after the final outcome.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::peers::Proto;

/// What a run is asked to do.
#[derive(Clone)]
pub struct RpcRun {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub clients: usize,
    /// Requests per second over all clients.
    pub rate: f64,
    pub duration: Duration,
    pub responders: usize,
    /// Fraction of the responders that answer after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    pub fallback_responders: usize,
    pub chunks: u32,
    pub chunk_bytes: usize,
    pub timeout_ms: u64,
}

/// Longest a loop waits for input before it looks at its clock: the
/// sockets are non-blocking and waited on with poll(2), whose timeout is
/// precise (SO_RCVTIMEO rounds to scheduler ticks: 1 ms became 8 ms here).
const TICK_MS: i32 = 1;
/// Violations kept verbatim in the report (the count is exact).
const MAX_EXAMPLES: usize = 10;

fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

// ---- connections ----

enum Link {
    Ws(Box<WebSocket<TcpStream>>),
    Nats { stream: TcpStream, buf: Vec<u8>, out: Vec<u8> },
}

/// One message from the server, as the scenario cares.
enum In {
    /// A JSON message (ws), or a NATS MSG: (reply-to, payload as JSON).
    Json(Value),
    Nats(Option<String>, Value),
}

/// Waits until `fd` is ready for `events` or `ms` pass.
fn wait(fd: std::os::fd::RawFd, events: i16, ms: i32) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn connect_ws(addr: SocketAddr) -> anyhow::Result<Link> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), s).context("upgrade")?;
    ws.get_ref().set_nonblocking(true)?;
    Ok(Link::Ws(Box::new(ws)))
}

fn connect_nats(addr: SocketAddr, subs: &[(&str, Option<&str>)]) -> anyhow::Result<Link> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut hello = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"echo\":false}\r\n",
    );
    for (i, (subject, queue)) in subs.iter().enumerate() {
        match queue {
            Some(q) => hello.push_str(&format!("SUB {subject} {q} {}\r\n", i + 1)),
            None => hello.push_str(&format!("SUB {subject} {}\r\n", i + 1)),
        }
    }
    hello.push_str("PING\r\n");
    s.write_all(hello.as_bytes())?;
    s.set_nonblocking(true)?;
    let mut link = Link::Nats { stream: s, buf: Vec::with_capacity(64 * 1024), out: Vec::new() };
    // PONG: the subscriptions are in place.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Link::Nats { stream, buf, .. } = &mut link {
            let mut chunk = [0u8; 4096];
            wait(stream.as_raw_fd(), libc::POLLIN, 10);
            match stream.read(&mut chunk) {
                Ok(0) => bail!("nats closed the connection"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some(at) = buf.windows(6).position(|w| w == b"PONG\r\n") {
                buf.drain(..at + 6);
                return Ok(link);
            }
            if buf.starts_with(b"-ERR") {
                bail!("nats: {}", String::from_utf8_lossy(buf));
            }
        }
    }
    bail!("no PONG from nats")
}

impl Link {
    fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        let Link::Ws(ws) = self else { unreachable!("nats sends PUB") };
        let mut r = ws.send(Message::text(v.to_string()));
        // A full socket buffer: what tungstenite holds goes out as room frees.
        loop {
            match r {
                Ok(()) => return Ok(()),
                Err(tungstenite::Error::Io(e)) if would_block(&e) => {
                    wait(ws.get_ref().as_raw_fd(), libc::POLLOUT, 10);
                    r = ws.flush();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &Value) -> anyhow::Result<()> {
        let Link::Nats { stream, out, .. } = self else { unreachable!("ws sends JSON") };
        let body = payload.to_string();
        out.clear();
        match reply {
            Some(r) => out.extend_from_slice(format!("PUB {subject} {r} {}\r\n", body.len()).as_bytes()),
            None => out.extend_from_slice(format!("PUB {subject} {}\r\n", body.len()).as_bytes()),
        }
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_all(stream, out)
    }

    /// Whatever arrived within one tick (every complete message: nothing
    /// whole is left buffered, so waiting on the socket is right).
    fn poll(&mut self, into: &mut Vec<In>) -> anyhow::Result<()> {
        match self {
            Link::Ws(ws) => {
                wait(ws.get_ref().as_raw_fd(), libc::POLLIN, TICK_MS);
                loop {
                    match ws.read() {
                        Ok(Message::Text(t)) => into.push(In::Json(serde_json::from_str(t.as_str())?)),
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if would_block(&e) => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Link::Nats { stream, buf, .. } => {
                wait(stream.as_raw_fd(), libc::POLLIN, TICK_MS);
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => bail!("nats closed the connection"),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                let mut at = 0;
                let mut pong = false;
                while let Some((used, msg)) = nats_next(&buf[at..])? {
                    at += used;
                    match msg {
                        NatsIn::Msg(reply, payload) => into.push(In::Nats(reply, serde_json::from_slice(&payload)?)),
                        NatsIn::Ping => pong = true,
                        NatsIn::Other => {}
                    }
                }
                buf.drain(..at);
                if pong {
                    write_all(stream, b"PONG\r\n")?;
                }
                Ok(())
            }
        }
    }
}

/// `write_all` on a non-blocking socket.
fn write_all(stream: &mut TcpStream, mut bytes: &[u8]) -> anyhow::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => bail!("the connection closed"),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if would_block(&e) => wait(stream.as_raw_fd(), libc::POLLOUT, 10),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

enum NatsIn {
    Msg(Option<String>, Vec<u8>),
    Ping,
    Other,
}

/// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`, `PING`, the
/// rest ignored; `-ERR` fails the run. None until a whole message is there.
fn nats_next(buf: &[u8]) -> anyhow::Result<Option<(usize, NatsIn)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = &buf[..end];
    if line.starts_with(b"MSG ") {
        let parts: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|p| !p.is_empty()).collect();
        let len: usize = std::str::from_utf8(parts[parts.len() - 1])?.parse()?;
        let reply = (parts.len() == 5).then(|| String::from_utf8_lossy(parts[3]).into_owned());
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        return Ok(Some((start + len + 2, NatsIn::Msg(reply, buf[start..start + len].to_vec()))));
    }
    if line.starts_with(b"-ERR") {
        bail!("nats: {}", String::from_utf8_lossy(line));
    }
    Ok(Some((end + 2, if line == b"PING" { NatsIn::Ping } else { NatsIn::Other })))
}

// ---- responders ----

struct Job {
    due: Instant,
    /// ws: the request id; nats: the reply inbox.
    to: String,
    q: u64,
    attempt: u64,
    next: u32,
}

impl PartialEq for Job {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Job {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.due.cmp(&self.due)
    }
}

#[derive(Default)]
struct ResponderReport {
    served: u64,
    chunks: u64,
    cancels_seen: u64,
    /// Chunks sent for requests their requester had given up on (nats: the
    /// slow responder is never told).
    wasted: u64,
}

fn responder(
    r: &RpcRun,
    run: &str,
    role: &'static str,
    slow: bool,
    stop: &AtomicBool,
) -> anyhow::Result<ResponderReport> {
    let topic = service(r, run, role);
    let mut link = match r.proto {
        Proto::Nats => connect_nats(r.addr, &[(&topic, Some("workers"))])?,
        _ => {
            let mut l = connect_ws(r.addr)?;
            l.send_json(&json!({"op":"sub","id":1,"topic":topic,"group":"workers"}))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut got = Vec::new();
            'wait: while Instant::now() < deadline {
                l.poll(&mut got)?;
                for m in got.drain(..) {
                    if let In::Json(v) = m {
                        if v["op"] == "subscribed" {
                            break 'wait;
                        }
                        bail!("join refused: {v}");
                    }
                }
            }
            l
        }
    };
    let pad = "x".repeat(r.chunk_bytes);
    let delay = if slow { Duration::from_millis(r.slow_ms) } else { Duration::ZERO };
    let mut jobs: BinaryHeap<Job> = BinaryHeap::new();
    let mut cancelled: HashSet<String> = HashSet::new();
    let mut rep = ResponderReport::default();
    let mut got = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        link.poll(&mut got)?;
        let now = Instant::now();
        for m in got.drain(..) {
            match m {
                In::Json(v) if v["op"] == "request" => {
                    let (q, attempt) = (v["data"]["q"].as_u64().unwrap_or(0), v["data"]["a"].as_u64().unwrap_or(0));
                    let to = v["req"].as_str().unwrap_or("").to_owned();
                    rep.served += 1;
                    jobs.push(Job { due: now + delay, to, q, attempt, next: 0 });
                }
                In::Json(v) if v["op"] == "cancel" => {
                    rep.cancels_seen += 1;
                    cancelled.insert(v["req"].as_str().unwrap_or("").to_owned());
                }
                In::Nats(Some(reply), v) => {
                    let (q, attempt) = (v["q"].as_u64().unwrap_or(0), v["a"].as_u64().unwrap_or(0));
                    rep.served += 1;
                    jobs.push(Job { due: now + delay, to: reply, q, attempt, next: 0 });
                }
                _ => {}
            }
        }
        while jobs.peek().is_some_and(|j| j.due <= now) {
            let j = jobs.pop().expect("peeked");
            if cancelled.remove(&j.to) {
                continue;
            }
            for k in j.next..r.chunks {
                let last = k + 1 == r.chunks;
                let data = json!({"q": j.q, "a": j.attempt, "r": role, "k": k, "n": r.chunks, "p": pad});
                rep.chunks += 1;
                if slow && r.proto == Proto::Nats {
                    rep.wasted += 1;
                }
                match r.proto {
                    Proto::Nats => {
                        let mut d = data;
                        d["last"] = Value::Bool(last);
                        link.publish(&j.to, None, &d)?;
                    }
                    _ => {
                        let mut m = json!({"op":"reply","req":j.to,"data":data});
                        if !last {
                            m["more"] = Value::Bool(true);
                        }
                        link.send_json(&m)?;
                    }
                }
            }
        }
    }
    Ok(rep)
}

fn service(r: &RpcRun, run: &str, role: &str) -> String {
    match r.proto {
        Proto::Nats => format!("bench.rpc-{run}.{role}"),
        _ => format!("bench/rpc-{run}/{role}"),
    }
}

// ---- clients ----

struct Open {
    sent: Instant,
    attempt: u64,
    chunks: u32,
    by: Option<String>,
}

struct ClientReport {
    sent: u64,
    answered: u64,
    answered_by_fallback: u64,
    timeouts: u64,
    partial_timeouts: u64,
    no_responders: u64,
    other_errors: u64,
    fallbacks: u64,
    late_ignored: u64,
    lost: u64,
    violations: u64,
    examples: Vec<String>,
    first: Histogram<u64>,
    last: Histogram<u64>,
}

impl ClientReport {
    fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            answered_by_fallback: 0,
            timeouts: 0,
            partial_timeouts: 0,
            no_responders: 0,
            other_errors: 0,
            fallbacks: 0,
            late_ignored: 0,
            lost: 0,
            violations: 0,
            examples: Vec::new(),
            first: histogram(),
            last: histogram(),
        }
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what);
        }
    }
}

#[derive(Clone, Copy)]
enum End {
    Answered,
    Timeout { partial: bool },
    NoResponders,
    Other,
}

struct Book {
    open: HashMap<u64, Open>,
    done: HashSet<u64>,
    rep: ClientReport,
}

impl Book {
    /// A chunk of request `q` (attempt `a`: nats only; ws passes the open one).
    fn chunk(&mut self, q: u64, a: Option<u64>, data: &Value, last: bool, strict_after_final: bool) {
        let now = Instant::now();
        let Some(o) = self.open.get_mut(&q) else {
            if self.done.contains(&q) && strict_after_final {
                self.rep.violation(format!("request {q}: a reply after its final outcome: {data}"));
            } else {
                self.rep.late_ignored += 1;
            }
            return;
        };
        if a.is_some_and(|a| a != o.attempt) {
            // nats: an answer to an attempt the client gave up on.
            self.rep.late_ignored += 1;
            return;
        }
        let by = data["r"].as_str().unwrap_or("?");
        let k = data["k"].as_u64().unwrap_or(u64::MAX);
        if k != o.chunks as u64 || o.by.as_deref().is_some_and(|b| b != by) {
            let expected = o.chunks;
            self.rep.violation(format!("request {q}: chunk {k} from {by}, expected chunk {expected}"));
        }
        if o.chunks == 0 {
            self.rep.first.saturating_record(micros(now - o.sent));
        }
        o.chunks += 1;
        o.by = Some(by.to_owned());
        if last {
            let n = data["n"].as_u64().unwrap_or(0);
            if o.chunks as u64 != n {
                let got = o.chunks;
                self.rep.violation(format!("request {q}: final after {got} of {n} chunks"));
            }
            if by == "fallback" {
                self.rep.answered_by_fallback += 1;
            }
            self.rep.last.saturating_record(micros(now - o.sent));
            self.finish(q, End::Answered);
        }
    }

    fn finish(&mut self, q: u64, end: End) {
        if self.open.remove(&q).is_none() {
            self.rep.violation(format!("request {q}: a second final outcome"));
            return;
        }
        self.done.insert(q);
        match end {
            End::Answered => self.rep.answered += 1,
            End::Timeout { partial } => {
                self.rep.timeouts += 1;
                if partial {
                    self.rep.partial_timeouts += 1;
                }
            }
            End::NoResponders => self.rep.no_responders += 1,
            End::Other => self.rep.other_errors += 1,
        }
    }
}

fn client(r: &RpcRun, run: &str, me: usize, start: Instant) -> anyhow::Result<ClientReport> {
    let main = service(r, run, "main");
    let fallback = service(r, run, "fallback");
    let inbox = format!("_INBOX.rpc-{run}.{me}");
    let mut link = match r.proto {
        Proto::Nats => connect_nats(r.addr, &[(&format!("{inbox}.>"), None)])?,
        _ => connect_ws(r.addr)?,
    };
    let mut b = Book { open: HashMap::new(), done: HashSet::new(), rep: ClientReport::new() };
    let interval = Duration::from_secs_f64(r.clients as f64 / r.rate.max(1e-3));
    // Stagger the clients over one interval.
    let mut next_send = start + interval.mul_f64(me as f64 / r.clients as f64);
    let timeout = Duration::from_millis(r.timeout_ms);
    // nats: the client's own deadlines, in send order (a constant timeout
    // keeps them sorted).
    let mut deadlines: VecDeque<(Instant, u64, u64)> = VecDeque::new();
    let send_until = start + r.duration;
    // ws: the server answers every request by 2 timeouts (fallback once);
    // past that plus a margin a request is lost.
    let give_up = timeout * 2 + Duration::from_secs(2);
    let mut q = 0u64;
    let mut got = Vec::new();
    let pad = "y".repeat(r.chunk_bytes);
    loop {
        let now = Instant::now();
        while now >= next_send && now < send_until {
            q += 1;
            let data = json!({"q": q, "a": 1, "p": pad});
            match r.proto {
                Proto::Nats => {
                    link.publish(&main, Some(&format!("{inbox}.{q}")), &data)?;
                    deadlines.push_back((Instant::now() + timeout, q, 1));
                }
                _ => link.send_json(&json!({"op":"req","id":q,"topic":main,"data":data,
                    "timeout_ms":r.timeout_ms,"fallback":fallback}))?,
            }
            b.open.insert(q, Open { sent: Instant::now(), attempt: 1, chunks: 0, by: None });
            b.rep.sent += 1;
            next_send += interval;
        }
        if now >= send_until && b.open.is_empty() {
            break;
        }
        if now >= send_until + give_up {
            b.rep.lost += b.open.len() as u64;
            for q in b.open.keys().copied().collect::<Vec<_>>() {
                b.rep.violation(format!("request {q}: no final outcome"));
            }
            break;
        }
        link.poll(&mut got)?;
        for m in got.drain(..) {
            match m {
                In::Json(v) => match v["op"].as_str() {
                    Some("reply") => {
                        let q = v["id"].as_u64().unwrap_or(0);
                        b.chunk(q, None, &v["data"], v.get("more").is_none(), true);
                    }
                    Some("error") => {
                        let q = v["id"].as_u64().unwrap_or(0);
                        let end = match v["code"].as_str() {
                            Some("timeout") => End::Timeout { partial: v["partial"] == true },
                            Some("no_responders") => End::NoResponders,
                            _ => End::Other,
                        };
                        if b.open.contains_key(&q) {
                            b.finish(q, end);
                        } else {
                            b.rep.violation(format!("an error for no open request: {v}"));
                        }
                    }
                    _ => {}
                },
                In::Nats(_, v) => {
                    let (q, a) = (v["q"].as_u64().unwrap_or(0), v["a"].as_u64().unwrap_or(0));
                    let last = v["last"] == true;
                    b.chunk(q, Some(a), &v, last, false);
                }
            }
        }
        // nats: the deadline, the fallback once, then timeout.
        let now = Instant::now();
        while deadlines.front().is_some_and(|d| d.0 <= now) {
            let (_, q, attempt) = deadlines.pop_front().expect("peeked");
            let Some(o) = b.open.get_mut(&q) else { continue };
            if o.attempt != attempt {
                continue;
            }
            if attempt == 1 && o.chunks == 0 {
                o.attempt = 2;
                b.rep.fallbacks += 1;
                link.publish(&fallback, Some(&format!("{inbox}.{q}")), &json!({"q": q, "a": 2, "p": pad}))?;
                deadlines.push_back((Instant::now() + timeout, q, 2));
            } else {
                let partial = o.chunks > 0;
                b.finish(q, End::Timeout { partial });
            }
        }
    }
    Ok(b.rep)
}

/// Runs the scenario; the report as JSON.
pub fn run(r: &RpcRun) -> anyhow::Result<Value> {
    if !r.addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let run = (crate::worker::mono_ns() % 1_000_000_007).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let r = Arc::new(r.clone());
    let slow_n = ((r.slow * r.responders as f64).round() as usize).min(r.responders);
    let mut responders = Vec::new();
    for i in 0..r.responders + r.fallback_responders {
        let (r, stop, run) = (r.clone(), stop.clone(), run.clone());
        let (role, slow) = if i < r.responders { ("main", i < slow_n) } else { ("fallback", false) };
        responders.push(std::thread::spawn(move || responder(&r, &run, role, slow, &stop)));
    }
    // Let every responder join before the first request.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now() + Duration::from_millis(50);
    let clients: Vec<_> = (0..r.clients)
        .map(|me| {
            let (r, run) = (r.clone(), run.clone());
            std::thread::spawn(move || client(&r, &run, me, start))
        })
        .collect();
    let mut total = ClientReport::new();
    for c in clients {
        let c = c.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        total.sent += c.sent;
        total.answered += c.answered;
        total.answered_by_fallback += c.answered_by_fallback;
        total.timeouts += c.timeouts;
        total.partial_timeouts += c.partial_timeouts;
        total.no_responders += c.no_responders;
        total.other_errors += c.other_errors;
        total.fallbacks += c.fallbacks;
        total.late_ignored += c.late_ignored;
        total.lost += c.lost;
        total.violations += c.violations;
        total.examples.extend(c.examples.into_iter().take(MAX_EXAMPLES.saturating_sub(total.examples.len())));
        total.first.add(&c.first).ok();
        total.last.add(&c.last).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    // Late chunks of the slow responders (nats) land meanwhile.
    std::thread::sleep(Duration::from_millis(r.slow_ms.min(5_000) + 100));
    stop.store(true, Ordering::Relaxed);
    let mut rr = ResponderReport::default();
    for h in responders {
        let x = h.join().map_err(|_| anyhow::anyhow!("a responder panicked"))??;
        rr.served += x.served;
        rr.chunks += x.chunks;
        rr.cancels_seen += x.cancels_seen;
        rr.wasted += x.wasted;
    }
    let pct = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
    let lat = |h: &Histogram<u64>| json!({"count": h.len(), "p50_us": pct(h, 0.5), "p99_us": pct(h, 0.99), "p999_us": pct(h, 0.999), "max_us": h.max()});
    let outcomes = total.answered + total.timeouts + total.no_responders + total.other_errors;
    let ok = total.violations == 0 && total.lost == 0 && outcomes == total.sent && total.sent > 0;
    Ok(json!({
        "scenario": "rpc", "proto": format!("{:?}", r.proto).to_lowercase(),
        "clients": r.clients, "rate": r.rate, "responders": r.responders, "slow_responders": slow_n,
        "slow_ms": r.slow_ms, "fallback_responders": r.fallback_responders, "chunks": r.chunks,
        "timeout_ms": r.timeout_ms, "secs": secs,
        "sent": total.sent, "answered": total.answered, "answered_by_fallback": total.answered_by_fallback,
        "timeouts": total.timeouts, "partial_timeouts": total.partial_timeouts,
        "no_responders": total.no_responders, "other_errors": total.other_errors,
        "fallbacks_by_client": total.fallbacks, "late_ignored": total.late_ignored,
        "responders_served": rr.served, "chunks_sent": rr.chunks, "cancels_seen": rr.cancels_seen,
        "wasted_chunks": rr.wasted,
        "first_chunk": lat(&total.first), "final": lat(&total.last),
        "requests_per_sec": total.answered as f64 / secs.max(1e-9),
        "verify": {"ok": ok, "lost": total.lost, "violations": total.violations, "examples": total.examples,
                   "outcomes": outcomes},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_messages_with_and_without_reply_subjects() {
        let stream = b"INFO {}\r\nMSG a.b 1 _INBOX.x 7\r\n{\"q\":1}\r\nMSG a.b 2 2\r\n{}\r\nPING\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((n, m)) = nats_next(&stream[at..]).unwrap() {
            at += n;
            seen.push(match m {
                NatsIn::Msg(r, p) => format!("msg {r:?} {}", String::from_utf8_lossy(&p)),
                NatsIn::Ping => "ping".into(),
                NatsIn::Other => "other".into(),
            });
        }
        assert_eq!(at, stream.len());
        assert_eq!(seen, ["other", "msg Some(\"_INBOX.x\") {\"q\":1}", "msg None {}", "ping"]);
        assert!(nats_next(b"MSG a 1 5\r\nhel").unwrap().is_none());
        assert!(nats_next(b"-ERR 'Authorization Violation'\r\n").is_err());
    }
}
