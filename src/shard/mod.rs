//! Shard bootstrap and scheduling: one glommio executor per core-map entry, pinned with
//! `Placement::Fixed`, named `shard-NN`, each with its own SO_REUSEPORT
//! listener and its ends of the mesh; a guard that tells the supervisor when
//! a shard's thread ends, however it ends.
//!
//! Inside a shard: the accept task, one task per connection ([`io`]) and
//! the mesh task below, which drains the inbound rings in batches and
//! answers the control plane. All of them share one [`ShardCtx`] through an
//! `Rc`; its `RefCell`s are never borrowed across an `.await`.

pub mod control;
pub mod io;

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use futures_lite::AsyncReadExt;
use glommio::{LocalExecutorBuilder, Placement};

pub use self::control::Control;
use crate::config::{Limits, ShardsConfig};
use crate::conn::core::ShardCore;
use crate::conn::stats::{RingStats, ShardStats};
use crate::mesh::MeshEnds;
use crate::topic::PartitionMap;

/// Mesh messages handled per ring before other tasks get to run.
const RING_BATCH: usize = 1024;
/// Size of the shard-wide read buffer.
pub const READ_BUF: usize = 64 * 1024;
/// How often a shard with overflowed control messages retries its rings.
const OVERFLOW_RETRY: Duration = Duration::from_micros(200);

/// What one shard's tasks share.
pub struct ShardCtx {
    /// Shard index.
    pub id: usize,
    /// The shard's state.
    pub core: RefCell<ShardCore>,
    /// Shard-wide read buffer: every connection reads into this.
    pub rbuf: RefCell<Box<[u8]>>,
    /// Shard-wide write buffer: queued frames are coalesced here for one send.
    pub wbuf: RefCell<Vec<u8>>,
    /// This shard's own doorbell: rung when a connection task parks a
    /// fanout, so the mesh task continues it after the reactor ran.
    pub bell: std::sync::Arc<crate::mesh::Doorbell>,
    /// Bumped as the shard's tasks run (mesh batches, reads, sweeps): the
    /// supervisor tells a busy shard from a wedged one by it. Written only
    /// by this thread; one relaxed add per batch or read, never per message.
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The shard is stopping: accept no more.
    pub stopping: Cell<bool>,
    /// TLS for connections accepted from now on (`[tls]`), replaced on reload.
    pub tls: RefCell<Option<crate::auth::tls::ServerTls>>,
    /// Shard-wide buffer for decrypted TLS input.
    pub plain: RefCell<Box<[u8]>>,
    /// Shard-wide buffer for TLS records on their way out.
    pub cipher: RefCell<Vec<u8>>,
}

/// Why a shard thread ended, for the supervisor.
#[derive(Debug, Clone)]
pub struct ShardExit {
    /// Shard index.
    pub shard: usize,
    /// It ended by panicking.
    pub panicked: bool,
}

/// Sends a [`ShardExit`] when dropped: on return and on unwind alike.
struct ExitGuard {
    shard: usize,
    tx: Sender<ShardExit>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(ShardExit { shard: self.shard, panicked: std::thread::panicking() });
    }
}

/// Everything a shard thread needs, moved into it.
pub struct ShardSpec {
    /// Shard index.
    pub id: usize,
    /// CPU to pin to.
    pub cpu: usize,
    /// This shard's listener socket (bound, listening, non-blocking).
    pub listener: OwnedFd,
    /// Mesh ends.
    pub mesh: MeshEnds,
    /// Topic → owner map.
    pub map: PartitionMap,
    /// Limits.
    pub limits: Limits,
    /// Control-plane inbox.
    pub control: Receiver<Control>,
    /// Replay, rate and liveness settings.
    pub policy: crate::conn::core::Policy,
    /// Bumped by the shard as its tasks run; read by the supervisor.
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// TLS config, when `[tls]` is set.
    pub tls: Option<crate::auth::tls::ServerTls>,
    /// Durable mode: this shard's end of the cluster participant.
    pub durable: Option<crate::conn::durable::Durable>,
}

/// Starts a shard thread.
pub fn spawn(
    spec: ShardSpec,
    cfg: &ShardsConfig,
    exits: Sender<ShardExit>,
) -> glommio::Result<glommio::ExecutorJoinHandle<()>, ()> {
    LocalExecutorBuilder::new(Placement::Fixed(spec.cpu))
        .name(&format!("shard-{:02}", spec.id))
        .preempt_timer(Duration::from_micros(cfg.preempt_timer_us))
        .io_memory(cfg.io_memory_kib * 1024)
        .spin_before_park(Duration::from_micros(cfg.spin_before_park_us))
        .spawn(move || async move {
            let _guard = ExitGuard { shard: spec.id, tx: exits };
            run(spec).await;
        })
}

async fn run(spec: ShardSpec) {
    let ShardSpec { id, listener, mesh, map, limits, control, policy, progress, tls, durable, .. } = spec;
    let MeshEnds { outboxes, inboxes, bell, bell_rx } = mesh;
    let ctx = Rc::new(ShardCtx {
        id,
        core: RefCell::new({
            let mut core = ShardCore::with_policy(id, map, limits, outboxes, policy);
            core.durable = durable;
            core
        }),
        rbuf: RefCell::new(vec![0u8; READ_BUF].into_boxed_slice()),
        wbuf: RefCell::new(Vec::with_capacity(self::io::WRITE_CHUNK + 4096)),
        bell: bell.clone(),
        progress,
        stopping: Cell::new(false),
        plain: RefCell::new(vec![0u8; if tls.is_some() { READ_BUF } else { 0 }].into_boxed_slice()),
        cipher: RefCell::new(Vec::new()),
        tls: RefCell::new(tls),
    });
    // SAFETY: the fd is a listening TCP socket this thread now owns alone.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let accept = glommio::spawn_local(self::io::accept_loop(ctx.clone(), listener));
    let sweeper = glommio::spawn_local(sweep_liveness(ctx.clone()));
    let owner_sweep = glommio::spawn_local(sweep_owner(ctx.clone()));
    let token_sweep = glommio::spawn_local(sweep_tokens(ctx.clone()));
    let group_sweep = glommio::spawn_local(sweep_groups(ctx.clone()));
    // SAFETY: the read end of the doorbell pair, owned by this shard alone.
    let bell_rx = unsafe { glommio::net::UnixStream::from_raw_fd(bell_rx.into_raw_fd()) };
    let mesh = MeshTask { ctx: ctx.clone(), inboxes, bell, bell_rx, control, accept: Some(accept) };
    mesh.run().await;
    ctx.stopping.set(true);
    drop(sweeper);
    drop(owner_sweep);
    drop(token_sweep);
    drop(group_sweep);
}

/// Runs the consumer groups' timer wheel (settle deadlines, redelivery
/// backoffs, request deadlines, empty-group expiry): one timer per shard,
/// a bounded number of expiries per step. It sleeps until the first
/// millisecond tick whose slot holds a timer (at most a second), and an
/// insert due earlier wakes it: an idle shard, or one whose timers are
/// cancelled before they fire, does not wake for them.
async fn sweep_groups(ctx: Rc<ShardCtx>) {
    use crate::conn::groups::{GROUP_IDLE_TICK, GROUP_TICK};
    let horizon = (GROUP_IDLE_TICK.as_nanos() / GROUP_TICK.as_nanos()) as u64;
    loop {
        let now = std::time::Instant::now();
        let until = ctx.core.borrow().groups.wheel.next_wake(horizon).unwrap_or(now + GROUP_IDLE_TICK);
        let nap = glommio::timer::Timer::new(until.saturating_duration_since(now));
        let early = std::future::poll_fn(|cx| {
            let mut core = ctx.core.borrow_mut();
            if core.groups.wheel.woke_early() {
                return std::task::Poll::Ready(());
            }
            core.groups.wheel.nap(until, cx.waker());
            std::task::Poll::Pending
        });
        futures_lite::future::or(
            async {
                nap.await;
            },
            early,
        )
        .await;
        ctx.core.borrow_mut().groups.wheel.woke_early();
        if ctx.stopping.get() {
            return;
        }
        loop {
            let more = {
                let mut core = ctx.core.borrow_mut();
                if core.groups.wheel.is_empty() {
                    false
                } else {
                    ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    core.groups_tick(std::time::Instant::now())
                }
            };
            if !more {
                break;
            }
            futures_lite::future::yield_now().await;
        }
    }
}

/// Steps of owner sweep work done per timer tick before yielding.
const SWEEP_WORK: usize = 4096;

/// Runs the owner's sweep (replay and dedupe age, shard budget, quiet
/// topics) on a timer, a bounded amount of work per tick: a shard with a
/// large backlog of expired state catches up over several ticks instead of
/// stalling its connections.
async fn sweep_owner(ctx: Rc<ShardCtx>) {
    let period = Duration::from_millis(ctx.core.borrow().policy.replay.sweep_interval_ms);
    loop {
        glommio::timer::Timer::new(period).await;
        if ctx.stopping.get() {
            return;
        }
        loop {
            ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let more = {
                let mut core = ctx.core.borrow_mut();
                core.tick(std::time::Instant::now());
                let now = core.now;
                core.sweep_streams(now);
                core.flush_receipts();
                core.owner.sweep(now, SWEEP_WORK)
            };
            if !more {
                break;
            }
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
        }
    }
}

/// How often a shard closes connections whose token expired.
const TOKEN_SWEEP: Duration = Duration::from_millis(250);

/// Closes (4001) connections whose token expired: one timer per shard over
/// one heap of expiries, not a timer per connection.
async fn sweep_tokens(ctx: Rc<ShardCtx>) {
    loop {
        glommio::timer::Timer::new(TOKEN_SWEEP).await;
        if ctx.stopping.get() {
            return;
        }
        let mut core = ctx.core.borrow_mut();
        if !core.expiries.is_empty() {
            core.sweep_expiry(std::time::Instant::now());
        }
    }
}

/// Runs the liveness sweep every half ping interval.
async fn sweep_liveness(ctx: Rc<ShardCtx>) {
    loop {
        let period = ctx.core.borrow().liveness_period();
        glommio::timer::Timer::new(period).await;
        if ctx.stopping.get() {
            return;
        }
        {
            ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut core = ctx.core.borrow_mut();
            core.tick(std::time::Instant::now());
            let now = core.now;
            core.sweep_liveness(now);
        }
    }
}

struct MeshTask {
    ctx: Rc<ShardCtx>,
    inboxes: Vec<(usize, rtrb::Consumer<crate::mesh::MeshMsg>)>,
    bell: std::sync::Arc<crate::mesh::Doorbell>,
    bell_rx: glommio::net::UnixStream,
    control: Receiver<Control>,
    /// The accept task; dropped (so the listener closes) when draining.
    accept: Option<glommio::Task<()>>,
}

impl MeshTask {
    /// Drains rings and control requests until told to stop.
    async fn run(mut self) {
        let mut sink = [0u8; 64];
        loop {
            self.ctx.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.handle_control() {
                return;
            }
            let handled = self.drain_rings();
            let overflowing = self.flush_overflow();
            if handled > 0 || self.ctx.core.borrow().fanout_pending() {
                // Let connection tasks write what was just queued, and let the
                // reactor look at sockets, before the next batch. A plain
                // `yield_now` would keep the task queue active, and glommio
                // polls io_uring only when queues drain or the preemption
                // timer fires (which we keep long: docs/GLOMMIO-NOTES.md).
                // Ringing our own doorbell makes the wake-up an io_uring
                // event: one small write per batch, not per message.
                self.bell.poke();
                let _ = self.bell_rx.read(&mut sink).await;
                continue;
            }
            self.bell.park();
            if self.has_work() {
                self.bell.unpark();
                continue;
            }
            if overflowing {
                let wake = async {
                    let _ = self.bell_rx.read(&mut sink).await;
                };
                let tick = async {
                    glommio::timer::Timer::new(OVERFLOW_RETRY).await;
                };
                futures_lite::future::or(wake, tick).await;
            } else {
                let _ = self.bell_rx.read(&mut sink).await;
            }
            self.bell.unpark();
        }
    }

    fn has_work(&self) -> bool {
        !self.control.is_empty()
            || self.inboxes.iter().any(|(_, c)| c.slots() > 0)
            || !self.ctx.core.borrow().receipts.sink.borrow().is_empty()
            || self.ctx.core.borrow().fanout_pending()
    }

    /// Returns true when the shard must stop.
    fn handle_control(&mut self) -> bool {
        while let Ok(req) = self.control.try_recv() {
            match req {
                Control::Stop => return true,
                Control::Stats(reply) => {
                    let _ = reply.send(snapshot(&self.ctx.core.borrow(), &self.bell));
                }
                Control::Ping(reply) => {
                    let _ = reply.send(());
                }
                Control::Tls(cfg) => {
                    *self.ctx.tls.borrow_mut() = Some(cfg);
                    self.ctx.core.borrow_mut().counters.tls_reloads += 1;
                }
                Control::Drain => {
                    self.ctx.stopping.set(true);
                    self.ctx.core.borrow_mut().begin_drain();
                    // Closing our listener lets the kernel send new
                    // connections to shards (or hosts) still accepting.
                    // Dropping a glommio task cancels it.
                    self.accept = None;
                }
            }
        }
        false
    }

    fn drain_rings(&mut self) -> usize {
        let mut core = self.ctx.core.borrow_mut();
        core.tick(std::time::Instant::now());
        // Parked fanouts first: what was sequenced earlier goes out first,
        // and nothing more is taken from the rings until they are done (the
        // rings then push back on the publishers). A batch is taken whole:
        // its fanouts park behind each other and go out over as many slices
        // as the budget needs, and the writers they fed are woken once the
        // batch is done, so slicing does not shrink what one send carries.
        if core.run_fanout() {
            return 0;
        }
        let mut handled = 0;
        core.begin_batch();
        for (from, cons) in self.inboxes.iter_mut() {
            let n = cons.slots().min(RING_BATCH);
            for _ in 0..n {
                match cons.pop() {
                    Ok(msg) => core.on_mesh(*from, msg),
                    Err(_) => break,
                }
                handled += 1;
            }
        }
        core.end_batch();
        core.flush_receipts();
        handled
    }

    fn flush_overflow(&mut self) -> bool {
        let mut core = self.ctx.core.borrow_mut();
        let waiting = core.durable.as_mut().is_some_and(|d| {
            d.flush();
            d.has_overflow()
        });
        core.outboxes.iter_mut().flatten().fold(waiting, |any, o| o.flush_overflow() | any)
    }
}

/// A stats snapshot of one shard.
pub fn snapshot(core: &ShardCore, bell: &crate::mesh::Doorbell) -> ShardStats {
    let (mut outbound_bytes, mut outbound_max_bytes, mut inbound_bytes) = (0u64, 0u64, 0u64);
    for (_, c) in core.conns.iter() {
        inbound_bytes += c.inbuf.len() as u64;
        let b = c.out.bytes() as u64;
        outbound_bytes += b;
        outbound_max_bytes = outbound_max_bytes.max(b);
    }
    let rings = core
        .outboxes
        .iter()
        .enumerate()
        .filter_map(|(to, o)| o.as_ref().map(|o| (to, o)))
        .map(|(to, o)| RingStats {
            to,
            occupancy: o.occupancy() as u64,
            overflow: o.overflow_len() as u64,
            full_events: o.full_events,
            pushed: o.pushed,
            owed: o.owed as u64,
            credit_refusals: o.credit_refusals,
            overflow_high_water: o.overflow_high_water as u64,
        })
        .collect();
    // One walk of the groups for all four figures.
    let (groups, requests) = (core.groups.totals(), core.requests.totals());
    ShardStats {
        shard: core.id,
        counters: core.counters.clone(),
        connections_open: core.conns.len() as u64,
        subscriptions: core.local.subscriptions(),
        local_topics: core.local.topics() as u64,
        owned_topics: core.owner.len() as u64,
        groups_owned: groups.0 as u64,
        group_pending: groups.1 as u64,
        group_inflight: groups.2 as u64,
        group_bytes: groups.3 as u64,
        requests_open: requests.0 as u64,
        requests_serving: requests.1 as u64,
        cluster_held: core.durable.as_ref().map_or(0, |d| d.held as u64),
        cluster_loading: core.durable.as_ref().map_or(0, |d| d.waiting as u64),
        cluster_owned: core.durable.as_ref().map_or(0, |d| d.owned_count() as u64),
        owned_interest: core.owner.total_interest(),
        outbound_bytes,
        outbound_max_bytes,
        inbound_bytes,
        rings,
        doorbell_kicks: bell.kicks(),
        retained: core.owner.retained(),
        owner_bytes: core.owner.bytes() as u64,
        stream_bytes: core.owner.stream_bytes() as u64,
        retained_values: {
            let (n, b) = core.owner.retained_values();
            (n as u64, b as u64)
        },
        tenants_tracked: core.tenants.len() as u64,
        tenant_table_overflow: core.tenants.overflowed,
        owner: core.owner.stats.clone(),
        top_topics: core.owner.busiest(crate::conn::stats::TOP_TOPICS),
        top_groups: core.groups.top(crate::conn::stats::TOP_GROUPS),
        services: core.requests.services(),
        backlog: backlog(core),
    }
}

/// Queued frames one scrape may walk per shard; past it the lag figures
/// are lower bounds (a scrape must not stall the shard).
pub const BACKLOG_WALK_BUDGET: usize = 200_000;

/// The oldest queued seq per local topic (metrics only: walks the queues,
/// within [`BACKLOG_WALK_BUDGET`]).
fn backlog(core: &ShardCore) -> Vec<(String, u64)> {
    let mut oldest: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut budget = BACKLOG_WALK_BUDGET;
    for (_, c) in core.conns.iter() {
        if budget == 0 {
            break;
        }
        c.out.for_each_queued(|t, seq| {
            if budget > 0 {
                budget -= 1;
                let e = oldest.entry(&**t).or_insert(seq);
                *e = (*e).min(seq);
            }
        });
    }
    oldest.into_iter().map(|(t, s)| (t.to_string(), s)).collect()
}
