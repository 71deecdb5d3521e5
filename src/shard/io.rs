//! The I/O tasks of the connection plane (the only glommio code in `conn/`).
//!
//! One accept task per shard, and one small task per connection that is a
//! single `poll_fn` state machine: read whatever is there into the
//! shard-wide read buffer and hand it to the shard core, then write whatever
//! is queued in one `send`, then sleep until the socket or a fanout wakes it.
//! No per-connection read buffer, no large future: a task's state is the
//! stream, two optional timers and a flag.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future::poll_fn;
use std::io::{Read, Write};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;

use crate::conn::Phase;
use crate::mesh::ConnRef;
use crate::proto::handshake;
use crate::shard::ShardCtx;

/// Most bytes handed to one `send`.
pub const WRITE_CHUNK: usize = 64 * 1024;
/// Reads per poll before yielding to other connections (fairness).
const READ_ROUNDS: usize = 4;
/// How long a closing connection may take to flush and see the peer's FIN.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Accepts connections until the shard stops.
pub async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if ctx.stopping.get() {
                    return;
                }
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                Timer::new(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ctx.stopping.get() {
            return;
        }
        let accepted = ctx.core.borrow_mut().accept(Instant::now());
        match accepted {
            Some(r) => {
                let _ = stream.set_nodelay(true);
                let tls = ctx.tls.borrow().clone();
                let tls = match tls.map(rustls::ServerConnection::new) {
                    None => None,
                    Some(Ok(conn)) => Some(Box::new(Tls::new(conn))),
                    Some(Err(e)) => {
                        tracing::warn!(shard = ctx.id, error = %e, "cannot start a TLS session");
                        let mut core = ctx.core.borrow_mut();
                        core.counters.tls_errors += 1;
                        core.remove(r.idx as usize);
                        continue;
                    }
                };
                glommio::spawn_local(serve(ctx.clone(), stream, r, tls)).detach();
            }
            None => {
                glommio::spawn_local(refuse(stream)).detach();
            }
        }
    }
}

/// Answers 503 to a connection over the limit and closes it.
async fn refuse(mut stream: TcpStream) {
    let resp = handshake::reject_response(503, "Service Unavailable");
    let _ = stream.write_all(&resp).await;
    let _ = stream.close().await;
}

/// Per-connection task state kept between polls.
struct Task {
    idx: usize,
    stream: TcpStream,
    /// Until the upgrade completes.
    handshake_timer: Option<Timer>,
    /// Once closing: the bound on flushing and waiting for the peer's FIN.
    linger: Option<Timer>,
    /// The write side was shut down after the last byte was sent.
    shut: bool,
    /// The peer's FIN was read: read no more, finish what is owed.
    eof: bool,
    /// While the connection is pushed back after `rate_limited`.
    pause: Option<Timer>,
    /// The TLS session, when the listener speaks TLS (`[tls]`).
    tls: Option<Box<Tls>>,
}

/// One connection's TLS session: rustls decrypts into the shard-wide
/// `plain` buffer and encrypts into the shard-wide `cipher` buffer; only
/// what a socket did not take stays here, so an idle TLS connection holds
/// rustls's state and two empty vectors.
struct Tls {
    conn: rustls::ServerConnection,
    /// Ciphertext read from the socket but not yet taken by rustls: only
    /// when input stopped mid-read (a parked fanout, a full inbound
    /// buffer), so nothing read is ever lost.
    backlog: Vec<u8>,
    /// Ciphertext the socket did not take, from `sent` on.
    unsent: Vec<u8>,
    sent: usize,
    /// The handshake was counted.
    handshaken: bool,
    /// close_notify was queued.
    notified: bool,
}

impl Tls {
    fn new(conn: rustls::ServerConnection) -> Self {
        Self { conn, backlog: Vec::new(), unsent: Vec::new(), sent: 0, handshaken: false, notified: false }
    }

    fn count_handshake(&mut self, ctx: &ShardCtx) {
        if !self.handshaken && !self.conn.is_handshaking() {
            self.handshaken = true;
            ctx.core.borrow_mut().counters.tls_handshakes += 1;
        }
    }

    /// No ciphertext is waiting to go out.
    fn flushed(&self) -> bool {
        self.sent >= self.unsent.len() && !self.conn.wants_write()
    }
}

/// What draining rustls's plaintext came to.
enum Plain {
    /// Nothing decrypted is left.
    Empty,
    /// Input stops for now (pushed back, parked fanout, full buffer).
    Paused,
    /// The peer sent close_notify: an EOF.
    Eof,
    /// The stream is broken.
    Broken,
}

/// Runs one connection to its end, then forgets it in the shard core.
async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream, r: ConnRef, tls: Option<Box<Tls>>) {
    let timeout = Duration::from_millis(ctx.core.borrow().limits.handshake_timeout_ms);
    let mut task = Task {
        idx: r.idx as usize,
        stream,
        handshake_timer: Some(Timer::new(timeout)),
        linger: None,
        shut: false,
        eof: false,
        pause: None,
        tls,
    };
    poll_fn(|cx| task.poll(&ctx, cx)).await;
    ctx.core.borrow_mut().remove(task.idx);
}

impl Task {
    fn poll(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        if self.read(ctx, cx).is_ready() || self.write(ctx, cx).is_ready() {
            return Poll::Ready(());
        }
        let phase = {
            let mut core = ctx.core.borrow_mut();
            let Some(conn) = core.conns.get_mut(self.idx) else {
                return Poll::Ready(());
            };
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            conn.phase
        };
        if self.eof {
            return self.poll_settle(ctx, cx);
        }
        match phase {
            Phase::Handshake => self.poll_handshake_deadline(ctx, cx),
            Phase::Open | Phase::Http => {
                self.handshake_timer = None;
                Poll::Pending
            }
            Phase::Closing => self.poll_closing(ctx, cx),
        }
    }

    /// Reads what is there; Ready when the socket is finished.
    fn read(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        if self.eof {
            return Poll::Pending;
        }
        if self.tls.is_some() {
            return self.read_tls(ctx, cx);
        }
        for _ in 0..READ_ROUNDS {
            if self.gated(ctx, cx) {
                return Poll::Pending;
            }
            let mut rbuf = ctx.rbuf.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut rbuf[..]) {
                Poll::Ready(Ok(0)) => return self.on_eof(ctx),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut core = ctx.core.borrow_mut();
                    core.on_bytes(self.idx, &mut rbuf[..n]);
                    if core.fanout_pending() {
                        // A publish here fanned out past the slice's budget:
                        // the mesh task continues it after the reactor ran,
                        // and this reader waits until it is done (pushed
                        // back, woken by `run_fanout`). Re-waking ourselves
                        // instead would keep the task queue busy and hide
                        // io_uring from the reactor (docs/GLOMMIO-NOTES.md).
                        ctx.bell.notify();
                        core.wake_after_fanout(self.idx);
                        return Poll::Pending;
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // More may be waiting: let other connections run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether input must wait (and the wake-up that ends the wait is
    /// arranged): a `rate_limited` push back, a parked fanout, or a full
    /// inbound buffer.
    fn gated(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> bool {
        if let Some(t) = self.pause.as_mut() {
            if Pin::new(t).poll(cx).is_pending() {
                return true;
            }
            self.pause = None;
        }
        let mut core = ctx.core.borrow_mut();
        let paused = core.conns.get_mut(self.idx).and_then(|c| c.read_paused_until.take());
        if let Some(until) = paused {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                core.counters.reads_paused += 1;
                let mut t = Timer::new(left);
                // Registers the waker; it fires after `left`.
                if Pin::new(&mut t).poll(cx).is_pending() {
                    self.pause = Some(t);
                    return true;
                }
            }
        }
        if core.fanout_pending() {
            // Pushed back until the parked fanouts are done.
            core.wake_after_fanout(self.idx);
            return true;
        }
        let max_body = core.limits.max_message_bytes;
        // Woken again once the answer is queued or the writer drains.
        core.conns.get(self.idx).is_some_and(|c| c.input_paused(max_body))
    }

    /// The peer's FIN (or TLS close_notify): a half-close. Answers already
    /// queued or still owed by an owner are delivered before the socket
    /// closes.
    fn on_eof(&mut self, ctx: &ShardCtx) -> Poll<()> {
        self.eof = true;
        let mut core = ctx.core.borrow_mut();
        core.counters.peer_eofs += 1;
        if core.peer_eof(self.idx) && self.tls.as_ref().is_none_or(|t| t.flushed()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// [`Task::read`] through TLS: first what rustls already decrypted, then
    /// ciphertext held back, then the socket.
    fn read_tls(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READ_ROUNDS {
            if self.gated(ctx, cx) {
                return Poll::Pending;
            }
            let Some(tls) = self.tls.as_deref_mut() else {
                return Poll::Ready(());
            };
            match drain_plain(tls, ctx, self.idx) {
                Plain::Empty => {}
                Plain::Paused => continue,
                Plain::Eof => return self.on_eof(ctx),
                Plain::Broken => return Poll::Ready(()),
            }
            if !tls.backlog.is_empty() {
                let mut rd = &tls.backlog[..];
                let took = tls.conn.read_tls(&mut rd).unwrap_or(0);
                tls.backlog.drain(..took);
                if tls.backlog.is_empty() {
                    tls.backlog = Vec::new();
                }
                if let Err(e) = tls.conn.process_new_packets() {
                    return self.tls_failed(ctx, cx, &e);
                }
                continue;
            }
            let mut rbuf = ctx.rbuf.borrow_mut();
            let n = match Pin::new(&mut self.stream).poll_read(cx, &mut rbuf[..]) {
                Poll::Ready(Ok(0)) => {
                    drop(rbuf);
                    return self.on_eof(ctx);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => n,
                Poll::Pending => return Poll::Pending,
            };
            ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // rustls takes at most a few records per call; decrypt and hand
            // on as it goes, and keep what input could not take yet.
            let mut fed = 0;
            while fed < n {
                let mut rd = &rbuf[fed..n];
                // An error: its plaintext buffer is full (input paused).
                let took = tls.conn.read_tls(&mut rd).unwrap_or_default();
                fed += took;
                if let Err(e) = tls.conn.process_new_packets() {
                    drop(rbuf);
                    return self.tls_failed(ctx, cx, &e);
                }
                tls.count_handshake(ctx);
                match drain_plain(tls, ctx, self.idx) {
                    Plain::Empty if took > 0 => {}
                    Plain::Empty | Plain::Paused => break,
                    Plain::Eof => {
                        drop(rbuf);
                        return self.on_eof(ctx);
                    }
                    Plain::Broken => return Poll::Ready(()),
                }
            }
            if fed < n {
                tls.backlog.extend_from_slice(&rbuf[fed..n]);
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A TLS error: counted, the alert rustls queued sent if the socket
    /// takes it at once, and the connection ends.
    fn tls_failed(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>, e: &rustls::Error) -> Poll<()> {
        ctx.core.borrow_mut().counters.tls_errors += 1;
        tracing::debug!(shard = ctx.id, error = %e, "TLS error");
        if let Some(tls) = self.tls.as_deref_mut() {
            let mut cbuf = ctx.cipher.borrow_mut();
            cbuf.clear();
            while tls.conn.wants_write() && tls.conn.write_tls(&mut *cbuf).unwrap_or(0) > 0 {}
            let _ = Pin::new(&mut self.stream).poll_write(cx, &cbuf);
        }
        Poll::Ready(())
    }

    /// Writes what is queued, one `send` per chunk; Ready on a socket error.
    fn write(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        if self.tls.is_some() {
            return self.write_tls(ctx, cx);
        }
        let mut core = ctx.core.borrow_mut();
        let core = &mut *core;
        let Some(conn) = core.conns.get_mut(self.idx) else {
            return Poll::Ready(());
        };
        let counters = &mut core.counters;
        loop {
            if !conn.out.pending().is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, conn.out.pending()) {
                    Poll::Ready(Ok(n)) => {
                        counters.sends += 1;
                        counters.bytes_sent += n as u64;
                        conn.out.advance_pending(n);
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let mut wbuf = ctx.wbuf.borrow_mut();
            wbuf.clear();
            conn.out.fill(&mut wbuf, WRITE_CHUNK);
            if !core.receipts.sink.borrow().is_empty() {
                // A receipt part finished here: the mesh task sends it.
                ctx.bell.notify();
            }
            if wbuf.is_empty() {
                drop(wbuf);
                resume_pipelined(core, self.idx, cx);
                return Poll::Pending;
            }
            match Pin::new(&mut self.stream).poll_write(cx, &wbuf) {
                Poll::Ready(Ok(n)) => {
                    counters.sends += 1;
                    counters.bytes_sent += n as u64;
                    conn.out.keep_unsent(&wbuf[n..]);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {
                    conn.out.keep_unsent(&wbuf);
                    return Poll::Pending;
                }
            }
        }
    }

    /// [`Task::write`] through TLS: ciphertext the socket did not take
    /// first, then records rustls has ready, then queued frames encrypted
    /// (a chunk of plaintext at a time, so the outbound limits still see
    /// nearly all of what is owed).
    fn write_tls(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(());
        };
        let mut core = ctx.core.borrow_mut();
        let core = &mut *core;
        let Some(conn) = core.conns.get_mut(self.idx) else {
            return Poll::Ready(());
        };
        let counters = &mut core.counters;
        loop {
            if tls.sent < tls.unsent.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &tls.unsent[tls.sent..]) {
                    Poll::Ready(Ok(n)) => {
                        counters.sends += 1;
                        counters.bytes_sent += n as u64;
                        tls.sent += n;
                        if tls.sent >= tls.unsent.len() {
                            tls.unsent = Vec::new();
                            tls.sent = 0;
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if tls.conn.wants_write() {
                let mut cbuf = ctx.cipher.borrow_mut();
                cbuf.clear();
                while cbuf.len() < WRITE_CHUNK && tls.conn.wants_write() {
                    // Writing into a Vec cannot fail.
                    if tls.conn.write_tls(&mut *cbuf).unwrap_or(0) == 0 {
                        break;
                    }
                }
                match Pin::new(&mut self.stream).poll_write(cx, &cbuf) {
                    Poll::Ready(Ok(n)) => {
                        counters.sends += 1;
                        counters.bytes_sent += n as u64;
                        if n < cbuf.len() {
                            tls.unsent.extend_from_slice(&cbuf[n..]);
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        tls.unsent.extend_from_slice(&cbuf);
                        return Poll::Pending;
                    }
                }
                continue;
            }
            if !conn.out.pending().is_empty() {
                let n = tls.conn.writer().write(conn.out.pending()).unwrap_or(0);
                if n == 0 {
                    // Not yet: the handshake is still running.
                    return Poll::Pending;
                }
                conn.out.advance_pending(n);
                continue;
            }
            let mut wbuf = ctx.wbuf.borrow_mut();
            wbuf.clear();
            conn.out.fill(&mut wbuf, WRITE_CHUNK);
            if !core.receipts.sink.borrow().is_empty() {
                // A receipt part finished here: the mesh task sends it.
                ctx.bell.notify();
            }
            if wbuf.is_empty() {
                drop(wbuf);
                resume_pipelined(core, self.idx, cx);
                return Poll::Pending;
            }
            let n = tls.conn.writer().write(&wbuf).unwrap_or(0);
            conn.out.keep_unsent(&wbuf[n..]);
            if n == 0 {
                return Poll::Pending;
            }
        }
    }

    fn poll_handshake_deadline(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = self.handshake_timer.as_mut() else {
            return Poll::Pending;
        };
        if Pin::new(timer).poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.handshake_timer = None;
        let mut core = ctx.core.borrow_mut();
        core.counters.handshake_timeouts += 1;
        core.close_http(self.idx, &handshake::reject_response(408, "Request Timeout"));
        drop(core);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After the peer's EOF: done once nothing is owed ([`Conn::settled`]),
    /// or at the linger bound (an owner that never answers cannot hold the
    /// socket).
    ///
    /// [`Conn::settled`]: crate::conn::Conn::settled
    fn poll_settle(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        let tls_flushed = self.tls.as_ref().is_none_or(|t| t.flushed());
        if tls_flushed && ctx.core.borrow().conns.get(self.idx).is_none_or(|c| c.settled()) {
            return Poll::Ready(());
        }
        let linger = self.linger.get_or_insert_with(|| Timer::new(CLOSE_LINGER));
        if Pin::new(linger).poll(cx).is_ready() {
            ctx.core.borrow_mut().counters.close_linger_expired += 1;
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Flush, shut down the write side, wait for the peer's FIN, all within
    /// the linger bound.
    fn poll_closing(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
        let linger = self.linger.get_or_insert_with(|| Timer::new(CLOSE_LINGER));
        if Pin::new(linger).poll(cx).is_ready() {
            ctx.core.borrow_mut().counters.close_linger_expired += 1;
            return Poll::Ready(());
        }
        let flushed = ctx.core.borrow().conns.get(self.idx).is_none_or(|c| c.out.is_empty())
            && self.tls.as_ref().is_none_or(|t| t.flushed());
        if flushed && !self.shut {
            if let Some(t) = self.tls.as_deref_mut().filter(|t| !t.notified) {
                // TLS closes with close_notify ahead of the FIN.
                t.notified = true;
                t.conn.send_close_notify();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.shut = true;
            // The whole reply is out; FIN tells the peer, and reading on
            // until its FIN avoids a RST that could destroy the close frame.
            let _ = socket_shutdown_write(&self.stream);
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// Everything queued was written: pipelined HTTP requests that waited for
/// these answers to drain are handled now.
fn resume_pipelined(core: &mut crate::conn::core::ShardCore, idx: usize, cx: &mut Context<'_>) {
    let waiting = core
        .conns
        .get(idx)
        .is_some_and(|c| c.phase == Phase::Http && !c.inbuf.is_empty() && !c.http.as_ref().is_some_and(|h| h.busy));
    if waiting {
        core.tick(Instant::now());
        core.resume_input(idx);
        cx.waker().wake_by_ref();
    }
}

/// Hands what rustls decrypted to the shard core, until nothing is left or
/// input must wait.
fn drain_plain(tls: &mut Tls, ctx: &ShardCtx, idx: usize) -> Plain {
    let mut plain = ctx.plain.borrow_mut();
    loop {
        {
            let core = ctx.core.borrow();
            let max_body = core.limits.max_message_bytes;
            let stop = core.fanout_pending()
                || core.conns.get(idx).is_none_or(|c| c.read_paused_until.is_some() || c.input_paused(max_body));
            if stop {
                return Plain::Paused;
            }
        }
        match tls.conn.reader().read(&mut plain[..]) {
            Ok(0) => return Plain::Eof,
            Ok(m) => {
                let mut core = ctx.core.borrow_mut();
                core.on_bytes(idx, &mut plain[..m]);
                if core.fanout_pending() {
                    // As in `Task::read`: the reader waits for the fanout.
                    ctx.bell.notify();
                    core.wake_after_fanout(idx);
                    return Plain::Paused;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Plain::Empty,
            Err(_) => return Plain::Broken,
        }
    }
}

fn socket_shutdown_write(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a socket fd we own; no memory is passed.
    let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
