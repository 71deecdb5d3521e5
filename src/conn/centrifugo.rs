//! The Centrifugo endpoint on a shard: `/connection/websocket` commands
//! mapped onto the very operations `/ws` uses (PROTOCOL-EXTENSIONS §7).
//!
//! A Centrifugo connection is an ordinary connection of the shard with a
//! second wire format: its commands become native [`Command`]s (so tokens,
//! caps, quotas, rate limits, the owner's seqs, replay and dedupe are one
//! code path), and everything sent to it is encoded in its format where the
//! answer is encoded (`deliver.rs`, `core.rs`). Publications are encoded
//! once per shard for this format ([`crate::conn::outbound::Delivery::wire`]).
//!
//! The mapping: channels are topics, offsets are seqs, epochs are epochs.
//! Every channel is positioned and recoverable (every topic has a replay
//! ring); `recover` is `since`, and `recovered` is true only when every
//! missed publication is in the reply. A subscriber that falls behind past
//! the soft limit is closed 3010 (insufficient state) instead of being
//! sent a `gap`: the SDK reconnects and recovers from its last offset.

use std::time::Instant;

use crate::conn::core::ShardCore;
use crate::conn::Phase;
use crate::mesh::msg::HistoryPage;
use crate::proto::centrifugo::{self as cf, CfCommand, CfError};
use crate::proto::message::{Command, Since, DEFAULT_REQ_TIMEOUT_MS};

/// `timeout_ms` of an `rpc` (the SDKs' own default call timeout is 5 s;
/// a reply after it is dropped by the SDK).
pub const RPC_TIMEOUT_MS: u64 = 10_000;

const _: () = assert!(RPC_TIMEOUT_MS <= DEFAULT_REQ_TIMEOUT_MS);

/// What a Centrifugo connection adds to its [`crate::conn::Conn`].
#[derive(Debug)]
pub struct CfConn {
    /// `connect` was answered.
    pub connected: bool,
    /// When the upgrade completed (`connect` is due within
    /// `[centrifugo] connect_timeout_ms`).
    pub opened: Instant,
    /// When the last `{}` ping was queued.
    pub last_ping: Instant,
    /// Subscribes sent to an owner, by command id.
    pub subs: Vec<PendingSub>,
    /// `presence_stats` queries in flight, by command id.
    pub stats: Vec<u32>,
}

/// A subscribe in flight: how to shape its reply.
#[derive(Debug, Clone, Copy)]
pub struct PendingSub {
    /// Command id.
    pub id: u32,
    /// It asked to recover after this offset.
    pub recover_from: Option<u64>,
    /// Refuse a failed recovery with error 112 (flag 2).
    pub reject_unrecovered: bool,
}

impl CfConn {
    /// A fresh connection, upgraded at `now`.
    pub fn new(now: Instant) -> Self {
        Self { connected: false, opened: now, last_ping: now, subs: Vec::new(), stats: Vec::new() }
    }

    /// Takes the pending subscribe `id`.
    pub fn take_sub(&mut self, id: Option<u64>) -> Option<PendingSub> {
        let id = id? as u32;
        let i = self.subs.iter().position(|p| p.id == id)?;
        Some(self.subs.swap_remove(i))
    }
}

impl ShardCore {
    /// A text frame from a Centrifugo connection: one or more commands.
    pub(crate) fn on_cf_text(&mut self, idx: usize, text: &str) {
        let max = self.policy.centrifugo.max_commands_per_frame;
        for (n, line) in cf::lines(text).enumerate() {
            if n == max {
                // A frame is a bounded amount of work.
                *self.counters.cf_refused.entry("max_commands_per_frame").or_default() += 1;
                return self.cf_close(idx, cf::BAD_REQUEST_CLOSE);
            }
            self.counters.commands += 1;
            match cf::parse_command(line) {
                Ok(cmd) => self.on_cf_command(idx, cmd),
                Err(_) => {
                    self.counters.protocol_errors += 1;
                    return self.cf_close(idx, cf::BAD_REQUEST_CLOSE);
                }
            }
            if self.conns.get(idx).is_none_or(|c| c.phase == Phase::Closing) {
                return;
            }
        }
    }

    fn cf_close(&mut self, idx: usize, (code, reason): (crate::proto::CloseCode, &str)) {
        self.close(idx, code, reason);
    }

    /// Queues a Centrifugo error reply.
    pub(crate) fn cf_error(&mut self, idx: usize, id: u32, e: CfError, msg: &str) {
        *self.counters.errors_sent.entry("centrifugo").or_default() += 1;
        if id != 0 {
            self.reply(idx, |o| cf::error(o, id, e, msg));
        }
    }

    fn on_cf_command(&mut self, idx: usize, cmd: CfCommand<'_>) {
        let connected = self.conns[idx].cf.as_ref().is_some_and(|c| c.connected);
        match cmd {
            CfCommand::Pong => {}
            CfCommand::Connect(id, req) if !connected => self.cf_connect(idx, id, req.token.as_deref()),
            // A second connect, or anything before the first: as Centrifugo.
            CfCommand::Connect(..) => self.cf_close(idx, cf::BAD_REQUEST_CLOSE),
            _ if !connected => self.cf_close(idx, cf::BAD_REQUEST_CLOSE),
            CfCommand::Subscribe(id, s) => {
                if !self.cf_pending_room(idx, id) {
                    return;
                }
                let c = self.conns[idx].cf.as_mut().expect("a Centrifugo connection");
                c.subs.retain(|p| p.id != id);
                c.subs.push(PendingSub {
                    id,
                    recover_from: s.recover.then_some(s.offset),
                    reject_unrecovered: s.flag & cf::FLAG_REJECT_UNRECOVERED != 0,
                });
                let since = s.recover.then(|| Since { seq: s.offset, epoch: s.epoch.into_owned() });
                let cmd = Command::Sub {
                    id: Some(u64::from(id)),
                    topic: s.channel,
                    since,
                    group: None,
                    streams: false,
                    last: false,
                    presence: s.join_leave,
                };
                self.on_command(idx, cmd);
            }
            CfCommand::Unsubscribe(id, u) => {
                self.on_command(idx, Command::Unsub { id: Some(u64::from(id)), topic: u.channel, group: None })
            }
            CfCommand::Publish(id, p) => {
                let Some(data) = p.data else {
                    return self.cf_error(idx, id, cf::BAD_REQUEST, "publish needs data");
                };
                let cmd = Command::Pub {
                    id: Some(u64::from(id)),
                    topic: p.channel,
                    data,
                    msg_id: None,
                    prio: None,
                    stream: None,
                    end: false,
                    retain: None,
                    receipt: false,
                };
                self.on_command(idx, cmd);
            }
            CfCommand::Presence(id, p) => {
                self.on_command(idx, Command::Presence { id: Some(u64::from(id)), topic: p.channel })
            }
            CfCommand::PresenceStats(id, p) => {
                if !self.cf_pending_room(idx, id) {
                    return;
                }
                let c = self.conns[idx].cf.as_mut().expect("a Centrifugo connection");
                c.stats.push(id);
                self.on_command(idx, Command::Presence { id: Some(u64::from(id)), topic: p.channel });
            }
            CfCommand::History(id, h) => {
                if !self.admit_read(idx, Some(u64::from(id)), &h.channel) {
                    return;
                }
                let gen = self.conns[idx].gen;
                let conn = crate::mesh::ConnRef { idx: idx as u32, gen };
                // Centrifugo: a negative limit is "all", 0 only the position.
                let limit = usize::try_from(h.limit).unwrap_or(usize::MAX);
                let since = h.since.map(|s| (s.offset, s.epoch.into_owned().into_boxed_str()));
                let msg = crate::mesh::MeshMsg::History {
                    conn,
                    id: Some(u64::from(id)),
                    topic: h.channel.into(),
                    since,
                    limit,
                    reverse: h.reverse,
                };
                self.route_to_owner(msg);
            }
            CfCommand::Rpc(id, r) => {
                let Some(data) = r.data else {
                    return self.cf_error(idx, id, cf::BAD_REQUEST, "rpc needs data");
                };
                let cmd = Command::Req {
                    id: Some(u64::from(id)),
                    topic: r.method,
                    data,
                    timeout_ms: RPC_TIMEOUT_MS,
                    fallback: None,
                    group: None,
                };
                self.on_command(idx, cmd);
            }
            CfCommand::Refresh(id, r) => self.cf_refresh(idx, id, &r.token),
            CfCommand::Unsupported(id) => self.cf_error(idx, id, cf::METHOD_NOT_FOUND, "method not found"),
        }
    }

    /// The owner's history page for connection `conn`.
    pub(crate) fn on_history_answer(
        &mut self,
        conn: crate::mesh::ConnRef,
        id: Option<u64>,
        page: Result<Box<HistoryPage>, ()>,
    ) {
        if self.conn_mut(conn).is_none() {
            return;
        }
        let (idx, id) = (conn.idx as usize, id.unwrap_or(0) as u32);
        match page {
            Ok(p) => {
                let (epoch, seq, pubs) = &*p;
                let epoch = epoch.as_ref().map_or("", |e| e.as_str());
                self.reply(idx, |o| cf::history(o, id, epoch, *seq, pubs.iter().map(|p| p.cf_fields())));
            }
            Err(()) => self.cf_error(idx, id, cf::UNRECOVERABLE, "unrecoverable position"),
        }
    }

    /// Whether connection `idx` may have one more subscribe or presence
    /// query waiting for its answer; if not, command `id` is answered 106
    /// and counted.
    fn cf_pending_room(&mut self, idx: usize, id: u32) -> bool {
        let max = self.policy.centrifugo.max_pending_per_connection;
        let ok = self.conns[idx].cf.as_ref().is_some_and(|c| c.subs.len() + c.stats.len() < max);
        if !ok {
            *self.counters.cf_refused.entry("max_pending_per_connection").or_default() += 1;
            let msg = "too many commands waiting (centrifugo.max_pending_per_connection)";
            self.cf_error(idx, id, cf::LIMIT_EXCEEDED, msg);
        }
        ok
    }

    /// `connect`: the token (the same `[auth]` keys and claims as `/ws`),
    /// the tenant's connection quota, then the reply.
    fn cf_connect(&mut self, idx: usize, id: u32, token: Option<&str>) {
        let token = token.filter(|t| !t.is_empty());
        let access = self.policy.access.clone();
        let identity = match access.authenticate(token, self.unix_now()) {
            Ok(i) => i,
            Err(e) => {
                *self.counters.auth_refused.entry(e.label()).or_default() += 1;
                return match e {
                    // The SDK fetches a fresh token and connects again.
                    crate::auth::AuthError::Expired => self.cf_error(idx, id, cf::TOKEN_EXPIRED, "token expired"),
                    crate::auth::AuthError::Missing => self.cf_error(idx, id, cf::UNAUTHORIZED, "a token is required"),
                    _ => self.cf_close(idx, cf::INVALID_TOKEN),
                };
            }
        };
        if let Some(i) = identity {
            if !self.tenant_connection_room(&i) {
                self.quota_refused(&i.tenant, "connections");
                return self.cf_close(idx, (crate::proto::CloseCode(3504), "connection limit"));
            }
            self.tenant_add(&i.tenant, 1, 0);
            self.set_identity(idx, i);
        }
        let client = self.cf_client_id(idx);
        let ttl = self.cf_ttl(idx);
        let ping = self.cf_ping_secs();
        if let Some(c) = self.conns[idx].cf.as_mut() {
            c.connected = true;
        }
        self.counters.cf_connects += 1;
        self.reply(idx, |o| cf::connected(o, id, &client, ping, ttl));
    }

    /// `refresh`: a fresh token for the same `sub` and tenant.
    fn cf_refresh(&mut self, idx: usize, id: u32, token: &str) {
        let new = match self.policy.access.verify(token, self.unix_now()) {
            Ok(n) => n,
            Err(e) => {
                *self.counters.auth_refused.entry(e.label()).or_default() += 1;
                return match e {
                    crate::auth::AuthError::Expired => self.cf_error(idx, id, cf::TOKEN_EXPIRED, "token expired"),
                    _ => self.cf_close(idx, cf::INVALID_TOKEN),
                };
            }
        };
        let same = self.conns[idx].identity.as_ref().is_some_and(|old| old.sub == new.sub && old.tenant == new.tenant);
        if !same {
            self.counters.forbidden += 1;
            return self.cf_close(idx, cf::INVALID_TOKEN);
        }
        self.set_identity(idx, new);
        let client = self.cf_client_id(idx);
        let ttl = self.cf_ttl(idx);
        self.reply(idx, |o| cf::refreshed(o, id, &client, ttl));
    }

    /// The connection's id as presence names it.
    pub(crate) fn cf_client_id(&self, idx: usize) -> String {
        let gen = self.conns.get(idx).map_or(0, |c| c.gen);
        super::routing::conn_name((self.id, (idx as u64) << 32 | u64::from(gen)))
    }

    /// Seconds until the token expires (Centrifugo's `ttl`), if it does.
    fn cf_ttl(&self, idx: usize) -> Option<u64> {
        let exp = self.conns.get(idx)?.identity.as_ref()?.exp?;
        Some(exp.saturating_sub(self.unix_now()))
    }

    /// The ping interval the connect reply announces, in whole seconds.
    pub(crate) fn cf_ping_secs(&self) -> u64 {
        self.policy.liveness.ping_interval_ms.div_ceil(1000).max(1)
    }
}
