//! The `shardcast` binary: `shardcast serve [--config FILE]`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use crossbeam_channel::select;
use shardcast::shard::control::{Verdict, Watchdog};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core WebSocket fanout engine.
#[derive(Parser)]
#[command(name = "shardcast", version, about)]
struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=shardcast=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: one pinned shard per CPU of the core map.
    Serve(ServeArgs),
    /// Print the embedded default config (a starting point for --config).
    DefaultConfig,
    /// Check this host's limits against a connection target and the config;
    /// exits 1 when they cannot be met.
    CheckHost {
        /// Config to check (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<String>,
        /// Connections the host should hold.
        #[arg(long, default_value_t = 100_000)]
        connections: u64,
    },
    /// Check the cluster store: NATS reachable, JetStream on, each of the
    /// config's streams (messages, bytes, topics, replicas); exits 1 if not.
    CheckCluster {
        /// Config whose `[cluster]` to check.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: String,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Core-mapping and limits config (TOML). Without it the embedded
    /// default applies: every CPU, 127.0.0.1:8080.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<String>,
    /// Override `server.listen` (e.g. 127.0.0.1:9000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Override `shards.cpus` with a comma-separated list (e.g. 0,1).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Override `admin.listen` (e.g. 127.0.0.1:9191).
    #[arg(long, value_name = "ADDR", conflicts_with = "no_admin")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Do not start the admin listener (`admin.enabled = false`).
    #[arg(long)]
    no_admin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::DefaultConfig => {
            print!("{}", shardcast::config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(args),
        Command::CheckCluster { config } => {
            let cfg = shardcast::Config::from_file(&config)?;
            match shardcast::cluster::check(&cfg) {
                Ok(text) => {
                    print!("{text}");
                    println!("=> ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("shardcast check-cluster: FAIL {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CheckHost { config, connections } => {
            let cfg = match config {
                Some(path) => shardcast::Config::from_file(&path)?,
                None => shardcast::Config::default(),
            };
            let (text, failed) = shardcast::host::report(&shardcast::host::check(&cfg, connections));
            println!("shardcast check-host: target {connections} connections");
            print!("{text}");
            if failed {
                println!("=> this host cannot meet the target/config as it is; see the FAIL lines");
                return Ok(ExitCode::FAILURE);
            }
            println!("=> ok");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.config {
        Some(path) => shardcast::Config::from_file(path)?,
        None => shardcast::Config::default(),
    };
    if let Some(addr) = args.listen {
        cfg.server.listen = addr;
    }
    if let Some(cpus) = args.cpus {
        cfg.shards.cpus = shardcast::config::Cpus::List(cpus);
    }
    if let Some(addr) = args.admin_listen {
        cfg.admin.listen = addr;
    }
    if args.no_admin {
        cfg.admin.enabled = false;
    }
    // Signal handlers go in before anything binds, so that a SIGTERM during
    // start-up is a drain, not the default kill.
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(4);
    let (hup_tx, hup_rx) = crossbeam_channel::bounded(4);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                // Reload, never stop (several queued HUPs are one reload).
                let _ = hup_tx.try_send(());
                continue;
            }
            seen += 1;
            if seen > 1 {
                // A second signal: no more patience.
                eprintln!("shardcast: second signal ({sig}); exiting now");
                std::process::exit(130);
            }
            if sig_tx.send(sig).is_err() {
                break;
            }
        }
    })?;
    let drain_ms = cfg.liveness.drain_timeout_ms;
    let server = shardcast::start(cfg).context("starting the engine")?;
    tracing::info!(addr = %server.local_addr(), shards = server.shards(), "shardcast serving WebSocket at {}://{}/ws", if server.tls_enabled() { "wss" } else { "ws" }, server.local_addr());

    let drain_timeout = std::time::Duration::from_millis(drain_ms);
    let mut watchdog = Watchdog::new(server.control());

    // The supervisor: stop on a signal; exit non-zero if any shard ends or
    // stops answering (a wedged shard cannot serve its connections and
    // partitions, so the process must be restarted as a whole).
    loop {
        select! {
            recv(sig_rx) -> sig => {
                tracing::info!(signal = ?sig.ok(), timeout = ?drain_timeout, "draining");
                let clean = server.drain(drain_timeout);
                if !clean {
                    tracing::warn!("drain bound reached with connections left; closing them");
                }
                server.shutdown();
                tracing::info!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            recv(hup_rx) -> _ => {
                match server.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it"),
                    Err(e) if server.tls_enabled() => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificate"),
                    Err(_) => tracing::info!("SIGHUP: no [tls] configured; nothing to reload"),
                }
            }
            recv(server.exits()) -> exit => {
                let exit = exit.ok();
                eprintln!(
                    "shardcast: shard {:?} stopped unexpectedly (panicked: {:?}); exiting",
                    exit.as_ref().map(|e| e.shard),
                    exit.as_ref().map(|e| e.panicked)
                );
                std::process::exit(70);
            }
            default(LIVENESS_PERIOD) => {
                match watchdog.check(LIVENESS_TIMEOUT) {
                    Verdict::Alive => {}
                    Verdict::Busy { shard } => {
                        tracing::warn!(shard, late = watchdog.late, "shard answered the control plane late but kept running; not restarting");
                    }
                    Verdict::Wedged { shard } => {
                        eprintln!("shardcast: shard {shard} neither answered the control plane nor ran any task for {LIVENESS_TIMEOUT:?}; exiting");
                        std::process::exit(70);
                    }
                }
            }
        }
    }
}

/// How often the supervisor probes every shard.
const LIVENESS_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a shard may take to answer a probe.
const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
