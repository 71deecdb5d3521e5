//! Inbound bytes → protocol actions, for one connection at a time.
//!
//! Called by the connection's I/O task with bytes it just read into the
//! shard-wide read buffer. Complete frames are handled in place; only an
//! unfinished request head or frame is copied into the connection's own
//! `inbuf`. Nothing here panics on any input: a bad byte stream gets a close
//! code, a bad command gets an `error` reply.

use std::time::Instant;

use crate::conn::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::conn::publish::PubArgs;
use crate::conn::rate::TokenBucket;
use crate::conn::Phase;
use crate::mesh::{ConnRef, MeshMsg, ReplyKind};
use crate::proto::frame::{self, CloseCode, Decoded, ServerOp};
use crate::proto::handshake::{self, HandshakeOutcome};
use crate::proto::message::{self, Command, ErrorCode};
use crate::topic::name;

/// Longest a connection refused `rate_limited` is left unread.
pub const MAX_PUSHBACK_MS: u64 = 1000;
/// Shortest: a tenant bucket at a high rate has a token again within
/// microseconds, and a closed-loop client would be answered at once.
pub const MIN_PUSHBACK_MS: u64 = 20;

impl ShardCore {
    /// A read of a topic's owner state (`get`, `presence`): a valid topic
    /// the connection may subscribe to, within the control rate. False
    /// (the error sent) otherwise.
    pub(crate) fn admit_read(&mut self, idx: usize, id: Option<u64>, topic: &str) -> bool {
        if let Err(e) = name::validate(topic) {
            self.reply_error(idx, id, ErrorCode::BadTopic, &e.to_string(), None);
            return false;
        }
        if self.conns[idx].identity.as_ref().is_some_and(|i| !i.may_sub(topic)) {
            self.counters.forbidden += 1;
            self.reply_error(idx, id, ErrorCode::Forbidden, "topic outside the token's tenant or caps", None);
            return false;
        }
        if let Err((code, msg, retry)) = self.admit_control(idx, topic) {
            self.reply_error(idx, id, code, msg, Some(retry));
            return false;
        }
        true
    }

    /// Handles bytes read from connection `idx`.
    pub fn on_bytes(&mut self, idx: usize, data: &mut [u8]) {
        self.on_bytes_at(idx, data, Instant::now());
    }

    /// Handles bytes read from connection `idx` at time `now` (the
    /// deterministic harness passes simulated time).
    pub fn on_bytes_at(&mut self, idx: usize, data: &mut [u8], now: Instant) {
        self.tick(now);
        let now = self.now;
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        conn.last_seen = now;
        conn.ping_out = false;
        if conn.inbuf.is_empty() {
            let used = self.process(idx, data);
            self.keep_unused(idx, &data[used..]);
            self.note_partial_request(idx, now);
        } else {
            let mut buf = std::mem::take(&mut conn.inbuf);
            buf.extend_from_slice(data);
            let used = self.process(idx, &mut buf);
            buf.drain(..used);
            if let Some(conn) = self.conns.get_mut(idx) {
                // Keep only what an unfinished frame needs; an idle
                // connection holds no input buffer at all.
                if buf.is_empty() {
                    buf = Vec::new();
                } else if buf.capacity() > 2 * buf.len() {
                    buf.shrink_to_fit();
                }
                conn.inbuf = buf;
            }
        }
        self.note_partial_request(idx, now);
    }

    /// Starts (or clears) the whole-request deadline of an HTTP API
    /// connection: a request whose head or body is unfinished must complete
    /// within `limits.handshake_timeout_ms` (enforced by the liveness sweep).
    fn note_partial_request(&mut self, idx: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(idx) else { return };
        let partial = c.phase == Phase::Http && !c.inbuf.is_empty();
        if let Some(h) = c.http.as_mut() {
            if !partial || h.busy {
                h.partial_since = None;
            } else if h.partial_since.is_none() {
                h.partial_since = Some(now);
            }
        }
    }

    fn keep_unused(&mut self, idx: usize, rest: &[u8]) {
        if let Some(conn) = self.conns.get_mut(idx) {
            if !rest.is_empty() && conn.phase != Phase::Closing {
                conn.inbuf.extend_from_slice(rest);
            }
        }
    }

    /// Handles as much of `buf` as forms complete units; returns bytes used.
    fn process(&mut self, idx: usize, buf: &mut [u8]) -> usize {
        let mut used = 0;
        loop {
            let Some(conn) = self.conns.get(idx) else { return buf.len() };
            match conn.phase {
                Phase::Open => return used + self.process_frames(idx, &mut buf[used..]),
                Phase::Closing => return buf.len(),
                Phase::Handshake | Phase::Http => {
                    // One request at a time, and none while the answers
                    // already queued are not being read: pipelined input
                    // waits (bounded, see `Conn::input_paused`).
                    let busy = conn.http.as_ref().is_some_and(|h| h.busy);
                    if busy || used == buf.len() || conn.out.bytes() > crate::conn::state::HTTP_OUT_BOUND {
                        return used;
                    }
                    match self.process_request(idx, &buf[used..]) {
                        Some(n) => used += n,
                        None => return used,
                    }
                }
            }
        }
    }

    /// Handles one HTTP request at the front of `buf`: an upgrade, an API
    /// request, or a refusal. Returns the bytes it used, or None when the
    /// request is not complete yet.
    fn process_request(&mut self, idx: usize, buf: &[u8]) -> Option<usize> {
        let first = self.conns[idx].phase == Phase::Handshake;
        let access = self.policy.access.clone();
        match handshake::parse(buf, &access.subprotocols, self.policy.echo_path.as_deref()) {
            HandshakeOutcome::Incomplete => None,
            HandshakeOutcome::Upgrade(u) if first => {
                if !access.origin_allowed(u.origin.as_deref()) {
                    self.counters.origin_refused += 1;
                    self.counters.handshakes_failed += 1;
                    let body = r#"{"error":{"code":"forbidden","message":"origin not allowed"}}"#;
                    self.close_http(idx, &crate::conn::http::json_response(403, "Forbidden", body, None, true));
                    return Some(buf.len());
                }
                if u.centrifugo && !self.policy.centrifugo.enabled {
                    self.counters.handshakes_failed += 1;
                    self.close_http(idx, &handshake::reject_response(404, "Not Found"));
                    return Some(buf.len());
                }
                // A Centrifugo client brings its token in `connect`.
                let identity = match u.centrifugo {
                    true => None,
                    false => match access.authenticate(u.token.as_deref(), self.unix_now()) {
                        Ok(id) => id,
                        Err(e) => {
                            self.refuse_unauthorized(idx, &e);
                            return Some(buf.len());
                        }
                    },
                };
                if let Some(id) = identity {
                    if !self.tenant_connection_room(&id) {
                        self.quota_refused(&id.tenant, "connections");
                        self.counters.handshakes_failed += 1;
                        let body = format!(
                            r#"{{"error":{{"code":"rate_limited","message":"tenant connection quota ({}) reached"}}}}"#,
                            id.quota.connections
                        );
                        let resp = crate::conn::http::json_response(429, "Too Many Requests", &body, Some(1000), true);
                        self.close_http(idx, &resp);
                        return Some(buf.len());
                    }
                    self.tenant_add(&id.tenant, 1, 0);
                    self.set_identity(idx, id);
                }
                let response = handshake::upgrade_response(&u, self.id);
                let now = self.now;
                let conn = &mut self.conns[idx];
                conn.echo = u.echo;
                if u.centrifugo {
                    conn.cf = Some(Box::new(crate::conn::centrifugo::CfConn::new(now)));
                    conn.out.cf = true;
                }
                conn.out.push_control(usize::MAX, |o| o.extend_from_slice(&response));
                conn.phase = Phase::Open;
                conn.wake();
                self.counters.handshakes += 1;
                Some(u.head_len)
            }
            HandshakeOutcome::Upgrade(_) => {
                self.close_http(idx, &handshake::reject_response(400, "Bad Request"));
                Some(buf.len())
            }
            HandshakeOutcome::Http(req) => {
                let body = match (req.method.as_str(), req.content_length) {
                    (_, Some(n)) => n,
                    ("POST" | "PUT", None) => {
                        self.close_http(idx, &handshake::reject_response(411, "Length Required"));
                        return Some(buf.len());
                    }
                    (_, None) => 0,
                };
                if body > self.limits.max_message_bytes {
                    self.counters.http_requests += 1;
                    let msg =
                        r#"{"error":{"code":"bad_request","message":"body larger than limits.max_message_bytes"}}"#;
                    let resp = crate::conn::http::json_response(413, "Payload Too Large", msg, None, true);
                    self.close_http(idx, &resp);
                    return Some(buf.len());
                }
                let total = req.head_len + body;
                if buf.len() < total {
                    return None;
                }
                self.on_http_request(idx, &req, &buf[req.head_len..total]);
                Some(total)
            }
            HandshakeOutcome::Reject(status, reason) => {
                self.counters.handshakes_failed += 1;
                self.close_http(idx, &handshake::reject_response(status, reason));
                Some(buf.len())
            }
        }
    }

    /// Answers 401 (`unauthorized`, the reason in the message) and closes.
    pub(crate) fn refuse_unauthorized(&mut self, idx: usize, e: &crate::auth::AuthError) {
        *self.counters.auth_refused.entry(e.label()).or_default() += 1;
        self.counters.handshakes_failed += 1;
        let body =
            format!(r#"{{"error":{{"code":"unauthorized","message":{}}}}}"#, serde_json::Value::from(e.to_string()));
        self.close_http(idx, &crate::conn::http::json_response(401, "Unauthorized", &body, None, true));
    }

    /// Handles input that waited in `inbuf` (a pipelined HTTP request held
    /// back while the previous one was answered).
    pub(crate) fn resume_input(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        if conn.inbuf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut conn.inbuf);
        let used = self.process(idx, &mut buf);
        buf.drain(..used);
        if let Some(conn) = self.conns.get_mut(idx) {
            if conn.phase != Phase::Closing && !buf.is_empty() {
                conn.inbuf = buf;
            }
        }
        self.note_partial_request(idx, self.now);
    }

    fn process_frames(&mut self, idx: usize, buf: &mut [u8]) -> usize {
        let max = self.limits.max_message_bytes;
        let mut asm = std::mem::take(&mut self.conns[idx].asm);
        let mut used = 0;
        loop {
            match asm.decode(&mut buf[used..], max) {
                Ok(None) => break,
                Ok(Some((n, event))) => {
                    used += n;
                    if let Some(event) = event {
                        self.on_event(idx, event);
                    }
                }
                Err(e) => {
                    self.counters.protocol_errors += 1;
                    self.close(idx, e.code, e.reason);
                    used = buf.len();
                }
            }
            if self.conns.get(idx).is_none_or(|c| c.phase == Phase::Closing) {
                break;
            }
        }
        if let Some(conn) = self.conns.get_mut(idx) {
            conn.asm = asm;
        }
        used
    }

    fn on_event(&mut self, idx: usize, event: Decoded<'_>) {
        match event {
            Decoded::Text(text) if self.conns[idx].echo => {
                self.reply(idx, |o| frame::write_frame(ServerOp::Text, text.as_bytes(), o))
            }
            Decoded::Binary(data) if self.conns[idx].echo => {
                self.reply(idx, |o| frame::write_frame(ServerOp::Binary, data, o))
            }
            Decoded::Text(text) if self.conns[idx].cf.is_some() => self.on_cf_text(idx, text),
            Decoded::Binary(_) if self.conns[idx].cf.is_some() => {
                // The JSON protocol has no binary frames.
                self.counters.protocol_errors += 1;
                let (code, reason) = crate::proto::centrifugo::BAD_REQUEST_CLOSE;
                self.close(idx, code, reason);
            }
            Decoded::Text(text) => {
                self.counters.commands += 1;
                match message::parse_command(text) {
                    Ok(cmd) => self.on_command(idx, cmd),
                    Err(e) => self.reply_error(idx, e.id, e.code, &e.message, None),
                }
            }
            Decoded::Binary(_) => self.reply_error(
                idx,
                None,
                ErrorCode::BadRequest,
                "binary frames are not accepted; send JSON text",
                None,
            ),
            Decoded::Ping(payload) => self.reply(idx, |o| frame::write_frame(ServerOp::Pong, payload, o)),
            Decoded::Pong => {}
            Decoded::Close(code) => {
                let echo = code.map_or(CloseCode::NORMAL, CloseCode);
                self.close(idx, echo, "");
            }
        }
    }

    /// Meters a `sub`/`unsub` (each may make the owner replay up to the
    /// soft outbound limit) and checks the ring to the owner has room, so
    /// control traffic from connections cannot grow a ring's overflow queue.
    fn admit_control(&mut self, idx: usize, topic: &str) -> Result<(), (ErrorCode, &'static str, u64)> {
        let now = self.now;
        let (rate, burst) = (self.policy.rates.control_per_sec, self.policy.rates.control_burst);
        let c = &mut self.conns[idx];
        let bucket = c.control_bucket.get_or_insert_with(|| TokenBucket::new(burst, now));
        if let Err(ms) = bucket.take(rate, burst, now) {
            *self.counters.control_refused.entry("rate_limited").or_default() += 1;
            *self.counters.rate_limited.entry("control").or_default() += 1;
            return Err((ErrorCode::RateLimited, "sub/unsub rate limit (connection) exceeded", ms));
        }
        let owner = self.map.owner(topic);
        if owner != self.id && !self.outboxes[owner].as_mut().is_some_and(|o| o.admits_request()) {
            *self.counters.control_refused.entry("overloaded").or_default() += 1;
            return Err((
                ErrorCode::Overloaded,
                "engine overloaded (mesh ring full); retry later",
                OVERLOADED_RETRY_MS,
            ));
        }
        Ok(())
    }

    pub(crate) fn on_command(&mut self, idx: usize, cmd: Command<'_>) {
        let gen = self.conns[idx].gen;
        let conn = ConnRef { idx: idx as u32, gen };
        match cmd {
            Command::Ping { id } => self.reply(idx, |o| message::pong(o, id)),
            Command::Sub { id, topic, group: Some(g), .. } => self.join_group(idx, conn, id, &topic, g),
            Command::Unsub { id, topic, group: Some(g) } => self.leave_group(idx, conn, id, &topic, &g),
            Command::Req { id, topic, data, timeout_ms, fallback, group } => {
                self.start_request(idx, conn, id, &topic, data.get(), timeout_ms, fallback.as_deref(), group.as_deref())
            }
            Command::Reply { req, data, more } => self.responder_reply(idx, conn, &req, data.get(), more),
            Command::Cancel { id } => self.cancel_request(idx, id),
            Command::Settle { id, topic, group, seq, outcome } => {
                self.settle_group(idx, conn, id, &topic, &group, seq, outcome)
            }
            Command::Get { id, topic } => {
                if self.admit_read(idx, id, &topic) {
                    self.route_to_owner(MeshMsg::Get { conn, id, topic: topic.into() });
                }
            }
            Command::Presence { id, topic } => {
                if self.admit_read(idx, id, &topic) {
                    self.route_to_owner(MeshMsg::PresenceGet { conn, id, topic: topic.into() });
                }
            }
            Command::Sub { id, topic, since, group: None, streams, last, presence } => {
                if let Err(e) = name::validate(&topic) {
                    return self.reply_error(idx, id, ErrorCode::BadTopic, &e.to_string(), None);
                }
                if self.conns[idx].identity.as_ref().is_some_and(|i| !i.may_sub(&topic)) {
                    self.counters.forbidden += 1;
                    let msg = "topic outside the token's tenant or caps";
                    return self.reply_error(idx, id, ErrorCode::Forbidden, msg, None);
                }
                let tenant = self.conns[idx].identity.as_ref().map(|i| (i.tenant.clone(), i.quota.subscriptions));
                if let Some((tenant, quota)) = &tenant {
                    let used = self.tenant_usage.get(tenant).map_or(0, |u| u.subscriptions);
                    let resub = self.conns[idx].sub_index(&topic).is_some();
                    if !resub && used >= crate::conn::core::share(*quota, self.map.shards) {
                        self.quota_refused(tenant, "subscriptions");
                        let msg = format!("tenant subscription quota ({quota}) reached");
                        return self.reply_error(idx, id, ErrorCode::TooManySubscriptions, &msg, None);
                    }
                }
                let c = &mut self.conns[idx];
                let held = c.subs.len() + c.pending_subs as usize;
                if held >= self.limits.max_subscriptions_per_connection && c.sub_index(&topic).is_none() {
                    let msg = format!(
                        "at most {} subscriptions per connection",
                        self.limits.max_subscriptions_per_connection
                    );
                    return self.reply_error(idx, id, ErrorCode::TooManySubscriptions, &msg, None);
                }
                if let Err((code, msg, retry)) = self.admit_control(idx, &topic) {
                    return self.reply_error(idx, id, code, msg, Some(retry));
                }
                self.conns[idx].pending_subs += 1;
                if let Some((tenant, _)) = &tenant {
                    self.tenant_add(tenant, 0, 1);
                }
                // Presence: a new subscriber joins (a repeated `sub` does not).
                let c = &self.conns[idx];
                let member = c.sub_index(&topic).is_none().then(|| {
                    let mut m = c.member(conn);
                    m.watch = presence;
                    m
                });
                let wide = self.conns[idx].cf.is_some();
                let msg = MeshMsg::Subscribe { conn, id, topic: topic.into(), since, streams, last, member, wide };
                self.route_to_owner(msg);
            }
            Command::Unsub { id, topic, group: None } => {
                if let Err(e) = name::validate(&topic) {
                    return self.reply_error(idx, id, ErrorCode::BadTopic, &e.to_string(), None);
                }
                if let Err((code, msg, retry)) = self.admit_control(idx, &topic) {
                    return self.reply_error(idx, id, code, msg, Some(retry));
                }
                self.route_to_owner(MeshMsg::Unsubscribe { conn, id, topic: topic.into() });
            }
            Command::Auth { id, token } => self.refresh_token(idx, id, &token),
            Command::Pub { id, topic, data, msg_id, prio, stream, end, retain, receipt } => {
                let args = PubArgs {
                    id,
                    topic: &topic,
                    data: data.get(),
                    msg_id: msg_id.as_deref(),
                    prio,
                    reply: ReplyKind::Ws,
                    stream: stream.as_deref().map(|s| (s, end)),
                    retain,
                    receipt,
                };
                if let Err(r) = self.submit_publish(idx, args) {
                    if let (ErrorCode::RateLimited, Some(ms)) = (r.code, r.retry_after_ms) {
                        // Push back: this connection is not read again until
                        // it may publish, so a client that retries at once
                        // waits in TCP instead of being answered again and
                        // again (a noisy tenant's refusals cost the others).
                        // At most a second: a client told to wait longer is
                        // still read (pings, other commands), just slowly.
                        let until =
                            self.now + std::time::Duration::from_millis(ms.clamp(MIN_PUSHBACK_MS, MAX_PUSHBACK_MS));
                        let c = &mut self.conns[idx];
                        c.read_paused_until = Some(c.read_paused_until.map_or(until, |u| u.max(until)));
                    }
                    self.reply_error(idx, id, r.code, &r.message, r.retry_after_ms);
                }
            }
        }
    }

    /// `auth`: a fresh token for the same `sub` and `tenant` replaces the
    /// connection's identity and moves its expiry.
    fn refresh_token(&mut self, idx: usize, id: Option<u64>, token: &str) {
        // Each refresh verifies a signature: metered like sub/unsub.
        let (now, rate, burst) = (self.now, self.policy.rates.control_per_sec, self.policy.rates.control_burst);
        let bucket = self.conns[idx].control_bucket.get_or_insert_with(|| TokenBucket::new(burst, now));
        if let Err(ms) = bucket.take(rate, burst, now) {
            *self.counters.control_refused.entry("rate_limited").or_default() += 1;
            return self.reply_error(
                idx,
                id,
                ErrorCode::RateLimited,
                "auth rate limit (connection) exceeded",
                Some(ms),
            );
        }
        let new = match self.policy.access.verify(token, self.unix_now()) {
            Ok(n) => n,
            Err(e) => {
                *self.counters.auth_refused.entry(e.label()).or_default() += 1;
                return self.reply_error(idx, id, ErrorCode::Unauthorized, &e.to_string(), None);
            }
        };
        // An anonymous connection has no sub to keep: it reconnects with a
        // token instead (its subscriptions were never counted for a tenant).
        let same = self.conns[idx].identity.as_ref().is_some_and(|old| old.sub == new.sub && old.tenant == new.tenant);
        if !same {
            self.counters.forbidden += 1;
            return self.reply_error(idx, id, ErrorCode::Forbidden, "a refresh must keep sub and tenant", None);
        }
        let exp = new.exp;
        self.set_identity(idx, new);
        self.reply(idx, |o| message::authed(o, id, exp));
    }
}

impl ShardCore {
    /// `sub` with `group`: checked here, joined at the topic's owner.
    fn join_group(&mut self, idx: usize, conn: ConnRef, id: Option<u64>, topic: &str, g: message::GroupSub<'_>) {
        if let Err(e) = name::validate(topic) {
            return self.reply_error(idx, id, ErrorCode::BadTopic, &e.to_string(), None);
        }
        let dead_letter = g.dead_letter.as_deref().map(str::to_owned).unwrap_or_else(|| format!("{topic}/dlq"));
        if let Err(e) = name::validate(&dead_letter) {
            return self.reply_error(idx, id, ErrorCode::BadTopic, &format!("dead_letter: {e}"), None);
        }
        // The server publishes dead letters for the group: only into the
        // group's own tenant.
        if dead_letter.split('/').next() != topic.split('/').next() {
            self.counters.forbidden += 1;
            let msg = "dead_letter must be in the topic's tenant";
            return self.reply_error(idx, id, ErrorCode::Forbidden, msg, None);
        }
        if self.conns[idx].identity.as_ref().is_some_and(|i| !i.may_sub(topic)) {
            self.counters.forbidden += 1;
            let msg = "topic outside the token's tenant or caps";
            return self.reply_error(idx, id, ErrorCode::Forbidden, msg, None);
        }
        let c = &self.conns[idx];
        let member = c.groups.iter().any(|(t, n)| **t == *topic && **n == *g.name);
        let held = c.subs.len() + c.groups.len() + c.pending_subs as usize;
        if !member && held >= self.limits.max_subscriptions_per_connection {
            let msg = format!("at most {} subscriptions per connection", self.limits.max_subscriptions_per_connection);
            return self.reply_error(idx, id, ErrorCode::TooManySubscriptions, &msg, None);
        }
        if let Err((code, msg, retry)) = self.admit_control(idx, topic) {
            return self.reply_error(idx, id, code, msg, Some(retry));
        }
        self.conns[idx].pending_subs += 1;
        let spec = crate::mesh::msg::GroupSpec {
            name: (*g.name).into(),
            ack: g.ack,
            max_inflight: g.max_inflight,
            ack_wait_ms: g.ack_wait_ms,
            max_deliver: g.max_deliver,
            dead_letter: Some(dead_letter.into()),
        };
        self.route_to_owner(MeshMsg::GroupJoin { conn, id, topic: topic.into(), spec: Box::new(spec) });
    }

    /// `unsub` with `group`.
    fn leave_group(&mut self, idx: usize, conn: ConnRef, id: Option<u64>, topic: &str, group: &str) {
        let Some(i) = self.conns[idx].groups.iter().position(|(t, g)| **t == *topic && **g == *group) else {
            return self.reply_error(idx, id, ErrorCode::NotMember, "not a member of this group", None);
        };
        if let Err((code, msg, retry)) = self.admit_control(idx, topic) {
            return self.reply_error(idx, id, code, msg, Some(retry));
        }
        // Hand-offs still on their way are dropped here; the owner gives
        // them to another member when it handles the leave.
        self.conns[idx].groups.swap_remove(i);
        self.route_to_owner(MeshMsg::GroupLeave { conn, id, topic: topic.into(), group: group.into(), answer: true });
    }

    /// `settle`.
    #[allow(clippy::too_many_arguments)]
    fn settle_group(
        &mut self,
        idx: usize,
        conn: ConnRef,
        id: Option<u64>,
        topic: &str,
        group: &str,
        seq: u64,
        outcome: message::Outcome,
    ) {
        if !self.conns[idx].groups.iter().any(|(t, g)| **t == *topic && **g == *group) {
            return self.reply_error(idx, id, ErrorCode::NotMember, "not a member of this group", None);
        }
        let owner = self.map.owner(topic);
        if owner != self.id && !self.outboxes[owner].as_mut().is_some_and(|o| o.has_room(1)) {
            *self.counters.control_refused.entry("overloaded").or_default() += 1;
            let msg = "engine overloaded (mesh ring full); retry later";
            return self.reply_error(idx, id, ErrorCode::Overloaded, msg, Some(OVERLOADED_RETRY_MS));
        }
        let msg = MeshMsg::GroupSettle { conn, id, topic: topic.into(), group: group.into(), seq, outcome };
        self.route_to_owner(msg);
    }
}
