//! A connection's outbound queue: three lanes, bounded in bytes.
//!
//! * **control**: replies encoded straight into one byte buffer (acks,
//!   errors, pongs, `subscribed`, close). Always written first.
//! * **critical**: shared publication frames that are never dropped.
//! * **normal**: shared publication frames, dropped for a slow consumer past
//!   the soft limit. A drop leaves a `gap` marker at the very place the
//!   frames would have been, so the client learns `from..to` in stream order.
//!
//! Publication frames are `Rc` handles to one encoded frame per shard: a
//! delivery costs a reference-count increment and a queue slot, never a copy
//! or an allocation (queues keep their capacity while busy). The writer
//! copies whatever is queued into one shard-wide buffer and sends it in one
//! `send`; bytes the socket did not take wait in `pending`.
//!
//! Owned by the connection's shard; no I/O here.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crate::mesh::SharedFrame;
use crate::proto::message::{self, Prio};

/// A publication frame as queued on one shard.
pub type LocalFrame = Rc<SharedFrame>;

/// Bytes a `gap` marker is charged (it encodes to a small frame).
const GAP_CHARGE: usize = 64;

/// Capacity kept by idle buffers; larger ones are released when drained, so
/// a burst does not pin memory on an idle connection.
const IDLE_KEEP: usize = 1024;

#[derive(Debug)]
enum Item {
    Frame(LocalFrame),
    Gap { topic: Arc<str>, from: u64, to: u64 },
}

/// What happened to a queued frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// A normal frame dropped past the soft limit; a `gap` will say so.
    Dropped,
    /// Past the hard limit: the connection must be closed as a slow consumer.
    Overflow,
}

/// The outbound lanes of one connection.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Bytes taken from the lanes that the socket has not accepted yet.
    pending: Vec<u8>,
    /// How much of `pending` was written.
    pending_off: usize,
    /// Encoded control frames.
    control: Vec<u8>,
    /// Critical publications.
    critical: VecDeque<LocalFrame>,
    /// Normal publications and gap markers.
    normal: VecDeque<Item>,
    /// Bytes held in all lanes and `pending`.
    bytes: usize,
}

impl Outbound {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes queued (all lanes and pending).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends control frames written by `write`. Over `hard` bytes the
    /// connection must be closed (the frames stay queued for a last try).
    pub fn push_control(&mut self, hard: usize, write: impl FnOnce(&mut Vec<u8>)) -> Push {
        let before = self.control.len();
        write(&mut self.control);
        self.bytes += self.control.len() - before;
        if self.bytes > hard {
            Push::Overflow
        } else {
            Push::Queued
        }
    }

    /// Queues a publication frame of `topic`/`seq` on its lane.
    pub fn push_frame(
        &mut self,
        frame: &LocalFrame,
        prio: Prio,
        topic: &Arc<str>,
        seq: u64,
        soft: usize,
        hard: usize,
    ) -> Push {
        let len = frame.len();
        match prio {
            Prio::Critical => {
                if self.bytes + len > hard {
                    return Push::Overflow;
                }
                self.critical.push_back(frame.clone());
            }
            Prio::Normal if self.bytes + len > soft => return self.note_drop(topic, seq, hard),
            Prio::Normal => self.normal.push_back(Item::Frame(frame.clone())),
        }
        self.bytes += len;
        Push::Queued
    }

    fn note_drop(&mut self, topic: &Arc<str>, seq: u64, hard: usize) -> Push {
        if let Some(Item::Gap { topic: t, to, .. }) = self.normal.back_mut() {
            if *to + 1 == seq && (Arc::ptr_eq(t, topic) || **t == **topic) {
                *to = seq;
                return Push::Dropped;
            }
        }
        if self.bytes + GAP_CHARGE > hard {
            return Push::Overflow;
        }
        self.normal.push_back(Item::Gap {
            topic: topic.clone(),
            from: seq,
            to: seq,
        });
        self.bytes += GAP_CHARGE;
        Push::Dropped
    }

    /// Drops everything queued except a partly sent frame (which must be
    /// finished so that a close frame after it is well-formed).
    pub fn discard_queued(&mut self) {
        self.control = Vec::new();
        self.critical = VecDeque::new();
        self.normal = VecDeque::new();
        self.bytes = self.pending().len();
    }

    /// Bytes waiting from an earlier partial write; write these first.
    pub fn pending(&self) -> &[u8] {
        &self.pending[self.pending_off..]
    }

    /// `n` bytes of [`Outbound::pending`] were written.
    pub fn advance_pending(&mut self, n: usize) {
        self.pending_off += n;
        self.bytes -= n;
        if self.pending_off >= self.pending.len() {
            self.pending = Vec::new();
            self.pending_off = 0;
        }
    }

    /// Moves queued bytes into `out` in lane order, up to about `max` bytes
    /// (a frame is never split). Call only when `pending()` is empty; after
    /// the send, hand the unsent tail back with [`Outbound::keep_unsent`].
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) {
        if !self.control.is_empty() {
            out.extend_from_slice(&self.control);
            self.bytes -= self.control.len();
            // Released, not cleared: an idle connection must not keep the
            // capacity of its last replies (one allocation per reply batch
            // is the price; replies are per command, never per delivery).
            self.control = Vec::new();
        }
        while out.len() < max {
            let Some(f) = self.critical.pop_front() else {
                break;
            };
            out.extend_from_slice(&f);
            self.bytes -= f.len();
        }
        while out.len() < max {
            match self.normal.pop_front() {
                Some(Item::Frame(f)) => {
                    out.extend_from_slice(&f);
                    self.bytes -= f.len();
                }
                Some(Item::Gap { topic, from, to }) => {
                    message::gap(out, &topic, from, to);
                    self.bytes -= GAP_CHARGE;
                }
                None => break,
            }
        }
        if self.critical.is_empty() && self.critical.capacity() > IDLE_KEEP {
            self.critical = VecDeque::new();
        }
        if self.normal.is_empty() && self.normal.capacity() > IDLE_KEEP {
            self.normal = VecDeque::new();
        }
    }

    /// The socket took only part of what [`Outbound::fill`] produced: keep
    /// the rest to write first next time.
    pub fn keep_unsent(&mut self, unsent: &[u8]) {
        if unsent.is_empty() {
            return;
        }
        debug_assert!(self.pending().is_empty());
        self.pending.clear();
        self.pending.extend_from_slice(unsent);
        self.pending_off = 0;
        self.bytes += unsent.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8, len: usize) -> LocalFrame {
        Rc::new(Arc::from(vec![byte; len]))
    }

    fn drain(o: &mut Outbound) -> Vec<u8> {
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX);
        out
    }

    #[test]
    fn lanes_go_control_then_critical_then_normal() {
        let t: Arc<str> = Arc::from("a/b");
        let mut o = Outbound::default();
        o.push_frame(&frame(b'n', 3), Prio::Normal, &t, 1, 100, 200);
        o.push_frame(&frame(b'c', 2), Prio::Critical, &t, 2, 100, 200);
        o.push_control(200, |v| v.extend_from_slice(b"X"));
        assert_eq!(o.bytes(), 6);
        assert_eq!(drain(&mut o), b"Xccnnn");
        assert!(o.is_empty());
    }

    #[test]
    fn soft_limit_drops_normal_into_one_gap_in_place() {
        let t: Arc<str> = Arc::from("a/b");
        let mut o = Outbound::default();
        assert_eq!(
            o.push_frame(&frame(b'1', 10), Prio::Normal, &t, 1, 15, 1000),
            Push::Queued
        );
        for seq in 2..=5 {
            assert_eq!(
                o.push_frame(&frame(b'x', 10), Prio::Normal, &t, seq, 15, 1000),
                Push::Dropped
            );
        }
        // Critical still gets through past the soft limit.
        assert_eq!(
            o.push_frame(&frame(b'C', 10), Prio::Critical, &t, 6, 15, 1000),
            Push::Queued
        );
        let out = drain(&mut o);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("CCCCCCCCCC1111111111"), "{text}");
        assert!(
            text.ends_with(r#"{"op":"gap","topic":"a/b","from":2,"to":5}"#),
            "{text}"
        );
        assert!(o.is_empty());
    }

    #[test]
    fn hard_limit_overflows() {
        let t: Arc<str> = Arc::from("a/b");
        let mut o = Outbound::default();
        assert_eq!(
            o.push_frame(&frame(b'c', 90), Prio::Critical, &t, 1, 50, 100),
            Push::Queued
        );
        assert_eq!(
            o.push_frame(&frame(b'c', 20), Prio::Critical, &t, 2, 50, 100),
            Push::Overflow
        );
        assert_eq!(
            o.push_control(100, |v| v.extend_from_slice(&[0; 20])),
            Push::Overflow
        );
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let t: Arc<str> = Arc::from("a/b");
        let mut o = Outbound::default();
        o.push_frame(&frame(b'a', 4), Prio::Normal, &t, 1, 100, 200);
        o.push_frame(&frame(b'b', 4), Prio::Normal, &t, 2, 100, 200);
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX);
        o.keep_unsent(&out[3..]);
        o.push_control(200, |v| v.extend_from_slice(b"X"));
        assert_eq!(o.pending(), b"abbbb");
        o.advance_pending(2);
        assert_eq!(o.pending(), b"bbb");
        o.advance_pending(3);
        assert_eq!(
            drain(&mut o),
            b"X",
            "control waits for the partly sent frame"
        );
        assert!(o.is_empty());
    }
}
