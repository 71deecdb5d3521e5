//! The edge side of topic traffic: the owner's answers arriving for this
//! shard's connections (encoded here, in each connection's wire format),
//! subscription changes applied to the local index, and local fanout.
//!
//! Run by the shard's thread; no I/O. Fanout costs an `Rc` clone and a
//! queue slot per subscriber, never an allocation or a copy.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::conn::core::ShardCore;
use crate::conn::http::{self, Answer};
use crate::conn::outbound::{Delivery, Push};
use crate::conn::state::Sub;
use crate::conn::Phase;
use crate::mesh::{ConnRef, PubReply, ReplyKind, Requester, SharedPub};
use crate::proto::centrifugo as cf;
use crate::proto::message::{self, ErrorCode, Recovery};
use crate::topic::owned::Epoch;

/// What the owner answered to a `sub`.
#[derive(Debug)]
pub struct SubscribeAnswer {
    /// The topic.
    pub topic: Arc<str>,
    /// Last seq at subscribe time.
    pub seq: u64,
    /// Epoch.
    pub epoch: Epoch,
    /// How a resume turned out.
    pub recovery: Recovery,
    /// Replayed publications, in order.
    pub replay: Vec<SharedPub>,
    /// The presence member the subscribe brought.
    pub member: Option<Box<crate::mesh::msg::Member>>,
}

impl ShardCore {
    /// The owner answered a publish of one of this shard's connections:
    /// encode it for the connection's protocol.
    fn reply_ack_then_receipt(&mut self, to: Requester, reply: PubReply, topic: std::sync::Arc<str>, seq: u64) {
        self.answer_publisher(to, reply);
        self.receipt_acked(to.conn, to.id, &topic, seq);
    }

    pub(crate) fn on_published(&mut self, to: Requester, reply: PubReply) {
        if to.kind == ReplyKind::Internal {
            if matches!(reply, PubReply::Refused { .. }) {
                // A dead-letter publication its topic's owner refused.
                self.counters.group_dead_letter_refused += 1;
            }
            return;
        }
        let Some(c) = self.conn_mut(to.conn) else {
            return;
        };
        c.awaiting = c.awaiting.saturating_sub(1);
        if to.receipt {
            match &reply {
                PubReply::Ack { topic, seq, dup: false, .. } => {
                    let (topic, seq) = (topic.clone(), *seq);
                    // The ack is queued first, below; the receipt after it.
                    self.reply_ack_then_receipt(to, reply, topic, seq);
                    return;
                }
                _ => self.receipt_void(to.conn),
            }
        }
        self.answer_publisher(to, reply);
    }

    /// Queues the owner's answer to a publish in the publisher's protocol.
    fn answer_publisher(&mut self, to: Requester, reply: PubReply) {
        let idx = to.conn.idx as usize;
        let answer = match &reply {
            PubReply::Ack { topic, seq, epoch, dup } => Answer::Ack { topic, seq: *seq, epoch: *epoch, dup: *dup },
            PubReply::Refused { code, message, retry_after_ms } => {
                Answer::Refused { code: *code, message, retry_after_ms: *retry_after_ms }
            }
        };
        match to.kind {
            ReplyKind::Ws if self.conns.get(idx).is_some_and(|c| c.cf.is_some()) => match answer {
                Answer::Ack { .. } => {
                    let id = to.id.unwrap_or(0) as u32;
                    self.reply(idx, |o| cf::empty_result(o, id, "publish"))
                }
                Answer::Refused { code, message: m, retry_after_ms } => {
                    self.reply_error(idx, to.id, code, m, retry_after_ms)
                }
            },
            ReplyKind::Ws => self.reply(idx, |o| match answer {
                Answer::Ack { topic, seq, epoch, dup } => message::ack(o, to.id, topic, seq, epoch.as_str(), dup),
                Answer::Refused { code, message: m, retry_after_ms } => {
                    message::error(o, to.id, code, m, retry_after_ms)
                }
            }),
            ReplyKind::Http | ReplyKind::Batch(_) if self.cf_api(idx) => {
                let body = http::cf_answer_json(&answer);
                match to.kind {
                    ReplyKind::Batch(index) => self.batch_item(idx, index, body),
                    _ => self.http_done(idx, &http::json_response(200, "OK", &body, None, false)),
                }
            }
            ReplyKind::Http => {
                let response = http::publish_response(&answer);
                self.http_done(idx, &response);
            }
            ReplyKind::Batch(index) => {
                let body = http::answer_json(&answer);
                self.batch_item(idx, index, body);
            }
            ReplyKind::Internal => {}
        }
    }

    /// Whether connection `idx`'s request in flight is the Centrifugo API.
    fn cf_api(&self, idx: usize) -> bool {
        self.conns.get(idx).and_then(|c| c.http.as_ref()).is_some_and(|h| h.cf_api)
    }

    pub(crate) fn on_subscribed(&mut self, conn: ConnRef, id: Option<u64>, a: SubscribeAnswer) {
        // A join or a re-sync moves what a parked fanout walks.
        self.settle_fanout();
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return self.release(a.topic, a.member);
        };
        c.pending_subs = c.pending_subs.saturating_sub(1);
        let tenant = c.identity.as_ref().map(|i| i.tenant.clone());
        let kept = c.phase != Phase::Closing && c.sub_index(&a.topic).is_none();
        if let (Some(t), false) = (&tenant, kept) {
            // Counted when asked; no new subscription came of it.
            self.tenant_add(t, 0, -1);
        }
        let Some(c) = self.conns.get_mut(idx) else { return };
        if c.phase == Phase::Closing {
            return self.release(a.topic, a.member);
        }
        if c.sub_index(&a.topic).is_some() {
            // Already subscribed: the owner counted this request again. With a
            // replay, what is queued for the topic is replaced by it.
            if !a.replay.is_empty() {
                c.out.purge_topic(&a.topic);
            }
            self.release(a.topic.clone(), None);
        } else {
            let (name, pos) = self.local.add(&a.topic, conn.idx);
            c.subs.push(Sub { topic: name, pos });
            self.counters.subscribes += 1;
        }
        let (topic, epoch, seq, rec) = (&a.topic, a.epoch, a.seq, a.recovery);
        if let Some(p) = self.conns[idx].cf.as_mut().map(|c| c.take_sub(id)) {
            return self.cf_subscribed(idx, conn, id, p, &a);
        }
        self.reply(idx, |o| message::subscribed(o, id, topic, epoch.as_str(), seq, rec));
        // Replayed frames share one lane, so they stay in seq order, and it
        // is the critical lane, so they are not dropped (the owner capped the
        // replay below the soft limit).
        let hard = self.limits.outbound_hard_bytes;
        for publ in a.replay {
            let d = Rc::new(Delivery::new(publ));
            let Some(c) = self.conns.get_mut(idx) else {
                return;
            };
            let was_empty = c.out.is_empty();
            match c.out.push_frame(&d, message::Prio::Critical, usize::MAX, hard) {
                Push::Overflow => return self.close_slow(idx),
                _ if was_empty => c.wake(),
                _ => {}
            }
        }
    }

    pub(crate) fn on_unsubscribed(&mut self, conn: ConnRef, id: Option<u64>, topic: &str) {
        // Parked fanouts still walking this topic's list finish first, so
        // the purge below sees everything sequenced before the unsub.
        self.settle_fanout();
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return;
        };
        let cf_id = c.cf.as_ref().map(|_| id.unwrap_or(0) as u32);
        let Some(i) = c.sub_index(topic) else {
            if let Some(id) = cf_id {
                // Centrifugo answers an unsubscribe from nothing with success
                // (an error would make the SDKs reconnect).
                return self.reply(idx, |o| cf::empty_result(o, id, "unsubscribe"));
            }
            return self.reply_error(idx, id, ErrorCode::NotSubscribed, "not subscribed to this topic", None);
        };
        let sub = c.subs.swap_remove(i);
        let member = c.member(conn);
        if let Some(t) = c.identity.as_ref().map(|i| i.tenant.clone()) {
            self.tenant_add(&t, 0, -1);
        }
        let Some(c) = self.conns.get_mut(idx) else { return };
        // `unsubscribed` means no more `msg` for the topic; the reply goes
        // out on the control lane, ahead of anything still queued, so what
        // is queued for the topic is dropped (PROTOCOL.md, server messages).
        c.out.purge_topic(topic);
        self.unlink(conn.idx, &sub.topic, sub.pos);
        self.release(sub.topic, Some(member));
        self.counters.unsubscribes += 1;
        match cf_id {
            Some(id) => self.reply(idx, |o| cf::empty_result(o, id, "unsubscribe")),
            None => self.reply(idx, |o| message::unsubscribed(o, id, topic)),
        }
    }

    /// The subscribe reply to a Centrifugo connection: recovered
    /// publications inside it, in order (PROTOCOL-EXTENSIONS §7).
    fn cf_subscribed(
        &mut self,
        idx: usize,
        conn: ConnRef,
        id: Option<u64>,
        p: Option<crate::conn::centrifugo::PendingSub>,
        a: &SubscribeAnswer,
    ) {
        let cf_id = id.unwrap_or(0) as u32;
        let recovering = p.and_then(|p| p.recover_from);
        let recovered = recovering.is_some() && matches!(a.recovery, Recovery::Recovered(_));
        if recovering.is_some() && !recovered && p.is_some_and(|p| p.reject_unrecovered) {
            // Flag 2: the SDK reloads its state and subscribes again.
            self.detach_sub(idx, conn, &a.topic);
            return self.reply(idx, |o| cf::error(o, cf_id, cf::UNRECOVERABLE, "unrecoverable position"));
        }
        if recovered {
            self.counters.cf_recovered += 1;
        }
        // After a recovery the position given is the one recovered from;
        // each publication in the reply moves it on.
        let offset = match (recovering, recovered) {
            (Some(from), true) => from,
            _ => a.seq,
        };
        let r =
            cf::SubscribeResult { epoch: a.epoch.as_str(), offset, was_recovering: recovering.is_some(), recovered };
        let pubs: &[SharedPub] = if recovered { &a.replay } else { &[] };
        self.reply(idx, |o| cf::subscribed(o, cf_id, &r, pubs.iter().map(|p| p.cf_fields())));
    }

    /// Ends a subscription of connection `idx` on this side (no reply): the
    /// owner is told through `release`.
    fn detach_sub(&mut self, idx: usize, conn: ConnRef, topic: &Arc<str>) {
        let Some(c) = self.conns.get_mut(idx) else { return };
        let Some(i) = c.sub_index(topic) else { return };
        let sub = c.subs.swap_remove(i);
        let member = c.member(conn);
        c.out.purge_topic(topic);
        if let Some(t) = c.identity.as_ref().map(|i| i.tenant.clone()) {
            self.tenant_add(&t, 0, -1);
        }
        self.unlink(conn.idx, &sub.topic, sub.pos);
        self.release(sub.topic, Some(member));
        self.counters.unsubscribes += 1;
    }

    /// The owner's `presence` answer, in the asking connection's format.
    pub(crate) fn on_presence_answer(&mut self, conn: ConnRef, a: &crate::mesh::msg::PresenceList) {
        let Some(c) = self.conn_mut(conn) else { return };
        let idx = conn.idx as usize;
        let clients: Vec<(&str, String)> = a.clients.iter().map(|(u, c)| (&**u, c.clone())).collect();
        let Some(cfc) = c.cf.as_mut() else {
            return self.reply(idx, |o| message::presence(o, a.id, &a.topic, a.count, &clients));
        };
        let id = a.id.unwrap_or(0) as u32;
        match cfc.stats.iter().position(|s| *s == id) {
            Some(i) => {
                cfc.stats.swap_remove(i);
                let mut users: Vec<&str> = clients.iter().map(|c| c.0).collect();
                users.sort_unstable();
                users.dedup();
                let users = (users.len() as u64).min(a.count);
                self.reply(idx, |o| cf::presence_stats(o, id, a.count, users));
            }
            None => self.reply(idx, |o| cf::presence(o, id, &clients)),
        }
    }

    /// A `join`/`leave` for watchers on this shard, each in its format
    /// (encoded once per format).
    pub(crate) fn on_presence_event(&mut self, conns: &[ConnRef], n: &crate::mesh::msg::PresenceNote) {
        let (mut native, mut centrifugo) = (Vec::new(), Vec::new());
        for &conn in conns {
            let Some(c) = self.conn_mut(conn) else { continue };
            let cf = c.cf.is_some();
            let buf = if cf { &mut centrifugo } else { &mut native };
            if buf.is_empty() {
                match cf {
                    true => cf::join_leave(buf, n.join, &n.topic, &n.client, &n.conn),
                    false => {
                        let op = if n.join { "join" } else { "leave" };
                        message::presence_event(buf, op, &n.topic, &n.client, &n.conn)
                    }
                }
            }
            let frame = if cf { &centrifugo } else { &native };
            self.reply(conn.idx as usize, |o| o.extend_from_slice(frame));
        }
    }

    /// Gives one subscription of this shard back to the topic's owner.
    pub(crate) fn release(&mut self, topic: Arc<str>, leave: Option<Box<crate::mesh::msg::Member>>) {
        self.route_to_owner(crate::mesh::MeshMsg::Release { topic, leave });
    }

    /// Queues a publication on every local subscriber of its topic, within
    /// the slice's budget (`limits.fanout_budget`); what does not fit is
    /// parked and continued by [`ShardCore::run_fanout`] in a later slice.
    /// Parked fanouts run in arrival order, and a new one queues behind
    /// them, so every subscriber still sees a topic's seqs in order.
    pub fn fanout_local(&mut self, publ: SharedPub, received_at: Instant) {
        self.fanout_local_with(publ, received_at, None);
    }

    /// [`ShardCore::fanout_local`], counting this shard's part of the
    /// publication's receipt when `receipt` says where it goes.
    pub fn fanout_local_with(
        &mut self,
        publ: SharedPub,
        received_at: Instant,
        receipt: Option<Box<crate::mesh::msg::ReceiptTo>>,
    ) {
        let Some(lt) = self.local.get(&publ.topic) else {
            if let Some(to) = receipt {
                // Nobody here any more: an empty part.
                self.receipts.sink.borrow_mut().push((*to, publ.topic.clone(), publ.seq, 0, 0));
            }
            return;
        };
        let n = lt.subs.len();
        let prio = publ.prio;
        let ticket = receipt.map(|to| {
            Box::new(super::outbound::Ticket {
                to: *to,
                offered: Default::default(),
                written: Default::default(),
                sink: self.receipts.sink.clone(),
            })
        });
        let mut frame = Delivery::new(publ);
        frame.receipt = ticket;
        let frame = Rc::new(frame);
        if self.parked.is_empty() && n <= self.fanout_left {
            self.fanout_left -= n;
            self.push_slice(&frame, prio, 0, n);
            self.counters.record_deliver(received_at);
            return;
        }
        self.parked.push_back(Parked { frame, prio, next: 0, received_at });
        self.run_fanout();
    }

    /// Continues parked fanouts while the slice has budget. Returns whether
    /// some are still parked (the mesh task comes back after yielding).
    pub fn run_fanout(&mut self) -> bool {
        while let Some(p) = self.parked.front() {
            let (frame, prio, next) = (p.frame.clone(), p.prio, p.next);
            let len = self.local.get(frame.topic()).map_or(0, |lt| lt.subs.len());
            let end = len.min(next.saturating_add(self.fanout_left));
            if end < len && end == next {
                self.counters.fanout_parked += 1;
                return true;
            }
            self.push_slice(&frame, prio, next, end);
            self.fanout_left -= end - next;
            if end < len {
                self.counters.fanout_parked += 1;
                if let Some(p) = self.parked.front_mut() {
                    p.next = end;
                }
                return true;
            }
            if let Some(p) = self.parked.pop_front() {
                self.counters.record_deliver(p.received_at);
            }
        }
        if !self.batching {
            self.wake_deferred();
        }
        false
    }

    /// A batch of mesh messages begins: deliveries wake their writers at
    /// its end ([`ShardCore::end_batch`]), or once its parked fanouts are
    /// done, so one send carries the whole batch's frames.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// The batch ends (see [`ShardCore::begin_batch`]).
    pub fn end_batch(&mut self) {
        self.batching = false;
        if self.parked.is_empty() {
            self.wake_deferred();
        }
    }

    fn wake_deferred(&mut self) {
        for c in self.wake_later.drain(..) {
            if let Some(conn) = self.conns.get_mut(c as usize) {
                conn.fanout_wait = false;
                conn.wake();
            }
        }
    }

    /// Wakes connection `idx` once no fanout is parked (a reader pushed
    /// back while its publish's fanout finishes).
    pub fn wake_after_fanout(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !std::mem::replace(&mut c.fanout_wait, true) {
                self.wake_later.push(idx as u32);
            }
        }
    }

    /// Whether fanouts are parked.
    pub fn fanout_pending(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Finishes every parked fanout now, whatever the budget: called before
    /// a topic's local list changes (a subscriber joins, leaves or re-syncs,
    /// which would move the positions a parked fanout walks) and before a
    /// drain closes connections.
    pub(crate) fn settle_fanout(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let left = self.fanout_left;
        self.fanout_left = usize::MAX;
        self.run_fanout();
        self.fanout_left = left;
    }

    /// Queues `frame` on the subscribers at positions `from..to` of its
    /// topic's local list.
    fn push_slice(&mut self, frame: &Rc<Delivery>, prio: message::Prio, from: usize, to: usize) {
        let Some(lt) = self.local.get(frame.topic()) else {
            return;
        };
        let (soft, hard) = (self.limits.outbound_soft_bytes, self.limits.outbound_hard_bytes);
        let defer = self.batching || !self.parked.is_empty();
        let (mut slow, mut behind) = (Vec::new(), Vec::new());
        if let Some(t) = &frame.receipt {
            t.offered.set(t.offered.get() + (to - from) as u32);
        }
        for &c in &lt.subs[from..to] {
            let Some(conn) = self.conns.get_mut(c as usize) else {
                self.counters.internal_errors += 1;
                continue;
            };
            if conn.phase == Phase::Closing {
                continue;
            }
            let was_empty = conn.out.is_empty();
            // A Centrifugo subscriber has one lane: offsets go out in order.
            let prio = if conn.out.cf { message::Prio::Normal } else { prio };
            match conn.out.push_frame(frame, prio, soft, hard) {
                Push::Dropped | Push::Merged if conn.out.cf => behind.push(c as usize),
                Push::Queued => {
                    self.counters.deliveries += 1;
                    if was_empty && defer {
                        self.wake_later.push(c);
                    } else if was_empty {
                        conn.wake();
                    }
                }
                Push::Dropped => self.counters.dropped_slow += 1,
                Push::Merged => self.counters.stream_appends_merged += 1,
                Push::Overflow => slow.push(c as usize),
            }
        }
        for c in slow {
            self.close_slow(c);
        }
        for c in behind {
            // Centrifugo has no `gap`: close 3010, and the SDK reconnects and
            // recovers from its last offset (what is queued is dropped; the
            // replay ring has it).
            if let Some(conn) = self.conns.get_mut(c).filter(|c| c.phase != Phase::Closing) {
                conn.out.discard_queued();
                self.counters.cf_insufficient_state += 1;
                let (code, reason) = cf::INSUFFICIENT_STATE;
                self.close(c, code, reason);
            }
        }
    }
}

/// A fanout that ran out of its slice's budget: the frame, and the position
/// in its topic's local list to continue from.
#[derive(Debug)]
pub struct Parked {
    frame: Rc<Delivery>,
    prio: message::Prio,
    next: usize,
    received_at: Instant,
}
