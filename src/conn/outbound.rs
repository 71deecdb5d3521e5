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

use crate::mesh::SharedPub;
use crate::proto::message::{self, Prio};

/// One publication as queued on one shard (one allocation per shard per
/// publish, shared by every local subscriber, so a delivery touches no
/// reference count another core also touches).
#[derive(Debug)]
pub struct Delivery {
    /// The publication, with its encoded frame.
    pub publ: SharedPub,
    /// Only when the publisher asked for a receipt: counts of this shard's
    /// subscribers, reported when the last of them is done with the frame.
    pub receipt: Option<Box<Ticket>>,
    /// The Centrifugo `pub` push frame, encoded on this shard when its first
    /// Centrifugo subscriber is given the publication and shared by all.
    pub cf: std::cell::OnceCell<Box<[u8]>>,
}

/// This shard's part of a publication's receipt, counted while its frame is
/// queued and reported when the last reference is dropped (every
/// subscriber's writer copied it into a send, or dropped it).
#[derive(Debug)]
pub struct Ticket {
    /// Where the part goes.
    pub to: crate::mesh::msg::ReceiptTo,
    /// Subscribers the frame was offered to.
    pub offered: std::cell::Cell<u32>,
    /// Subscribers it was written to.
    pub written: std::cell::Cell<u32>,
    /// The shard's finished parts.
    pub sink: ReceiptSink,
}

/// Finished receipt parts of a shard: (to, topic, seq, delivered, dropped).
pub type ReceiptSink = Rc<std::cell::RefCell<Vec<(crate::mesh::msg::ReceiptTo, Arc<str>, u64, u32, u32)>>>;

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(t) = self.receipt.take() {
            let (w, o) = (t.written.get(), t.offered.get());
            t.sink.borrow_mut().push((t.to, self.publ.topic.clone(), self.publ.seq, w, o.saturating_sub(w)));
        }
    }
}

impl Delivery {
    /// A delivery without a receipt.
    pub fn new(publ: SharedPub) -> Self {
        Self { publ, receipt: None, cf: std::cell::OnceCell::new() }
    }

    /// The frame in one wire format: native, or Centrifugo (`cf`).
    #[inline]
    pub fn wire(&self, cf: bool) -> &[u8] {
        if cf {
            self.cf.get_or_init(|| crate::proto::centrifugo::pub_frame(&self.publ.cf_fields()))
        } else {
            &self.publ.frame
        }
    }

    /// The frame was copied into a send (receipts count it delivered).
    #[inline]
    pub fn written(&self) {
        if let Some(t) = &self.receipt {
            t.written.set(t.written.get() + 1);
        }
    }

    /// The native frame.
    pub fn frame(&self) -> &[u8] {
        &self.publ.frame
    }

    /// The topic (the owner's `Arc`).
    pub fn topic(&self) -> &Arc<str> {
        &self.publ.topic
    }

    /// The seq.
    pub fn seq(&self) -> u64 {
        self.publ.seq
    }
}

/// A publication frame as queued on one shard.
pub type LocalFrame = Rc<Delivery>;

/// Bytes a `gap` marker is charged (it encodes to a small frame).
const GAP_CHARGE: usize = 64;

/// A run of seqs dropped for this connection.
#[derive(Debug)]
struct Gap {
    topic: Arc<str>,
    from: u64,
    to: u64,
}

#[derive(Debug)]
enum Item {
    Frame(LocalFrame),
    Gap(Box<Gap>),
    /// Appends of one token stream dropped past the soft limit, merged
    /// into one `rollup` msg at the place of the first.
    Merge(Rc<std::cell::RefCell<Merge>>),
}

/// A slow reader's merged appends of one stream.
#[derive(Debug)]
pub struct Merge {
    topic: Arc<str>,
    epoch: crate::topic::owned::Epoch,
    stream: Box<str>,
    text: String,
    upto: u64,
    end: bool,
}

impl Merge {
    /// Bytes it is charged (what it will encode to, about).
    fn charge(&self) -> usize {
        self.text.len() + self.stream.len() + self.topic.len() + 128
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let data = serde_json::Value::from(self.text.as_str()).to_string();
        let name = serde_json::Value::from(&*self.stream).to_string();
        let extra = format!("\"stream\":{name},\"end\":{},\"upto\":{},\"rollup\":true", self.end, self.upto);
        let m = message::MsgFields {
            topic: &self.topic,
            seq: self.upto,
            epoch: self.epoch.as_str(),
            msg_id: None,
            prio: None,
            from: None,
            data: &data,
            extra: Some(&extra),
        };
        message::msg(out, &m);
    }
}

/// What happened to a queued frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// A normal frame dropped past the soft limit; a `gap` will say so.
    Dropped,
    /// A stream append past the soft limit, merged into a `rollup` msg.
    Merged,
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
    /// Written after every lane is empty (the drain notice and close).
    last: Vec<u8>,
    /// Per topic, the seq of the newest critical frame that overtook queued
    /// normal frames: a normal frame of that topic below it is superseded and
    /// goes out as a `gap` when the writer reaches it (so a critical push
    /// never scans the normal lane). Cleared when the normal lane empties.
    overtaken: Vec<(Arc<str>, u64)>,
    /// Bytes held in all lanes and `pending`.
    bytes: usize,
    /// Merges still taking dropped appends (a queued append of the same
    /// stream, or the writer reaching the merge, closes one).
    open_merges: Vec<Rc<std::cell::RefCell<Merge>>>,
    /// The connection speaks the Centrifugo protocol: publication frames
    /// are its `pub` pushes.
    pub cf: bool,
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

    /// Queues bytes to be written after everything else (drain + close).
    pub fn push_last(&mut self, bytes: &[u8]) {
        self.last.extend_from_slice(bytes);
        self.bytes += bytes.len();
    }

    /// Queues a publication on its lane. A critical frame that overtakes
    /// queued normal frames of its topic turns them into a `gap`, so the
    /// subscriber still sees the topic's seqs in increasing order.
    pub fn push_frame(&mut self, d: &LocalFrame, prio: Prio, soft: usize, hard: usize) -> Push {
        let len = d.wire(self.cf).len();
        match prio {
            Prio::Critical => {
                if self.bytes + len > hard {
                    return Push::Overflow;
                }
                if !self.normal.is_empty() {
                    self.note_overtaken(d.topic(), d.seq());
                }
                self.critical.push_back(d.clone());
            }
            Prio::Normal if self.bytes + len > soft => {
                if d.publ.stream.is_some() {
                    return self.merge_append(d, hard);
                }
                return self.note_drop(d.topic(), d.seq(), hard);
            }
            Prio::Normal => {
                if !self.open_merges.is_empty() {
                    self.close_merges(d.topic());
                }
                self.normal.push_back(Item::Frame(d.clone()))
            }
        }
        self.bytes += len;
        Push::Queued
    }

    /// A stream append past the soft limit: merged into the stream's open
    /// merge, or one started at this place in the lane. Its text is kept,
    /// not dropped (past `hard`, the connection is a slow consumer).
    fn merge_append(&mut self, d: &LocalFrame, hard: usize) -> Push {
        let Some((name, end)) = d.publ.stream.as_deref() else { return Push::Dropped };
        let text = crate::topic::streams::text_of(d.publ.data()).unwrap_or_default();
        let open = self.open_merges.iter().find(|m| {
            let m = m.borrow();
            *m.stream == **name && (Arc::ptr_eq(&m.topic, d.topic()) || *m.topic == **d.topic())
        });
        let before;
        let after;
        match open {
            Some(m) => {
                let mut m = m.borrow_mut();
                before = m.charge();
                m.text.push_str(&text);
                m.upto = d.seq();
                m.end = *end;
                after = m.charge();
            }
            None => {
                // The new merge follows whatever of the topic is queued.
                self.close_merges(d.topic());
                let m = Merge {
                    topic: d.topic().clone(),
                    epoch: d.publ.epoch,
                    stream: name.clone(),
                    text,
                    upto: d.seq(),
                    end: *end,
                };
                before = 0;
                after = m.charge();
                let m = Rc::new(std::cell::RefCell::new(m));
                self.open_merges.push(m.clone());
                self.normal.push_back(Item::Merge(m));
            }
        }
        self.bytes = self.bytes + after - before;
        if self.bytes > hard {
            return Push::Overflow;
        }
        Push::Merged
    }

    /// Something else of `topic` is queued after its open merges (a frame,
    /// or a gap): later drops start new merges, so a merge holds only a
    /// run of the topic's seqs and the reader sees them in order.
    fn close_merges(&mut self, topic: &Arc<str>) {
        self.open_merges.retain(|m| {
            let m = m.borrow();
            !(Arc::ptr_eq(&m.topic, topic) || *m.topic == **topic)
        });
    }

    fn note_drop(&mut self, topic: &Arc<str>, seq: u64, hard: usize) -> Push {
        if !self.open_merges.is_empty() {
            self.close_merges(topic);
        }
        if let Some(Item::Gap(g)) = self.normal.back_mut() {
            if g.to + 1 == seq && (Arc::ptr_eq(&g.topic, topic) || *g.topic == **topic) {
                g.to = seq;
                return Push::Dropped;
            }
        }
        if self.bytes + GAP_CHARGE > hard {
            return Push::Overflow;
        }
        self.normal.push_back(Item::Gap(Box::new(Gap { topic: topic.clone(), from: seq, to: seq })));
        self.bytes += GAP_CHARGE;
        Push::Dropped
    }

    /// Records that a critical frame of `topic` at `seq` overtook the
    /// normal lane (O(topics overtaken), not O(queued frames)).
    fn note_overtaken(&mut self, topic: &Arc<str>, seq: u64) {
        match self.overtaken.iter_mut().find(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic) {
            Some(e) => e.1 = e.1.max(seq),
            None => self.overtaken.push((topic.clone(), seq)),
        }
    }

    /// Whether a queued normal frame was overtaken by a critical frame of
    /// its topic (it is then sent as part of a `gap`).
    fn superseded(&self, f: &Delivery) -> bool {
        !self.overtaken.is_empty()
            && self.overtaken.iter().any(|(t, s)| f.seq() < *s && (Arc::ptr_eq(t, f.topic()) || **t == **f.topic()))
    }

    /// Removes every queued frame and gap marker of `topic` (a re-sync
    /// replays them). Returns how many frames were removed.
    pub fn purge_topic(&mut self, topic: &str) -> usize {
        let mut removed = 0;
        let mut bytes = 0;
        let cf = self.cf;
        self.critical.retain(|f| {
            let keep = &**f.topic() != topic;
            if !keep {
                removed += 1;
                bytes += f.wire(cf).len();
            }
            keep
        });
        self.normal.retain(|i| match i {
            Item::Frame(f) if &**f.topic() == topic => {
                removed += 1;
                bytes += f.wire(cf).len();
                false
            }
            Item::Gap(g) if &*g.topic == topic => {
                bytes += GAP_CHARGE;
                false
            }
            Item::Merge(m) if &*m.borrow().topic == topic => {
                bytes += m.borrow().charge();
                false
            }
            _ => true,
        });
        self.open_merges.retain(|m| &*m.borrow().topic != topic);
        self.overtaken.retain(|(t, _)| &**t != topic);
        self.bytes -= bytes;
        removed
    }

    /// Drops everything queued except a partly sent frame (which must be
    /// finished so that a close frame after it is well-formed).
    pub fn discard_queued(&mut self) {
        self.control = Vec::new();
        self.critical = VecDeque::new();
        self.normal = VecDeque::new();
        self.last = Vec::new();
        self.overtaken = Vec::new();
        self.open_merges = Vec::new();
        self.bytes = self.pending().len();
    }

    /// Calls `f` with the topic and seq of every queued publication frame
    /// (lane order; for metrics, not the data path).
    pub fn for_each_queued<'a>(&'a self, mut f: impl FnMut(&'a Arc<str>, u64)) {
        for d in &self.critical {
            f(d.topic(), d.seq());
        }
        for i in &self.normal {
            if let Item::Frame(d) = i {
                f(d.topic(), d.seq());
            }
        }
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
            f.written();
            let w = f.wire(self.cf);
            out.extend_from_slice(w);
            self.bytes -= w.len();
        }
        // A run of superseded frames of one topic, sent as one gap.
        let mut run: Option<(Arc<str>, u64, u64)> = None;
        while out.len() < max {
            match self.normal.pop_front() {
                Some(Item::Frame(f)) if self.superseded(&f) => {
                    self.bytes -= f.wire(self.cf).len();
                    match &mut run {
                        Some((t, _, to)) if *to + 1 == f.seq() && (Arc::ptr_eq(t, f.topic()) || **t == **f.topic()) => {
                            *to = f.seq()
                        }
                        _ => {
                            if let Some((t, from, to)) = run.take() {
                                message::gap(out, &t, from, to);
                            }
                            run = Some((f.topic().clone(), f.seq(), f.seq()));
                        }
                    }
                }
                Some(item) => {
                    if let Some((t, from, to)) = run.take() {
                        message::gap(out, &t, from, to);
                    }
                    match item {
                        Item::Frame(f) => {
                            f.written();
                            let w = f.wire(self.cf);
                            out.extend_from_slice(w);
                            self.bytes -= w.len();
                        }
                        Item::Gap(g) => {
                            message::gap(out, &g.topic, g.from, g.to);
                            self.bytes -= GAP_CHARGE;
                        }
                        Item::Merge(m) => {
                            self.open_merges.retain(|o| !Rc::ptr_eq(o, &m));
                            let m = m.borrow();
                            m.encode(out);
                            self.bytes -= m.charge();
                        }
                    }
                }
                None => break,
            }
        }
        if let Some((t, from, to)) = run.take() {
            message::gap(out, &t, from, to);
        }
        if self.normal.is_empty() {
            self.overtaken.clear();
        }
        if self.critical.is_empty() && self.normal.is_empty() && !self.last.is_empty() && out.len() < max {
            out.extend_from_slice(&self.last);
            self.bytes -= self.last.len();
            self.last = Vec::new();
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

/// Queue slots kept by an idle lane; larger ones are released when drained.
const IDLE_KEEP: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(topic: &str, seq: u64, byte: u8, len: usize) -> LocalFrame {
        let data = String::from_utf8(vec![byte; len]).unwrap();
        let epoch = crate::topic::owned::EpochSource::new(0).next_epoch();
        let meta = crate::topic::publication::PubMeta {
            topic,
            seq,
            epoch,
            prio: None,
            msg_id: None,
            from: None,
            data: &data,
            extra: None,
            stream: None,
        };
        let frame: Box<[u8]> = data.as_bytes().into();
        let publ = crate::topic::publication::Publication::new(Arc::from(topic), &meta, frame, (0, len));
        Rc::new(Delivery::new(Arc::new(publ)))
    }

    fn drain(o: &mut Outbound) -> Vec<u8> {
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX);
        out
    }

    #[test]
    fn lanes_go_control_then_critical_then_normal_then_last() {
        let mut o = Outbound::default();
        o.push_last(b"L");
        o.push_frame(&frame_of("a/b", 1, b'n', 3), Prio::Normal, 100, 200);
        o.push_frame(&frame_of("c/d", 2, b'c', 2), Prio::Critical, 100, 200);
        o.push_control(200, |v| v.extend_from_slice(b"X"));
        assert_eq!(o.bytes(), 7);
        assert_eq!(drain(&mut o), b"XccnnnL");
        assert!(o.is_empty());
    }

    #[test]
    fn soft_limit_drops_normal_into_one_gap_in_place() {
        let mut o = Outbound::default();
        assert_eq!(o.push_frame(&frame_of("a/b", 1, b'1', 10), Prio::Normal, 15, 1000), Push::Queued);
        for seq in 2..=5 {
            assert_eq!(o.push_frame(&frame_of("a/b", seq, b'x', 10), Prio::Normal, 15, 1000), Push::Dropped);
        }
        let out = drain(&mut o);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("1111111111"), "{text}");
        assert!(text.ends_with(r#"{"op":"gap","topic":"a/b","from":2,"to":5}"#), "{text}");
        assert!(o.is_empty());
    }

    #[test]
    fn critical_overtaking_normal_of_its_topic_turns_them_into_a_gap() {
        let mut o = Outbound::default();
        o.push_frame(&frame_of("a/b", 4, b'4', 5), Prio::Normal, 1000, 2000);
        o.push_frame(&frame_of("x/y", 9, b'o', 5), Prio::Normal, 1000, 2000);
        o.push_frame(&frame_of("a/b", 5, b'5', 5), Prio::Normal, 1000, 2000);
        o.push_frame(&frame_of("a/b", 6, b'C', 5), Prio::Critical, 1000, 2000);
        let text = String::from_utf8_lossy(&drain(&mut o)).to_string();
        // The critical frame first; each overtaken frame of its topic becomes
        // a gap notice where it stood; the other topic is untouched.
        let g4 = r#"{"op":"gap","topic":"a/b","from":4,"to":4}"#;
        let g5 = r#"{"op":"gap","topic":"a/b","from":5,"to":5}"#;
        assert!(text.starts_with("CCCCC"), "{text}");
        let (p4, po, p5) = (text.find(g4).unwrap(), text.find("ooooo").unwrap(), text.find(g5).unwrap());
        assert!(p4 < po && po < p5, "{text}");
        assert!(o.is_empty(), "byte accounting balanced");
    }

    #[test]
    fn overtaken_runs_merge_into_one_gap_and_later_frames_survive() {
        let mut o = Outbound::default();
        for seq in 1..=3 {
            o.push_frame(&frame_of("a/b", seq, b'n', 5), Prio::Normal, 1000, 4000);
        }
        o.push_frame(&frame_of("a/b", 4, b'C', 5), Prio::Critical, 1000, 4000);
        // Pushed after the critical frame: newer, so kept.
        o.push_frame(&frame_of("a/b", 5, b'5', 5), Prio::Normal, 1000, 4000);
        let text = String::from_utf8_lossy(&drain(&mut o)).to_string();
        assert!(text.starts_with("CCCCC") && text.ends_with("55555"), "{text}");
        assert_eq!(text.matches(r#""op":"gap""#).count(), 1, "{text}");
        assert!(text.contains(r#"{"op":"gap","topic":"a/b","from":1,"to":3}"#), "{text}");
        assert!(o.is_empty());
        // The lane emptied, so the mark is gone: a replay from seq 1 after a
        // re-sync is not taken for overtaken frames.
        o.push_frame(&frame_of("a/b", 1, b'r', 5), Prio::Normal, 1000, 4000);
        assert_eq!(drain(&mut o), b"rrrrr");
    }

    #[test]
    fn a_partial_fill_keeps_the_mark_for_the_rest() {
        let mut o = Outbound::default();
        for seq in 1..=4 {
            o.push_frame(&frame_of("a/b", seq, b'n', 10), Prio::Normal, 1000, 4000);
        }
        o.push_frame(&frame_of("a/b", 9, b'C', 10), Prio::Critical, 1000, 4000);
        let mut out = Vec::new();
        o.fill(&mut out, 5);
        assert_eq!(out, b"CCCCCCCCCC");
        let text = String::from_utf8_lossy(&drain(&mut o)).to_string();
        assert_eq!(text.matches(r#""op":"gap""#).count(), 1, "{text}");
        assert!(text.ends_with(r#"{"op":"gap","topic":"a/b","from":1,"to":4}"#), "{text}");
        assert!(o.is_empty());
    }

    #[test]
    fn purge_removes_one_topic_only() {
        let mut o = Outbound::default();
        o.push_frame(&frame_of("a/b", 1, b'a', 4), Prio::Normal, 1000, 2000);
        o.push_frame(&frame_of("c/d", 1, b'c', 4), Prio::Normal, 1000, 2000);
        o.push_frame(&frame_of("a/b", 2, b'A', 4), Prio::Critical, 1000, 2000);
        // Purge removes the critical frame and the frame it overtook.
        assert_eq!(o.purge_topic("a/b"), 2);
        assert_eq!(drain(&mut o), b"cccc");
        assert!(o.is_empty());
    }

    #[test]
    fn hard_limit_overflows() {
        let mut o = Outbound::default();
        assert_eq!(o.push_frame(&frame_of("a/b", 1, b'c', 90), Prio::Critical, 50, 100), Push::Queued);
        assert_eq!(o.push_frame(&frame_of("a/b", 2, b'c', 20), Prio::Critical, 50, 100), Push::Overflow);
        assert_eq!(o.push_control(100, |v| v.extend_from_slice(&[0; 20])), Push::Overflow);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbound::default();
        o.push_frame(&frame_of("a/b", 1, b'a', 4), Prio::Normal, 100, 200);
        o.push_frame(&frame_of("a/b", 2, b'b', 4), Prio::Normal, 100, 200);
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX);
        o.keep_unsent(&out[3..]);
        o.push_control(200, |v| v.extend_from_slice(b"X"));
        assert_eq!(o.pending(), b"abbbb");
        o.advance_pending(2);
        assert_eq!(o.pending(), b"bbb");
        o.advance_pending(3);
        assert_eq!(drain(&mut o), b"X", "control waits for the partly sent frame");
        assert!(o.is_empty());
    }
}
