//! "No allocation per delivery", checked: a counting global allocator shows
//! that queueing one publication on N local subscribers (and the writer's
//! copy out) allocates the same small number of times for 100 subscribers
//! as for 5,000.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
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

thread_local! {
    /// Allocations made by this thread (tests run on threads of their own,
    /// so one test's count is not another's).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
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
                member: None,
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
    let before = allocs();
    for seq in 4..=13 {
        round(&mut core, seq);
    }
    (allocs() - before) / 10
}

#[test]
fn fanout_allocations_do_not_grow_with_subscribers() {
    let small = allocs_per_publish(100);
    eprintln!("allocations per publish: {small} (100 subs)");
    let large = allocs_per_publish(5_000);
    assert_eq!(small, large, "allocations per publish must not depend on the subscriber count");
    assert!(large <= 4, "a handful per publish at most (the shard's Rc), got {large}");
}

/// Issue 11: an authenticated client's `sub`/`pub` checks (tenant prefix
/// and caps patterns) allocate nothing.
#[test]
fn capability_checks_allocate_nothing() {
    use shardcast::auth::{Caps, Identity, TenantQuota};
    let id = Identity {
        sub: Arc::from("agent-7"),
        tenant: Arc::from("acme"),
        exp: None,
        caps: Caps {
            sub: vec!["acme/public/#".into(), "acme/*/in".into()],
            publ: vec!["acme/r1/*".into(), "acme/jobs/#".into()],
        },
        quota: TenantQuota::default(),
    };
    let topics = ["acme/public/news/x", "acme/r1/in", "acme/jobs/a/b/c", "beta/r1/in", "acme/other"];
    let before = allocs();
    let mut allowed = 0;
    for _ in 0..1000 {
        for t in topics {
            allowed += id.may_sub(t) as u32 + id.may_pub(t) as u32;
        }
    }
    assert_eq!(allocs() - before, 0, "caps checks allocated");
    // acme/public/news/x: sub; acme/r1/in: sub and pub; acme/jobs/a/b/c:
    // pub; beta/r1/in: other tenant; acme/other: neither.
    assert_eq!(allowed, 1000 * 4);
}
