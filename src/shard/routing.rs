//! Mesh messages in, and the owner's work: subscribe (with resume), publish
//! (with dedupe and retention), fanout.
//!
//! Everything a shard does for a topic it owns happens here, whether the
//! request came over a ring or from one of its own connections (`from` is
//! then `self.id` and replies are queued directly).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::conn::http::{self, Answer};
use crate::conn::outbound::{Delivery, Push};
use crate::conn::state::Sub;
use crate::conn::Phase;
use crate::mesh::{ConnRef, MeshMsg, PublishReq, ReplyKind, SharedFrame};
use crate::proto::message::{self, ErrorCode, MsgFields, Prio, Recovery, Since};
use crate::topic::owned::{Epoch, OwnedTopic};
use crate::topic::replay::{ResumeError, Retained};

/// What the owner answers to a `sub`.
struct SubscribeAnswer {
    topic: Arc<str>,
    seq: u64,
    epoch: Epoch,
    recovery: Recovery,
    replay: Vec<Retained>,
}

impl ShardCore {
    /// Sends a topic request to the topic's owner, or handles it here.
    pub(crate) fn route_to_owner(&mut self, msg: MeshMsg) {
        let owner = match &msg {
            MeshMsg::Publish(r) => self.map.owner(&r.topic),
            MeshMsg::Subscribe { topic, .. } | MeshMsg::Unsubscribe { topic, .. } => self.map.owner(topic),
            MeshMsg::Release { topic } => self.map.owner(topic),
            _ => self.id,
        };
        self.send_to(owner, msg);
    }

    /// Sends `msg` to `shard` (handled in place when it is this shard).
    pub(crate) fn send_to(&mut self, shard: usize, msg: MeshMsg) {
        if shard == self.id {
            return self.on_mesh(shard, msg);
        }
        match self.outboxes.get_mut(shard).and_then(Option::as_mut) {
            Some(out) => out.push(msg),
            None => self.counters.internal_errors += 1,
        }
    }

    /// Handles one message from shard `from`.
    pub fn on_mesh(&mut self, from: usize, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish(req) => self.owner_publish(from, *req),
            MeshMsg::Subscribe { conn, id, topic, since } => self.owner_subscribe(from, conn, id, &topic, since),
            MeshMsg::Unsubscribe { conn, id, topic } => self.send_to(from, MeshMsg::Unsubscribed { conn, id, topic }),
            MeshMsg::Release { topic } => {
                let released = self.owned.get_mut(&topic).is_some_and(|t| t.release_interest(from));
                if !released {
                    self.counters.internal_errors += 1;
                }
            }
            MeshMsg::Deliver { topic, seq, prio, frame, received_at } => {
                self.fanout_local(topic, seq, prio, frame, received_at)
            }
            MeshMsg::Reply { conn, frame } => {
                if self.conn_mut(conn).is_some() {
                    self.reply(conn.idx as usize, |o| o.extend_from_slice(&frame));
                }
            }
            MeshMsg::Subscribed { conn, id, topic, seq, epoch, recovery, replay } => {
                let answer = SubscribeAnswer { topic, seq, epoch, recovery, replay };
                self.on_subscribed(conn, id, answer)
            }
            MeshMsg::SubscribeRefused { conn, id, code, message } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.pending_subs = c.pending_subs.saturating_sub(1);
                    self.reply_error(conn.idx as usize, id, code, message, Some(OVERLOADED_RETRY_MS));
                }
            }
            MeshMsg::Unsubscribed { conn, id, topic } => self.on_unsubscribed(conn, id, &topic),
            MeshMsg::DrainBarrier { round } => self.on_drain_barrier(round),
            MeshMsg::HttpAnswer { conn, response } => self.on_http_answer(conn, &response),
            MeshMsg::BatchItem { conn, index, body } => self.on_batch_item(conn, index, body.into()),
        }
    }

    fn owner_subscribe(&mut self, from: usize, conn: ConnRef, id: Option<u64>, topic: &str, since: Option<Since>) {
        let lim = self.policy.replay_limits();
        // A replay larger than a connection may queue would only be dropped.
        let max_replay = self.limits.outbound_soft_bytes;
        let msg = match self.owned.get_or_create(topic) {
            Err(_) => MeshMsg::SubscribeRefused {
                conn,
                id,
                code: ErrorCode::Overloaded,
                message: "the owner shard holds its maximum number of topics",
            },
            Ok(t) => {
                t.add_interest(from);
                let (recovery, replay) = resume(t, since.as_ref(), &lim, max_replay);
                match recovery {
                    Recovery::NotAsked => {}
                    Recovery::Recovered(n) => {
                        self.counters.replay_hits += 1;
                        self.counters.replayed += n;
                    }
                    Recovery::Failed(reason) => *self.counters.replay_misses.entry(reason).or_default() += 1,
                }
                let (topic, seq, epoch) = (t.name.clone(), t.seq, t.epoch);
                MeshMsg::Subscribed { conn, id, topic, seq, epoch, recovery, replay }
            }
        };
        self.send_to(from, msg);
    }

    fn on_subscribed(&mut self, conn: ConnRef, id: Option<u64>, a: SubscribeAnswer) {
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return self.release(a.topic);
        };
        c.pending_subs = c.pending_subs.saturating_sub(1);
        if c.phase == Phase::Closing {
            return self.release(a.topic);
        }
        if c.sub_index(&a.topic).is_some() {
            // Already subscribed: the owner counted this request again. With a
            // replay, what is queued for the topic is replaced by it.
            if !a.replay.is_empty() {
                c.out.purge_topic(&a.topic);
            }
            self.release(a.topic.clone());
        } else {
            let (name, pos) = self.local.add(&a.topic, conn.idx);
            c.subs.push(Sub { topic: name, pos });
            self.counters.subscribes += 1;
        }
        let (topic, epoch, seq, rec) = (&a.topic, a.epoch, a.seq, a.recovery);
        self.reply(idx, |o| message::subscribed(o, id, topic, epoch.as_str(), seq, rec));
        // Replayed frames share one lane, so they stay in seq order, and it
        // is the critical lane, so they are not dropped (the owner capped the
        // replay below the soft limit).
        let hard = self.limits.outbound_hard_bytes;
        for r in a.replay {
            let d = Rc::new(Delivery { frame: r.frame, topic: a.topic.clone(), seq: r.seq });
            let Some(c) = self.conns.get_mut(idx) else {
                return;
            };
            let was_empty = c.out.is_empty();
            match c.out.push_frame(&d, Prio::Critical, usize::MAX, hard) {
                Push::Overflow => return self.close_slow(idx),
                _ if was_empty => c.wake(),
                _ => {}
            }
        }
    }

    fn on_unsubscribed(&mut self, conn: ConnRef, id: Option<u64>, topic: &str) {
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return;
        };
        let Some(i) = c.sub_index(topic) else {
            return self.reply_error(idx, id, ErrorCode::NotSubscribed, "not subscribed to this topic", None);
        };
        let sub = c.subs.swap_remove(i);
        self.unlink(conn.idx, &sub.topic, sub.pos);
        self.release(sub.topic);
        self.counters.unsubscribes += 1;
        self.reply(idx, |o| message::unsubscribed(o, id, topic));
    }

    /// Gives one subscription of this shard back to the topic's owner.
    pub(crate) fn release(&mut self, topic: Arc<str>) {
        self.route_to_owner(MeshMsg::Release { topic });
    }

    /// Queues a control reply for `conn` on shard `shard`.
    fn reply_to(&mut self, shard: usize, conn: ConnRef, write: impl FnOnce(&mut Vec<u8>)) {
        if shard == self.id {
            if self.conn_mut(conn).is_some() {
                self.reply(conn.idx as usize, write);
            }
            return;
        }
        let mut frame = Vec::new();
        write(&mut frame);
        self.send_to(shard, MeshMsg::Reply { conn, frame: frame.into_boxed_slice() });
    }

    fn refuse_publish(&mut self, from: usize, req: &PublishReq, code: ErrorCode, reason: &'static str, msg: &str) {
        *self.counters.publishes_rejected.entry(reason).or_default() += 1;
        *self.counters.errors_sent.entry(code.as_str()).or_default() += 1;
        self.answer(from, req, Answer::Refused { code, message: msg, retry_after_ms: Some(OVERLOADED_RETRY_MS) });
    }

    /// Answers a publisher in its own language (WebSocket frame, HTTP
    /// response, or batch item).
    fn answer(&mut self, from: usize, req: &PublishReq, a: Answer<'_>) {
        match req.reply {
            ReplyKind::Ws => self.reply_to(from, req.conn, |o| match a {
                Answer::Ack { topic, seq, epoch, dup } => message::ack(o, req.id, topic, seq, epoch.as_str(), dup),
                Answer::Refused { code, message: m, retry_after_ms } => {
                    message::error(o, req.id, code, m, retry_after_ms)
                }
            }),
            ReplyKind::Http => {
                let response = http::publish_response(&a).into_boxed_slice();
                self.send_to(from, MeshMsg::HttpAnswer { conn: req.conn, response });
            }
            ReplyKind::Batch(index) => {
                let body = http::answer_json(&a).into_boxed_str();
                self.send_to(from, MeshMsg::BatchItem { conn: req.conn, index, body });
            }
        }
    }

    /// Sequences a publication, encodes its frame once, retains it for
    /// replay, acks the publisher and hands the frame to every interested
    /// shard. A repeated `msg_id` inside the window is acked with its
    /// original seq and not delivered again.
    fn owner_publish(&mut self, from: usize, req: PublishReq) {
        let now = Instant::now();
        let (dd_count, dd_age) =
            (self.policy.replay.dedupe_count, Duration::from_millis(self.policy.replay.dedupe_age_ms));
        let Ok(t) = self.owned.get_or_create(&req.topic) else {
            let msg = "the owner shard holds its maximum number of topics";
            return self.refuse_publish(from, &req, ErrorCode::Overloaded, "too_many_topics", msg);
        };
        if let Some(mid) = req.msg_id.as_deref() {
            if let Some(seq) = t.dedupe.lookup(mid, now, dd_count, dd_age) {
                let (name, epoch) = (t.name.clone(), t.epoch);
                self.counters.dedupe_hits += 1;
                return self.answer(from, &req, Answer::Ack { topic: &name, seq, epoch, dup: true });
            }
        }
        self.targets.clear();
        self.targets.extend(t.interested());
        let full = self
            .targets
            .iter()
            .copied()
            .find(|&s| s != self.id && !self.outboxes[s].as_ref().is_some_and(|o| o.has_room(1)));
        if let Some(s) = full {
            if let Some(o) = self.outboxes[s].as_mut() {
                o.note_full();
            }
            let msg = "engine overloaded (mesh ring full); retry later";
            return self.refuse_publish(from, &req, ErrorCode::Overloaded, "overloaded", msg);
        }
        let lim = self.policy.replay_limits();
        let Some(t) = self.owned.get_mut(&req.topic) else {
            return;
        };
        t.seq += 1;
        let (seq, epoch, name) = (t.seq, t.epoch, t.name.clone());
        self.encode_buf.clear();
        let fields = MsgFields {
            topic: &name,
            seq,
            epoch: epoch.as_str(),
            msg_id: req.msg_id.as_deref(),
            prio: req.prio,
            data: &req.data,
        };
        message::msg(&mut self.encode_buf, &fields);
        let frame: SharedFrame = Arc::from(&self.encode_buf[..]);
        let prio = req.prio.unwrap_or_default();
        t.replay.push(seq, prio, frame.clone(), now, &lim);
        if let Some(mid) = req.msg_id.as_deref() {
            t.dedupe.insert(mid, seq, now, dd_count, dd_age);
        }
        self.counters.frames_encoded += 1;
        self.counters.publishes_accepted += 1;

        self.answer(from, &req, Answer::Ack { topic: &name, seq, epoch, dup: false });
        self.counters.record_ack(req.received_at);

        let targets = std::mem::take(&mut self.targets);
        for &s in &targets {
            if s == self.id {
                self.fanout_local(name.clone(), seq, prio, frame.clone(), req.received_at);
            } else if let Some(out) = self.outboxes[s].as_mut() {
                let (topic, frame, received_at) = (name.clone(), frame.clone(), req.received_at);
                out.push(MeshMsg::Deliver { topic, seq, prio, frame, received_at });
            }
        }
        self.targets = targets;
    }

    /// Queues one publication on every local subscriber of `topic`.
    pub fn fanout_local(&mut self, topic: Arc<str>, seq: u64, prio: Prio, frame: SharedFrame, received_at: Instant) {
        let Some(lt) = self.local.get(&topic) else {
            return;
        };
        let (soft, hard) = (self.limits.outbound_soft_bytes, self.limits.outbound_hard_bytes);
        let local = Rc::new(Delivery { frame, topic, seq });
        let mut slow = Vec::new();
        for &c in &lt.subs {
            let Some(conn) = self.conns.get_mut(c as usize) else {
                self.counters.internal_errors += 1;
                continue;
            };
            if conn.phase == Phase::Closing {
                continue;
            }
            let was_empty = conn.out.is_empty();
            match conn.out.push_frame(&local, prio, soft, hard) {
                Push::Queued => {
                    self.counters.deliveries += 1;
                    if was_empty {
                        conn.wake();
                    }
                }
                Push::Dropped => self.counters.dropped_slow += 1,
                Push::Overflow => slow.push(c as usize),
            }
        }
        self.counters.record_deliver(received_at);
        for c in slow {
            self.close_slow(c);
        }
    }
}

/// How a `since` resume turns out, with the frames to replay.
fn resume(
    t: &mut OwnedTopic,
    since: Option<&Since>,
    lim: &crate::topic::replay::ReplayLimits,
    max: usize,
) -> (Recovery, Vec<Retained>) {
    let Some(since) = since else {
        return (Recovery::NotAsked, Vec::new());
    };
    if since.epoch != t.epoch.as_str() {
        return (Recovery::Failed("epoch_mismatch"), Vec::new());
    }
    match t.replay.resume(since.seq, t.seq, Instant::now(), lim, max) {
        Ok(frames) => (Recovery::Recovered(frames.len() as u64), frames),
        Err(ResumeError::Expired) => (Recovery::Failed("expired"), Vec::new()),
        Err(ResumeError::Ahead) => (Recovery::Failed("epoch_mismatch"), Vec::new()),
        Err(ResumeError::Limit) => (Recovery::Failed("limit"), Vec::new()),
    }
}
