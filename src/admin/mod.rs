//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`
//! and `/v1/stats` (JSON), on its own address (loopback by default).
//!
//! It runs on one plain thread, off the data path: each request asks every
//! shard for a snapshot over the control plane (crossbeam + doorbell) and
//! merges them here, so shards keep no locks and no atomics for it.
//! Requests are small and rare; each connection serves one request.

pub mod metrics;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::shard::control::ControlHandle;

/// How long a shard may take to answer a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for every shard's liveness answer.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// A running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves until [`AdminServer::stop`].
    pub fn start(addr: SocketAddr, control: ControlHandle) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &control),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
        Ok(Self { addr, stop, thread })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn serve(mut stream: TcpStream, control: &ControlHandle) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let path = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut stream, 405, "text/plain", b"only GET\n");
                }
                break req.path.unwrap_or("/").to_string();
            }
            Ok(httparse::Status::Partial) if buf.len() < 8192 => continue,
            _ => return respond(&mut stream, 400, "text/plain", b"bad request\n"),
        }
    };
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
                let body = metrics::render(&t, control.draining());
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

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let resp = crate::proto::handshake::response(status, reason, "Connection: close\r\n", ctype, body);
    let _ = stream.write_all(&resp);
}
