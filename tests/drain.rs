//! Graceful drain of the real binary: SIGTERM → every publication acked
//! before the signal reaches every subscriber, then `drain`, then close
//! 1012, and the process exits 0 within the bound. A second signal exits at
//! once.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shardcast::topic::PartitionMap;

fn spawn_server(drain_ms: u64) -> (Child, SocketAddr, tempdir::Dir) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempdir::Dir::new();
    let cfg = dir.path.join("drain.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"{addr}\"\n[shards]\ncpus = [0, 1]\n[liveness]\ndrain_timeout_ms = {drain_ms}\ndrain_reconnect_after_ms = 750\n[admin]\nlisten = \"127.0.0.1:0\"\n[rates]\nconnection_per_sec = 1e6\nconnection_burst = 1e6\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < WAIT, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr, dir)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut Child, bound: Duration) -> (i32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            eprintln!("exit status: {status:?} signal {:?}", status.signal());
            return (status.code().unwrap_or(-1), start.elapsed());
        }
        assert!(start.elapsed() < bound, "did not exit within {bound:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_drains_everything_acked_then_1012_then_exit_0() {
    let (mut child, addr, _dir) = spawn_server(5000);
    let map = PartitionMap { partitions: 1024, shards: 2 };
    let topics: Vec<String> =
        (0..2).map(|s| (0..100).map(|i| format!("drain/room-{i}")).find(|t| map.owner(t) == s).unwrap()).collect();
    let mut subs: Vec<(Client, String)> = Vec::new();
    for shard in 0..2 {
        for t in &topics {
            let mut c = Client::connect_to_shard(addr, shard);
            c.sub(t);
            subs.push((c, t.clone()));
        }
    }
    let mut p = Client::connect(addr);
    for n in 1..=500 {
        for t in &topics {
            p.send(json!({"op":"pub","topic":t,"data":n}));
        }
    }
    for _ in 0..1000 {
        p.expect_op("ack");
    }
    // Every publication above is acked; the subscribers have read nothing.
    signal(&child, libc::SIGTERM);
    for (c, t) in &mut subs {
        for want in 1..=500 {
            let m = c.expect_op("msg");
            assert_eq!((m["topic"].as_str(), m["seq"].as_u64()), (Some(t.as_str()), Some(want)));
        }
        let d = c.expect_op("drain");
        assert_eq!(d["reconnect_after_ms"], 750);
        assert_eq!(c.expect_close(), 1012);
    }
    let (code, took) = wait_exit(&mut child, Duration::from_secs(6));
    assert_eq!(code, 0, "exit status");
    eprintln!("drained 4 subscribers x 500 publications, exited 0 after {took:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn second_signal_exits_at_once() {
    let (mut child, addr, _dir) = spawn_server(60_000);
    // A subscriber that never reads keeps the drain from finishing quickly.
    let _stuck = Client::connect(addr);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGTERM);
    let (code, took) = wait_exit(&mut child, Duration::from_secs(3));
    assert_eq!(code, 130);
    assert!(took < Duration::from_secs(2));
}

/// A scratch directory removed on drop (no extra crate for it).
mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "shardcast-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
