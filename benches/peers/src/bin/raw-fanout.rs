//! The raw reference servers: one thread, mio, over every accepted loopback
//! socket, speaking just enough of the protocol for the loadgen, with no
//! work it does not need (a slab of clients, one pre-built frame per
//! publication).
//!
//! * `--mode per-message`: one `send` per message per subscriber (a floor).
//!   What a full socket does not take is queued and written when it becomes
//!   writable again, so nothing is lost.
//! * `--mode coalescing`: frames are appended to each subscriber's buffer and
//!   each loop pass sends everything a subscriber has in one `send` (the
//!   ceiling of this kernel for a single thread). A subscriber whose socket
//!   is full waits for its writable event instead of being retried.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use shardcast_peers::{accept_key, ack, client_frame, msg, parse, server_frame, subscribed, Cmd, Seqs};

#[derive(Parser)]
struct Args {
    /// Listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:9201")]
    listen: SocketAddr,
    /// per-message or coalescing.
    #[arg(long, default_value = "coalescing")]
    mode: String,
}

struct Client {
    s: TcpStream,
    rbuf: Vec<u8>,
    /// Bytes waiting to be sent, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The socket refused bytes: wait for its writable event.
    blocked: bool,
    /// Listed in `dirty` for the next pass.
    queued: bool,
    upgraded: bool,
}

impl Client {
    /// One `send` of everything pending; false if the peer is gone.
    fn send_pending(&mut self) -> bool {
        if self.sent == self.out.len() {
            return true;
        }
        match self.s.write(&self.out[self.sent..]) {
            Ok(n) => {
                self.sent += n;
                if self.sent == self.out.len() {
                    self.out.clear();
                    self.sent = 0;
                } else {
                    self.blocked = true;
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.blocked = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Appends a frame to the pending bytes, compacting what was sent.
    fn queue(&mut self, frame: &[u8]) {
        if self.sent > 0 && self.sent >= self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        self.out.extend_from_slice(frame);
    }
}

const LISTENER: Token = Token(usize::MAX);

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    assert!(a.listen.ip().is_loopback(), "loopback only");
    let coalesce = a.mode == "coalescing";
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(a.listen)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut subs: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seqs = Seqs::default();
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 65536];
    let mut dirty: Vec<usize> = Vec::new();
    let mut frames = Vec::new();
    eprintln!("raw-fanout ({}) on {}", a.mode, a.listen);
    loop {
        poll.poll(&mut events, None)?;
        for ev in &events {
            if ev.token() == LISTENER {
                while let Ok((mut s, _)) = listener.accept() {
                    let _ = s.set_nodelay(true);
                    let id = free.pop().unwrap_or_else(|| {
                        clients.push(None);
                        clients.len() - 1
                    });
                    poll.registry().register(&mut s, Token(id), Interest::READABLE | Interest::WRITABLE)?;
                    clients[id] = Some(Client {
                        s,
                        rbuf: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        blocked: false,
                        queued: false,
                        upgraded: false,
                    });
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = clients.get_mut(id).and_then(Option::as_mut) else { continue };
            if ev.is_writable() && c.blocked {
                c.blocked = false;
                if !c.queued {
                    c.queued = true;
                    dirty.push(id);
                }
            }
            let mut gone = false;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                loop {
                    match c.s.read(&mut scratch) {
                        Ok(0) => {
                            gone = true;
                            break;
                        }
                        Ok(n) => c.rbuf.extend_from_slice(&scratch[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
            }
            if !c.upgraded {
                if let Some(end) = c.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&c.rbuf[..end]).to_string();
                    let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap_or("");
                    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept_key(key.trim()));
                    c.queue(resp.as_bytes());
                    c.send_pending();
                    c.rbuf.drain(..end + 4);
                    c.upgraded = true;
                }
            }
            let mut used = 0;
            while let Some((n, op, payload)) = client_frame(&c.rbuf[used..]).filter(|_| c.upgraded) {
                used += n;
                if op == 1 {
                    frames.push(payload);
                }
            }
            c.rbuf.drain(..used);
            if gone {
                clients[id] = None;
                free.push(id);
                for v in subs.values_mut() {
                    v.retain(|&x| x != id);
                }
                frames.clear();
                continue;
            }
            for f in frames.drain(..) {
                let text = String::from_utf8_lossy(&f).to_string();
                let (reply, fanout) = match parse(&text) {
                    Cmd::Sub(t) => {
                        let r = subscribed(&t, seqs.last(&t));
                        subs.entry(t).or_default().push(id);
                        (r, None)
                    }
                    Cmd::Pub(t, data) => {
                        let seq = seqs.next(&t);
                        let mut frame = Vec::new();
                        server_frame(msg(&t, seq, data).as_bytes(), &mut frame);
                        (ack(&t, seq), Some((t, frame)))
                    }
                    Cmd::Other => continue,
                };
                let mut out = Vec::new();
                server_frame(reply.as_bytes(), &mut out);
                let mut targets: Vec<(usize, &[u8])> = vec![(id, &out)];
                if let Some((t, frame)) = &fanout {
                    for &s in subs.get(t).map(Vec::as_slice).unwrap_or(&[]) {
                        targets.push((s, frame));
                    }
                }
                for (s, bytes) in targets {
                    let Some(c) = clients.get_mut(s).and_then(Option::as_mut) else { continue };
                    c.queue(bytes);
                    if coalesce {
                        if !c.queued && !c.blocked {
                            c.queued = true;
                            dirty.push(s);
                        }
                    } else if !c.blocked {
                        // A peer that is gone is cleaned up by its read event.
                        c.send_pending();
                    }
                }
            }
        }
        // Coalescing (and the per-message server's backlog after a writable
        // event): one send per listed subscriber per pass.
        for s in std::mem::take(&mut dirty) {
            if let Some(c) = clients.get_mut(s).and_then(Option::as_mut) {
                c.queued = false;
                if !c.blocked {
                    c.send_pending();
                }
            }
        }
    }
}
