//! Mesh messages in, and the owner's work: subscribe, publish, fanout.
//!
//! Everything a shard does for a topic it owns happens here, whether the
//! request came over a ring or from one of its own connections (`from` is
//! then `self.id` and replies are queued directly).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::conn::outbound::Push;
use crate::conn::state::Sub;
use crate::conn::Phase;
use crate::mesh::{ConnRef, MeshMsg, PublishReq, SharedFrame};
use crate::proto::message::{self, ErrorCode, MsgFields, Prio, Recovery, Since};
use crate::topic::owned::{Epoch, OwnedTopic};

impl ShardCore {
    /// Sends a topic request to the topic's owner, or handles it here.
    pub(crate) fn route_to_owner(&mut self, msg: MeshMsg) {
        let owner = match &msg {
            MeshMsg::Publish(r) => self.map.owner(&r.topic),
            MeshMsg::Subscribe { topic, .. } | MeshMsg::Unsubscribe { topic, .. } => {
                self.map.owner(topic)
            }
            MeshMsg::Release { topic } => self.map.owner(topic),
            _ => self.id,
        };
        self.send_to(owner, msg);
    }

    /// Sends `msg` to `shard` (handled in place when it is this shard).
    fn send_to(&mut self, shard: usize, msg: MeshMsg) {
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
            MeshMsg::Subscribe {
                conn,
                id,
                topic,
                since,
            } => self.owner_subscribe(from, conn, id, &topic, since),
            MeshMsg::Unsubscribe { conn, id, topic } => {
                self.send_to(from, MeshMsg::Unsubscribed { conn, id, topic })
            }
            MeshMsg::Release { topic } => {
                let released = self
                    .owned
                    .get_mut(&topic)
                    .is_some_and(|t| t.release_interest(from));
                if !released {
                    self.counters.internal_errors += 1;
                }
            }
            MeshMsg::Deliver {
                topic,
                seq,
                prio,
                frame,
                received_at,
            } => self.fanout_local(&topic, seq, prio, frame, received_at),
            MeshMsg::Reply { conn, frame } => {
                if self.conn_mut(conn).is_some() {
                    self.reply(conn.idx as usize, |o| o.extend_from_slice(&frame));
                }
            }
            MeshMsg::Subscribed {
                conn,
                id,
                topic,
                seq,
                epoch,
                recovery,
            } => self.on_subscribed(conn, id, topic, seq, epoch, recovery),
            MeshMsg::SubscribeRefused {
                conn,
                id,
                code,
                message,
            } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.pending_subs = c.pending_subs.saturating_sub(1);
                    self.reply_error(
                        conn.idx as usize,
                        id,
                        code,
                        message,
                        Some(OVERLOADED_RETRY_MS),
                    );
                }
            }
            MeshMsg::Unsubscribed { conn, id, topic } => self.on_unsubscribed(conn, id, &topic),
        }
    }

    fn owner_subscribe(
        &mut self,
        from: usize,
        conn: ConnRef,
        id: Option<u64>,
        topic: &str,
        since: Option<Since>,
    ) {
        let msg = match self.owned.get_or_create(topic) {
            Err(_) => MeshMsg::SubscribeRefused {
                conn,
                id,
                code: ErrorCode::Overloaded,
                message: "the owner shard holds its maximum number of topics",
            },
            Ok(t) => {
                t.add_interest(from);
                let recovery = recovery(t, since.as_ref());
                MeshMsg::Subscribed {
                    conn,
                    id,
                    topic: t.name.clone(),
                    seq: t.seq,
                    epoch: t.epoch,
                    recovery,
                }
            }
        };
        self.send_to(from, msg);
    }

    fn on_subscribed(
        &mut self,
        conn: ConnRef,
        id: Option<u64>,
        topic: Arc<str>,
        seq: u64,
        epoch: Epoch,
        rec: Recovery,
    ) {
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return self.release(topic);
        };
        c.pending_subs = c.pending_subs.saturating_sub(1);
        if c.phase == Phase::Closing {
            return self.release(topic);
        }
        if c.sub_index(&topic).is_some() {
            // Already subscribed: the owner counted this request again.
            self.release(topic.clone());
        } else {
            let (name, pos) = self.local.add(&topic, conn.idx);
            c.subs.push(Sub { topic: name, pos });
            self.counters.subscribes += 1;
        }
        self.reply(idx, |o| {
            message::subscribed(o, id, &topic, epoch.as_str(), seq, rec)
        });
    }

    fn on_unsubscribed(&mut self, conn: ConnRef, id: Option<u64>, topic: &str) {
        let idx = conn.idx as usize;
        let Some(c) = self.conns.get_mut(idx).filter(|c| c.gen == conn.gen) else {
            return;
        };
        let Some(i) = c.sub_index(topic) else {
            return self.reply_error(
                idx,
                id,
                ErrorCode::NotSubscribed,
                "not subscribed to this topic",
                None,
            );
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
        self.send_to(
            shard,
            MeshMsg::Reply {
                conn,
                frame: frame.into_boxed_slice(),
            },
        );
    }

    fn refuse_publish(
        &mut self,
        from: usize,
        req: &PublishReq,
        code: ErrorCode,
        reason: &'static str,
        msg: &str,
    ) {
        *self.counters.publishes_rejected.entry(reason).or_default() += 1;
        *self.counters.errors_sent.entry(code.as_str()).or_default() += 1;
        let retry = Some(OVERLOADED_RETRY_MS);
        self.reply_to(from, req.conn, |o| {
            message::error(o, req.id, code, msg, retry)
        });
    }

    /// Sequences a publication, encodes its frame once, acks the publisher
    /// and hands the frame to every interested shard.
    fn owner_publish(&mut self, from: usize, req: PublishReq) {
        let Ok(t) = self.owned.get_or_create(&req.topic) else {
            let msg = "the owner shard holds its maximum number of topics";
            return self.refuse_publish(from, &req, ErrorCode::Overloaded, "too_many_topics", msg);
        };
        self.targets.clear();
        self.targets.extend(t.interested());
        let full =
            self.targets.iter().copied().find(|&s| {
                s != self.id && !self.outboxes[s].as_ref().is_some_and(|o| o.has_room(1))
            });
        if let Some(s) = full {
            if let Some(o) = self.outboxes[s].as_mut() {
                o.note_full();
            }
            let msg = "engine overloaded (mesh ring full); retry later";
            return self.refuse_publish(from, &req, ErrorCode::Overloaded, "overloaded", msg);
        }
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
        self.counters.frames_encoded += 1;
        self.counters.publishes_accepted += 1;

        self.reply_to(from, req.conn, |o| {
            message::ack(o, req.id, &name, seq, epoch.as_str(), false)
        });
        self.counters.record_ack(req.received_at);

        let prio = req.prio.unwrap_or_default();
        let targets = std::mem::take(&mut self.targets);
        for &s in &targets {
            if s == self.id {
                self.fanout_local(&name, seq, prio, frame.clone(), req.received_at);
            } else if let Some(out) = self.outboxes[s].as_mut() {
                let (topic, frame, received_at) = (name.clone(), frame.clone(), req.received_at);
                out.push_data(MeshMsg::Deliver {
                    topic,
                    seq,
                    prio,
                    frame,
                    received_at,
                });
            }
        }
        self.targets = targets;
    }

    /// Queues one publication frame on every local subscriber of `topic`.
    pub fn fanout_local(
        &mut self,
        topic: &str,
        seq: u64,
        prio: Prio,
        frame: SharedFrame,
        received_at: Instant,
    ) {
        let Some(lt) = self.local.get(topic) else {
            return;
        };
        let (soft, hard) = (
            self.limits.outbound_soft_bytes,
            self.limits.outbound_hard_bytes,
        );
        let local = Rc::new(frame);
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
            match conn.out.push_frame(&local, prio, &lt.name, seq, soft, hard) {
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

/// Whether a `since` position can be resumed (without a replay ring yet:
/// only when nothing was missed).
fn recovery(t: &OwnedTopic, since: Option<&Since>) -> Recovery {
    let Some(since) = since else {
        return Recovery::NotAsked;
    };
    if since.epoch != t.epoch.as_str() {
        Recovery::Failed("epoch_mismatch")
    } else if since.seq == t.seq {
        Recovery::Recovered(0)
    } else if since.seq > t.seq {
        Recovery::Failed("epoch_mismatch")
    } else {
        Recovery::Failed("expired")
    }
}
