//! Against the real engine with a short ping interval: silent subscribers
//! must answer the server's pings (defect 12 of issue 9: the loadgen did
//! not, so every run longer than ping_interval + ping_timeout lost every
//! subscriber to 1001 and failed verification).

use std::process::Command;

#[test]
fn silent_subscribers_answer_pings_and_survive_a_long_run() {
    let mut cfg = shardcast::Config::from_toml(
        "[server]\nlisten = \"127.0.0.1:0\"\n[shards]\ncpus = [0, 1]\n[admin]\nenabled = false\n\
         [liveness]\nping_interval_ms = 150\nping_timeout_ms = 150\n",
    )
    .expect("config");
    cfg.rates.connection_per_sec = 1e6;
    let server = shardcast::start(cfg).expect("server starts");
    let addr = server.local_addr().to_string();
    let json = std::env::temp_dir().join(format!("sc-pings-{}.json", std::process::id()));
    // 2 s is more than six ping deadlines (0.3 s each).
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast-loadgen"))
        .args(["fanout", "--addr", &addr, "--subscribers", "20", "--publishers", "1", "--rate", "20"])
        .args(["--duration", "2", "--drain", "2", "--json", json.to_str().unwrap()])
        .output()
        .expect("loadgen runs");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    let stats = server.stats();
    server.shutdown();
    assert!(out.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&out.stdout));
    let j: serde_json::Value = serde_json::from_str(&text).expect("json report");
    assert_eq!(j["closed_by_server"], 0, "{j}");
    assert!(j["pongs_sent"].as_u64().unwrap_or(0) > 0, "the server pinged and was answered: {j}");
    assert_eq!(stats.sum(|s| s.counters.ping_timeouts), 0);
}
