//! Mesh messages in: the owner's work (through the pure [`Owner`] state
//! machine) and the edge's (answers, deliveries, subscription changes).
//!
//! Everything a shard does for a topic it owns happens through
//! `self.owner`, whether the request came over a ring or from one of its own
//! connections (`from` is then `self.id`). Answers go back typed
//! (`Published`, `Subscribed`); the requester's shard encodes them.
//!
//! [`Owner`]: crate::topic::owner::Owner

use std::sync::Arc;
use std::time::Instant;

use super::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::mesh::{ConnRef, MeshMsg, PubReply, PublishReq, Requester, SharedPub};
use crate::proto::message::{self, ErrorCode, Since};
use crate::topic::owner::{PublishIn, PublishOutcome, Recovery, SubscribeOutcome};
use crate::topic::presence::Place;
use crate::topic::publication::Publication;
use crate::topic::OwnerRef;

/// Most acks a shard holds for confirmation; past it publishes are refused
/// `overloaded` (counter `publishes_rejected{reason="confirm_backlog"}`).
pub const MAX_HELD_ACKS: usize = 65_536;

impl ShardCore {
    /// Sends a topic request to the topic's owner, or handles it here.
    pub(crate) fn route_to_owner(&mut self, msg: MeshMsg) {
        let topic: &str = match &msg {
            MeshMsg::Publish(r) => &r.topic,
            MeshMsg::Subscribe { topic, .. } | MeshMsg::Unsubscribe { topic, .. } => topic,
            MeshMsg::Release { topic, .. } => topic,
            MeshMsg::GroupJoin { topic, .. }
            | MeshMsg::GroupLeave { topic, .. }
            | MeshMsg::GroupSettle { topic, .. } => topic,
            MeshMsg::ReqRoute(r) => &r.topic,
            MeshMsg::Get { topic, .. } | MeshMsg::PresenceGet { topic, .. } | MeshMsg::History { topic, .. } => topic,
            _ => return self.on_mesh(self.id, msg),
        };
        let asks = matches!(
            msg,
            MeshMsg::Publish(_)
                | MeshMsg::Subscribe { .. }
                | MeshMsg::Unsubscribe { .. }
                | MeshMsg::GroupJoin { .. }
                | MeshMsg::GroupLeave { answer: true, .. }
        );
        match self.map.route(topic) {
            OwnerRef::Shard(s) => {
                if asks && s != self.id {
                    if let Some(o) = self.outboxes[s].as_mut() {
                        o.owed += 1;
                    }
                }
                self.send_to(s, msg)
            }
        }
    }

    /// Sends `msg` to `shard` (handled in place when it is this shard).
    pub(crate) fn send_to(&mut self, shard: usize, msg: MeshMsg) {
        if shard == self.id {
            return self.on_mesh(shard, msg);
        }
        if shard == self.map.shards && self.durable.is_some() {
            return self.send_to_participant(msg);
        }
        match self.outboxes.get_mut(shard).and_then(Option::as_mut) {
            Some(out) => out.push(msg),
            None => self.counters.internal_errors += 1,
        }
    }

    /// Handles one message from shard `from`.
    pub fn on_mesh(&mut self, from: usize, msg: MeshMsg) {
        if from != self.id
            && matches!(
                msg,
                MeshMsg::Published { .. }
                    | MeshMsg::Subscribed { .. }
                    | MeshMsg::SubscribeRefused { .. }
                    | MeshMsg::Unsubscribed { .. }
                    | MeshMsg::GroupJoined { .. }
                    | MeshMsg::GroupRefused { .. }
                    | MeshMsg::GroupLeft { .. }
            )
        {
            // An answer to one of our requests: the credit comes back.
            match self.outboxes.get_mut(from).and_then(Option::as_mut) {
                Some(o) if o.owed > 0 => o.owed -= 1,
                _ => self.counters.internal_errors += 1,
            }
        }
        let msg = match self.durable.is_some() {
            true => match self.cluster_route(from, msg).and_then(|m| self.wait_for_load(from, m)) {
                Some(m) => m,
                None => return,
            },
            false => msg,
        };
        match msg {
            MeshMsg::Stored { topic, through } => self.on_stored(&topic, through),
            MeshMsg::Loaded { topic, state } => self.on_loaded(&topic, state),
            MeshMsg::ReceiptVoid { conn } => self.receipt_void(conn),
            MeshMsg::Ownership { .. } | MeshMsg::Replicated(_) | MeshMsg::Forwarded { .. } => {
                // Taken by cluster_route (durable mode only).
                self.counters.internal_errors += 1
            }
            MeshMsg::Publish(req) => self.owner_publish(from, *req),
            MeshMsg::Subscribe { conn, id, topic, since, streams, last, member, wide } => {
                let opts = crate::topic::owner::SubOpts { streams, last };
                let max_replay =
                    if wide { self.limits.outbound_hard_bytes / 2 } else { self.limits.outbound_soft_bytes };
                self.owner_subscribe(from, conn, id, &topic, since, opts, member, max_replay)
            }
            MeshMsg::PresenceGet { conn, id, topic } => {
                let (count, list) = self.owner.presence_of(&topic);
                let clients = list.into_iter().map(|(p, c)| (c, conn_name(p))).collect();
                let answer = Box::new(crate::mesh::msg::PresenceList { id, topic, count, clients });
                self.send_to(from, MeshMsg::PresenceAnswer { conn, answer });
            }
            MeshMsg::PresenceAnswer { conn, answer } => self.on_presence_answer(conn, &answer),
            MeshMsg::History { conn, id, topic, since, limit, reverse } => {
                // A page fits in what one connection may queue.
                let max = self.limits.outbound_hard_bytes / 2;
                let since = since.as_ref().map(|(s, e)| (*s, &**e));
                let page = self.owner.history(&topic, since, limit, reverse, max).map(Box::new).map_err(|_| ());
                self.send_to(from, MeshMsg::HistoryAnswer { conn, id, page });
            }
            MeshMsg::HistoryAnswer { conn, id, page } => self.on_history_answer(conn, id, page),
            MeshMsg::PresenceEvent { conns, note } => self.on_presence_event(&conns, &note),
            MeshMsg::Get { conn, id, topic } => {
                let value = self.owner.get(&topic, self.now).map(|(p, ttl)| (p, ttl.map(|d| d.as_millis() as u64)));
                self.send_to(from, MeshMsg::Value { conn, id, value });
            }
            MeshMsg::Value { conn, id, value } => {
                if self.conn_mut(conn).is_none() {
                    return;
                }
                let idx = conn.idx as usize;
                match value {
                    Some((p, ttl)) => self.reply(idx, |o| message::value(o, id, &p.topic, p.seq, p.data(), ttl)),
                    None => self.reply_error(idx, id, ErrorCode::NotFound, "the topic has no retained value", None),
                }
            }
            MeshMsg::Unsubscribe { conn, id, topic } => self.send_to(from, MeshMsg::Unsubscribed { conn, id, topic }),
            MeshMsg::Release { topic, leave } => {
                if let Some(m) = leave {
                    let at = place(from, m.conn);
                    let mut tell = std::mem::take(&mut self.presence_tell);
                    self.owner.presence_leave(&topic, at, &mut tell);
                    self.tell_presence("leave", &topic, &m.client, at, &tell);
                    self.presence_tell = tell;
                }
                if !self.owner.release(from, &topic, self.now) {
                    self.counters.internal_errors += 1;
                }
            }
            MeshMsg::Deliver { publ, received_at, receipt } => self.fanout_local_with(publ, received_at, receipt),
            MeshMsg::ReceiptPart { to, topic, seq, delivered, dropped } => {
                self.on_receipt_part(to, topic, seq, delivered, dropped)
            }
            MeshMsg::Published { to, reply } => self.on_published(to, reply),
            MeshMsg::Subscribed { conn, id, topic, seq, epoch, recovery, replay, member } => {
                let answer = crate::conn::deliver::SubscribeAnswer { topic, seq, epoch, recovery, replay, member };
                self.on_subscribed(conn, id, answer)
            }
            MeshMsg::SubscribeRefused { conn, id, code, message } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.pending_subs = c.pending_subs.saturating_sub(1);
                    if let Some(t) = c.identity.as_ref().map(|i| i.tenant.clone()) {
                        self.tenant_add(&t, 0, -1);
                    }
                    self.reply_error(conn.idx as usize, id, code, message, Some(OVERLOADED_RETRY_MS));
                }
            }
            MeshMsg::Unsubscribed { conn, id, topic } => self.on_unsubscribed(conn, id, &topic),
            MeshMsg::DrainBarrier { round } => self.on_drain_barrier(round),
            MeshMsg::GroupJoin { conn, id, topic, spec } => self.group_join(from, conn, id, &topic, *spec),
            MeshMsg::GroupLeave { conn, id, topic, group, answer } => {
                self.group_leave(from, conn, id, &topic, &group, answer)
            }
            MeshMsg::GroupSettle { conn, id, topic, group, seq, outcome } => {
                self.group_settle(from, conn, id, &topic, &group, seq, outcome)
            }
            MeshMsg::GroupJoined { conn, id, topic, group, seq, epoch } => {
                self.on_group_joined(conn, id, topic, group, seq, epoch)
            }
            MeshMsg::GroupRefused { conn, id, code, message } => {
                // A refused leave (not a member) is answered the same way.
                let join = code != ErrorCode::NotMember;
                self.on_group_refused(conn, id, code, message, join)
            }
            MeshMsg::GroupLeft { conn, id, topic, group } => {
                if self.conn_mut(conn).is_some() {
                    self.reply(conn.idx as usize, |o| message::unsubscribed_group(o, id, &topic, &group));
                }
            }
            MeshMsg::GroupDeliver { conn, publ, group, attempt, ack } => {
                self.on_group_deliver(conn, publ, group, attempt, ack)
            }
            MeshMsg::ReqRoute(route) => self.route_request(*route),
            MeshMsg::Request(h) => self.on_request(*h),
            MeshMsg::ReqBound { origin, req } => self.on_req_bound(from, origin, req),
            MeshMsg::ReqGone { origin } => self.on_req_gone(from, origin),
            MeshMsg::ReqOverflow { origin } => self.on_req_overflow(origin),
            MeshMsg::ReqReply { origin, req, data, more } => self.on_req_reply(origin, &req, &data, more),
            MeshMsg::ReqCancel { req } => self.on_req_cancel(&req),
            MeshMsg::GroupSettleRefused { conn, id, code, message } => {
                if self.conn_mut(conn).is_some() {
                    self.reply_error(conn.idx as usize, id, code, message, None);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn owner_subscribe(
        &mut self,
        from: usize,
        conn: crate::mesh::ConnRef,
        id: Option<u64>,
        topic: &str,
        since: Option<Since>,
        opts: crate::topic::owner::SubOpts,
        member: Option<Box<crate::mesh::msg::Member>>,
        // A replay larger than a connection may queue would only be dropped.
        max_replay: usize,
    ) {
        let since = since.as_ref().map(|s| (s.seq, s.epoch.as_str()));
        let msg = match self.owner.subscribe_with(from, topic, since, max_replay, opts) {
            SubscribeOutcome::Refused(r) => {
                *self.counters.subscribes_refused.entry(r.label()).or_default() += 1;
                MeshMsg::SubscribeRefused { conn, id, code: ErrorCode::Overloaded, message: r.message() }
            }
            SubscribeOutcome::Subscribed { topic, mut seq, epoch, mut recovery, mut replay } => {
                // Durable mode: the position and the replay stop at what is
                // stored; the publications still held reach the new
                // subscriber when they are released.
                if let Some(stored) = self.durable.as_ref().and_then(|d| d.stored_through(&topic)) {
                    if stored < seq {
                        replay.retain(|p| p.seq <= stored);
                        if let Recovery::Recovered(_) = recovery {
                            recovery = Recovery::Recovered(replay.len() as u64);
                        }
                        seq = stored;
                    }
                }
                let recovery = match recovery {
                    Recovery::NotAsked => message::Recovery::NotAsked,
                    Recovery::Recovered(n) => {
                        self.counters.replay_hits += 1;
                        self.counters.replayed += n;
                        message::Recovery::Recovered(n)
                    }
                    Recovery::Failed(reason) => {
                        *self.counters.replay_misses.entry(reason).or_default() += 1;
                        message::Recovery::Failed(reason)
                    }
                };
                if let Some(m) = &member {
                    let at = place(from, m.conn);
                    let mut tell = std::mem::take(&mut self.presence_tell);
                    let ok = self.owner.presence_join(&topic, at, m.client.clone(), m.watch, &mut tell);
                    if ok {
                        self.tell_presence("join", &topic, &m.client, at, &tell);
                    }
                    self.presence_tell = tell;
                    if !ok {
                        self.owner.release(from, &topic, self.now);
                        *self.counters.subscribes_refused.entry("presence_watchers").or_default() += 1;
                        let message = "the tenant holds presence.max_watchers_per_tenant presence watchers";
                        let msg = MeshMsg::SubscribeRefused { conn, id, code: ErrorCode::Overloaded, message };
                        return self.send_to(from, msg);
                    }
                }
                MeshMsg::Subscribed { conn, id, topic, seq, epoch, recovery, replay, member }
            }
        };
        self.send_to(from, msg);
    }

    /// Sends a `join`/`leave` event about `at` to the watchers in `tell`,
    /// one message per shard.
    fn tell_presence(&mut self, op: &str, topic: &str, client: &str, at: Place, tell: &[Place]) {
        if tell.is_empty() {
            return;
        }
        let note = Arc::new(crate::mesh::msg::PresenceNote {
            join: op == "join",
            topic: topic.into(),
            client: client.into(),
            conn: conn_name(at),
        });
        for s in 0..self.map.shards {
            let conns: Vec<ConnRef> = tell
                .iter()
                .filter(|p| p.0 == s)
                .map(|p| ConnRef { idx: (p.1 >> 32) as u32, gen: p.1 as u32 })
                .collect();
            if !conns.is_empty() {
                self.send_to(s, MeshMsg::PresenceEvent { conns, note: note.clone() });
            }
        }
    }

    /// Sends the owner's answer to the requester's shard.
    fn answer(&mut self, from: usize, to: Requester, reply: PubReply) {
        self.send_to(from, MeshMsg::Published { to, reply });
    }

    /// Sequences a publication through the owner, encodes its native frame
    /// once, acks the publisher and hands the publication to every
    /// interested shard. A repeated `msg_id` inside the window is acked with
    /// its original seq and not delivered again.
    fn owner_publish(&mut self, from: usize, req: PublishReq) {
        if self.durable.as_ref().is_some_and(|d| !d.admits()) {
            // The store lags: refused before a seq is spent.
            *self.counters.publishes_rejected.entry("store_backlog").or_default() += 1;
            let reply = PubReply::Refused {
                code: ErrorCode::Overloaded,
                message: "engine overloaded (the store lags); retry later",
                retry_after_ms: Some(OVERLOADED_RETRY_MS),
            };
            return self.answer(from, req.to, reply);
        }
        if self.held.len() >= MAX_HELD_ACKS {
            // Confirmations lag: sequencing more would only hold more.
            *self.counters.publishes_rejected.entry("confirm_backlog").or_default() += 1;
            let reply = PubReply::Refused {
                code: ErrorCode::Overloaded,
                message: "engine overloaded (confirmations lag); retry later",
                retry_after_ms: Some(OVERLOADED_RETRY_MS),
            };
            return self.answer(from, req.to, reply);
        }
        if !self.groups.is_empty() && !self.groups_admit(&req.topic, req.data.len() + 256) {
            // A group of the topic holds its maximum: producers feel it.
            *self.counters.publishes_rejected.entry("group_full").or_default() += 1;
            let reply = PubReply::Refused {
                code: ErrorCode::Overloaded,
                message: "a consumer group of this topic holds its maximum; retry later",
                retry_after_ms: Some(OVERLOADED_RETRY_MS),
            };
            return self.answer(from, req.to, reply);
        }
        let now = self.now;
        // A stream append: its text for the owner, its fields for the frame.
        let mut stream_extra = None;
        let mut text = None;
        if let Some(s) = &req.stream {
            let name = serde_json::Value::from(&*s.name).to_string();
            let mut e = format!("\"stream\":{name},\"end\":{}", s.end);
            if let Some(r) = s.reason {
                e.push_str(&format!(",\"reason\":\"{r}\""));
            }
            stream_extra = Some(e);
            text = crate::topic::streams::text_of(&req.data);
            if text.is_none() {
                let reply = PubReply::Refused {
                    code: ErrorCode::BadRequest,
                    message: "an append to a stream carries a JSON string as `data`",
                    retry_after_ms: None,
                };
                return self.answer(from, req.to, reply);
            }
        }
        let p = PublishIn {
            topic: &req.topic,
            data: &req.data,
            msg_id: req.msg_id.as_deref(),
            prio: req.prio,
            from: req.from.as_ref(),
            extra: stream_extra.as_deref().or(req.extra.as_deref()),
            stream: req.stream.as_ref().zip(text.as_deref()).map(|(s, t)| crate::topic::owner::StreamIn {
                name: &s.name,
                text: t,
                end: s.end,
            }),
            retain: req.retain.as_ref().map(|r| crate::topic::owner::RetainIn {
                retain: r.retain,
                ttl: r.ttl_ms.map(std::time::Duration::from_millis),
                if_seq: r.if_seq,
                expire: r.expire,
            }),
        };
        // A new retained value replaces the old one and its expiry timer.
        let old_timer = if req.retain.is_some() { self.owner.take_retained_timer(&req.topic) } else { None };
        let mut targets = std::mem::take(&mut self.targets);
        let (me, outboxes) = (self.id, &mut self.outboxes);
        let room = |s: usize| {
            s == me
                || outboxes.get_mut(s).and_then(Option::as_mut).is_some_and(|o| {
                    let ok = o.has_room(1);
                    if !ok {
                        o.note_full();
                    }
                    ok
                })
        };
        let buf = &mut self.encode_buf;
        let encode = |name, m: &crate::topic::publication::PubMeta<'_>| Publication::native(name, m, buf);
        let outcome = self.owner.publish(&p, now, &mut targets, room, encode);
        match outcome {
            PublishOutcome::Refused(r) => {
                use crate::topic::streams::StreamRefused;
                let (code, retry) = match r {
                    crate::topic::owner::Refused::Stream(StreamRefused::Ended) => (ErrorCode::BadRequest, None),
                    crate::topic::owner::Refused::Conflict => (ErrorCode::Conflict, None),
                    crate::topic::owner::Refused::RetainedFull => (ErrorCode::Overloaded, None),
                    crate::topic::owner::Refused::Stream(StreamRefused::StreamFull | StreamRefused::TooManyStreams) => {
                        (ErrorCode::Overloaded, None)
                    }
                    _ => (ErrorCode::Overloaded, Some(OVERLOADED_RETRY_MS)),
                };
                *self.counters.publishes_rejected.entry(r.label()).or_default() += 1;
                *self.counters.errors_sent.entry(code.as_str()).or_default() += 1;
                if let Some(t) = old_timer {
                    self.owner.set_retained_timer(&req.topic, t);
                }
                if matches!(r, crate::topic::owner::Refused::Conflict)
                    && req.to.kind == crate::mesh::ReplyKind::Internal
                {
                    // An expiry of a value replaced meanwhile: nothing to do.
                    self.targets = targets;
                    return;
                }
                let reply = PubReply::Refused { code, message: r.message(), retry_after_ms: retry };
                self.answer(from, req.to, reply);
            }
            PublishOutcome::Duplicate { topic, seq, epoch } => {
                self.counters.dedupe_hits += 1;
                self.ack(from, req.to, PubReply::Ack { topic, seq, epoch, dup: true });
            }
            PublishOutcome::Accepted(publ) => {
                self.counters.frames_encoded += 1;
                self.counters.publishes_accepted += 1;
                if let Some(t) = old_timer {
                    self.groups.wheel.cancel(t);
                }
                if let Some(ttl) = req.retain.as_ref().filter(|r| r.retain).and_then(|r| r.ttl_ms) {
                    let key = super::groups::GroupTimer::Retained { topic: publ.topic.clone(), seq: publ.seq };
                    let timer = self.groups.wheel.insert(now + std::time::Duration::from_millis(ttl), key);
                    self.owner.set_retained_timer(&publ.topic, timer);
                }
                match self.durable.is_some() {
                    // Acked and delivered once stored.
                    true => self.hold_for_store(from, req.to, &publ, req.received_at),
                    false => self.release_accepted(from, req.to, &publ, &targets, req.received_at),
                }
            }
        }
        self.targets = targets;
    }

    /// A sequenced publication goes out: the publisher's ack (with its
    /// receipt), delivery to the interested shards, the topic's groups.
    pub(crate) fn release_accepted(
        &mut self,
        from: usize,
        to: Requester,
        publ: &SharedPub,
        targets: &[usize],
        received_at: Instant,
    ) {
        let reply = PubReply::Ack { topic: publ.topic.clone(), seq: publ.seq, epoch: publ.epoch, dup: false };
        self.ack(from, to, reply);
        self.counters.record_ack(received_at);
        if to.receipt {
            let rto = crate::mesh::msg::ReceiptTo { shard: from, conn: to.conn, of: targets.len().max(1) as u32 };
            if targets.is_empty() {
                self.send_to(
                    from,
                    MeshMsg::ReceiptPart {
                        to: rto,
                        topic: publ.topic.clone(),
                        seq: publ.seq,
                        delivered: 0,
                        dropped: 0,
                    },
                );
            }
            self.deliver_receipted(targets, publ, received_at, rto);
        } else {
            self.deliver_to(targets, publ, received_at);
        }
        if !self.groups.is_empty() {
            self.groups_offer(publ);
        }
    }

    /// Answers an ack now, or holds it until its seq is confirmed.
    fn ack(&mut self, from: usize, to: Requester, reply: PubReply) {
        let PubReply::Ack { topic, seq, .. } = &reply else {
            return self.answer(from, to, reply);
        };
        if self.policy.ack == super::core::AckMode::Immediate || self.held.confirmed(topic) >= *seq {
            return self.answer(from, to, reply);
        }
        self.counters.acks_held += 1;
        let topic = topic.clone();
        self.held.hold(topic, *seq, HeldAck { from, to, reply });
    }

    /// The publications of `topic` up to `seq` are confirmed (durable, or
    /// accepted by the broker): their held acks go out, in seq order.
    pub fn confirm(&mut self, topic: &str, seq: u64) {
        for h in self.held.confirm(topic, seq) {
            self.answer(h.from, h.to, h.reply);
        }
    }

    /// [`ShardCore::deliver_to`] for a publish with `receipt`: each target
    /// shard reports its part to the publisher's shard.
    fn deliver_receipted(
        &mut self,
        targets: &[usize],
        publ: &SharedPub,
        received_at: Instant,
        to: crate::mesh::msg::ReceiptTo,
    ) {
        for &s in targets {
            let receipt = Some(Box::new(to));
            if s == self.id {
                self.fanout_local_with(publ.clone(), received_at, receipt);
            } else if let Some(out) = self.outboxes[s].as_mut() {
                out.push(MeshMsg::Deliver { publ: publ.clone(), received_at, receipt });
            }
        }
    }

    /// Hands a publication to every target shard (itself included).
    pub(crate) fn deliver_to(&mut self, targets: &[usize], publ: &SharedPub, received_at: Instant) {
        for &s in targets {
            if s == self.id {
                self.fanout_local(publ.clone(), received_at);
            } else if let Some(out) = self.outboxes[s].as_mut() {
                out.push(MeshMsg::Deliver { publ: publ.clone(), received_at, receipt: None });
            }
        }
    }
}

/// An ack waiting for its confirmation.
#[derive(Debug)]
pub struct HeldAck {
    from: usize,
    to: Requester,
    reply: PubReply,
}

/// One topic's confirmed seq and the acks waiting beyond it, in seq order.
type TopicHeld = (u64, std::collections::VecDeque<(u64, HeldAck)>);

/// Held acks per topic, in seq order, and each topic's confirmed seq.
#[derive(Debug, Default)]
pub struct HeldAcks {
    topics: std::collections::HashMap<std::sync::Arc<str>, TopicHeld>,
    held: usize,
}

impl HeldAcks {
    /// The confirmed seq of `topic` (0: none yet).
    pub fn confirmed(&self, topic: &str) -> u64 {
        self.topics.get(topic).map_or(0, |t| t.0)
    }

    fn hold(&mut self, topic: std::sync::Arc<str>, seq: u64, h: HeldAck) {
        let q = &mut self.topics.entry(topic).or_default().1;
        // Duplicates of a held seq join it; seqs arrive in order otherwise.
        let at = q.iter().rposition(|(s, _)| *s <= seq).map_or(0, |i| i + 1);
        q.insert(at, (seq, h));
        self.held += 1;
    }

    /// Marks `topic` confirmed through `seq` and takes the acks it frees.
    fn confirm(&mut self, topic: &str, seq: u64) -> Vec<HeldAck> {
        let Some(t) = self.topics.get_mut(topic) else { return Vec::new() };
        t.0 = t.0.max(seq);
        let mut out = Vec::new();
        while t.1.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, h)) = t.1.pop_front() {
                out.push(h);
            }
        }
        self.held -= out.len();
        out
    }

    /// Acks held now.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }
}

/// A subscriber's presence place: its shard and connection.
fn place(shard: usize, c: ConnRef) -> Place {
    (shard, (u64::from(c.idx) << 32) | u64::from(c.gen))
}

/// A presence place as the `conn` field names it: `<shard>.<slot>.<gen>`.
pub(crate) fn conn_name(p: Place) -> String {
    format!("{}.{}.{}", p.0, p.1 >> 32, p.1 as u32)
}
