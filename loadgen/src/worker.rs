//! One worker process: a single-threaded mio event loop over its share of
//! the connections.
//!
//! Phases: connect → upgrade → subscribe (paced), print `READY` and wait for
//! `GO` on stdin (the parent's barrier across workers), run the scenario for
//! its duration, drain, print one JSON result line and exit.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::link::Link;
use crate::peers::{self, Event, Proto};
use crate::window::{MinTracker, Slots};
use crate::ws::{self, Masker};

/// What this worker does (derived from the CLI by the parent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: usize,
    pub target: SocketAddr,
    /// Cluster mode: every node's address (`target` first); connection k
    /// goes to node k mod n.
    #[serde(default)]
    pub targets: Vec<SocketAddr>,
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
    /// Repeat the reconnect storm at this period (the soak's churn).
    #[serde(default)]
    pub reconnect_every: Option<Duration>,
    /// A JWT per tenant (the topics' first segments): each WebSocket
    /// connection presents its topic's (`?token=`).
    #[serde(default)]
    pub tokens: std::collections::BTreeMap<String, String>,
    /// Speak TLS, trusting this PEM file (WebSocket only).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// The wire protocol (shardcast's, Redis's or NATS's).
    pub proto: Proto,
    /// Closed loop bounded per subscriber: at most this many publications
    /// beyond the slowest subscriber (0: off).
    pub window: u64,
    /// Shared-memory file of the per-worker minimum delivered counts.
    pub slots: Option<String>,
    /// Workers in the run (slots in that file).
    pub workers: usize,
    /// Closed-loop publishers on `noisy_topic` (the noisy tenant), after the
    /// open-loop ones.
    pub noisy_publishers: usize,
    pub noisy_topic: Option<usize>,
}

impl Plan {
    /// The node connection `i` of this worker goes to (cluster mode:
    /// round-robin over the nodes by global index; else the one target).
    pub fn target_of(&self, i: usize) -> SocketAddr {
        match self.targets.len() {
            0 => self.target,
            n => self.targets[(self.first_subscriber + i + self.worker) % n],
        }
    }

    /// Connections this worker opens: subscribers, then open-loop
    /// publishers, then the noisy tenant's.
    pub fn connections(&self) -> usize {
        self.subscribers + self.publishers + self.noisy_publishers
    }

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
    stream: Option<Link>,
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
    /// Where the connection goes once TCP connects.
    after_connect: State,
    /// Deliveries plus gap-notified seqs (the window's progress).
    progress: u64,
    /// Counted in the worker's MinTracker.
    tracked: bool,
    /// A peer publisher's own per-topic counter (Redis/NATS carry no seq),
    /// and how many of its publishes were acknowledged.
    pub_seq: u64,
    pub_acked: u64,
    /// Closed-loop publisher of the noisy tenant.
    noisy: bool,
}

impl Conn {
    fn new(
        stream: Option<Link>,
        (state, after_connect): (State, State),
        publisher: bool,
        topic: usize,
        wbuf: Vec<u8>,
        slow: bool,
    ) -> Self {
        let (rbuf, epoch) = (Vec::new(), String::new());
        Self {
            after_connect,
            progress: 0,
            tracked: false,
            pub_seq: 0,
            pub_acked: 0,
            noisy: false,
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
    /// Pongs sent in answer to server pings.
    pub pongs_sent: u64,
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
    /// Reconnect storms run (`--reconnect-every`).
    #[serde(default)]
    pub storms: u64,
    /// Deliveries on the noisy tenant's topic (left out of the latency).
    pub noisy_received: u64,
    pub run_secs: f64,
    /// Deliveries before publishing stopped (the throughput figure; the
    /// drain only completes the verification).
    pub received_during_run: u64,
    /// This worker's own CPU time while publishing, seconds.
    pub cpu_secs: f64,
    /// Latency histogram (µs) as (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Publish → ack histogram (µs) as (value, count) pairs (shardcast's
    /// protocol: the ack echoes the publish's id, its send time).
    #[serde(default)]
    pub ack_us: Vec<(u64, u64)>,
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
    // Pick the source port at connect() from the whole 4-tuple, not at
    // bind(): ports then repeat across destinations, and back-to-back runs
    // are not starved by the previous runs' TIME_WAIT sockets.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our own fd with a c_int option value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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
    ack_hist: Histogram<u64>,
    scratch: Vec<u8>,
    pad: String,
    measuring: bool,
    /// Minimum progress over this worker's subscribers (window mode).
    tracker: MinTracker,
    slots: Option<Slots>,
    /// Scratch for a peer publisher's payload.
    pbuf: Vec<u8>,
    /// Mono time of the current read.
    now: u64,
    /// TLS client config (`--tls-ca`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The first read error was printed.
    reported_error: bool,
}

impl Worker {
    fn new(plan: Plan, poll: Poll) -> anyhow::Result<Self> {
        let total = plan.connections();
        let result = WorkerResult { worker: plan.worker, ..Default::default() };
        let slots = match &plan.slots {
            Some(path) => Some(Slots::open(path, plan.workers)?),
            None => None,
        };
        let tls = match &plan.tls_ca {
            Some(ca) => Some(crate::link::client_config(ca)?),
            None => None,
        };
        Ok(Self {
            tracker: MinTracker::default(),
            slots,
            pbuf: Vec::with_capacity(plan.payload + 64),
            now: 0,
            masker: Masker::new(0x9e37_79b9 ^ plan.worker as u32),
            pad: "x".repeat(plan.payload.saturating_sub(40)),
            plan,
            poll,
            conns: Vec::with_capacity(total),
            result,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ack_hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            scratch: vec![0u8; 256 * 1024],
            measuring: false,
            tls,
            reported_error: false,
        })
    }

    /// Opens every connection, upgrades and subscribes, then waits for GO.
    fn setup(&mut self, go: &AtomicBool) -> anyhow::Result<()> {
        let start = Instant::now();
        let total = self.plan.connections();
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
        let noisy = i >= self.plan.subscribers + self.plan.publishers;
        let slow = !publisher && self.plan.is_slow(i);
        let topic = match (publisher, self.plan.noisy_topic) {
            (true, Some(t)) if noisy => t,
            (true, noisy_topic) => quiet_topic(i, noisy_topic, self.plan.topics.len()),
            (false, _) => (self.plan.first_subscriber + i) % self.plan.topics.len(),
        };
        let target = self.plan.target_of(i);
        let (wbuf, after_connect) = self.hello(publisher, topic, target);
        let mut conn = match connect(target, source, slow) {
            Ok(mut stream) => {
                self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                let stream = Link::new(stream, self.tls.as_ref())?;
                Conn::new(Some(stream), (State::Connecting, after_connect), publisher, topic, wbuf, slow)
            }
            Err(_) => {
                self.result.connect_errors += 1;
                // Keep indices aligned with tokens.
                Conn::new(None, (State::Dead, State::Dead), publisher, topic, Vec::new(), slow)
            }
        };
        conn.noisy = noisy;
        self.conns.push(conn);
        Ok(())
    }

    /// The token for a connection on topic `topic` (its tenant's), if any.
    fn token_for(&self, topic: usize) -> Option<&str> {
        let tenant = self.plan.topics.get(topic)?.split('/').next()?;
        self.plan.tokens.get(tenant).map(String::as_str)
    }

    /// The first bytes a new connection writes, and its state once TCP
    /// connects.
    fn hello(&self, publisher: bool, topic: usize, target: SocketAddr) -> (Vec<u8>, State) {
        let mut wbuf = Vec::new();
        match self.plan.proto {
            Proto::Ws => (ws::upgrade_request(&target.to_string(), self.token_for(topic)), State::Upgrading),
            Proto::Centrifugo => (self.cf_upgrade(publisher, topic, target), State::Upgrading),
            _ if publisher => {
                let wait = peers::hello_publisher(self.plan.proto, &mut wbuf);
                (wbuf, if wait { State::Subscribing } else { State::Ready })
            }
            proto => {
                peers::subscribe(proto, &self.plan.topics[topic], &mut wbuf);
                (wbuf, State::Subscribing)
            }
        }
    }

    /// A Centrifugo-mode connection's upgrade: subscribers at the
    /// Centrifugo endpoint (the token goes in `connect`), publishers at `/ws`.
    fn cf_upgrade(&self, publisher: bool, topic: usize, target: SocketAddr) -> Vec<u8> {
        let host = target.to_string();
        match publisher {
            true => ws::upgrade_request(&host, self.token_for(topic)),
            false => ws::upgrade_request_at(&host, "/connection/websocket", None),
        }
    }

    /// Whether connection `i` speaks the Centrifugo protocol.
    fn is_cf(&self, i: usize) -> bool {
        self.plan.proto == Proto::Centrifugo && !self.conns[i].publisher
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
                    self.conns[i].state = self.conns[i].after_connect;
                    self.result.connected += 1;
                }
                self.flush(i);
            }
        }
        Ok(())
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state != State::Dead && c.state != State::Connecting {
            if let Some(Err(_)) = c.stream.as_mut().map(Link::flush) {
                c.state = State::Dead;
                self.result.closed_by_server += 1;
                return;
            }
        }
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
                    // One clock read per read(): every message in it arrived
                    // by now.
                    self.now = mono_ns();
                    let scratch = std::mem::take(&mut self.scratch);
                    if self.conns[i].rbuf.is_empty() {
                        // The common case: parse in place, keep only a tail.
                        let used = self.parse(i, &scratch[..n]);
                        self.conns[i].rbuf.extend_from_slice(&scratch[used..n]);
                    } else {
                        let mut buf = std::mem::take(&mut self.conns[i].rbuf);
                        buf.extend_from_slice(&scratch[..n]);
                        let used = self.parse(i, &buf);
                        buf.drain(..used);
                        self.conns[i].rbuf = buf;
                    }
                    self.scratch = scratch;
                    if n < self.scratch.len() && !self.conns[i].stream.as_ref().is_some_and(Link::is_tls) {
                        // A short read drained the socket; the next
                        // edge-triggered event comes with new bytes.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    if !self.reported_error {
                        // Once per worker: why connections die (e.g. a TLS
                        // certificate the client does not accept).
                        self.reported_error = true;
                        eprintln!("worker {}: a connection failed: {e}", self.plan.worker);
                    }
                    self.mark_dead(i);
                    return;
                }
            }
        }
    }

    fn mark_dead(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.tracked {
            c.tracked = false;
            self.tracker.remove(c.progress);
        }
        if c.state == State::Connecting {
            self.result.connect_errors += 1;
        } else if c.state != State::Dead {
            self.result.closed_by_server += 1;
        }
        c.state = State::Dead;
    }

    /// Handles every complete message at the front of `buf` (what
    /// connection `i` received); returns the bytes used.
    fn parse(&mut self, i: usize, buf: &[u8]) -> usize {
        if self.conns[i].state == State::Connecting {
            self.conns[i].state = self.conns[i].after_connect;
            self.result.connected += 1;
        }
        if !self.plan.proto.is_ws() {
            return self.parse_peer(i, buf);
        }
        let mut pos = 0;
        if self.conns[i].state == State::Upgrading {
            let Some((used, status)) = ws::parse_response_head(buf) else {
                return 0;
            };
            if status != 101 {
                self.result.handshake_errors += 1;
                self.conns[i].state = State::Dead;
                return buf.len();
            }
            pos = used;
            self.after_upgrade(i);
        }
        while let Some(f) = ws::parse_frame(&buf[pos..]) {
            let (start, end) = (pos + f.start, pos + f.end);
            if f.opcode == 1 && self.is_cf(i) {
                self.on_cf_text(i, &buf[start..end]);
            } else if f.opcode == 1 {
                self.on_text(i, &buf[start..end]);
            } else if f.opcode == 9 {
                // The server pings quiet connections and closes (1001) those
                // that do not answer: a subscriber that only listens must
                // pong, or no run outlives ping_interval + ping_timeout.
                self.masker.frame(0xA, &buf[start..end], &mut self.conns[i].wbuf);
                self.flush(i);
                self.result.pongs_sent += 1;
            } else if f.opcode == 8 {
                self.mark_dead(i);
            }
            pos = end;
        }
        pos
    }

    /// Redis and NATS: decode every complete message in the buffer.
    fn parse_peer(&mut self, i: usize, buf: &[u8]) -> usize {
        let proto = self.plan.proto;
        let mut pos = 0;
        while let Some((used, ev)) = peers::next_event(proto, &buf[pos..]) {
            pos += used;
            let c = &mut self.conns[i];
            match ev {
                Event::Subscribed if c.state == State::Subscribing => {
                    c.state = State::Ready;
                    if !c.publisher {
                        self.result.subscribed += 1;
                        self.result.slow_subscribers += u64::from(c.slow);
                    }
                }
                Event::Msg(payload) => {
                    let (seq, t) = ws::peer_seq_t(payload);
                    self.deliver(i, seq.unwrap_or(0), t);
                }
                Event::Ack if c.publisher && c.state == State::Ready => {
                    c.unacked = c.unacked.saturating_sub(1);
                    c.pub_acked += 1;
                    self.result.acked += 1;
                    let topic = &self.plan.topics[c.topic];
                    let acked = c.pub_acked;
                    let m = self.result.max_acked_seq.entry(topic.clone()).or_default();
                    *m = (*m).max(acked);
                }
                Event::Ping => {
                    c.wbuf.extend_from_slice(b"PONG\r\n");
                    self.flush(i);
                }
                Event::Error(text) => {
                    let text = String::from_utf8_lossy(text).trim().to_string();
                    *self.result.pub_errors.entry(text).or_default() += 1;
                    c.unacked = c.unacked.saturating_sub(1);
                }
                _ => {}
            }
        }
        pos
    }

    fn after_upgrade(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.publisher {
            c.state = State::Ready;
            return;
        }
        c.state = State::Subscribing;
        let topic = &self.plan.topics[c.topic];
        if self.plan.proto == Proto::Centrifugo {
            // connect (with the tenant's token), then subscribe — recovering
            // after the last offset on a reconnect.
            let tenant = topic.split('/').next().unwrap_or_default();
            let token = self.plan.tokens.get(tenant).map(|t| format!(r#""token":"{t}""#)).unwrap_or_default();
            let connect = format!(r#"{{"id":1,"connect":{{{token}}}}}"#);
            let sub = if c.resume {
                format!(
                    r#"{{"id":2,"subscribe":{{"channel":"{topic}","recover":true,"offset":{},"epoch":"{}"}}}}"#,
                    c.last_seq, c.epoch
                )
            } else {
                format!(r#"{{"id":2,"subscribe":{{"channel":"{topic}"}}}}"#)
            };
            let cmds = format!("{connect}\n{sub}");
            self.masker.text_frame(cmds.as_bytes(), &mut c.wbuf);
            self.flush(i);
            return;
        }
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
                if let Some(sent_us) = ws::find_u64(text, b"\"id\":") {
                    let us = (mono_ns() / 1000).saturating_sub(sent_us);
                    self.ack_hist.saturating_record(us.clamp(1, 60_000_000));
                }
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
                self.progress(i, to.saturating_sub(from) + 1);
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

    /// A Centrifugo subscriber's message: a `pub` push, the subscribe
    /// reply, a `{}` ping (answered), an error.
    fn on_cf_text(&mut self, i: usize, text: &[u8]) {
        if let Some((seq, t)) = ws::cf_offset_t(text) {
            self.deliver(i, seq, t);
        } else if text.starts_with(b"{\"push\":") {
            // Another push (join/leave): nothing to count.
        } else if text == b"{}" {
            self.masker.text_frame(b"{}", &mut self.conns[i].wbuf);
            self.flush(i);
            self.result.pongs_sent += 1;
        } else if text.starts_with(b"{\"id\":2,\"subscribe\":") {
            let c = &mut self.conns[i];
            if c.state != State::Subscribing {
                return;
            }
            c.state = State::Ready;
            if c.resume {
                c.resume = false;
                if text.windows(16).any(|w| w == b"\"recovered\":true") {
                    self.result.resumed_ok += 1;
                } else {
                    self.result.resumed_failed += 1;
                }
                // The recovered publications come inside the reply.
                let mut at = 0;
                while let Some(p) = text[at..].windows(9).position(|w| w == b"{\"data\":{") {
                    let rest = &text[at + p..];
                    let (seq, t) = (ws::find_u64(rest, b"\"offset\":").unwrap_or(0), ws::find_u64(rest, b"{\"t\":"));
                    self.deliver(i, seq, t);
                    at += p + 9;
                }
            } else {
                c.last_seq = ws::find_u64(text, b"\"offset\":").unwrap_or(0);
                c.epoch = ws::find_str(text, b"\"epoch\":\"").unwrap_or_default();
                self.result.subscribed += 1;
                if c.slow {
                    self.result.slow_subscribers += 1;
                }
            }
        } else if text.windows(9).any(|w| w == b"\"error\":{") {
            let code = ws::find_u64(text, b"\"code\":").unwrap_or(0);
            *self.result.pub_errors.entry(format!("centrifugo {code}")).or_default() += 1;
        }
    }

    fn on_msg(&mut self, i: usize, text: &[u8]) {
        let (seq, t) = ws::msg_seq_t(text);
        self.deliver(i, seq.unwrap_or(0), t);
    }

    /// Moves subscriber `i`'s window progress on by `n`.
    fn progress(&mut self, i: usize, n: u64) {
        let c = &mut self.conns[i];
        let from = c.progress;
        c.progress += n;
        if c.tracked {
            self.tracker.advance(from, c.progress);
        }
    }

    /// A publication with `seq` (sent at mono time `t`) reached subscriber `i`.
    fn deliver(&mut self, i: usize, seq: u64, t: Option<u64>) {
        let now = self.now;
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
        if Some(c.topic) == self.plan.noisy_topic {
            self.result.noisy_received += 1;
        } else if let Some(t) = t.filter(|_| self.measuring) {
            let us = (now.saturating_sub(t) / 1000).clamp(1, 60_000_000);
            self.hist.saturating_record(us);
        }
        if self.plan.window > 0 {
            self.progress(i, 1);
        }
    }

    /// Publishes (open or closed loop) for the duration, then drains.
    fn measure(&mut self) -> anyhow::Result<()> {
        self.measuring = true;
        let cpu0 = self_cpu_secs();
        let start = Instant::now();
        let end = start + self.plan.duration;
        let mut events = Events::with_capacity(4096);
        let ready = |c: &Conn| c.state == State::Ready;
        let pubs: Vec<usize> = (self.plan.subscribers..self.conns.len())
            .filter(|&i| ready(&self.conns[i]) && !self.conns[i].noisy)
            .collect();
        let noisy: Vec<usize> = (self.plan.subscribers..self.conns.len())
            .filter(|&i| ready(&self.conns[i]) && self.conns[i].noisy)
            .collect();
        if self.plan.window > 0 {
            for i in 0..self.plan.subscribers {
                let c = &mut self.conns[i];
                if c.state == State::Ready && !c.slow {
                    c.tracked = true;
                    self.tracker.add(c.progress);
                }
            }
            self.store_min();
        }
        let interval =
            if self.plan.rate > 0.0 { Duration::from_secs_f64(1.0 / self.plan.rate) } else { Duration::ZERO };
        let mut next_send = start;
        let mut rr = 0usize;
        let mut storm: Option<Instant> = None;
        let mut next_storm = start + self.plan.reconnect_every.unwrap_or(Duration::MAX / 4);
        while Instant::now() < end {
            if let Some(at) = self.plan.reconnect_at {
                if storm.is_none() && start.elapsed() >= at {
                    self.reconnect_all()?;
                    storm = Some(Instant::now());
                }
            }
            if let Some(every) = self.plan.reconnect_every {
                if Instant::now() >= next_storm {
                    self.reconnect_all()?;
                    self.result.storms += 1;
                    storm.get_or_insert_with(Instant::now);
                    next_storm += every;
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
                } else if self.plan.window > 0 {
                    // Closed loop per subscriber: the slowest one anywhere
                    // is at most `window` publications behind.
                    let slowest = self.slots.as_ref().map_or(0, |s| s.min());
                    let slowest = if slowest == u64::MAX { 0 } else { slowest };
                    while self.result.published < slowest + self.plan.window {
                        let p = pubs[rr % pubs.len()];
                        rr += 1;
                        if self.conns[p].state != State::Ready {
                            break;
                        }
                        self.publish(p);
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
            // The noisy tenant publishes as fast as its acks come back.
            for &p in &noisy {
                while self.conns[p].unacked < self.plan.inflight && self.conns[p].state == State::Ready {
                    self.publish(p);
                }
                self.flush(p);
            }
            // Only a worker with open-loop publishers has a send time to
            // wake for (the others would spin on a next_send that never
            // moves).
            let wait = if self.plan.rate > 0.0 && !pubs.is_empty() {
                next_send.saturating_duration_since(Instant::now()).min(Duration::from_millis(5))
            } else {
                Duration::from_millis(5)
            };
            self.poll.poll(&mut events, Some(wait))?;
            self.handle(&events)?;
            self.store_min();
        }
        self.result.run_secs = start.elapsed().as_secs_f64();
        self.result.received_during_run = self.result.received;
        self.result.cpu_secs = self_cpu_secs() - cpu0;
        // Drain what is still in flight: up to `drain`, but done once
        // nothing has arrived for a second (a slow server's backlog after a
        // closed-loop run can take many seconds; an idle one none).
        // In window mode the drain is exact: until every tracked subscriber
        // has every publication of the run (or `drain` runs out).
        if let Some(slots) = self.slots.as_ref().filter(|_| !pubs.is_empty()) {
            slots.set_published(self.result.published);
        }
        let drain_end = Instant::now() + self.plan.drain;
        let (mut last_bytes, mut last_change) = (self.result.bytes_in, Instant::now());
        let drained = |w: &Self, last_change: Instant| match &w.slots {
            Some(slots) => match (slots.published(), w.tracker.min()) {
                (Some(total), Some(min)) => min >= total,
                (Some(_), None) => true,
                (None, _) => false,
            },
            None => last_change.elapsed() >= Duration::from_secs(1),
        };
        while Instant::now() < drain_end && !drained(self, last_change) {
            self.poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            self.handle(&events)?;
            if self.result.bytes_in != last_bytes {
                (last_bytes, last_change) = (self.result.bytes_in, Instant::now());
            }
        }
        self.result.latency_us =
            self.hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        self.result.ack_us =
            self.ack_hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        Ok(())
    }

    /// Publishes this worker's slowest subscriber's progress for the
    /// publishing worker (window mode).
    fn store_min(&self) {
        if let Some(slots) = &self.slots {
            slots.store(self.plan.worker, self.tracker.min().unwrap_or(u64::MAX));
        }
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
                let _ = self.poll.registry().deregister(old.socket());
            }
            let target = self.plan.target_of(i);
            let mut stream = connect(target, source, false)?;
            self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            let stream = Link::new(stream, self.tls.as_ref())?;
            let c = &mut self.conns[i];
            c.stream = Some(stream);
            c.state = State::Connecting;
            c.resume = true;
            c.rbuf.clear();
            let topic = c.topic;
            let req = match self.plan.proto {
                Proto::Centrifugo => self.cf_upgrade(false, topic, target),
                _ => ws::upgrade_request(&target.to_string(), self.token_for(topic)),
            };
            self.conns[i].wbuf = req;
        }
        Ok(())
    }

    fn publish(&mut self, p: usize) {
        let c = &mut self.conns[p];
        let topic = &self.plan.topics[c.topic];
        if self.plan.proto.is_ws() {
            self.pbuf.clear();
            let _ = write!(
                self.pbuf,
                r#"{{"op":"pub","id":{},"topic":"{topic}","data":{{"t":{},"p":"{}"}}}}"#,
                mono_ns() / 1000,
                mono_ns(),
                self.pad
            );
            self.masker.text_frame(&self.pbuf, &mut c.wbuf);
            // Publishers rotate over the topics (the rooms scenario); the
            // noisy tenant's publishers stay on its topic and the others
            // avoid it.
            if !c.noisy {
                c.topic = quiet_topic(c.topic + 1, self.plan.noisy_topic, self.plan.topics.len());
            }
        } else {
            c.pub_seq += 1;
            peers::payload(c.pub_seq, mono_ns(), &self.pad, &mut self.pbuf);
            peers::publish(self.plan.proto, topic, &self.pbuf, &mut c.wbuf);
        }
        c.unacked += 1;
        self.result.published += 1;
    }
}

/// Topic index `t` (mod `len`), or the next one if that is the noisy
/// tenant's.
fn quiet_topic(t: usize, noisy: Option<usize>, len: usize) -> usize {
    let t = t % len;
    if Some(t) == noisy && len > 1 {
        (t + 1) % len
    } else {
        t
    }
}

/// This process's user + system CPU time, seconds.
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
