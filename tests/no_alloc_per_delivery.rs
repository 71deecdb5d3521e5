//! "No allocation per delivery", checked: a counting global allocator shows
//! that queueing one publication on N local subscribers (and the writer's
//! copy out) allocates the same small number of times for 100 subscribers
//! as for 5,000.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shardcast::config::Limits;
use shardcast::conn::core::ShardCore;
use shardcast::mesh::{ConnRef, MeshMsg};
use shardcast::proto::message::Recovery;
use shardcast::topic::owned::EpochSource;
use shardcast::topic::publication::Publication;
use shardcast::topic::PartitionMap;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn core_with(n: usize) -> ShardCore {
    let map = PartitionMap { partitions: 1024, shards: 1 };
    let limits = Limits { max_connections_per_shard: n + 1, ..Limits::default() };
    let mut core = ShardCore::new(0, map, limits, vec![None]);
    let epoch = EpochSource::new(0).next_epoch();
    for _ in 0..n {
        let conn: ConnRef = core.accept(Instant::now()).unwrap();
        core.conns[conn.idx as usize].phase = shardcast::conn::Phase::Open;
        core.on_mesh(
            0,
            MeshMsg::Subscribed {
                conn,
                id: None,
                topic: Arc::from("a/b"),
                seq: 0,
                epoch,
                recovery: Recovery::NotAsked,
                replay: Vec::new(),
            },
        );
    }
    core
}

/// Allocations for one fanout + copy-out, after a warm-up that lets queues
/// reach their working capacity.
fn allocs_per_publish(n: usize) -> u64 {
    let mut core = core_with(n);
    let mut wbuf = Vec::with_capacity(64 * 1024);
    // One publication per round, built before the count (the owner's
    // allocation, not a delivery's).
    let pubs: Vec<_> = (1..=13).map(|seq| Publication::sample("a/b", seq, "\"hello\"")).collect();
    let mut round = |core: &mut ShardCore, seq: u64| {
        core.fanout_local(pubs[seq as usize - 1].clone(), Instant::now());
        for (_, c) in core.conns.iter_mut() {
            wbuf.clear();
            c.out.fill(&mut wbuf, 64 * 1024);
        }
    };
    for seq in 1..=3 {
        round(&mut core, seq);
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for seq in 4..=13 {
        round(&mut core, seq);
    }
    (ALLOCS.load(Ordering::Relaxed) - before) / 10
}

#[test]
fn fanout_allocations_do_not_grow_with_subscribers() {
    let small = allocs_per_publish(100);
    eprintln!("allocations per publish: {small} (100 subs)");
    let large = allocs_per_publish(5_000);
    assert_eq!(small, large, "allocations per publish must not depend on the subscriber count");
    assert!(large <= 4, "a handful per publish at most (the shard's Rc), got {large}");
}
