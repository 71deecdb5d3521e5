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
                glommio::spawn_local(serve(ctx.clone(), stream, r)).detach();
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
}

/// Runs one connection to its end, then forgets it in the shard core.
async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream, r: ConnRef) {
    let timeout = Duration::from_millis(ctx.core.borrow().limits.handshake_timeout_ms);
    let mut task = Task {
        idx: r.idx as usize,
        stream,
        handshake_timer: Some(Timer::new(timeout)),
        linger: None,
        shut: false,
        eof: false,
        pause: None,
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
        if let Some(t) = self.pause.as_mut() {
            if Pin::new(t).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        for _ in 0..READ_ROUNDS {
            {
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
                            return Poll::Pending;
                        }
                    }
                }
                if core.fanout_pending() {
                    // Pushed back until the parked fanouts are done.
                    core.wake_after_fanout(self.idx);
                    return Poll::Pending;
                }
                let max_body = core.limits.max_message_bytes;
                if core.conns.get(self.idx).is_some_and(|c| c.input_paused(max_body)) {
                    // Woken again once the answer is queued or the writer drains.
                    return Poll::Pending;
                }
            }
            let mut rbuf = ctx.rbuf.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut rbuf[..]) {
                Poll::Ready(Ok(0)) => {
                    // A half-close: answers already queued or still owed by
                    // an owner are delivered before the socket closes.
                    self.eof = true;
                    let mut core = ctx.core.borrow_mut();
                    core.counters.peer_eofs += 1;
                    return if core.peer_eof(self.idx) { Poll::Ready(()) } else { Poll::Pending };
                }
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

    /// Writes what is queued, one `send` per chunk; Ready on a socket error.
    fn write(&mut self, ctx: &ShardCtx, cx: &mut Context<'_>) -> Poll<()> {
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
            if wbuf.is_empty() {
                if conn.phase == Phase::Http && !conn.inbuf.is_empty() && !conn.http.as_ref().is_some_and(|h| h.busy) {
                    // Pipelined requests waited for these answers to drain.
                    drop(wbuf);
                    core.tick(Instant::now());
                    core.resume_input(self.idx);
                    cx.waker().wake_by_ref();
                }
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
        if ctx.core.borrow().conns.get(self.idx).is_none_or(|c| c.settled()) {
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
        let flushed = ctx.core.borrow().conns.get(self.idx).is_none_or(|c| c.out.is_empty());
        if flushed && !self.shut {
            self.shut = true;
            // The whole reply is out; FIN tells the peer, and reading on
            // until its FIN avoids a RST that could destroy the close frame.
            let _ = socket_shutdown_write(&self.stream);
            cx.waker().wake_by_ref();
        }
        Poll::Pending
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
