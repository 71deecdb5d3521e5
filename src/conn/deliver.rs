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
}

impl ShardCore {
    /// The owner answered a publish of one of this shard's connections:
    /// encode it for the connection's protocol.
    pub(crate) fn on_published(&mut self, to: Requester, reply: PubReply) {
        if self.conn_mut(to.conn).is_none() {
            return;
        }
        let idx = to.conn.idx as usize;
        let answer = match &reply {
            PubReply::Ack { topic, seq, epoch, dup } => Answer::Ack { topic, seq: *seq, epoch: *epoch, dup: *dup },
            PubReply::Refused { code, message, retry_after_ms } => {
                Answer::Refused { code: *code, message, retry_after_ms: *retry_after_ms }
            }
        };
        match to.kind {
            ReplyKind::Ws => self.reply(idx, |o| match answer {
                Answer::Ack { topic, seq, epoch, dup } => message::ack(o, to.id, topic, seq, epoch.as_str(), dup),
                Answer::Refused { code, message: m, retry_after_ms } => {
                    message::error(o, to.id, code, m, retry_after_ms)
                }
            }),
            ReplyKind::Http => {
                let response = http::publish_response(&answer);
                self.http_done(idx, &response);
            }
            ReplyKind::Batch(index) => {
                let body = http::answer_json(&answer);
                self.batch_item(idx, index, body);
            }
        }
    }

    pub(crate) fn on_subscribed(&mut self, conn: ConnRef, id: Option<u64>, a: SubscribeAnswer) {
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
        for publ in a.replay {
            let d = Rc::new(Delivery { publ });
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
        self.route_to_owner(crate::mesh::MeshMsg::Release { topic });
    }

    /// Queues one publication on every local subscriber of its topic.
    pub fn fanout_local(&mut self, publ: SharedPub, received_at: Instant) {
        let Some(lt) = self.local.get(&publ.topic) else {
            return;
        };
        let (soft, hard) = (self.limits.outbound_soft_bytes, self.limits.outbound_hard_bytes);
        let prio = publ.prio;
        let local = Rc::new(Delivery { publ });
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
