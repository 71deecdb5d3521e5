//! Building the full mesh of rings, and the sending side of one ring.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use rtrb::{Consumer, Producer, RingBuffer};

use super::{Doorbell, MeshMsg};

/// Slots kept free for control traffic (subscribe replies, acks): data
/// (`Publish`, `Deliver`) is refused before the ring is this close to full.
pub const CONTROL_RESERVE: usize = 64;

/// The sending side of one ring (this shard → `dest`).
#[derive(Debug)]
pub struct Outbox {
    prod: Producer<MeshMsg>,
    bell: Arc<Doorbell>,
    /// Control messages that found the ring full, in order. While this is
    /// non-empty every later message queues here too (rings are FIFO and
    /// the protocol relies on it) and data is refused.
    overflow: VecDeque<MeshMsg>,
    /// Data messages refused because the ring was full.
    pub full_events: u64,
    /// Messages pushed onto the ring.
    pub pushed: u64,
    /// Requests sent on this ring whose answers have not come back yet
    /// (publish, sub, unsub). Each one may make the destination push one
    /// answer onto the reverse ring, so keeping this under [`Outbox::credit`]
    /// bounds what the destination can ever hold in its overflow queue for
    /// us, however slowly we drain.
    pub owed: usize,
    /// The most answers that may be owed at once (the ring's capacity).
    pub credit: usize,
    /// Requests refused because `owed` reached `credit`.
    pub credit_refusals: u64,
    /// The longest the overflow queue has been.
    pub overflow_high_water: usize,
}

impl Outbox {
    /// Whether `n` data messages fit now, leaving the control reserve.
    pub fn has_room(&self, n: usize) -> bool {
        self.overflow.is_empty() && self.prod.slots() >= n + CONTROL_RESERVE
    }

    /// Whether a new request (publish, sub, unsub) may be sent: ring room
    /// beyond the control reserve, and answer credit left. On `false` the
    /// refusal is counted.
    pub fn admits_request(&mut self) -> bool {
        if self.owed >= self.credit {
            self.credit_refusals += 1;
            return false;
        }
        if !self.has_room(1) {
            self.note_full();
            return false;
        }
        true
    }

    /// Records that a data message was refused for a full ring.
    pub fn note_full(&mut self) {
        self.full_events += 1;
    }

    /// Pushes a message: onto the ring, or the ordered overflow queue if the
    /// ring is full. Data messages (`Publish`, `Deliver`) are pushed only
    /// after [`Outbox::has_room`] said yes, so only control ever overflows,
    /// and control is bounded at its source: answers by the requester's
    /// credit ([`Outbox::admits_request`]: at most one ring's worth owed),
    /// `Subscribe`/`Unsubscribe` by the same credit, `Release` by the
    /// subscriptions the sending shard holds (each is released once), drain
    /// barriers by two per drain. The queue's high-water mark is exported.
    pub fn push(&mut self, msg: MeshMsg) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(msg);
            self.overflow_high_water = self.overflow_high_water.max(self.overflow.len());
            return;
        }
        match self.prod.push(msg) {
            Ok(()) => {
                self.pushed += 1;
                self.bell.notify();
            }
            Err(rtrb::PushError::Full(msg)) => {
                self.overflow.push_back(msg);
                self.overflow_high_water = self.overflow_high_water.max(self.overflow.len());
            }
        }
    }

    /// Moves overflowed messages onto the ring as room frees up. Returns
    /// whether any are still waiting.
    pub fn flush_overflow(&mut self) -> bool {
        let mut moved = false;
        while let Some(msg) = self.overflow.pop_front() {
            match self.prod.push(msg) {
                Ok(()) => {
                    self.pushed += 1;
                    moved = true;
                }
                Err(rtrb::PushError::Full(msg)) => {
                    self.overflow.push_front(msg);
                    break;
                }
            }
        }
        if moved {
            self.bell.notify();
        }
        !self.overflow.is_empty()
    }

    /// Messages waiting in the overflow queue.
    pub fn overflow_len(&self) -> usize {
        self.overflow.len()
    }

    /// Messages on the ring not yet taken by the consumer.
    pub fn occupancy(&self) -> usize {
        self.prod.buffer().capacity() - self.prod.slots()
    }
}

/// One shard's ends of the mesh.
#[derive(Debug)]
pub struct MeshEnds {
    /// Outboxes indexed by destination shard (`None` at this shard's index).
    pub outboxes: Vec<Option<Outbox>>,
    /// Inbound rings with the shard that sends on each.
    pub inboxes: Vec<(usize, Consumer<MeshMsg>)>,
    /// This shard's doorbell (producers and the control plane ring it).
    pub bell: Arc<Doorbell>,
    /// The read end this shard's mesh task waits on.
    pub bell_rx: UnixStream,
}

/// Builds the full mesh for `n` shards: n×(n−1) rings of `capacity` slots.
pub fn build(n: usize, capacity: usize) -> std::io::Result<Vec<MeshEnds>> {
    let mut bells = Vec::with_capacity(n);
    for _ in 0..n {
        bells.push(Doorbell::new()?);
    }
    let mut outboxes: Vec<Vec<Option<Outbox>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut inboxes: Vec<Vec<(usize, Consumer<MeshMsg>)>> = (0..n).map(|_| Vec::new()).collect();
    for (from, row) in outboxes.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from == to {
                continue;
            }
            let (prod, cons) = RingBuffer::new(capacity);
            let bell = bells[to].0.clone();
            let overflow = VecDeque::new();
            *slot = Some(Outbox {
                prod,
                bell,
                overflow,
                full_events: 0,
                pushed: 0,
                owed: 0,
                credit: capacity,
                credit_refusals: 0,
                overflow_high_water: 0,
            });
            inboxes[to].push((from, cons));
        }
    }
    Ok(bells
        .into_iter()
        .zip(outboxes.into_iter().zip(inboxes))
        .map(|((bell, bell_rx), (outboxes, inboxes))| MeshEnds { outboxes, inboxes, bell, bell_rx })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(t: &str) -> MeshMsg {
        MeshMsg::Release { topic: Arc::from(t), leave: None }
    }

    #[test]
    fn full_mesh_shape() {
        let ends = build(3, 16).unwrap();
        for (i, e) in ends.iter().enumerate() {
            assert!(e.outboxes[i].is_none());
            assert_eq!(e.outboxes.iter().flatten().count(), 2);
            let mut from: Vec<_> = e.inboxes.iter().map(|(f, _)| *f).collect();
            from.sort();
            assert_eq!(from, (0..3).filter(|&f| f != i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn full_ring_refuses_data_and_keeps_control_in_order() {
        let mut ends = build(2, CONTROL_RESERVE + 2).unwrap();
        let mut e1 = ends.pop().unwrap();
        let mut e0 = ends.pop().unwrap();
        let out = e0.outboxes[1].as_mut().unwrap();
        assert!(out.has_room(2));
        assert!(!out.has_room(3));
        for i in 0..CONTROL_RESERVE + 5 {
            out.push(release(&format!("t/{i}")));
        }
        assert_eq!(out.overflow_len(), 3);
        assert!(!out.has_room(1), "data refused while control waits");
        let cons = &mut e1.inboxes[0].1;
        let mut seen = Vec::new();
        while let Ok(MeshMsg::Release { topic, .. }) = cons.pop() {
            seen.push(topic.to_string());
        }
        assert!(!out.flush_overflow());
        while let Ok(MeshMsg::Release { topic, .. }) = cons.pop() {
            seen.push(topic.to_string());
        }
        let want: Vec<_> = (0..CONTROL_RESERVE + 5).map(|i| format!("t/{i}")).collect();
        assert_eq!(seen, want, "nothing lost, nothing reordered");
    }
}
