//! The raw reference servers: one thread, mio, over every accepted loopback
//! socket, speaking just enough of the protocol for the loadgen.
//!
//! * `--mode per-message`: one `send` per message per subscriber (a floor).
//! * `--mode coalescing`: frames are appended to each subscriber's buffer and
//!   each loop pass sends everything a subscriber has in one `send` (the
//!   ceiling of this kernel for a single thread).

use std::collections::HashMap;
use std::io::{Read, Write};
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
    out: Vec<u8>,
    upgraded: bool,
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    assert!(a.listen.ip().is_loopback(), "loopback only");
    let coalesce = a.mode == "coalescing";
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(a.listen)?;
    poll.registry().register(&mut listener, Token(usize::MAX), Interest::READABLE)?;
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut subs: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seqs = Seqs::default();
    let mut next = 0usize;
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 65536];
    let mut dirty: Vec<usize> = Vec::new();
    eprintln!("raw-fanout ({}) on {}", a.mode, a.listen);
    loop {
        let wait = if dirty.is_empty() { None } else { Some(std::time::Duration::from_millis(1)) };
        poll.poll(&mut events, wait)?;
        for ev in &events {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = listener.accept() {
                    let _ = s.set_nodelay(true);
                    poll.registry().register(&mut s, Token(next), Interest::READABLE)?;
                    clients.insert(next, Client { s, rbuf: Vec::new(), out: Vec::new(), upgraded: false });
                    next += 1;
                }
                continue;
            }
            let id = ev.token().0;
            let mut frames = Vec::new();
            let mut gone = false;
            if let Some(c) = clients.get_mut(&id) {
                loop {
                    match c.s.read(&mut scratch) {
                        Ok(0) => {
                            gone = true;
                            break;
                        }
                        Ok(n) => c.rbuf.extend_from_slice(&scratch[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
                if !c.upgraded {
                    if let Some(end) = c.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&c.rbuf[..end]).to_string();
                        let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap_or("");
                        let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept_key(key.trim()));
                        let _ = c.s.write_all(resp.as_bytes());
                        c.rbuf.drain(..end + 4);
                        c.upgraded = true;
                    }
                }
                while c.upgraded {
                    let Some((used, op, payload)) = client_frame(&c.rbuf) else { break };
                    c.rbuf.drain(..used);
                    if op == 1 {
                        frames.push(payload);
                    }
                }
            }
            if gone {
                clients.remove(&id);
                for v in subs.values_mut() {
                    v.retain(|&x| x != id);
                }
                continue;
            }
            for f in frames {
                let text = String::from_utf8_lossy(&f).to_string();
                match parse(&text) {
                    Cmd::Sub(t) => {
                        let mut out = Vec::new();
                        server_frame(subscribed(&t, seqs.last(&t)).as_bytes(), &mut out);
                        if let Some(c) = clients.get_mut(&id) {
                            let _ = c.s.write_all(&out);
                        }
                        subs.entry(t).or_default().push(id);
                    }
                    Cmd::Pub(t, data) => {
                        let seq = seqs.next(&t);
                        let mut a = Vec::new();
                        server_frame(ack(&t, seq).as_bytes(), &mut a);
                        if let Some(c) = clients.get_mut(&id) {
                            let _ = c.s.write_all(&a);
                        }
                        let mut frame = Vec::new();
                        server_frame(msg(&t, seq, data).as_bytes(), &mut frame);
                        for &s in subs.get(&t).map(Vec::as_slice).unwrap_or(&[]) {
                            if let Some(c) = clients.get_mut(&s) {
                                if coalesce {
                                    if c.out.is_empty() {
                                        dirty.push(s);
                                    }
                                    c.out.extend_from_slice(&frame);
                                } else {
                                    // One send per message per subscriber (blocking
                                    // semantics approximated: a full socket drops).
                                    let _ = c.s.write(&frame);
                                }
                            }
                        }
                    }
                    Cmd::Other => {}
                }
            }
        }
        // Coalescing: one send per subscriber per pass; what a full socket
        // did not take waits for the next pass.
        for s in std::mem::take(&mut dirty) {
            if let Some(c) = clients.get_mut(&s) {
                let n = c.s.write(&c.out).unwrap_or(0);
                c.out.drain(..n);
                if !c.out.is_empty() {
                    dirty.push(s);
                }
            }
        }
    }
}
