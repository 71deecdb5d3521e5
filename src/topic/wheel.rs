//! A hashed timer wheel: the one timer structure of a shard's owner.
//!
//! Ack deadlines, redelivery backoff, request deadlines and expiries are
//! entries here, never a timer per message or per connection. Entries carry
//! a small typed key; time is passed in (the owner reads no clock), so the
//! deterministic harness drives it in simulated time.
//!
//! * `insert`, `cancel`, `reschedule`: O(1) (a slab of entries, each slot a
//!   vector with swap-remove; handles carry a generation, so a stale handle
//!   is recognised and ignored).
//! * `poll(now, budget)`: hands out due keys, at most `budget` per call
//!   (the rest on the next call, in the same slot order), so a backlog of
//!   expiries never stalls the shard. Visits at most one lap of slots per
//!   call however long the wheel was not polled.
//! * An entry never fires before its instant: deadlines round up to the
//!   next tick, and an entry due in a later lap of the wheel stays in its
//!   slot until that lap.

use std::task::Waker;
use std::time::{Duration, Instant};

/// A handle on one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    idx: u32,
    gen: u32,
}

#[derive(Debug)]
struct Entry<K> {
    gen: u32,
    /// None while the slab slot is free.
    key: Option<K>,
    /// Tick at or after which it fires.
    due: u64,
    /// Slot and position in it.
    slot: u32,
    pos: u32,
}

/// The wheel.
#[derive(Debug)]
pub struct Wheel<K> {
    start: Instant,
    tick: Duration,
    slots: Vec<Vec<u32>>,
    entries: Vec<Entry<K>>,
    free: Vec<u32>,
    len: usize,
    /// Next tick to visit (every tick before it was visited).
    cursor: u64,
    /// Within the slot of `cursor`: entries not yet looked at this visit
    /// (a poll that ran out of budget resumes here).
    resume: Option<usize>,
    /// The tick the sweeper sleeps until, and how to wake it: an entry
    /// inserted due earlier wakes it (see [`Wheel::nap`]).
    nap: Option<(u64, Waker)>,
    woke: bool,
}

impl<K> Wheel<K> {
    /// A wheel of `slots` slots (rounded up to a power of two) of `tick`
    /// each, starting at `start`.
    pub fn new(start: Instant, tick: Duration, slots: usize) -> Self {
        let n = slots.max(2).next_power_of_two();
        let tick = tick.max(Duration::from_micros(1));
        Self {
            start,
            tick,
            slots: (0..n).map(|_| Vec::new()).collect(),
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            cursor: 0,
            resume: None,
            nap: None,
            woke: false,
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's granularity.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// The first tick at or after `at` that has not been visited yet.
    fn due_tick(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start).as_nanos();
        let t = self.tick.as_nanos();
        (d.div_ceil(t) as u64).max(self.cursor)
    }

    fn slot_of(&self, due: u64) -> u32 {
        (due & (self.slots.len() as u64 - 1)) as u32
    }

    /// Schedules `key` to fire at `at` (or at once, if `at` has passed).
    pub fn insert(&mut self, at: Instant, key: K) -> TimerId {
        let due = self.due_tick(at);
        let slot = self.slot_of(due);
        let pos = self.slots[slot as usize].len() as u32;
        let idx = match self.free.pop() {
            Some(i) => {
                let e = &mut self.entries[i as usize];
                e.key = Some(key);
                e.due = due;
                e.slot = slot;
                e.pos = pos;
                i
            }
            None => {
                self.entries.push(Entry { gen: 0, key: Some(key), due, slot, pos });
                (self.entries.len() - 1) as u32
            }
        };
        self.slots[slot as usize].push(idx);
        self.len += 1;
        self.poke(due);
        TimerId { idx, gen: self.entries[idx as usize].gen }
    }

    /// Wakes a napping sweeper if `due` comes before its wake-up.
    fn poke(&mut self, due: u64) {
        if self.nap.as_ref().is_some_and(|(t, _)| due < *t) {
            if let Some((_, w)) = self.nap.take() {
                self.woke = true;
                w.wake();
            }
        }
    }

    /// The sweeper sleeps until `until` (its wake-up computed from
    /// [`Wheel::next_wake`]); an insert due before then wakes `waker`.
    pub fn nap(&mut self, until: Instant, waker: &Waker) {
        let t = until.saturating_duration_since(self.start).as_nanos().div_ceil(self.tick.as_nanos()) as u64;
        self.nap = Some((t, waker.clone()));
    }

    /// Whether an insert woke the napping sweeper (and clears the nap).
    pub fn woke_early(&mut self) -> bool {
        self.nap = None;
        std::mem::take(&mut self.woke)
    }

    /// When the sweeper should next poll: the start of the first tick,
    /// among the `horizon` from the cursor, whose slot holds an entry (one
    /// due in a later lap only makes the wake-up early, never late); None
    /// if those slots are empty.
    pub fn next_wake(&self, horizon: u64) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let tick = self.tick.as_nanos() as u64;
        let at = |t: u64| self.start + Duration::from_nanos(tick.saturating_mul(t));
        if self.resume.is_some() {
            return Some(at(self.cursor));
        }
        (self.cursor..self.cursor + horizon).find(|t| !self.slots[self.slot_of(*t) as usize].is_empty()).map(at)
    }

    fn live(&self, id: TimerId) -> bool {
        self.entries.get(id.idx as usize).is_some_and(|e| e.gen == id.gen && e.key.is_some())
    }

    /// Takes the entry out of its slot (swap-remove, fixing the moved one).
    fn unlink(&mut self, idx: u32) {
        let (slot, pos) = {
            let e = &self.entries[idx as usize];
            (e.slot as usize, e.pos as usize)
        };
        let cur_slot = self.slot_of(self.cursor) as usize;
        let v = &mut self.slots[slot];
        v.swap_remove(pos);
        if let Some(&moved) = v.get(pos) {
            self.entries[moved as usize].pos = pos as u32;
        }
        // A poll that stopped inside this slot resumes at `r`: [0, r) was
        // looked at. Removing one of those may have moved a not-yet-seen
        // entry into the seen part; swap it to the edge and shrink `r`.
        if slot == cur_slot {
            if let Some(r) = self.resume {
                if pos < r {
                    let edge = r - 1;
                    if pos != edge && edge < v.len() {
                        v.swap(pos, edge);
                        let (a, b) = (v[pos], v[edge]);
                        self.entries[a as usize].pos = pos as u32;
                        self.entries[b as usize].pos = edge as u32;
                    }
                    self.resume = Some(edge);
                }
            }
        }
    }

    fn release(&mut self, idx: u32) -> Option<K> {
        let e = &mut self.entries[idx as usize];
        let key = e.key.take();
        e.gen = e.gen.wrapping_add(1);
        self.free.push(idx);
        self.len -= 1;
        key
    }

    /// Cancels an entry; its key, or None if it fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        if !self.live(id) {
            return None;
        }
        self.unlink(id.idx);
        self.release(id.idx)
    }

    /// Moves an entry to fire at `at` instead; false if it is not live.
    pub fn reschedule(&mut self, id: TimerId, at: Instant) -> bool {
        if !self.live(id) {
            return false;
        }
        self.unlink(id.idx);
        let due = self.due_tick(at);
        let slot = self.slot_of(due);
        let pos = self.slots[slot as usize].len() as u32;
        self.slots[slot as usize].push(id.idx);
        let e = &mut self.entries[id.idx as usize];
        e.due = due;
        e.slot = slot;
        e.pos = pos;
        self.poke(due);
        true
    }

    /// Pushes onto `out` the keys of entries due by `now`, at most `budget`
    /// of them; true if more may be due (call again).
    pub fn poll(&mut self, now: Instant, budget: usize, out: &mut Vec<K>) -> bool {
        let now_tick = self.tick_of(now);
        let mut taken = 0;
        // At most one lap: past it every slot has been looked at with this
        // `now`. A poll resuming inside a slot looked at part of it with an
        // earlier `now`, so its lap ends one slot later (that slot again).
        let lap = self.slots.len() as u64 + u64::from(self.resume.is_some());
        let lap_end = self.cursor.saturating_add(lap);
        while self.cursor <= now_tick && self.cursor < lap_end {
            let slot = self.slot_of(self.cursor) as usize;
            let mut i = self.resume.take().unwrap_or(0);
            while i < self.slots[slot].len() {
                if taken == budget {
                    self.resume = Some(i);
                    return true;
                }
                let idx = self.slots[slot][i];
                if self.entries[idx as usize].due <= now_tick {
                    self.unlink(idx);
                    if let Some(k) = self.release(idx) {
                        out.push(k);
                    }
                    taken += 1;
                    // swap_remove moved another entry into `i`.
                } else {
                    i += 1;
                }
            }
            if self.len == 0 {
                // Nothing left anywhere: jump to now.
                self.cursor = now_tick + 1;
                return false;
            }
            self.cursor += 1;
        }
        if self.cursor <= now_tick {
            // A whole lap was visited: everything due by now has fired.
            self.cursor = now_tick + 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_at_or_after_its_instant_never_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, ms(10), 8);
        w.insert(t0 + ms(25), "a");
        w.insert(t0 + ms(300), "b"); // several laps out
        let mut out = Vec::new();
        assert!(!w.poll(t0 + ms(24), 100, &mut out));
        assert!(out.is_empty());
        w.poll(t0 + ms(30), 100, &mut out);
        assert_eq!(out, ["a"]);
        out.clear();
        w.poll(t0 + ms(299), 100, &mut out);
        assert!(out.is_empty(), "not before its lap");
        w.poll(t0 + ms(300), 100, &mut out);
        assert_eq!(out, ["b"]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_and_reschedule_by_handle_and_stale_handles_are_ignored() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, ms(10), 16);
        let a = w.insert(t0 + ms(50), 1);
        let b = w.insert(t0 + ms(50), 2);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None);
        let c = w.insert(t0 + ms(50), 3); // reuses a's slab slot
        assert_eq!(w.cancel(a), None, "a stale handle does not cancel the new entry");
        assert!(w.reschedule(b, t0 + ms(500)));
        let mut out = Vec::new();
        w.poll(t0 + ms(100), 100, &mut out);
        assert_eq!(out, [3]);
        assert!(!w.reschedule(c, t0), "fired: not live");
        out.clear();
        w.poll(t0 + ms(500), 100, &mut out);
        assert_eq!(out, [2]);
    }

    #[test]
    fn next_wake_names_the_first_occupied_tick_and_an_earlier_insert_wakes_the_nap() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let t0 = Instant::now();
        let mut w: Wheel<u32> = Wheel::new(t0, ms(1), 64);
        assert_eq!(w.next_wake(10), None, "empty: the caller's idle tick");
        let far = w.insert(t0 + ms(30), 1);
        assert_eq!(w.next_wake(10), None, "nothing within the horizon");
        assert_eq!(w.next_wake(40), Some(t0 + ms(30)));
        w.insert(t0 + ms(5) + Duration::from_micros(300), 2);
        assert_eq!(w.next_wake(10), Some(t0 + ms(6)), "rounded up: never before the instant");
        // A cancelled timer costs no wake-up.
        w.cancel(far);
        assert_eq!(w.next_wake(40), Some(t0 + ms(6)));
        // Napping until 6 ms: a later insert does not wake, an earlier one does, once.
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        w.nap(t0 + ms(6), &waker);
        w.insert(t0 + ms(8), 3);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        w.insert(t0 + ms(2), 4);
        w.insert(t0 + ms(1), 5);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(w.woke_early());
        assert!(!w.woke_early(), "cleared");
        let mut out = Vec::new();
        w.poll(t0 + ms(6), 100, &mut out);
        out.sort();
        assert_eq!(out, [2, 4, 5]);
        assert_eq!(w.next_wake(10), Some(t0 + ms(8)));
    }

    #[test]
    fn a_backlog_drains_within_the_budget_per_poll() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, ms(1), 64);
        for i in 0..1000u32 {
            w.insert(t0 + ms(u64::from(i % 50)), i);
        }
        let mut out = Vec::new();
        let mut polls = 0;
        while w.poll(t0 + ms(10_000), 64, &mut out) {
            polls += 1;
            assert!(out.len() <= 64 * polls);
        }
        assert_eq!(out.len(), 1000);
        let mut seen = out.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1000, "each fired once");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Reschedule(usize, u64),
        Advance(u64, usize),
        /// One poll only: it may stop inside a slot.
        Step(u64, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..400).prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (any::<usize>(), 0u64..400).prop_map(|(i, d)| Op::Reschedule(i, d)),
            3 => (0u64..120, 1usize..8).prop_map(|(d, b)| Op::Advance(d, b)),
            3 => (0u64..30, 1usize..4).prop_map(|(d, b)| Op::Step(d, b)),
        ]
    }

    proptest::proptest! {
        /// Against a model (id -> instant): nothing fires before its
        /// instant, nothing cancelled or already fired fires, each entry
        /// fires once, and after an unbounded poll nothing due a tick ago
        /// is left.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..300), slots in 2usize..40) {
            let t0 = Instant::now();
            let mut w: Wheel<u32> = Wheel::new(t0, ms(5), slots);
            let mut now = t0;
            let mut model: std::collections::BTreeMap<u32, (TimerId, Instant)> = Default::default();
            let mut next = 0u32;
            let mut out = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(d) => {
                        let at = now + ms(d);
                        let id = w.insert(at, next);
                        model.insert(next, (id, at));
                        next += 1;
                    }
                    Op::Cancel(i) if !model.is_empty() => {
                        let k = *model.keys().nth(i % model.len()).unwrap();
                        let (id, _) = model.remove(&k).unwrap();
                        proptest::prop_assert_eq!(w.cancel(id), Some(k));
                    }
                    Op::Reschedule(i, d) if !model.is_empty() => {
                        let k = *model.keys().nth(i % model.len()).unwrap();
                        let at = now + ms(d);
                        let e = model.get_mut(&k).unwrap();
                        proptest::prop_assert!(w.reschedule(e.0, at));
                        e.1 = at;
                    }
                    Op::Advance(d, budget) => {
                        now += ms(d);
                        out.clear();
                        while w.poll(now, budget, &mut out) {}
                        for k in &out {
                            let (_, at) = model.remove(k).expect("fired once, never after a cancel");
                            proptest::prop_assert!(at <= now, "fired before its instant");
                        }
                        for (_, at) in model.values() {
                            proptest::prop_assert!(*at + ms(5) > now, "left due a tick ago");
                        }
                    }
                    Op::Step(d, budget) => {
                        now += ms(d);
                        out.clear();
                        w.poll(now, budget, &mut out);
                        proptest::prop_assert!(out.len() <= budget);
                        for k in &out {
                            let (_, at) = model.remove(k).expect("fired once, never after a cancel");
                            proptest::prop_assert!(at <= now, "fired before its instant");
                        }
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
