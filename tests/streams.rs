//! Token streams (PROTOCOL-EXTENSIONS §4) over real sockets on a 2-shard
//! server: appends are ordinary publications carrying `stream` and `end`;
//! `sub` with `streams: true` gets one rollup per stream (its whole text,
//! `upto`) and then exactly the appends after it, even while appends race
//! the subscribe; an abandoned stream is ended by the server; the bounds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn append(p: &mut Client, topic: &str, stream: &str, text: &str, end: bool) -> Value {
    let mut cmd = json!({"op":"pub","id":1,"topic":topic,"data":text,"stream":stream});
    if end {
        cmd["end"] = json!(true);
    }
    p.ask(cmd)
}

#[test]
fn appends_are_publications_and_a_late_joiner_gets_the_whole_text_then_the_rest() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/chat-1";
    let mut p = Client::connect_to_shard(addr, 0);
    let mut early = Client::connect_to_shard(addr, 1);
    early.sub(topic);
    for t in ["Hel", "lo, ", "wor"] {
        let a = append(&mut p, topic, "gen-77", t, false);
        assert_eq!(a["op"], "ack", "{a}");
    }
    // An early subscriber got each append as an ordinary msg.
    let m = early.expect_op("msg");
    assert_eq!((&m["stream"], &m["end"], &m["data"]), (&json!("gen-77"), &json!(false), &json!("Hel")), "{m}");
    early.expect_op("msg");
    let last = early.expect_op("msg");
    // A late joiner on either shard: one rollup with upto, then live.
    for shard in [0, 1] {
        let mut late = Client::connect_to_shard(addr, shard);
        let v = late.ask(json!({"op":"sub","id":2,"topic":topic,"streams":true}));
        assert_eq!(v["op"], "subscribed", "{v}");
        let r = late.expect_op("msg");
        assert_eq!(r["rollup"], true, "{r}");
        assert_eq!((&r["stream"], &r["data"], &r["end"]), (&json!("gen-77"), &json!("Hello, wor"), &json!(false)));
        assert_eq!(r["upto"], last["seq"], "upto is the last append's seq");
        assert_eq!(r["seq"], last["seq"]);
        assert_eq!(r["epoch"], last["epoch"]);
        assert!(late.quiet(Duration::from_millis(100)).is_empty(), "nothing but the rollup yet");
        drop(late);
    }
    let mut late = Client::connect_to_shard(addr, 1);
    late.ask(json!({"op":"sub","id":2,"topic":topic,"streams":true}));
    late.expect_op("msg");
    append(&mut p, topic, "gen-77", "ld", true);
    let m = late.expect_op("msg");
    assert_eq!((&m["data"], &m["end"]), (&json!("ld"), &json!(true)), "{m}");
    assert_eq!(m["seq"].as_u64(), last["seq"].as_u64().map(|s| s + 1));
    // A closed stream is kept (recently closed): its rollup says end.
    let mut later = Client::connect(addr);
    later.ask(json!({"op":"sub","id":3,"topic":topic,"streams":true}));
    let r = later.expect_op("msg");
    assert_eq!((&r["data"], &r["end"], &r["rollup"]), (&json!("Hello, world"), &json!(true), &json!(true)));
    // Without `streams: true`: no rollup (v1 behaviour).
    let mut plain = Client::connect(addr);
    plain.sub(topic);
    assert!(plain.quiet(Duration::from_millis(100)).is_empty());
    server.shutdown();
}

#[test]
fn a_subscribe_racing_appends_misses_and_repeats_no_token() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/race";
    let tokens: Vec<String> = (0..400).map(|i| format!("t{i} ")).collect();
    let full: String = tokens.concat();
    let writer = {
        let tokens = tokens.clone();
        std::thread::spawn(move || {
            let mut p = Client::connect(addr);
            for (i, t) in tokens.iter().enumerate() {
                let mut cmd = json!({"op":"pub","id":i,"topic":topic,"data":t,"stream":"s"});
                if i + 1 == tokens.len() {
                    cmd["end"] = json!(true);
                }
                assert_eq!(p.ask(cmd)["op"], "ack");
            }
        })
    };
    // Subscribers join at staggered moments while the appends flow.
    let mut texts = Vec::new();
    let mut mid = 0;
    let mut subs: Vec<Client> = Vec::new();
    for k in 0..8 {
        std::thread::sleep(Duration::from_millis(3 * k));
        let mut c = Client::connect_to_shard(addr, (k % 2) as usize);
        c.send(json!({"op":"sub","id":1,"topic":topic,"streams":true}));
        subs.push(c);
    }
    writer.join().unwrap();
    for mut c in subs {
        let mut text = String::new();
        let mut last_seq = 0;
        let deadline = Instant::now() + WAIT;
        let mut ended = false;
        while !ended && Instant::now() < deadline {
            let v = c.recv();
            if v["op"] != "msg" {
                continue;
            }
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seqs only grow: {seq} after {last_seq}");
            last_seq = seq;
            if v["rollup"] == true && v["end"] == false {
                mid += 1;
            }
            text.push_str(v["data"].as_str().unwrap());
            ended = v["end"] == true;
        }
        texts.push(text);
    }
    for t in &texts {
        assert_eq!(t, &full, "rollup + live appends = the whole text, exactly");
    }
    assert!(mid > 0, "some subscriber joined mid-stream (a rollup of an open stream, then live appends)");
    server.shutdown();
}

#[test]
fn an_abandoned_stream_is_ended_by_the_server() {
    let server = server_with(|c| {
        high_rates(c);
        c.streams.idle_timeout_ms = 200;
    });
    let addr = server.local_addr();
    let topic = "acme/abandoned";
    let mut s = Client::connect(addr);
    s.sub(topic);
    let mut p = Client::connect(addr);
    append(&mut p, topic, "gen-1", "half an ans", false);
    drop(p);
    assert_eq!(s.expect_op("msg")["data"], "half an ans");
    let t0 = Instant::now();
    let m = s.expect_op("msg");
    let waited = t0.elapsed();
    assert_eq!(
        (&m["stream"], &m["end"], &m["reason"], &m["data"]),
        (&json!("gen-1"), &json!(true), &json!("abandoned"), &json!("")),
        "{m}"
    );
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(3), "{waited:?}");
    // Ended: a further append is refused, the rollup says end.
    let mut p = Client::connect(addr);
    let v = append(&mut p, topic, "gen-1", "more", false);
    assert_eq!(v["code"], "bad_request", "{v}");
    let t = wait_stats(&server, "abandoned counted", |t| t.sum(|s| s.counters.streams_abandoned) == 1);
    assert_eq!(t.sum(|s| s.owner.streams_opened), 1);
    server.shutdown();
}

#[test]
fn stream_bounds_refuse_appends_with_overloaded() {
    let server = server_with(|c| {
        high_rates(c);
        c.streams.max_stream_bytes = 10;
        c.streams.max_per_topic = 1;
        c.streams.keep_closed_ms = 200;
    });
    let addr = server.local_addr();
    let topic = "acme/bounded";
    let mut p = Client::connect(addr);
    assert_eq!(append(&mut p, topic, "a", "0123456789", false)["op"], "ack");
    let v = append(&mut p, topic, "a", "x", false);
    assert_eq!(v["code"], "overloaded", "streams.max_stream_bytes: {v}");
    let v = append(&mut p, topic, "b", "x", false);
    assert_eq!(v["code"], "overloaded", "streams.max_per_topic with none closed: {v}");
    assert!(v["message"].as_str().unwrap().contains("max_per_topic"), "{v}");
    // Closing "a" makes room: "b" takes its place.
    assert_eq!(append(&mut p, topic, "a", "", true)["op"], "ack");
    assert_eq!(append(&mut p, topic, "b", "x", false)["op"], "ack");
    let mut c = Client::connect(addr);
    c.ask(json!({"op":"sub","id":1,"topic":topic,"streams":true}));
    let r = c.expect_op("msg");
    assert_eq!((&r["stream"], &r["data"]), (&json!("b"), &json!("x")), "only b is kept: {r}");
    assert!(c.quiet(Duration::from_millis(100)).is_empty());
    // streams.keep_closed_ms: a closed stream's text goes after it.
    assert_eq!(append(&mut p, topic, "b", "", true)["op"], "ack");
    // ("a" was replaced, not dropped for age.)
    wait_stats(&server, "the closed stream dropped", |t| t.sum(|s| s.owner.streams_dropped) == 1);
    let mut d = Client::connect(addr);
    d.ask(json!({"op":"sub","id":1,"topic":topic,"streams":true}));
    assert!(d.quiet(Duration::from_millis(100)).is_empty(), "nothing kept");
    let t = server.stats();
    assert_eq!(t.sum(|s| s.owner.streams_refused), 2);
    assert_eq!(t.sum(|s| s.stream_bytes), 0);
    server.shutdown();
}

#[test]
fn bad_stream_appends_get_bad_request() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    for cmd in [
        json!({"op":"pub","topic":"a/b","data":{"x":1},"stream":"s"}),
        json!({"op":"pub","topic":"a/b","data":7,"stream":"s"}),
        json!({"op":"pub","topic":"a/b","data":"x","stream":""}),
        json!({"op":"pub","topic":"a/b","data":"x","stream":"s".repeat(129)}),
        json!({"op":"pub","topic":"a/b","data":"x","end":true}),
    ] {
        let mut cmd = cmd;
        cmd["id"] = json!(9);
        let v = c.ask(cmd.clone());
        assert_eq!((v["code"].as_str(), v["id"].as_u64()), (Some("bad_request"), Some(9)), "{cmd}: {v}");
    }
    c.sync();
    server.shutdown();
}

#[test]
fn a_resume_that_recovers_replays_and_one_that_does_not_gets_the_rollup() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let topic = "acme/resume";
    let mut p = Client::connect(addr);
    let first = append(&mut p, topic, "g", "one ", false);
    append(&mut p, topic, "g", "two ", false);
    let (seq, epoch) = (first["seq"].as_u64().unwrap(), first["epoch"].as_str().unwrap().to_owned());
    let mut c = Client::connect(addr);
    let v = c.ask(json!({"op":"sub","id":1,"topic":topic,"streams":true,"since":{"seq":seq,"epoch":epoch}}));
    assert_eq!(v["recovered"], true, "{v}");
    let m = c.expect_op("msg");
    assert_eq!((&m["data"], m.get("rollup")), (&json!("two "), None), "the missed append, not a rollup: {m}");
    assert!(c.quiet(Duration::from_millis(100)).is_empty());
    let mut d = Client::connect(addr);
    let v = d.ask(json!({"op":"sub","id":1,"topic":topic,"streams":true,"since":{"seq":1,"epoch":"000000000000"}}));
    assert_eq!(v["recovered"], false, "{v}");
    let m = d.expect_op("msg");
    assert_eq!((&m["data"], &m["rollup"]), (&json!("one two "), &json!(true)), "{m}");
    server.shutdown();
}

#[test]
fn a_stalled_reader_gets_merged_appends_whose_text_is_whole_and_gaps_for_the_rest() {
    let server = server_with(|c| {
        high_rates(c);
        c.limits.outbound_soft_bytes = 32 * 1024;
        c.limits.outbound_hard_bytes = 32 << 20;
        c.streams.max_stream_bytes = 16 << 20;
    });
    let addr = server.local_addr();
    let topic = "acme/stalled";
    // A reader with a tiny receive buffer that reads nothing for now.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = s.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream).unwrap();
    let mut r = Client { ws, shard: 0 };
    assert_eq!(r.ask(json!({"op":"sub","id":1,"topic":topic}))["op"], "subscribed");
    let mut p = Client::connect(addr);
    let mut full = String::new();
    // Enough to fill the socket buffers on both sides and pass the soft limit.
    let n = 8000;
    let mut sent = 0;
    for i in 0..n {
        let t = format!("tok{i:05}-{} ", "z".repeat(1000));
        full.push_str(&t);
        let mut cmd = json!({"op":"pub","id":i,"topic":topic,"data":t,"stream":"answer"});
        if i + 1 == n {
            cmd["end"] = json!(true);
        }
        p.send(cmd);
        sent += 1;
        if i % 100 == 50 {
            // A plain publication in between: dropped ones become gaps.
            p.send(json!({"op":"pub","topic":topic,"data":{"plain": i}}));
            sent += 1;
        }
    }
    for _ in 0..sent {
        let a = p.recv();
        assert_eq!(a["op"], "ack", "{a}");
    }
    let (mut text, mut rollups, mut gaps, mut ended) = (String::new(), 0, 0, false);
    let mut last = 0;
    while !ended {
        let v = r.recv();
        if let Some(seq) = v["seq"].as_u64().or(v["from"].as_u64()) {
            assert!(seq > last, "the topic's seqs only grow, merges and gaps included: {seq} after {last}");
            last = v["to"].as_u64().unwrap_or(seq);
        }
        match v["op"].as_str() {
            Some("msg") if v.get("stream").is_some() => {
                if v["rollup"] == true {
                    rollups += 1;
                    assert_eq!(v["upto"], v["seq"], "{v}");
                }
                text.push_str(v["data"].as_str().unwrap());
                ended = v["end"] == true;
            }
            Some("gap") => gaps += 1,
            _ => {}
        }
    }
    assert!(rollups > 0, "the stalled reader got merged appends");
    assert!(gaps > 0, "plain publications past the soft limit still become gaps");
    assert_eq!(text.len(), full.len());
    assert!(text == full, "merged + delivered appends = the whole text, in order");
    let t = server.stats();
    assert!(t.sum(|s| s.counters.stream_appends_merged) > 0);
    server.shutdown();
}
