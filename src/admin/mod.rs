//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`
//! and `/v1/stats` (JSON), on its own address (loopback by default).
//!
//! Off the data path: an accept thread hands each connection to a small
//! thread of its own (at most `admin.max_connections` at once; past it, 503
//! at once), which reads one request under a whole-request deadline
//! (`admin.request_timeout_ms`; 408 past it), asks every shard for a
//! snapshot over the control plane (crossbeam + doorbell) and answers. A
//! slow or silent client holds one slot for a bounded time and never delays
//! anyone else's `/healthz`. Shards keep no locks and no atomics for it.

pub mod metrics;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::AdminConfig;
use crate::shard::control::ControlHandle;

/// How long a shard may take to answer a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for every shard's liveness answer.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head accepted.
const MAX_HEAD: usize = 8192;

/// The admin listener's own counters (it is not a shard).
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Connections answered 503 because `max_connections` were busy.
    pub refused: AtomicU64,
    /// Requests cut off at the whole-request deadline (408).
    pub timeouts: AtomicU64,
    /// Connections being served now.
    pub active: AtomicUsize,
    /// Requests refused 401 for a missing or wrong `admin.token`.
    pub unauthorized: AtomicU64,
}

/// A running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    counters: Arc<AdminCounters>,
}

impl AdminServer {
    /// Binds `cfg.listen` and serves until [`AdminServer::stop`].
    pub fn start(cfg: &AdminConfig, control: ControlHandle) -> std::io::Result<Self> {
        let listener = TcpListener::bind(cfg.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(AdminCounters::default());
        let (flag, c) = (stop.clone(), counters.clone());
        let set = Settings {
            max: cfg.max_connections,
            deadline: Duration::from_millis(cfg.request_timeout_ms),
            token: cfg.token.as_str().into(),
        };
        let thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => dispatch(stream, &control, &c, &set),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
        Ok(Self { addr, stop, thread, counters })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener's counters.
    pub fn counters(&self) -> Arc<AdminCounters> {
        self.counters.clone()
    }

    /// Stops the accept thread (connection threads end within their
    /// deadline).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Serves `stream` on a thread of its own, or answers 503 when every slot
/// is busy (or no thread can be made).
/// The listener's settings, from `[admin]`.
#[derive(Clone)]
struct Settings {
    max: usize,
    deadline: Duration,
    /// `admin.token` ("" = none).
    token: Arc<str>,
}

fn dispatch(stream: TcpStream, control: &ControlHandle, c: &Arc<AdminCounters>, set: &Settings) {
    let (max, deadline, token) = (set.max, set.deadline, set.token.clone());
    let busy = || {
        c.refused.fetch_add(1, Ordering::Relaxed);
        let mut s = &stream;
        let _ = s.write_all(&crate::proto::handshake::response(
            503,
            "Service Unavailable",
            "Connection: close\r\nRetry-After: 1\r\n",
            "text/plain",
            b"admin listener busy\n",
        ));
    };
    if c.active.fetch_add(1, Ordering::SeqCst) >= max {
        c.active.fetch_sub(1, Ordering::SeqCst);
        return busy();
    }
    let (control, counters) = (control.clone(), c.clone());
    let Ok(clone) = stream.try_clone() else {
        c.active.fetch_sub(1, Ordering::SeqCst);
        return busy();
    };
    let spawned = std::thread::Builder::new().name("admin-conn".into()).stack_size(256 * 1024).spawn(move || {
        serve(clone, &control, &counters, deadline, &token);
        counters.active.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        c.active.fetch_sub(1, Ordering::SeqCst);
        busy();
    }
}

/// Reads one request head under a whole-request deadline, then answers.
/// Compares a presented token with the configured one in constant time
/// (`subtle`; lengths aside).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn serve(mut stream: TcpStream, control: &ControlHandle, counters: &AdminCounters, deadline: Duration, token: &str) {
    let _ = stream.set_nonblocking(false);
    let end = Instant::now() + deadline;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let path = loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            return respond(&mut stream, 408, "text/plain", b"request timeout\n");
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut stream, 405, "text/plain", b"only GET\n");
                }
                let path = req.path.unwrap_or("/").to_string();
                if !token.is_empty() && path != "/healthz" {
                    let given = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                        .and_then(|h| h.value.strip_prefix(b"Bearer "))
                        .unwrap_or_default();
                    if !same_secret(given, token.as_bytes()) {
                        counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                        return unauthorized(&mut stream);
                    }
                }
                break path;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return respond(&mut stream, 400, "text/plain", b"bad request\n"),
        }
    };
    let _ = stream.set_write_timeout(Some(SCRAPE_TIMEOUT));
    match path.as_str() {
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n"),
        "/readyz" => {
            if control.draining() {
                respond(&mut stream, 503, "text/plain", b"draining\n")
            } else if let Err(shard) = control.alive(READY_TIMEOUT) {
                respond(&mut stream, 503, "text/plain", format!("shard {shard} not answering\n").as_bytes())
            } else {
                respond(&mut stream, 200, "text/plain", b"ready\n")
            }
        }
        "/metrics" => match control.try_stats(SCRAPE_TIMEOUT) {
            Some(t) => {
                let mut body = metrics::render(&t, control.draining());
                metrics::render_admin(&mut body, counters);
                respond(&mut stream, 200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes())
            }
            None => respond(&mut stream, 503, "text/plain", b"a shard did not answer\n"),
        },
        "/v1/stats" => match control.try_stats(SCRAPE_TIMEOUT) {
            Some(t) => {
                let body = metrics::json(&t, control.draining());
                respond(&mut stream, 200, "application/json", body.to_string().as_bytes())
            }
            None => respond(&mut stream, 503, "application/json", br#"{"error":"a shard did not answer"}"#),
        },
        _ => respond(&mut stream, 404, "text/plain", b"not found\n"),
    }
}

/// 401 with the challenge RFC 6750 asks for.
fn unauthorized(stream: &mut TcpStream) {
    let extra = "Connection: close\r\nWWW-Authenticate: Bearer\r\n";
    let resp = crate::proto::handshake::response(401, "Unauthorized", extra, "text/plain", b"admin token required\n");
    let _ = stream.write_all(&resp);
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let resp = crate::proto::handshake::response(status, reason, "Connection: close\r\n", ctype, body);
    let _ = stream.write_all(&resp);
}
