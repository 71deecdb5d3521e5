//! The public entry point: start the shards, talk to them over the control
//! plane, stop them.
//!
//! Runs on the caller's thread (the binary's main thread, or a test's). It
//! builds every listener and the whole mesh before any shard starts, so a
//! bind or config error is reported before anything runs, and port 0 works:
//! the first listener picks the port and the others join it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, ConfigError};
use crate::conn::stats::Totals;
use crate::mesh;
use crate::shard::control::{ControlHandle, ShardLink};
use crate::shard::{self, ShardExit, ShardSpec};
use crate::topic::PartitionMap;

/// glommio refuses to start with less locked memory than this.
const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is invalid for this host.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// RLIMIT_MEMLOCK is below what glommio needs.
    #[error("RLIMIT_MEMLOCK is {have} bytes; glommio needs at least {need} plus shards.io_memory_kib per shard: raise it (ulimit -l, or LimitMEMLOCK= in systemd)")]
    Memlock {
        /// Current soft limit.
        have: u64,
        /// Minimum needed.
        need: u64,
    },
    /// A listener could not be bound.
    #[error("cannot start the {listener} listener on {addr}: {source}{hint}")]
    Bind {
        /// Which listener: "public" (`server.listen`) or "admin" (`admin.listen`).
        listener: &'static str,
        /// What to change.
        hint: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A shard's executor could not start (often: io_uring unavailable).
    #[error("shard {shard} (cpu {cpu}) failed to start: {message}. If io_uring is blocked (kernel.io_uring_disabled, or a container seccomp profile), shardcast cannot run here")]
    Shard {
        /// Shard index.
        shard: usize,
        /// Its CPU.
        cpu: usize,
        /// glommio's error.
        message: String,
    },
    /// `[cluster]`: NATS or JetStream is not there.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// An OS resource (socket pair for a doorbell) could not be created.
    #[error("cannot create the mesh: {0}")]
    Mesh(std::io::Error),
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    map: PartitionMap,
    control: ControlHandle,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    exits: Receiver<ShardExit>,
    admin: Option<crate::admin::AdminServer>,
    /// `[tls]` cert and key files, re-read by [`ServerHandle::reload_tls`].
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Durable mode: the NATS JetStream participant.
    participant: Option<crate::cluster::Participant>,
}

/// Starts a server with `cfg`; returns once every shard is running.
pub fn start(cfg: Config) -> Result<ServerHandle, StartError> {
    cfg.validate()?;
    let cpus = cfg.shard_cpus()?;
    check_memlock()?;
    // glommio sends without MSG_NOSIGNAL: a write to a reset socket must
    // not kill the process.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    let access = Arc::new(crate::auth::Access {
        verifier: crate::auth::Verifier::new(&cfg.auth.verifier_config())
            .map_err(|problem| ConfigError::Invalid { field: "auth", problem })?,
        required: cfg.auth.required,
        origins: cfg.auth.origins.clone(),
        subprotocols: cfg.server.subprotocols.clone(),
        quotas: crate::auth::Quotas::new(cfg.quotas.default, &cfg.quotas.tenants),
    });
    let n = cpus.len();
    let tls = match cfg.tls.enabled() {
        true => crate::auth::tls::load(&cfg.tls.cert_file, &cfg.tls.key_file)
            .map(|t| crate::auth::tls::per_shard(&t, n))
            .map_err(|problem| ConfigError::Invalid { field: "tls", problem })?,
        false => Vec::new(),
    };
    let map = PartitionMap { partitions: cfg.shards.partitions, shards: n };
    let (listeners, addr) = bind_listeners(cfg.server.listen, cfg.server.backlog, n)?;
    let mut meshes = mesh::build(n, cfg.shards.ring_capacity).map_err(StartError::Mesh)?;
    // Durable mode: the NATS JetStream participant joins the mesh as
    // participant `n`, with a ring to and from every shard.
    let (participant, mut cluster_ends) = match cfg.cluster.nats_url.is_empty() {
        true => (None, Vec::new()),
        false => {
            let bells = meshes.iter().map(|m| m.bell.clone()).collect();
            let (p, ends) = crate::cluster::start(&cfg, map, bells)?;
            (Some(p), ends.into_iter().map(Some).collect())
        }
    };
    for (m, end) in meshes.iter_mut().zip(cluster_ends.iter_mut()) {
        if let Some(e) = end.as_mut() {
            let (_, placeholder) = rtrb::RingBuffer::new(1);
            m.inboxes.push((n, std::mem::replace(&mut e.from, placeholder)));
        }
    }
    let (exit_tx, exits) = crossbeam_channel::unbounded();
    let mut links = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for (id, ((cpu, listener), mesh)) in cpus.iter().copied().zip(listeners).zip(meshes).enumerate() {
        let (control_tx, control) = crossbeam_channel::unbounded();
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        links.push(ShardLink { control: control_tx, bell: mesh.bell.clone(), progress: progress.clone() });
        let spec = ShardSpec {
            id,
            progress,
            tls: tls.get(id).cloned(),
            cpu,
            listener,
            mesh,
            map,
            limits: cfg.limits.clone(),
            control,
            policy: crate::conn::core::Policy {
                ack: Default::default(),
                access: access.clone(),
                echo_path: (!cfg.server.echo_path.is_empty()).then(|| cfg.server.echo_path.as_str().into()),
                replay: cfg.replay.clone(),
                rates: cfg.rates.clone(),
                liveness: cfg.liveness.clone(),
                groups: cfg.groups.clone(),
                requests: cfg.requests.clone(),
                streams: cfg.streams.clone(),
                retained: cfg.retained.clone(),
                presence: cfg.presence.clone(),
                centrifugo: cfg.centrifugo.clone(),
            },
            durable: cluster_ends.get_mut(id).and_then(Option::take).map(|e| {
                crate::conn::durable::Durable::new(
                    e.to,
                    e.bell,
                    cfg.cluster.streams.max(1) as usize,
                    cfg.cluster.max_inflight,
                    cfg.cluster.max_loading,
                )
            }),
        };
        match shard::spawn(spec, &cfg.shards, exit_tx.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                let mut handle = ServerHandle::new(addr, map, links, threads, exits);
                handle.participant = participant;
                handle.shutdown();
                return Err(StartError::Shard { shard: id, cpu, message: e.to_string() });
            }
        }
    }
    let mut handle = ServerHandle::new(addr, map, links, threads, exits);
    handle.participant = participant;
    // Every shard answering the control plane means every executor is up.
    handle.try_stats(Duration::from_secs(10)).ok_or_else(|| StartError::Shard {
        shard: 0,
        cpu: cpus[0],
        message: "a shard did not come up within 10 s".into(),
    })?;
    let mut handle = handle;
    if cfg.tls.enabled() {
        handle.tls_files = Some((cfg.tls.cert_file.clone(), cfg.tls.key_file.clone()));
    }
    if cfg.admin.enabled {
        match crate::admin::AdminServer::start(&cfg.admin, handle.control()) {
            Ok(a) => handle.admin = Some(a),
            Err(source) => {
                handle.shutdown();
                let hint = " (change admin.listen or --admin-listen, or disable it with --no-admin)";
                return Err(StartError::Bind { listener: "admin", hint, addr: cfg.admin.listen, source });
            }
        }
    }
    Ok(handle)
}

fn check_memlock() -> Result<(), StartError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(()); // cannot tell; glommio will say
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MIN_MEMLOCK {
        return Err(StartError::Memlock { have: lim.rlim_cur, need: MIN_MEMLOCK });
    }
    Ok(())
}

const PUBLIC_HINT: &str = " (is another shardcast or server running there? change server.listen or --listen)";

fn public_bind(addr: SocketAddr, source: std::io::Error) -> StartError {
    StartError::Bind { listener: "public", hint: PUBLIC_HINT, addr, source }
}

/// One SO_REUSEPORT listener per shard on the same address.
///
/// SO_REUSEPORT would also let a second *process* join the port, and the
/// kernel would then split clients between two engines with different
/// epochs (a silent split brain). So the address is first claimed by a
/// probe socket without SO_REUSEPORT, which fails with EADDRINUSE if anyone
/// listens there; the probe is closed and the shard listeners bound at once.
fn bind_listeners(addr: SocketAddr, backlog: u32, n: usize) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| s.set_reuse_address(true).map(|_| s))
            .and_then(|s| s.bind(&addr.into()).map(|_| s))
            .map_err(|source| public_bind(addr, source))?;
        drop(probe);
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = listener(bound, backlog).map_err(|source| public_bind(bound, source))?;
        if bound.port() == 0 {
            let local = sock.local_addr().ok().and_then(|a| a.as_socket());
            bound = local.ok_or_else(|| public_bind(addr, std::io::Error::other("no local address")))?;
        }
        out.push(OwnedFd::from(sock));
    }
    Ok((out, bound))
}

fn listener(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock)
}

impl ServerHandle {
    fn new(
        addr: SocketAddr,
        map: PartitionMap,
        links: Vec<ShardLink>,
        threads: Vec<glommio::ExecutorJoinHandle<()>>,
        exits: Receiver<ShardExit>,
    ) -> Self {
        let control = ControlHandle::new(links, Arc::new(AtomicBool::new(false)));
        Self { addr, map, control, threads, exits, admin: None, tls_files: None, participant: None }
    }

    /// Whether the public listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_files.is_some()
    }

    /// Re-reads the `[tls]` files and hands every shard the new config
    /// (what SIGHUP does). Open connections keep their sessions; new ones
    /// get the new certificate. On an error nothing changes.
    pub fn reload_tls(&self) -> Result<(), String> {
        let Some((cert, key)) = &self.tls_files else {
            return Err("no [tls] configured".into());
        };
        let template = crate::auth::tls::load(cert, key)?;
        self.control.reload_tls(crate::auth::tls::per_shard(&template, self.control.shards()));
        Ok(())
    }

    /// The public listener's address (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.control.shards()
    }

    /// The shard that owns `topic`.
    pub fn owner_of(&self, topic: &str) -> usize {
        self.map.owner(topic)
    }

    /// Shard exits, for a supervisor to wait on.
    pub fn exits(&self) -> &Receiver<ShardExit> {
        &self.exits
    }

    /// The control plane, for other threads (admin listener, supervisor).
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// See [`ControlHandle::alive`].
    pub fn alive(&self, timeout: Duration) -> Result<(), usize> {
        self.control.alive(timeout)
    }

    /// See [`ControlHandle::try_stats`].
    pub fn try_stats(&self, timeout: Duration) -> Option<Totals> {
        self.control.try_stats(timeout)
    }

    /// The admin listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    /// A snapshot of every shard. Panics if a shard does not answer within
    /// 10 s (meant for tests and tools).
    pub fn stats(&self) -> Totals {
        self.try_stats(Duration::from_secs(10)).expect("every shard answers the control plane")
    }

    /// Graceful drain: every shard stops accepting, flushes what it has
    /// queued, sends `drain` and closes with 1012; returns when no
    /// connection is left or at `timeout`, whether all closed in time.
    /// Call [`ServerHandle::shutdown`] afterwards.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.control.begin_drain();
        while std::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Some(t) = self.try_stats(left.min(Duration::from_secs(1))) {
                if t.sum(|s| s.connections_open) == 0 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops every shard and waits for their threads.
    pub fn shutdown(mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        self.control.stop_all();
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(p) = self.participant.take() {
            p.stop();
        }
    }
}
