//! Request/reply (PROTOCOL-EXTENSIONS §3): routed once by the topic's
//! owner, then shard to shard.
//!
//! * The requester's shard owns a request: its slot (bounded per shard and
//!   per connection), its deadline on the shard's timer wheel, the count of
//!   replies forwarded, its fallback (the data is kept only when a fallback
//!   is named, bounded in bytes).
//! * The owner picks a member of a group on the topic (the named one, or
//!   round robin over the topic's groups' members), names the request
//!   (`<shard>.<n>`) and hands it to the responder's shard.
//! * The responder's shard keeps `req → (responder, requester)`; each reply
//!   goes straight to the requester's shard, bounded per request in bytes.
//! * Timeout, the requester's `cancel` and its disconnect send `cancel` to
//!   the responder; a responder that goes away is a timeout now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::core::{ShardCore, OVERLOADED_RETRY_MS};
use super::groups::GroupTimer;
use super::stats::ServiceStats;
use crate::mesh::msg::{ReqHandOff, ReqOrigin, ReqRoute};
use crate::mesh::{ConnRef, MeshMsg};
use crate::proto::message::{self, ErrorCode};
use crate::topic::wheel::TimerId;

/// A request on its requester's shard.
#[derive(Debug)]
struct Open {
    gen: u32,
    conn: ConnRef,
    id: Option<u64>,
    /// Kept only when there is a fallback to send it to.
    data: Option<Box<str>>,
    fallback: Option<Box<str>>,
    timeout: Duration,
    timer: TimerId,
    /// The responder's shard and the request's id there, once bound.
    bound: Option<(usize, Box<str>)>,
    forwarded: u32,
    /// Index of the service topic first asked, in `Requests::services`.
    service: u32,
    started: Instant,
}

/// A request on its responder's shard.
#[derive(Debug)]
struct Serving {
    conn: ConnRef,
    origin: ReqOrigin,
    bytes: usize,
}

/// Both sides' tables of one shard.
#[derive(Debug, Default)]
pub struct Requests {
    open: Slab<Open>,
    next_gen: u32,
    held_bytes: usize,
    serving: HashMap<Box<str>, Serving>,
    next_id: u64,
    /// Service topic → index in `services`.
    service_index: HashMap<Arc<str>, u32>,
    services: Vec<(Arc<str>, ServiceStats)>,
}

/// The service under which requests past `requests.max_services` count.
pub const OTHER_SERVICE: &str = "(other)";

impl Requests {
    /// The metrics row of service topic `topic`: its own while fewer than
    /// `max` are tracked, else the shared `(other)` row.
    fn service(&mut self, topic: &str, max: usize) -> u32 {
        if let Some(i) = self.service_index.get(topic) {
            return *i;
        }
        let name: Arc<str> = if self.service_index.len() < max { topic.into() } else { OTHER_SERVICE.into() };
        if let Some(i) = self.service_index.get(&name) {
            return *i;
        }
        let i = self.services.len() as u32;
        self.service_index.insert(name.clone(), i);
        self.services.push((name, ServiceStats::default()));
        i
    }

    /// Per service topic figures (a snapshot).
    pub fn services(&self) -> Vec<(String, ServiceStats)> {
        self.services.iter().map(|(t, s)| (t.to_string(), s.clone())).collect()
    }

    fn stats(&mut self, service: u32) -> &mut ServiceStats {
        &mut self.services[service as usize].1
    }

    /// Requests open on this shard (requester side), and served here.
    pub fn totals(&self) -> (usize, usize) {
        (self.open.len(), self.serving.len())
    }
}

impl ShardCore {
    /// `req` from connection `idx`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_request(
        &mut self,
        idx: usize,
        conn: ConnRef,
        id: Option<u64>,
        topic: &str,
        data: &str,
        timeout_ms: u64,
        fallback: Option<&str>,
        group: Option<&str>,
    ) {
        let lim = self.policy.requests.clone();
        for t in std::iter::once(topic).chain(fallback) {
            if let Err(e) = crate::topic::name::validate(t) {
                return self.reply_error(idx, id, ErrorCode::BadTopic, &e.to_string(), None);
            }
            if self.conns[idx].identity.as_ref().is_some_and(|i| !i.may_pub(t)) {
                self.counters.forbidden += 1;
                return self.reply_error(
                    idx,
                    id,
                    ErrorCode::Forbidden,
                    "topic outside the token's tenant or caps",
                    None,
                );
            }
        }
        let held = fallback.map_or(0, |_| data.len());
        let r = &self.requests;
        if r.open.len() >= lim.max_open
            || self.conns[idx].requests.len() >= lim.max_per_connection
            || r.held_bytes + held > lim.max_held_bytes
        {
            self.counters.requests_refused += 1;
            let msg = "too many open requests; retry later";
            return self.reply_error(idx, id, ErrorCode::Overloaded, msg, Some(OVERLOADED_RETRY_MS));
        }
        let owner = self.map.owner(topic);
        if owner != self.id && !self.outboxes[owner].as_mut().is_some_and(|o| o.has_room(1)) {
            let msg = "engine overloaded (mesh ring full); retry later";
            return self.reply_error(idx, id, ErrorCode::Overloaded, msg, Some(OVERLOADED_RETRY_MS));
        }
        let timeout = Duration::from_millis(timeout_ms);
        let gen = self.requests.next_gen;
        self.requests.next_gen = gen.wrapping_add(1);
        let service = self.requests.service(topic, lim.max_services);
        self.requests.stats(service).requests += 1;
        let entry = self.requests.open.vacant_entry();
        let slot = entry.key() as u32;
        let timer = self.groups.wheel.insert(self.now + timeout, GroupTimer::Request { slot, gen });
        entry.insert(Open {
            gen,
            conn,
            id,
            data: fallback.map(|_| data.into()),
            fallback: fallback.map(Into::into),
            timeout,
            timer,
            bound: None,
            forwarded: 0,
            service,
            started: self.now,
        });
        self.requests.held_bytes += held;
        self.conns[idx].requests.push(slot);
        self.counters.requests += 1;
        let from = self.conns[idx].identity.as_ref().map(|i| i.sub.clone());
        let origin = ReqOrigin { shard: self.id, slot, gen };
        let route =
            ReqRoute { origin, topic: topic.into(), group: group.map(Into::into), data: data.into(), timeout_ms, from };
        self.route_to_owner(MeshMsg::ReqRoute(Box::new(route)));
    }

    fn open_mut(&mut self, origin: ReqOrigin) -> Option<&mut Open> {
        self.requests.open.get_mut(origin.slot as usize).filter(|o| o.gen == origin.gen)
    }

    /// Ends a request on its requester's shard: the slot, its timer and its
    /// place in the connection's list go.
    fn close_request(&mut self, slot: u32) -> Option<Open> {
        let o = self.requests.open.try_remove(slot as usize)?;
        self.groups.wheel.cancel(o.timer);
        self.requests.held_bytes -= o.data.as_ref().map_or(0, |d| d.len());
        if let Some(c) = self.conn_mut(o.conn) {
            if let Some(i) = c.requests.iter().position(|s| *s == slot) {
                c.requests.swap_remove(i);
            }
        }
        Some(o)
    }

    /// The owner: pick a responder for `route`.
    pub(crate) fn route_request(&mut self, route: ReqRoute) {
        let origin = route.origin;
        let Some(member) = self.groups.pick_any(&route.topic, route.group.as_deref()) else {
            self.counters.requests_no_responders += 1;
            return self.send_to(origin.shard, MeshMsg::ReqGone { origin });
        };
        self.requests.next_id += 1;
        let req: Box<str> = format!("{}.{}", self.id, self.requests.next_id).into();
        self.send_to(member.shard, MeshMsg::Request(Box::new(ReqHandOff { conn: member.conn, req, route })));
    }

    /// The responder's shard: hand a request to its member.
    pub(crate) fn on_request(&mut self, h: ReqHandOff) {
        let origin = h.route.origin;
        let Some(c) = self.conn_mut(h.conn) else {
            return self.send_to(origin.shard, MeshMsg::ReqGone { origin });
        };
        c.serving.push(h.req.clone());
        self.requests.serving.insert(h.req.clone(), Serving { conn: h.conn, origin, bytes: 0 });
        let r = &h.route;
        let idx = h.conn.idx as usize;
        self.reply(idx, |o| message::request(o, &h.req, &r.topic, &r.data, r.timeout_ms, r.from.as_deref()));
        self.send_to(origin.shard, MeshMsg::ReqBound { origin, req: h.req });
    }

    /// The responder's `reply`.
    pub(crate) fn responder_reply(&mut self, idx: usize, conn: ConnRef, req: &str, data: &str, more: bool) {
        let max = self.policy.requests.max_reply_bytes;
        let Some(s) = self.requests.serving.get_mut(req).filter(|s| s.conn == conn) else {
            // Cancelled, timed out, or never ours: nothing to answer.
            self.counters.replies_dropped += 1;
            return;
        };
        s.bytes += data.len();
        let origin = s.origin;
        if s.bytes > max {
            self.stop_serving(req);
            self.counters.replies_too_large += 1;
            self.send_to(origin.shard, MeshMsg::ReqOverflow { origin });
            let msg = "reply larger than requests.max_reply_bytes; the request was ended";
            return self.reply_error(idx, None, ErrorCode::Overloaded, msg, None);
        }
        if !more {
            self.stop_serving(req);
        }
        self.send_to(origin.shard, MeshMsg::ReqReply { origin, req: req.into(), data: data.into(), more });
    }

    fn stop_serving(&mut self, req: &str) -> Option<Serving> {
        let s = self.requests.serving.remove(req)?;
        if let Some(c) = self.conn_mut(s.conn) {
            if let Some(i) = c.serving.iter().position(|r| **r == *req) {
                c.serving.swap_remove(i);
            }
        }
        Some(s)
    }

    /// The responder's shard: the requester gave up.
    pub(crate) fn on_req_cancel(&mut self, req: &str) {
        if let Some(s) = self.stop_serving(req) {
            self.counters.requests_cancelled += 1;
            if self.conn_mut(s.conn).is_some() {
                self.reply(s.conn.idx as usize, |o| message::cancel(o, req));
            }
        }
    }

    /// The requester's shard: the request reached `shard`.
    pub(crate) fn on_req_bound(&mut self, shard: usize, origin: ReqOrigin, req: Box<str>) {
        match self.open_mut(origin) {
            Some(o) => o.bound = Some((shard, req)),
            // Already over (timed out or cancelled): tell the responder.
            None => self.send_to(shard, MeshMsg::ReqCancel { req }),
        }
    }

    /// The requester's shard: one reply to forward.
    pub(crate) fn on_req_reply(&mut self, origin: ReqOrigin, req: &str, data: &str, more: bool) {
        let Some(o) = self.open_mut(origin) else { return };
        if o.bound.as_ref().is_none_or(|(_, r)| **r != *req) {
            // From a responder this request has left (cancelled, then sent
            // to its fallback): not forwarded.
            self.counters.replies_dropped += 1;
            return;
        }
        o.forwarded += 1;
        let (conn, id, service, started, first) = (o.conn, o.id, o.service, o.started, o.forwarded == 1);
        let took = self.now.saturating_duration_since(started);
        let st = self.requests.stats(service);
        if first {
            st.first_reply.record(took);
        }
        if !more {
            st.final_reply.record(took);
            st.answered += 1;
            self.close_request(origin.slot);
            self.counters.requests_answered += 1;
        }
        if let Some(c) = self.conn_mut(conn) {
            match c.cf.is_some() {
                // A Centrifugo `rpc` has one answer: the final reply.
                true if more => {}
                true => {
                    let id = id.unwrap_or(0) as u32;
                    self.reply(conn.idx as usize, |out| crate::proto::centrifugo::rpc_result(out, id, data))
                }
                false => self.reply(conn.idx as usize, |out| message::reply(out, id, data, more)),
            }
        }
    }

    /// The requester's shard: the replies grew past the bound.
    pub(crate) fn on_req_overflow(&mut self, origin: ReqOrigin) {
        let Some(o) = self.open_mut(origin) else { return };
        let (conn, id) = (o.conn, o.id);
        self.close_request(origin.slot);
        if self.conn_mut(conn).is_some() {
            let msg = "the replies passed requests.max_reply_bytes; the request was ended";
            self.reply_error(conn.idx as usize, id, ErrorCode::Overloaded, msg, None);
        }
    }

    /// A `ReqGone` from `shard`: stale if the request is bound elsewhere.
    pub(crate) fn on_req_gone(&mut self, shard: usize, origin: ReqOrigin) {
        if self.open_mut(origin).is_some_and(|o| o.bound.as_ref().is_some_and(|(s, _)| *s != shard)) {
            return;
        }
        self.on_req_failed(origin, false);
    }

    /// The requester's shard: nobody answers (no member, responder gone,
    /// or the deadline passed): the fallback if it may, else the error.
    pub(crate) fn on_req_failed(&mut self, origin: ReqOrigin, timed_out: bool) {
        let Some(o) = self.open_mut(origin) else { return };
        if let Some((shard, req)) = o.bound.take() {
            if timed_out {
                self.send_to(shard, MeshMsg::ReqCancel { req });
            }
        }
        let Some(o) = self.open_mut(origin) else { return };
        if o.forwarded == 0 && o.fallback.is_some() {
            // Once, to the fallback, with a fresh deadline.
            let topic = o.fallback.take().expect("checked");
            let data = o.data.take().unwrap_or_else(|| "null".into());
            let (timeout, old_timer, conn, service) = (o.timeout, o.timer, o.conn, o.service);
            self.requests.held_bytes -= data.len();
            self.counters.requests_fallbacks += 1;
            self.requests.stats(service).fallbacks += 1;
            self.groups.wheel.cancel(old_timer);
            let key = GroupTimer::Request { slot: origin.slot, gen: origin.gen };
            let timer = self.groups.wheel.insert(self.now + timeout, key);
            if let Some(o) = self.open_mut(origin) {
                o.timer = timer;
            }
            let from = self.conn_mut(conn).and_then(|c| c.identity.as_ref().map(|i| i.sub.clone()));
            let timeout_ms = timeout.as_millis() as u64;
            let route = ReqRoute { origin, topic, group: None, data, timeout_ms, from };
            return self.route_to_owner(MeshMsg::ReqRoute(Box::new(route)));
        }
        let (conn, id, partial, service) = (o.conn, o.id, o.forwarded > 0, o.service);
        self.close_request(origin.slot);
        let st = self.requests.stats(service);
        if timed_out {
            st.timeouts += 1;
        } else {
            st.no_responders += 1;
        }
        if self.conn_mut(conn).is_none() {
            return;
        }
        let idx = conn.idx as usize;
        if timed_out {
            self.counters.requests_timed_out += 1;
            if self.conns[idx].cf.is_some() {
                return self.reply_error(idx, id, ErrorCode::Timeout, "no reply in time", None);
            }
            *self.counters.errors_sent.entry(ErrorCode::Timeout.as_str()).or_default() += 1;
            self.reply(idx, |out| message::timeout_error(out, id, partial));
        } else {
            self.reply_error(idx, id, ErrorCode::NoResponders, "no member of a group on this topic can answer", None);
        }
    }

    /// The requester cancels its request `id`.
    pub(crate) fn cancel_request(&mut self, idx: usize, id: Option<u64>) {
        let slot = self.conns[idx]
            .requests
            .iter()
            .copied()
            .find(|s| self.requests.open.get(*s as usize).is_some_and(|o| o.id == id));
        let Some(slot) = slot else { return };
        if let Some(o) = self.close_request(slot) {
            self.counters.requests_cancelled += 1;
            self.requests.stats(o.service).cancels += 1;
            if let Some((shard, req)) = o.bound {
                self.send_to(shard, MeshMsg::ReqCancel { req });
            }
        }
    }

    /// A connection goes: its requests are cancelled, and what it served
    /// is over for its requesters.
    pub(crate) fn requests_on_close(&mut self, requests: Vec<u32>, serving: Vec<Box<str>>) {
        for slot in requests {
            if let Some(o) = self.close_request(slot) {
                self.requests.stats(o.service).cancels += 1;
                if let Some((shard, req)) = o.bound {
                    self.send_to(shard, MeshMsg::ReqCancel { req });
                }
            }
        }
        for req in serving {
            if let Some(s) = self.requests.serving.remove(&req) {
                self.send_to(s.origin.shard, MeshMsg::ReqGone { origin: s.origin });
            }
        }
    }
}
