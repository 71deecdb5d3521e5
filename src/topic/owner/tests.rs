//! Owner unit tests: simulated time, no shards, no sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::topic::publication::{PubMeta, Publication};

fn limits() -> OwnerLimits {
    OwnerLimits {
        table: TableLimits { max_topics: 1000, max_per_tenant: 1000 },
        tenant_topics: Default::default(),
        replay: ReplayLimits { max_count: 100, max_bytes: 1 << 20, max_age: Duration::from_secs(10) },
        dedupe_count: 100,
        dedupe_age: Duration::from_secs(20),
        budget_bytes: 1 << 30,
        streams: Default::default(),
        retained_per_tenant: 100,
        retained_budget_bytes: 1 << 20,
        presence_max_list: 100,
        presence_max_watchers_per_tenant: 100,
    }
}

fn encode(name: Arc<str>, m: &PubMeta<'_>) -> Publication {
    let frame: Box<[u8]> = m.data.as_bytes().into();
    Publication::new(name, m, frame, (0, m.data.len()))
}

fn publish(o: &mut Owner, topic: &str, msg_id: Option<&str>, now: Instant) -> PublishOutcome {
    let p = PublishIn { topic, data: "\"x\"", msg_id, prio: None, from: None, extra: None, stream: None, retain: None };
    o.publish(&p, now, &mut Vec::new(), |_| true, encode)
}

fn seq_of(out: PublishOutcome) -> u64 {
    match out {
        PublishOutcome::Accepted(p) => p.seq,
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[test]
fn seqs_are_contiguous_and_dupes_keep_their_seq() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 2, limits());
    assert_eq!(seq_of(publish(&mut o, "a/b", Some("m1"), t0)), 1);
    assert_eq!(seq_of(publish(&mut o, "a/b", None, t0)), 2);
    match publish(&mut o, "a/b", Some("m1"), t0) {
        PublishOutcome::Duplicate { seq, .. } => assert_eq!(seq, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(seq_of(publish(&mut o, "a/b", Some("m2"), t0)), 3);
    assert_eq!(o.stats.dedupe_hits, 1);
}

#[test]
fn targets_and_ring_room() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 3, limits());
    assert!(matches!(o.subscribe(2, "a/b", None, usize::MAX), SubscribeOutcome::Subscribed { .. }));
    assert!(matches!(o.subscribe(0, "a/b", None, usize::MAX), SubscribeOutcome::Subscribed { .. }));
    let mut targets = Vec::new();
    let p = PublishIn {
        topic: "a/b",
        data: "1",
        msg_id: None,
        prio: None,
        from: None,
        extra: None,
        stream: None,
        retain: None,
    };
    assert!(matches!(o.publish(&p, t0, &mut targets, |_| true, encode), PublishOutcome::Accepted(_)));
    assert_eq!(targets, vec![0, 2]);
    let out = o.publish(&p, t0, &mut targets, |s| s != 2, encode);
    assert!(matches!(out, PublishOutcome::Refused(Refused::RingFull)));
    assert_eq!(o.topic("a/b").unwrap().seq, 1, "a refused publish takes no seq");
}

#[test]
fn resume_exact_expired_and_epoch_mismatch() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 1, limits());
    o.subscribe(0, "a/b", None, usize::MAX);
    for _ in 0..5 {
        publish(&mut o, "a/b", None, t0);
    }
    let epoch = o.topic("a/b").unwrap().epoch;
    match o.subscribe(0, "a/b", Some((2, epoch.as_str())), usize::MAX) {
        SubscribeOutcome::Subscribed { recovery, replay, seq, .. } => {
            assert_eq!((recovery, seq), (Recovery::Recovered(3), 5));
            assert_eq!(replay.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        }
        other => panic!("{other:?}"),
    }
    match o.subscribe(0, "a/b", Some((2, "000000000000")), usize::MAX) {
        SubscribeOutcome::Subscribed { recovery, .. } => assert_eq!(recovery, Recovery::Failed("epoch_mismatch")),
        other => panic!("{other:?}"),
    }
    // Eleven seconds later the sweep has aged every publication out.
    assert!(!o.sweep(t0 + Duration::from_secs(11), usize::MAX));
    match o.subscribe(0, "a/b", Some((2, epoch.as_str())), usize::MAX) {
        SubscribeOutcome::Subscribed { recovery, .. } => assert_eq!(recovery, Recovery::Failed("expired")),
        other => panic!("{other:?}"),
    }
    assert_eq!(o.stats.replay_aged, 5);
    assert_eq!(o.total_interest(), 4);
}

#[test]
fn quiet_topics_release_their_memory_on_the_timer() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 1, limits());
    for i in 0..200 {
        publish(&mut o, &format!("a/r{i}"), Some("id"), t0);
    }
    assert_eq!(o.len(), 200);
    assert!(o.bytes() > 0);
    // Nobody touches these topics again; the sweep alone frees them:
    // replay ages out at 10 s, dedupe at 20 s, then the topics go.
    o.sweep(t0 + Duration::from_secs(11), usize::MAX);
    assert_eq!(o.len(), 200, "dedupe ids still remembered");
    o.sweep(t0 + Duration::from_secs(21), usize::MAX);
    assert_eq!((o.len(), o.bytes(), o.log_len()), (0, 0, 0));
    assert_eq!(o.stats.released_idle, 200);
}

#[test]
fn a_topic_with_subscribers_is_never_released() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 1, limits());
    o.subscribe(0, "a/b", None, usize::MAX);
    publish(&mut o, "a/b", None, t0);
    o.sweep(t0 + Duration::from_secs(60), usize::MAX);
    let t = o.topic("a/b").expect("kept");
    assert_eq!((t.seq, t.replay.len()), (1, 0));
    let t1 = t0 + Duration::from_secs(60);
    assert!(o.release(0, "a/b", t1));
    assert!(!o.release(0, "a/b", t1), "a second release is a bookkeeping bug");
    o.sweep(t1 + Duration::from_secs(5), usize::MAX);
    assert!(o.topic("a/b").is_some(), "kept for a resume within the replay window");
    o.sweep(t1 + Duration::from_secs(10), usize::MAX);
    assert!(o.topic("a/b").is_none(), "nothing held and nobody subscribed: released");
}

#[test]
fn shard_budget_drops_oldest_first_across_topics() {
    let t0 = Instant::now();
    let mut lim = limits();
    let one = {
        let mut o = Owner::new(0, 1, lim.clone());
        publish(&mut o, "a/b", None, t0);
        o.bytes()
    };
    lim.budget_bytes = one * 10;
    let mut o = Owner::new(0, 1, lim.clone());
    for i in 0..30u64 {
        o.subscribe(0, &format!("a/r{}", i % 3), None, usize::MAX);
        publish(&mut o, &format!("a/r{}", i % 3), None, t0 + Duration::from_millis(i));
        assert!(o.bytes() <= lim.budget_bytes, "bounded after every publish");
    }
    assert_eq!(o.stats.replay_budget, 20);
    // The ten newest publications (i = 20..29) survive, whatever topic
    // holds them: i = 20 was r2's 7th.
    let kept: usize = (0..3).map(|r| o.topic(&format!("a/r{r}")).unwrap().replay.len()).sum();
    assert_eq!(kept, 10);
    assert_eq!(o.topic("a/r2").unwrap().replay.front().unwrap().publ.seq, 7, "i=20 is r2's 7th");
}

#[test]
fn one_tenant_cannot_evict_another_tenants_dedupe_window() {
    // Defect 9.9: at the table bound, eviction took another tenant's topic
    // and its dedupe window, so a retried msg_id was delivered twice.
    let t0 = Instant::now();
    let mut lim = limits();
    lim.table = TableLimits { max_topics: 10, max_per_tenant: 5 };
    let mut o = Owner::new(0, 1, lim);
    assert_eq!(seq_of(publish(&mut o, "quiet/room", Some("retry-me"), t0)), 1);
    for i in 0..100 {
        let out = publish(&mut o, &format!("noisy/r{i}"), None, t0);
        assert!(!matches!(out, PublishOutcome::Refused(_)), "the noisy tenant recycles its own topics");
    }
    assert_eq!(o.tenant_topics("noisy"), 5);
    assert!(o.stats.evicted_own >= 95);
    match publish(&mut o, "quiet/room", Some("retry-me"), t0) {
        PublishOutcome::Duplicate { seq, .. } => assert_eq!(seq, 1),
        other => panic!("the quiet tenant's retry must stay a duplicate: {other:?}"),
    }
}

#[test]
fn full_table_of_busy_topics_refuses_with_a_named_outcome() {
    let mut lim = limits();
    lim.table = TableLimits { max_topics: 3, max_per_tenant: 3 };
    let mut o = Owner::new(0, 1, lim);
    for r in 0..3 {
        o.subscribe(0, &format!("a/r{r}"), None, usize::MAX);
    }
    assert!(matches!(o.subscribe(0, "a/r9", None, usize::MAX), SubscribeOutcome::Refused(Refused::TenantQuota)));
    assert!(matches!(o.subscribe(0, "b/r9", None, usize::MAX), SubscribeOutcome::Refused(Refused::TableFull)));
    assert_eq!((o.stats.refused_tenant_quota, o.stats.refused_table_full), (1, 1));
}

#[test]
fn sweep_respects_its_work_budget() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 1, limits());
    for i in 0..1000 {
        publish(&mut o, &format!("a/r{}", i % 10), None, t0);
    }
    let later = t0 + Duration::from_secs(11);
    let mut rounds = 0;
    while o.sweep(later, 100) {
        rounds += 1;
        assert!(rounds < 100);
    }
    assert_eq!(rounds, 10);
    assert_eq!(o.stats.replay_aged, 1000);
    assert!(o.is_empty());
}

#[test]
fn logs_stay_bounded_when_per_topic_bounds_do_the_evicting() {
    let t0 = Instant::now();
    let mut lim = limits();
    lim.replay.max_count = 4;
    let mut o = Owner::new(0, 1, lim);
    for _ in 0..100_000 {
        publish(&mut o, "a/b", None, t0);
        o.sweep(t0, 16);
    }
    assert_eq!(o.retained().0, 4);
    assert!(o.log_len() <= 2 * 4 + sweep::COMPACT_SLACK + 1, "log {}", o.log_len());
}

fn append(o: &mut Owner, topic: &str, text: &str, end: bool, now: Instant) -> PublishOutcome {
    let data = serde_json::Value::from(text).to_string();
    let stream = Some(StreamIn { name: "s", text, end });
    let p = PublishIn { topic, data: &data, msg_id: None, prio: None, from: None, extra: None, stream, retain: None };
    o.publish(&p, now, &mut Vec::new(), |_| true, encode)
}

#[test]
fn streams_age_in_simulated_time_and_hold_their_topic() {
    let mut lim = limits();
    lim.streams.idle_timeout = Duration::from_secs(30);
    lim.streams.keep_closed = Duration::from_secs(60);
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let mut o = Owner::new(0, 2, lim);
    assert_eq!(seq_of(append(&mut o, "a/b", "Hel", false, t0)), 1);
    assert_eq!(seq_of(append(&mut o, "a/b", "lo", false, s(20))), 2);
    assert_eq!(o.stream_bytes(), 5);
    let mut out = Vec::new();
    // The entry comes up at 30 s, but the last append was at 20 s: not yet.
    o.sweep_streams(s(31), 100, &mut out);
    assert!(out.is_empty());
    // Re-armed at 31 s: named at 61 s (between one and two idle timeouts).
    o.sweep_streams(s(55), 100, &mut out);
    assert!(out.is_empty());
    o.sweep_streams(s(61), 100, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((&*out[0].0, &*out[0].1), ("a/b", "s"));
    // The topic is not released while its stream is held, even with no
    // subscriber and the replay aged out.
    o.sweep(s(1000), 1000);
    assert!(o.topic("a/b").is_some());
    // Closed at 1000 s, dropped 60 s later; the topic then holds nothing.
    assert_eq!(seq_of(append(&mut o, "a/b", "", true, s(1000))), 3);
    o.sweep_streams(s(1059), 100, &mut out);
    assert_eq!(o.stream_bytes(), 5);
    o.sweep_streams(s(1060), 100, &mut out);
    assert_eq!((o.stream_bytes(), o.stats.streams_dropped), (0, 1));
    o.sweep(s(2000), 1000);
    assert!(o.topic("a/b").is_none(), "released once nothing is held");
}

#[test]
fn a_pinned_topic_is_never_evicted_and_a_restored_one_keeps_its_state() {
    let t0 = Instant::now();
    let mut lim = limits();
    lim.table = TableLimits { max_topics: 2, max_per_tenant: 2 };
    let mut o = Owner::new(0, 2, lim);
    seq_of(publish(&mut o, "a/pinned", None, t0));
    seq_of(publish(&mut o, "a/other", None, t0));
    o.pin("a/pinned", true);
    // The table is full: a new topic evicts the idle one, not the pinned.
    seq_of(publish(&mut o, "a/third", None, t0));
    assert!(o.is_resident("a/pinned") && !o.is_resident("a/other"));
    seq_of(publish(&mut o, "a/fourth", None, t0));
    assert!(o.is_resident("a/pinned"), "still pinned");
    o.pin("a/pinned", false);
    seq_of(publish(&mut o, "a/fifth", None, t0));
    seq_of(publish(&mut o, "a/sixth", None, t0));
    assert!(!o.is_resident("a/pinned"), "evictable once unpinned");

    // Restore: the stored epoch, seq and ring, and its msg_ids.
    let epoch = crate::topic::owned::Epoch::parse("00000000beef").unwrap();
    let meta = |seq| PubMeta {
        topic: "a/pinned",
        seq,
        epoch,
        prio: None,
        msg_id: Some("m7"),
        from: None,
        data: "1",
        extra: None,
        stream: None,
    };
    let pubs = vec![Arc::new(encode("a/pinned".into(), &meta(7)))];
    o.restore("a/pinned", Some((epoch, 7, pubs)), t0).unwrap();
    match publish(&mut o, "a/pinned", Some("m7"), t0) {
        PublishOutcome::Duplicate { seq, epoch: e, .. } => assert_eq!((seq, e), (7, epoch)),
        other => panic!("{other:?}"),
    }
    match publish(&mut o, "a/pinned", None, t0) {
        PublishOutcome::Accepted(p) => assert_eq!((p.seq, p.epoch), (8, epoch)),
        other => panic!("{other:?}"),
    }
    assert!(crate::topic::owned::Epoch::parse("00000000BEEF").is_none());
    assert!(crate::topic::owned::Epoch::parse("beef").is_none());
}

/// The sequence seen under lease churn (three nodes, 2 cores, overload):
/// seq 1 sequenced, the partition lost before it was stored (rewound to 0),
/// taken back and reloaded with nothing stored; then 2..5 were sequenced on
/// top of the burnt 1, and the next reload gave 2..5 to subscribers again.
#[test]
fn a_reload_that_finds_nothing_stored_takes_back_what_was_given_up() {
    let t0 = Instant::now();
    let mut o = Owner::new(0, 2, limits());
    o.restore("a/r", None, t0).unwrap();
    let epoch = o.topic("a/r").unwrap().epoch;
    assert_eq!(seq_of(publish(&mut o, "a/r", Some("m1"), t0)), 1);
    // Lost before it was stored: given out through 0, marked stale.
    o.rewind("a/r", 0);
    o.mark_stale(|_| true);
    assert!(!o.is_resident("a/r"));
    // The reload finds nothing: seq 1 is sequenced again, not skipped, and
    // the given-up msg_id is not answered as a duplicate of it.
    assert!(o.restore("a/r", None, t0).unwrap().is_empty());
    assert_eq!(o.topic("a/r").unwrap().rewound, None);
    assert_eq!(o.topic("a/r").unwrap().replay.len(), 0, "the given-up publication is not replayable");
    match publish(&mut o, "a/r", Some("m1"), t0) {
        PublishOutcome::Accepted(p) => assert_eq!(p.seq, 1),
        other => panic!("a given-up msg_id must be sequenced again, got {other:?}"),
    }
    for want in 2..=4 {
        assert_eq!(seq_of(publish(&mut o, "a/r", None, t0)), want);
    }
    // 1..4 given out; a later reload of the same history delivers nothing again.
    let meta = |seq| PubMeta {
        topic: "a/r",
        seq,
        epoch,
        prio: None,
        msg_id: None,
        from: None,
        data: "1",
        extra: None,
        stream: None,
    };
    let pubs: Vec<_> = (1..=4).map(|s| Arc::new(encode("a/r".into(), &meta(s)))).collect();
    o.mark_stale(|_| true);
    let newer = o.restore("a/r", Some((epoch, 4, pubs.clone())), t0).unwrap();
    assert!(newer.is_empty(), "redelivered {:?}", newer.iter().map(|p| p.seq).collect::<Vec<_>>());
    // Given up again after 4 (5 sequenced, lost); the store has 5 after all.
    assert_eq!(seq_of(publish(&mut o, "a/r", None, t0)), 5);
    o.rewind("a/r", 4);
    o.mark_stale(|_| true);
    let mut more = pubs;
    more.push(Arc::new(encode("a/r".into(), &meta(5))));
    let newer = o.restore("a/r", Some((epoch, 5, more)), t0).unwrap();
    assert_eq!(newer.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![5]);
}
