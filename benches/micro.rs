//! Micro-benchmarks of the hot paths, without sockets:
//! `msg` frame encode, command parse, mesh ring push/pop across two
//! threads, and one shard's local fanout of a frame to 10,000 subscriber
//! queues (plus the writer's copy out of them).
//!
//! `cargo bench --bench micro`; CI runs `-- --test` (one iteration each).

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast::config::Limits;
use shardcast::conn::core::ShardCore;
use shardcast::mesh::{ConnRef, MeshMsg};
use shardcast::proto::message::{self, MsgFields, Recovery};
use shardcast::topic::owned::EpochSource;
use shardcast::topic::PartitionMap;

const DATA: &str =
    r#"{"token":"Hello, world","index":41,"model":"gpt-x","done":false,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(512);
    g.bench_function("msg_frame", |b| {
        b.iter(|| {
            out.clear();
            let f = MsgFields {
                topic: "acme/room-1",
                seq: black_box(123_456),
                epoch: "9f2c41d07ab3",
                msg_id: Some("gen-77:3"),
                prio: None,
                from: None,
                data: DATA,
                extra: None,
            };
            message::msg(&mut out, &f);
            black_box(&out);
        })
    });
    g.bench_function("ack", |b| {
        b.iter(|| {
            out.clear();
            message::ack(&mut out, Some(7), "acme/room-1", black_box(99), "9f2c41d07ab3", false);
            black_box(&out);
        })
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    let pubs = format!(r#"{{"op":"pub","id":2,"topic":"acme/room-1","data":{DATA},"msg_id":"gen-77:3"}}"#);
    g.bench_function("pub_command", |b| b.iter(|| black_box(message::parse_command(black_box(&pubs)).is_ok())));
    let sub = r#"{"op":"sub","id":1,"topic":"acme/room-1","since":{"seq":41,"epoch":"9f2c41d07ab3"}}"#;
    g.bench_function("sub_command", |b| b.iter(|| black_box(message::parse_command(black_box(sub)).is_ok())));
    // Issue 9 defect 8: the extra pass over `data` on the publish path
    // (nesting depth, lone surrogate escapes), next to the parse it follows.
    g.bench_function("check_data_100b", |b| {
        b.iter(|| black_box(shardcast::proto::json_check::check_data(black_box(DATA), 64).is_ok()))
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_ring");
    const N: u64 = 100_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("push_pop_across_threads_100k", |b| {
        b.iter(|| {
            let mut ends = shardcast::mesh::build(2, 8192).expect("mesh");
            let e1 = ends.pop().expect("shard 1");
            let mut e0 = ends.pop().expect("shard 0");
            let publ = shardcast::topic::publication::Publication::sample("a/b", 1, "1");
            let consumer = std::thread::spawn(move || {
                let mut cons = e1.inboxes.into_iter().next().expect("ring").1;
                let mut seen = 0u64;
                while seen < N {
                    if let Ok(chunk) = cons.read_chunk(cons.slots()) {
                        seen += chunk.into_iter().count() as u64;
                    }
                }
                seen
            });
            let out = e0.outboxes[1].as_mut().expect("outbox");
            let mut sent = 0;
            while sent < N {
                if out.has_room(1) {
                    out.push(MeshMsg::Deliver { publ: publ.clone(), received_at: Instant::now(), receipt: None });
                    sent += 1;
                }
            }
            assert_eq!(consumer.join().expect("consumer"), N);
        })
    });
    g.finish();
}

/// A single-shard core with `n` open connections subscribed to one topic.
pub fn core_with_subscribers(n: usize) -> ShardCore {
    let map = PartitionMap { partitions: 1024, shards: 1 };
    let limits = Limits { max_connections_per_shard: n + 1, ..Limits::default() };
    let mut core = ShardCore::new(0, map, limits, vec![None]);
    let epoch = EpochSource::new(0).next_epoch();
    let now = Instant::now();
    for _ in 0..n {
        let conn: ConnRef = core.accept(now).expect("below the limit");
        core.conns[conn.idx as usize].phase = shardcast::conn::Phase::Open;
        let topic: Arc<str> = Arc::from("acme/room-1");
        core.on_mesh(
            0,
            MeshMsg::Subscribed {
                conn,
                id: None,
                topic,
                seq: 0,
                epoch,
                recovery: Recovery::NotAsked,
                replay: Vec::new(),
                member: None,
            },
        );
    }
    // Throw away the `subscribed` replies.
    let mut sink = Vec::new();
    for (_, c) in core.conns.iter_mut() {
        sink.clear();
        c.out.fill(&mut sink, usize::MAX);
    }
    core
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_fanout");
    const SUBS: usize = 10_000;
    g.throughput(Throughput::Elements(SUBS as u64));
    let publ = shardcast::topic::publication::Publication::sample("acme/room-1", 1, DATA);
    let mut core = core_with_subscribers(SUBS);
    g.bench_function("queue_one_frame_on_10k_subscribers", |b| {
        b.iter_batched(
            || (),
            |()| {
                core.fanout_local(publ.clone(), Instant::now());
            },
            BatchSize::SmallInput,
        );
        let mut sink = Vec::new();
        for (_, c) in core.conns.iter_mut() {
            sink.clear();
            c.out.fill(&mut sink, usize::MAX);
        }
    });
    let mut wbuf = Vec::with_capacity(64 * 1024);
    g.bench_function("queue_and_copy_out_one_frame_10k", |b| {
        b.iter(|| {
            core.fanout_local(publ.clone(), Instant::now());
            for (_, c) in core.conns.iter_mut() {
                wbuf.clear();
                c.out.fill(&mut wbuf, 64 * 1024);
                black_box(&wbuf);
            }
        })
    });
    g.finish();
}

/// Issue 9 defect 1: at a full topic table, eviction scanned the whole
/// table per new topic (quadratic; a shard stalled long enough for the
/// supervisor to exit the process). This measures one create at the default
/// `max_topics_per_shard` (1,000,000 idle topics of 1,000 tenants), which
/// must evict in O(1).
fn owner(c: &mut Criterion) {
    use shardcast::topic::owner::{Owner, PublishIn, PublishOutcome};
    use shardcast::topic::publication::Publication;
    let cfg = shardcast::Config::default();
    let policy = shardcast::conn::core::Policy {
        ack: Default::default(),
        access: Default::default(),
        echo_path: None,
        replay: cfg.replay.clone(),
        rates: cfg.rates.clone(),
        liveness: cfg.liveness.clone(),
        groups: cfg.groups.clone(),
        requests: cfg.requests.clone(),
        streams: cfg.streams.clone(),
        retained: cfg.retained.clone(),
        presence: cfg.presence.clone(),
        centrifugo: cfg.centrifugo.clone(),
    };
    let lim = policy.owner_limits(&cfg.limits);
    let max = lim.table.max_topics;
    let mut o = Owner::new(0, 2, lim);
    let now = Instant::now();
    let mut targets = Vec::new();
    let mut scratch = Vec::new();
    let mut publish = |o: &mut Owner, topic: &str| {
        let p = PublishIn {
            topic,
            data: "1",
            msg_id: None,
            prio: None,
            from: None,
            extra: None,
            stream: None,
            retain: None,
        };
        o.publish(&p, now, &mut targets, |_| true, |n, m| Publication::native(n, m, &mut scratch))
    };
    let t0 = std::time::Instant::now();
    for i in 0..max {
        publish(&mut o, &format!("t{}/r{i}", i % 1000));
    }
    eprintln!("owner: filled {} topics in {:?}", o.len(), t0.elapsed());
    let mut g = c.benchmark_group("owner");
    let mut n = 0u64;
    g.bench_function("create_evicting_at_1m_topics", |b| {
        b.iter(|| {
            n += 1;
            let out = publish(&mut o, &format!("t7/new{n}"));
            assert!(matches!(out, PublishOutcome::Accepted(_)));
        })
    });
    g.finish();
    assert_eq!(o.len(), max, "the table stays at its bound");
}

/// Issue 9 defect 10: a critical push onto a connection scanned its whole
/// normal lane (to turn overtaken frames of its topic into a gap). This
/// pushes critical frames onto one connection holding 10,000 queued normal
/// frames of 100 topics, one of them the critical frame's own.
fn critical(c: &mut Criterion) {
    use shardcast::conn::outbound::{Delivery, Outbound};
    use shardcast::proto::message::Prio;
    use shardcast::topic::publication::Publication;
    use std::rc::Rc;
    let mut o = Outbound::default();
    for i in 0..10_000u64 {
        let d = Rc::new(Delivery::new(Publication::sample(&format!("t/r{}", i % 100), i / 100 + 1, DATA)));
        o.push_frame(&d, Prio::Normal, usize::MAX, usize::MAX);
    }
    let crit = Rc::new(Delivery::new(Publication::sample("t/r7", 1_000_000, DATA)));
    let mut g = c.benchmark_group("outbound");
    g.bench_function("critical_push_over_10k_queued_normal", |b| {
        b.iter(|| black_box(o.push_frame(&crit, Prio::Critical, usize::MAX, usize::MAX)))
    });
    g.finish();
}

criterion_group!(benches, encode, parse, ring, fanout, owner, critical);
criterion_main!(benches);
