//! One worker process: a single-threaded mio event loop over its share of
//! the connections.
//!
//! Phases: connect → upgrade → subscribe (paced), print `READY` and wait for
//! `GO` on stdin (the parent's barrier across workers), run the scenario for
//! its duration, drain, print one JSON result line and exit.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::ws::{self, Masker};

/// What this worker does (derived from the CLI by the parent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: usize,
    pub target: SocketAddr,
    pub sources: Vec<std::net::IpAddr>,
    /// Subscriber connections in this worker.
    pub subscribers: usize,
    /// Global index of this worker's first subscriber (for topic spreading).
    pub first_subscriber: usize,
    /// Publisher connections in this worker.
    pub publishers: usize,
    /// Topics: subscriber k subscribes to topics[k % len]; publishers
    /// round-robin over them.
    pub topics: Vec<String>,
    /// Total publishes/s of this worker's publishers (0: closed loop).
    pub rate: f64,
    /// Closed loop: unacked publishes per publisher.
    pub inflight: usize,
    pub payload: usize,
    pub duration: Duration,
    pub drain: Duration,
    /// Connection attempts allowed in flight at once.
    pub connect_window: usize,
    /// CPU to pin this worker to.
    pub pin: Option<usize>,
    /// Every k-th subscriber (by global index) stops reading once
    /// subscribed (0: none). They are left out of loss and latency figures.
    pub slow_every: usize,
    /// Reconnect storm: this long into the run every subscriber drops its
    /// connection and resumes with `since` on a new one.
    pub reconnect_at: Option<Duration>,
}

impl Plan {
    /// Whether this worker's subscriber `i` is one of the slow ones.
    pub fn is_slow(&self, i: usize) -> bool {
        self.slow_every > 0 && (self.first_subscriber + i).is_multiple_of(self.slow_every)
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Upgrading,
    Subscribing,
    Ready,
    Dead,
}

struct Conn {
    /// None when the connect call itself failed.
    stream: Option<TcpStream>,
    state: State,
    publisher: bool,
    topic: usize,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Last seq seen (subscribers).
    last_seq: u64,
    received: u64,
    /// Unacked publishes (publishers).
    unacked: usize,
    /// Stops reading once subscribed (the `slow` fraction).
    slow: bool,
    /// The topic's epoch from the first `subscribed`.
    epoch: String,
    /// Reconnecting in the storm: subscribe with `since`.
    resume: bool,
}

impl Conn {
    fn new(stream: Option<TcpStream>, state: State, publisher: bool, topic: usize, wbuf: Vec<u8>, slow: bool) -> Self {
        let (rbuf, epoch) = (Vec::new(), String::new());
        Self {
            stream,
            state,
            publisher,
            topic,
            rbuf,
            wbuf,
            last_seq: 0,
            received: 0,
            unacked: 0,
            slow,
            epoch,
            resume: false,
        }
    }
}

/// Counters of one worker, printed as JSON for the parent.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub worker: usize,
    pub connected: u64,
    pub subscribed: u64,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    pub closed_by_server: u64,
    pub setup_secs: f64,
    pub published: u64,
    pub acked: u64,
    pub max_acked_seq: HashMap<String, u64>,
    pub pub_errors: HashMap<String, u64>,
    pub received: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub gap_notices: u64,
    pub gap_seqs: u64,
    pub bytes_in: u64,
    pub slow_subscribers: u64,
    pub resumed_ok: u64,
    pub resumed_failed: u64,
    /// Storm start → every subscriber resumed, seconds (0: no storm).
    pub recovery_secs: f64,
    pub run_secs: f64,
    /// Latency histogram (µs) as (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
}

/// Monotonic clock in ns (CLOCK_MONOTONIC is system-wide, so a publisher's
/// timestamp can be read in another process).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Opens a non-blocking connection from `source`; a `slow` one gets a tiny
/// receive buffer so that it really backs up once it stops reading.
fn connect(target: SocketAddr, source: std::net::IpAddr, slow: bool) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if slow {
        sock.set_recv_buffer_size(4096)?;
    }
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(StdTcpStream::from(sock)))
}

/// Runs the worker to completion.
pub fn run(plan: Plan) -> anyhow::Result<()> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), Token(usize::MAX))?);
    let go = Arc::new(AtomicBool::new(false));
    {
        let (go, waker) = (go.clone(), waker.clone());
        std::thread::spawn(move || {
            let mut line = String::new();
            while io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                if line.trim() == "GO" {
                    go.store(true, Ordering::SeqCst);
                    let _ = waker.wake();
                    return;
                }
                line.clear();
            }
        });
    }
    if let Some(cpu) = plan.pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let mut w = Worker::new(plan, poll)?;
    w.setup(&go)?;
    w.measure()?;
    let out = serde_json::to_string(&w.result)?;
    println!("RESULT {out}");
    io::stdout().flush()?;
    Ok(())
}

struct Worker {
    plan: Plan,
    poll: Poll,
    conns: Vec<Conn>,
    masker: Masker,
    result: WorkerResult,
    hist: Histogram<u64>,
    scratch: Vec<u8>,
    pad: String,
    measuring: bool,
}

impl Worker {
    fn new(plan: Plan, poll: Poll) -> anyhow::Result<Self> {
        let total = plan.subscribers + plan.publishers;
        let result = WorkerResult { worker: plan.worker, ..Default::default() };
        Ok(Self {
            masker: Masker::new(0x9e37_79b9 ^ plan.worker as u32),
            pad: "x".repeat(plan.payload.saturating_sub(40)),
            plan,
            poll,
            conns: Vec::with_capacity(total),
            result,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            scratch: vec![0u8; 256 * 1024],
            measuring: false,
        })
    }

    /// Opens every connection, upgrades and subscribes, then waits for GO.
    fn setup(&mut self, go: &AtomicBool) -> anyhow::Result<()> {
        let start = Instant::now();
        let total = self.plan.subscribers + self.plan.publishers;
        let mut events = Events::with_capacity(4096);
        let mut opened = 0;
        let mut announced = false;
        loop {
            while opened < total && self.in_setup() < self.plan.connect_window {
                self.open(opened)?;
                opened += 1;
            }
            let settled = opened == total && self.in_setup() == 0;
            if settled && !announced {
                self.result.setup_secs = start.elapsed().as_secs_f64();
                println!("READY {}", self.result.subscribed);
                io::stdout().flush()?;
                announced = true;
            }
            if announced && go.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            self.handle(&events)?;
        }
    }

    fn in_setup(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| matches!(c.state, State::Connecting | State::Upgrading | State::Subscribing))
            .count()
    }

    fn open(&mut self, i: usize) -> anyhow::Result<()> {
        let source = self.plan.sources[i % self.plan.sources.len()];
        let publisher = i >= self.plan.subscribers;
        let slow = !publisher && self.plan.is_slow(i);
        let topic = if publisher {
            i % self.plan.topics.len()
        } else {
            (self.plan.first_subscriber + i) % self.plan.topics.len()
        };
        match connect(self.plan.target, source, slow) {
            Ok(mut stream) => {
                self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                let wbuf = ws::upgrade_request(&self.plan.target.to_string());
                let stream = Some(stream);
                self.conns.push(Conn::new(stream, State::Connecting, publisher, topic, wbuf, slow));
            }
            Err(_) => {
                self.result.connect_errors += 1;
                // Keep indices aligned with tokens.
                self.conns.push(Conn::new(None, State::Dead, publisher, topic, Vec::new(), slow));
            }
        }
        Ok(())
    }

    fn handle(&mut self, events: &Events) -> anyhow::Result<()> {
        for ev in events {
            let i = ev.token().0;
            if i >= self.conns.len() {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.read(i);
            }
            if ev.is_writable() {
                if self.conns[i].state == State::Connecting {
                    self.conns[i].state = State::Upgrading;
                    self.result.connected += 1;
                }
                self.flush(i);
            }
        }
        Ok(())
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while !c.wbuf.is_empty() && c.state != State::Dead && c.state != State::Connecting {
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.write(&c.wbuf) {
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.state = State::Dead;
                    self.result.closed_by_server += 1;
                    return;
                }
            }
        }
    }

    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            if c.state == State::Dead || (c.slow && c.state == State::Ready) {
                return;
            }
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.mark_dead(i);
                    return;
                }
                Ok(n) => {
                    self.result.bytes_in += n as u64;
                    let c = &mut self.conns[i];
                    c.rbuf.extend_from_slice(&self.scratch[..n]);
                    self.parse(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.mark_dead(i);
                    return;
                }
            }
        }
    }

    fn mark_dead(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state == State::Connecting {
            self.result.connect_errors += 1;
        } else if c.state != State::Dead {
            self.result.closed_by_server += 1;
        }
        c.state = State::Dead;
    }

    fn parse(&mut self, i: usize) {
        if self.conns[i].state == State::Connecting {
            self.conns[i].state = State::Upgrading;
            self.result.connected += 1;
        }
        if self.conns[i].state == State::Upgrading {
            let Some((used, status)) = ws::parse_response_head(&self.conns[i].rbuf) else {
                return;
            };
            if status != 101 {
                self.result.handshake_errors += 1;
                self.conns[i].state = State::Dead;
                return;
            }
            self.conns[i].rbuf.drain(..used);
            self.after_upgrade(i);
        }
        let mut pos = 0;
        let buf = std::mem::take(&mut self.conns[i].rbuf);
        while let Some(f) = ws::parse_frame(&buf[pos..]) {
            let (start, end) = (pos + f.start, pos + f.end);
            if f.opcode == 1 {
                self.on_text(i, &buf[start..end]);
            } else if f.opcode == 8 {
                self.mark_dead(i);
            }
            pos = end;
        }
        let c = &mut self.conns[i];
        c.rbuf = buf;
        c.rbuf.drain(..pos);
    }

    fn after_upgrade(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.publisher {
            c.state = State::Ready;
            return;
        }
        c.state = State::Subscribing;
        let topic = &self.plan.topics[c.topic];
        let cmd = if c.resume {
            format!(r#"{{"op":"sub","id":1,"topic":"{topic}","since":{{"seq":{},"epoch":"{}"}}}}"#, c.last_seq, c.epoch)
        } else {
            format!(r#"{{"op":"sub","id":1,"topic":"{topic}"}}"#)
        };
        self.masker.text_frame(cmd.as_bytes(), &mut c.wbuf);
        self.flush(i);
    }

    fn on_text(&mut self, i: usize, text: &[u8]) {
        match ws::op(text) {
            b"msg" => self.on_msg(i, text),
            b"ack" => {
                let c = &mut self.conns[i];
                c.unacked = c.unacked.saturating_sub(1);
                self.result.acked += 1;
                let seq = ws::find_u64(text, b"\"seq\":").unwrap_or(0);
                let topic = ws::find_str(text, b"\"topic\":\"").unwrap_or_default();
                let m = self.result.max_acked_seq.entry(topic).or_default();
                *m = (*m).max(seq);
            }
            b"subscribed" => {
                let c = &mut self.conns[i];
                if c.state == State::Subscribing && c.resume {
                    // A resume: the replay continues from last_seq + 1, so
                    // last_seq is kept (the reply's seq is the topic's now).
                    c.state = State::Ready;
                    c.resume = false;
                    if text.windows(16).any(|w| w == b"\"recovered\":true") {
                        self.result.resumed_ok += 1;
                    } else {
                        self.result.resumed_failed += 1;
                    }
                } else if c.state == State::Subscribing {
                    c.state = State::Ready;
                    c.last_seq = ws::find_u64(text, b"\"seq\":").unwrap_or(0);
                    c.epoch = ws::find_str(text, b"\"epoch\":\"").unwrap_or_default();
                    self.result.subscribed += 1;
                    if c.slow {
                        self.result.slow_subscribers += 1;
                    }
                }
            }
            b"gap" => {
                let (from, to) =
                    (ws::find_u64(text, b"\"from\":").unwrap_or(0), ws::find_u64(text, b"\"to\":").unwrap_or(0));
                self.result.gap_notices += 1;
                self.result.gap_seqs += to.saturating_sub(from) + 1;
                let c = &mut self.conns[i];
                c.last_seq = c.last_seq.max(to);
            }
            b"error" => {
                let code = text
                    .windows(8)
                    .position(|w| w == b"\"code\":\"")
                    .map(|p| &text[p + 8..])
                    .and_then(|r| r.split(|&b| b == b'"').next())
                    .unwrap_or(b"?");
                *self.result.pub_errors.entry(String::from_utf8_lossy(code).into_owned()).or_default() += 1;
                let c = &mut self.conns[i];
                c.unacked = c.unacked.saturating_sub(1);
            }
            _ => {}
        }
    }

    fn on_msg(&mut self, i: usize, text: &[u8]) {
        let now = mono_ns();
        let seq = ws::find_u64(text, b"\"seq\":").unwrap_or(0);
        let c = &mut self.conns[i];
        if seq <= c.last_seq {
            if seq == c.last_seq {
                self.result.duplicates += 1;
            } else {
                self.result.out_of_order += 1;
            }
            return;
        }
        c.last_seq = seq;
        c.received += 1;
        self.result.received += 1;
        if let Some(t) = ws::find_u64(text, b"\"t\":") {
            if self.measuring {
                let us = (now.saturating_sub(t) / 1000).clamp(1, 60_000_000);
                self.hist.saturating_record(us);
            }
        }
    }

    /// Publishes (open or closed loop) for the duration, then drains.
    fn measure(&mut self) -> anyhow::Result<()> {
        self.measuring = true;
        let start = Instant::now();
        let end = start + self.plan.duration;
        let mut events = Events::with_capacity(4096);
        let pubs: Vec<usize> =
            (self.plan.subscribers..self.conns.len()).filter(|&i| self.conns[i].state == State::Ready).collect();
        let interval =
            if self.plan.rate > 0.0 { Duration::from_secs_f64(1.0 / self.plan.rate) } else { Duration::ZERO };
        let mut next_send = start;
        let mut rr = 0usize;
        let mut storm: Option<Instant> = None;
        while Instant::now() < end {
            if let Some(at) = self.plan.reconnect_at {
                if storm.is_none() && start.elapsed() >= at {
                    self.reconnect_all()?;
                    storm = Some(Instant::now());
                }
            }
            if let Some(t0) = storm {
                let waiting =
                    (0..self.plan.subscribers).any(|i| self.conns[i].resume && self.conns[i].state != State::Dead);
                if !waiting && self.result.recovery_secs == 0.0 {
                    self.result.recovery_secs = t0.elapsed().as_secs_f64().max(1e-6);
                }
            }
            if !pubs.is_empty() {
                if self.plan.rate > 0.0 {
                    let now = Instant::now();
                    while next_send <= now {
                        let p = pubs[rr % pubs.len()];
                        rr += 1;
                        self.publish(p);
                        next_send += interval;
                    }
                } else {
                    for &p in &pubs {
                        while self.conns[p].unacked < self.plan.inflight && self.conns[p].state == State::Ready {
                            self.publish(p);
                        }
                    }
                }
                for &p in &pubs {
                    self.flush(p);
                }
            }
            let wait = if self.plan.rate > 0.0 {
                next_send.saturating_duration_since(Instant::now()).min(Duration::from_millis(5))
            } else {
                Duration::from_millis(5)
            };
            self.poll.poll(&mut events, Some(wait))?;
            self.handle(&events)?;
        }
        self.result.run_secs = start.elapsed().as_secs_f64();
        let drain_end = Instant::now() + self.plan.drain;
        while Instant::now() < drain_end {
            self.poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            self.handle(&events)?;
        }
        self.result.latency_us =
            self.hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        Ok(())
    }

    /// The reconnect storm: every ready subscriber drops its connection at
    /// once and opens a new one that resumes with `since`.
    fn reconnect_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.plan.subscribers {
            if self.conns[i].state != State::Ready || self.conns[i].slow {
                continue;
            }
            let source = self.plan.sources[i % self.plan.sources.len()];
            if let Some(mut old) = self.conns[i].stream.take() {
                let _ = self.poll.registry().deregister(&mut old);
            }
            let mut stream = connect(self.plan.target, source, false)?;
            self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            let c = &mut self.conns[i];
            c.stream = Some(stream);
            c.state = State::Connecting;
            c.resume = true;
            c.rbuf.clear();
            c.wbuf = ws::upgrade_request(&self.plan.target.to_string());
        }
        Ok(())
    }

    fn publish(&mut self, p: usize) {
        let c = &mut self.conns[p];
        let cmd = format!(
            r#"{{"op":"pub","topic":"{}","data":{{"t":{},"p":"{}"}}}}"#,
            self.plan.topics[c.topic],
            mono_ns(),
            self.pad
        );
        // Publishers rotate over the topics (the rooms scenario).
        c.topic = (c.topic + 1) % self.plan.topics.len();
        self.masker.text_frame(cmd.as_bytes(), &mut c.wbuf);
        c.unacked += 1;
        self.result.published += 1;
    }
}
