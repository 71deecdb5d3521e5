//! Publish admission at the edge: the checks a publication passes on the
//! shard that read it (topic, data, drain, rate limits, ring room) before it
//! is routed to its owner. WebSocket, HTTP and batch publishes all come
//! through `ShardCore::submit_publish`; each edge encodes a [`Refusal`] in
//! its own wire format.

use crate::conn::core::{ShardCore, OVERLOADED_RETRY_MS};
use crate::conn::rate::TokenBucket;
use crate::mesh::msg::{RetainArg, StreamArg};
use crate::mesh::{ConnRef, MeshMsg, PublishReq, ReplyKind, Requester};
use crate::proto::message::{self, ErrorCode};
use crate::topic::name;

impl ShardCore {
    /// Takes a token from the connection's and the tenant's buckets; on
    /// refusal, which scope and how long to wait.
    fn take_publish_token(&mut self, idx: usize, topic: &str) -> Result<(), (&'static str, u64)> {
        let now = self.now;
        let r = self.policy.rates.clone();
        let c = &mut self.conns[idx];
        let bucket = c.bucket.get_or_insert_with(|| TokenBucket::new(r.connection_burst, now));
        bucket.take(r.connection_per_sec, r.connection_burst, now).map_err(|ms| ("connection", ms))?;
        let n = self.map.shards as f64;
        // The token's tenant when there is one (never the text a client
        // chose); for anonymous clients, the topic's first segment.
        let identity = c.identity.as_ref().map(|i| (i.tenant.clone(), i.quota));
        let tenant = identity.as_ref().map_or_else(|| topic.split('/').next().unwrap_or(topic), |(t, _)| &**t);
        // The tenant's own quota when configured, else the global budget.
        let q = identity.as_ref().map(|(_, q)| *q).unwrap_or_default();
        let per_sec = if q.publish_per_sec > 0.0 { q.publish_per_sec } else { r.tenant_per_sec };
        let burst = if q.publish_burst > 0.0 { q.publish_burst } else { r.tenant_burst };
        let (rate, burst) = (per_sec / n, (burst / n).max(1.0));
        let r = self.tenants.take(tenant, rate, burst, now).map_err(|ms| ("tenant", ms));
        if r.is_err() && identity.is_some() {
            self.quota_refused(tenant, "publish_rate");
        }
        r
    }

    /// Checks a publication on the shard that read it (topic, drain, rate
    /// limits, ring room) and routes it to the topic's owner. WebSocket and
    /// HTTP publishes alike come through here.
    pub(crate) fn submit_publish(&mut self, idx: usize, p: PubArgs<'_>) -> Result<(), Refusal> {
        if let Err(e) = name::validate(p.topic) {
            return Err(Refusal { code: ErrorCode::BadTopic, message: e.to_string(), retry_after_ms: None });
        }
        if self.conns[idx].identity.as_ref().is_some_and(|i| !i.may_pub(p.topic)) {
            self.counters.forbidden += 1;
            *self.counters.publishes_rejected.entry("forbidden").or_default() += 1;
            let message = "topic outside the token's tenant or caps".into();
            return Err(Refusal { code: ErrorCode::Forbidden, message, retry_after_ms: None });
        }
        if let Err(e) = crate::proto::json_check::check_data(p.data, self.limits.max_data_depth) {
            *self.counters.publishes_rejected.entry("bad_data").or_default() += 1;
            return Err(Refusal { code: ErrorCode::BadRequest, message: e.to_string(), retry_after_ms: None });
        }
        if self.draining {
            *self.counters.publishes_rejected.entry("draining").or_default() += 1;
            let retry = Some(self.policy.liveness.drain_reconnect_after_ms);
            return Err(Refusal {
                code: ErrorCode::Overloaded,
                message: "server draining; reconnect".into(),
                retry_after_ms: retry,
            });
        }
        if let Err((scope, ms)) = self.take_publish_token(idx, p.topic) {
            *self.counters.rate_limited.entry(scope).or_default() += 1;
            self.hits.hit(self.id, crate::conn::logs::Hit::RateLimited, &format!("publish rate limited ({scope})"));
            *self.counters.publishes_rejected.entry("rate_limited").or_default() += 1;
            let message = format!("publish rate limit ({scope}) exceeded");
            return Err(Refusal { code: ErrorCode::RateLimited, message, retry_after_ms: Some(ms) });
        }
        let owner = self.map.owner(p.topic);
        if owner != self.id && !self.outboxes[owner].as_mut().is_some_and(|o| o.admits_request()) {
            self.hits.hit(self.id, crate::conn::logs::Hit::RingFull, "mesh ring full; publish refused");
            *self.counters.publishes_rejected.entry("overloaded").or_default() += 1;
            let message = "engine overloaded (mesh ring full); retry later".into();
            return Err(Refusal { code: ErrorCode::Overloaded, message, retry_after_ms: Some(OVERLOADED_RETRY_MS) });
        }
        if p.receipt {
            let max = self.limits.max_receipts_per_connection;
            if self.conns[idx].receipts as usize >= max {
                *self.counters.publishes_rejected.entry("receipts").or_default() += 1;
                let message = format!("at most {max} receipts outstanding per connection; retry later");
                return Err(Refusal {
                    code: ErrorCode::Overloaded,
                    message,
                    retry_after_ms: Some(OVERLOADED_RETRY_MS),
                });
            }
            self.conns[idx].receipts += 1;
        }
        let gen = self.conns[idx].gen;
        let req = PublishReq {
            to: Requester { conn: ConnRef { idx: idx as u32, gen }, id: p.id, kind: p.reply, receipt: p.receipt },
            topic: p.topic.into(),
            data: p.data.into(),
            msg_id: p.msg_id.map(Into::into),
            prio: p.prio,
            from: self.conns[idx].identity.as_ref().map(|i| i.sub.clone()),
            received_at: self.now,
            extra: None,
            stream: p.stream.map(|(name, end)| Box::new(StreamArg { name: name.into(), end, reason: None })),
            retain: p
                .retain
                .map(|r| Box::new(RetainArg { retain: true, ttl_ms: r.ttl_ms, if_seq: r.if_seq, expire: None })),
        };
        self.conns[idx].awaiting += 1;
        self.route_to_owner(MeshMsg::Publish(Box::new(req)));
        Ok(())
    }
}

/// A publication as read from a client, before routing.
#[derive(Debug, Clone, Copy)]
pub struct PubArgs<'a> {
    /// Command id to echo.
    pub id: Option<u64>,
    /// Topic (not yet validated).
    pub topic: &'a str,
    /// Verbatim JSON data.
    pub data: &'a str,
    /// Idempotency key.
    pub msg_id: Option<&'a str>,
    /// Priority as given.
    pub prio: Option<message::Prio>,
    /// How the owner must answer.
    pub reply: ReplyKind,
    /// Append to this token stream; whether the append ends it.
    pub stream: Option<(&'a str, bool)>,
    /// Make it the topic's retained value.
    pub retain: Option<message::RetainArgs>,
    /// Send a `receipt` when every subscriber got it.
    pub receipt: bool,
}

/// Why the ingress shard refused a publication.
#[derive(Debug)]
pub struct Refusal {
    /// Error code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// `retry_after_ms`, if any.
    pub retry_after_ms: Option<u64>,
}
