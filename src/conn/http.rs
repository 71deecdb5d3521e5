//! The HTTP publish API on the public listener: `POST /v1/publish` and
//! `POST /v1/publish/batch`, with keep-alive.
//!
//! A request goes through the same `submit_publish` as a WebSocket `pub`
//! (validation, drain, rate limits, ring room, the owner's seq and `msg_id`
//! dedupe); only the answer is encoded differently. A connection handles one
//! request at a time: the next one (pipelined or not) is read once the
//! answer is queued, so answers come back in request order.

use std::fmt::Write as _;

use super::publish::{PubArgs, Refusal};
use super::Phase;
use crate::conn::core::ShardCore;
use crate::mesh::ReplyKind;
use crate::proto::handshake::{self, HttpRequest};
use crate::proto::message::{self, ErrorCode};
use crate::topic::owned::Epoch;

/// HTTP state of a connection speaking the HTTP API (boxed in the slot, so a
/// WebSocket connection pays one pointer for it).
#[derive(Debug, Default)]
pub struct HttpState {
    /// A request is waiting for its answer; read no further requests.
    pub busy: bool,
    /// Close once the current answer is sent (`Connection: close`).
    pub close_after: bool,
    /// Item results of the batch in flight, in request order.
    pub batch: Vec<Option<String>>,
    /// Items of the batch still waiting for their owner.
    pub batch_pending: usize,
    /// When the unfinished request now in `inbuf` began (its deadline).
    pub partial_since: Option<std::time::Instant>,
    /// The token the connection's identity was verified from: a keep-alive
    /// client repeating it on every request is verified once.
    pub token: Option<String>,
    /// The request in flight is the Centrifugo server API (`/api/*`): its
    /// answers take Centrifugo's shapes.
    pub cf_api: bool,
}

/// The Centrifugo server API's body of `/api/publish`.
#[derive(Debug, serde::Deserialize)]
struct CfPublish<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "crate::proto::message::some_raw")]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    idempotency_key: Option<std::borrow::Cow<'a, str>>,
}

/// What the checks of a Centrifugo API body read.
trait CfApiBody<'a> {
    fn data(&self) -> Option<&'a serde_json::value::RawValue>;
    fn key(&self) -> Option<&str>;
}

impl<'a> CfApiBody<'a> for CfPublish<'a> {
    fn data(&self) -> Option<&'a serde_json::value::RawValue> {
        self.data
    }
    fn key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

impl<'a> CfApiBody<'a> for CfBroadcast<'a> {
    fn data(&self) -> Option<&'a serde_json::value::RawValue> {
        self.data
    }
    fn key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

/// The Centrifugo server API's body of `/api/broadcast`.
#[derive(Debug, serde::Deserialize)]
struct CfBroadcast<'a> {
    #[serde(borrow)]
    channels: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "crate::proto::message::some_raw")]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    idempotency_key: Option<std::borrow::Cow<'a, str>>,
}

/// One answer in the Centrifugo server API's shape: `{"result":{…}}` or
/// `{"error":{"code":N,"message":…}}`.
pub fn cf_answer_json(a: &Answer<'_>) -> String {
    match *a {
        Answer::Ack { seq, epoch, .. } => format!(r#"{{"result":{{"offset":{seq},"epoch":"{}"}}}}"#, epoch.as_str()),
        Answer::Refused { code, message, .. } => cf_error_json(crate::proto::centrifugo::error_of(code).code, message),
    }
}

fn cf_error_json(code: u32, message: &str) -> String {
    format!(r#"{{"error":{{"code":{code},"message":{}}}}}"#, json_str(message))
}

/// How the owner answers one publication.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// Sequenced (or a duplicate of an earlier one).
    Ack {
        /// The topic.
        topic: &'a str,
        /// Its seq.
        seq: u64,
        /// The topic's epoch.
        epoch: Epoch,
        /// A repeated `msg_id`.
        dup: bool,
    },
    /// Refused.
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: &'a str,
        /// When to retry.
        retry_after_ms: Option<u64>,
    },
}

/// The HTTP status for an error code.
pub fn status_of(code: ErrorCode) -> (u16, &'static str) {
    match code {
        ErrorCode::RateLimited => (429, "Too Many Requests"),
        ErrorCode::Overloaded => (503, "Service Unavailable"),
        ErrorCode::Forbidden => (403, "Forbidden"),
        ErrorCode::Unauthorized => (401, "Unauthorized"),
        ErrorCode::Internal => (500, "Internal Server Error"),
        _ => (400, "Bad Request"),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The JSON of one answer (`/v1/publish` body, or a batch item).
pub fn answer_json(a: &Answer<'_>) -> String {
    match *a {
        Answer::Ack { topic, seq, epoch, dup } => {
            format!(r#"{{"topic":"{topic}","seq":{seq},"epoch":"{}","dup":{dup}}}"#, epoch.as_str())
        }
        Answer::Refused { code, message, retry_after_ms } => {
            let mut s = format!(r#"{{"error":{{"code":"{}","message":{}"#, code.as_str(), json_str(message));
            if let Some(ms) = retry_after_ms {
                let _ = write!(s, r#","retry_after_ms":{ms}"#);
            }
            s.push_str("}}");
            s
        }
    }
}

/// A complete JSON response; `Retry-After` (whole seconds) when given.
pub fn json_response(status: u16, reason: &str, body: &str, retry_after_ms: Option<u64>, close: bool) -> Vec<u8> {
    let mut extra = String::new();
    if let Some(ms) = retry_after_ms {
        let _ = write!(extra, "Retry-After: {}\r\n", ms.div_ceil(1000).max(1));
    }
    if close {
        extra.push_str("Connection: close\r\n");
    }
    handshake::response(status, reason, &extra, "application/json", body.as_bytes())
}

/// The `/v1/publish` response for an answer.
pub fn publish_response(a: &Answer<'_>) -> Vec<u8> {
    match *a {
        Answer::Ack { .. } => json_response(200, "OK", &answer_json(a), None, false),
        Answer::Refused { code, retry_after_ms, .. } => {
            let (status, reason) = status_of(code);
            json_response(status, reason, &answer_json(a), retry_after_ms, false)
        }
    }
}

fn error_body(code: &str, message: &str) -> String {
    format!(r#"{{"error":{{"code":"{code}","message":{}}}}}"#, json_str(message))
}

impl ShardCore {
    /// Handles one complete HTTP request (head and body) on connection
    /// `idx`. Returns false if the connection is closing.
    pub(crate) fn on_http_request(&mut self, idx: usize, req: &HttpRequest, body: &[u8]) {
        self.counters.http_requests += 1;
        let conn = &mut self.conns[idx];
        conn.phase = Phase::Http;
        let http = conn.http.get_or_insert_with(Default::default);
        http.close_after = req.close;
        http.cf_api = false;
        let route = match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/v1/publish") => Route::One,
            ("POST", "/v1/publish/batch") => Route::Batch,
            ("POST", "/api/publish") => Route::CfPublish,
            ("POST", "/api/broadcast") => Route::CfBroadcast,
            (_, "/api/publish" | "/api/broadcast") => {
                return self.http_reply(idx, 405, "Method Not Allowed", &cf_error_json(107, "use POST"), None)
            }
            (_, "/v1/publish" | "/v1/publish/batch") => {
                return self.http_reply(idx, 405, "Method Not Allowed", &error_body("bad_request", "use POST"), None)
            }
            _ => return self.http_reply(idx, 404, "Not Found", &error_body("bad_request", "no such path"), None),
        };
        let cf_api = matches!(route, Route::CfPublish | Route::CfBroadcast);
        if cf_api {
            if !self.cf_api_key_ok(req.api_key.as_deref()) {
                self.counters.cf_api_refused += 1;
                return self.http_reply(idx, 401, "Unauthorized", &cf_error_json(101, "unauthorized"), None);
            }
            // The API key is the server's own: no tenant, no caps.
            let conn = &mut self.conns[idx];
            conn.identity = None;
            if let Some(h) = conn.http.as_mut() {
                h.token = None;
                h.cf_api = true;
            }
        } else if !self.http_authenticate(idx, req.token.as_deref()) {
            return;
        }
        let json = req
            .content_type
            .as_deref()
            .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
        if !json {
            let msg = error_body("bad_request", "Content-Type must be application/json");
            return self.http_reply(idx, 415, "Unsupported Media Type", &msg, None);
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return self.http_reply(idx, 400, "Bad Request", &error_body("bad_request", "body is not UTF-8"), None);
        };
        match route {
            Route::One => self.http_publish_one(idx, text),
            Route::Batch => self.http_publish_batch(idx, text),
            Route::CfPublish => self.cf_api_publish(idx, text),
            Route::CfBroadcast => self.cf_api_broadcast(idx, text),
        }
    }

    /// `X-API-Key` against `[centrifugo] api_key` (compared in constant
    /// time; an empty configured key admits nobody).
    fn cf_api_key_ok(&self, given: Option<&str>) -> bool {
        use subtle::ConstantTimeEq as _;
        let want = self.policy.centrifugo.api_key.as_bytes();
        !want.is_empty() && given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(want)))
    }

    /// A Centrifugo API body: parsed, `data` present, `idempotency_key`
    /// bounded; otherwise answered 400 (code 107) and None.
    fn cf_api_body<'a, T: serde::Deserialize<'a> + CfApiBody<'a>>(&mut self, idx: usize, text: &'a str) -> Option<T> {
        let problem = match serde_json::from_str::<T>(text) {
            Err(e) => format!("invalid body: {e}"),
            Ok(b) if b.data().is_none() => "missing field `data`".into(),
            Ok(b) if b.key().is_some_and(|k| k.len() > message::MAX_MSG_ID) => {
                "idempotency_key longer than 128 bytes".into()
            }
            Ok(b) => return Some(b),
        };
        self.http_reply(idx, 400, "Bad Request", &cf_error_json(107, &problem), None);
        None
    }

    /// `POST /api/publish`: `{"channel","data","idempotency_key"?}`.
    fn cf_api_publish(&mut self, idx: usize, text: &str) {
        let Some(p) = self.cf_api_body::<CfPublish<'_>>(idx, text) else { return };
        let Some(data) = p.data else { return };
        let args = PubArgs {
            id: None,
            topic: &p.channel,
            data: data.get(),
            msg_id: p.idempotency_key.as_deref(),
            prio: None,
            reply: ReplyKind::Http,
            stream: None,
            retain: None,
            receipt: false,
        };
        self.set_busy(idx, 0);
        if let Err(r) = self.submit_publish(idx, args) {
            *self.counters.errors_sent.entry(r.code.as_str()).or_default() += 1;
            let a = Answer::Refused { code: r.code, message: &r.message, retry_after_ms: r.retry_after_ms };
            self.http_reply(idx, 200, "OK", &cf_answer_json(&a), None);
        }
    }

    /// `POST /api/broadcast`: one publication into each of `channels`
    /// (each its own seq); `idempotency_key` is each one's `msg_id`.
    fn cf_api_broadcast(&mut self, idx: usize, text: &str) {
        let Some(b) = self.cf_api_body::<CfBroadcast<'_>>(idx, text) else { return };
        let Some(data) = b.data else { return };
        let max = self.policy.centrifugo.max_broadcast_channels;
        if b.channels.len() > max {
            *self.counters.cf_refused.entry("max_broadcast_channels").or_default() += 1;
            let msg = format!("at most {max} channels (centrifugo.max_broadcast_channels)");
            return self.http_reply(idx, 400, "Bad Request", &cf_error_json(107, &msg), None);
        }
        self.set_busy(idx, b.channels.len());
        if b.channels.is_empty() {
            return self.http_reply(idx, 200, "OK", r#"{"result":{"responses":[]}}"#, None);
        }
        for (i, channel) in b.channels.iter().enumerate() {
            let args = PubArgs {
                id: None,
                topic: channel,
                data: data.get(),
                msg_id: b.idempotency_key.as_deref(),
                prio: None,
                reply: ReplyKind::Batch(i as u32),
                stream: None,
                retain: None,
                receipt: false,
            };
            if let Err(r) = self.submit_publish(idx, args) {
                *self.counters.errors_sent.entry(r.code.as_str()).or_default() += 1;
                let a = Answer::Refused { code: r.code, message: &r.message, retry_after_ms: r.retry_after_ms };
                self.batch_item(idx, i as u32, cf_answer_json(&a));
            }
        }
    }

    /// Establishes who sends this request (401 and false if it cannot be):
    /// the same token as the previous request keeps the identity verified
    /// then, unless it has expired since.
    fn http_authenticate(&mut self, idx: usize, token: Option<&str>) -> bool {
        let now = self.unix_now();
        let leeway = self.policy.access.verifier.leeway();
        let conn = &mut self.conns[idx];
        let same = conn.http.as_ref().is_some_and(|h| h.token.as_deref() == token && token.is_some());
        let fresh = conn.identity.as_ref().is_some_and(|i| i.exp.is_none_or(|e| now <= e.saturating_add(leeway)));
        if same && fresh {
            return true;
        }
        match self.policy.access.clone().authenticate(token, now) {
            Ok(id) => {
                let conn = &mut self.conns[idx];
                conn.identity = id.map(Box::new);
                if let Some(h) = conn.http.as_mut() {
                    h.token = token.map(str::to_owned);
                }
                true
            }
            Err(e) => {
                *self.counters.auth_refused.entry(e.label()).or_default() += 1;
                let conn = &mut self.conns[idx];
                conn.identity = None;
                if let Some(h) = conn.http.as_mut() {
                    h.token = None;
                }
                let body = error_body("unauthorized", &e.to_string());
                self.http_reply(idx, 401, "Unauthorized", &body, None);
                false
            }
        }
    }

    fn http_publish_one(&mut self, idx: usize, text: &str) {
        let parsed = serde_json::from_str::<message::HttpPublish<'_>>(text)
            .map_err(|e| message::CommandError::new(None, ErrorCode::BadRequest, format!("invalid body: {e}")))
            .and_then(message::HttpPublish::checked);
        let (topic, data, msg_id, prio) = match parsed {
            Ok(p) => p,
            Err(e) => return self.http_reply(idx, 400, "Bad Request", &error_body(e.code.as_str(), &e.message), None),
        };
        let args = PubArgs {
            id: None,
            topic: &topic,
            data: data.get(),
            msg_id: msg_id.as_deref(),
            prio,
            reply: ReplyKind::Http,
            stream: None,
            retain: None,
            receipt: false,
        };
        self.set_busy(idx, 0);
        if let Err(r) = self.submit_publish(idx, args) {
            self.http_refusal(idx, &r);
        }
    }

    fn http_publish_batch(&mut self, idx: usize, text: &str) {
        let items = match message::parse_http_batch(text) {
            Ok(items) => items,
            Err(e) => return self.http_reply(idx, 400, "Bad Request", &error_body(e.code.as_str(), &e.message), None),
        };
        self.set_busy(idx, items.len());
        for (i, item) in items.into_iter().enumerate() {
            let result = match item.checked() {
                Err(e) => Err(Refusal { code: e.code, message: e.message.into_owned(), retry_after_ms: None }),
                Ok((topic, data, msg_id, prio)) => {
                    let reply = ReplyKind::Batch(i as u32);
                    let args = PubArgs {
                        id: None,
                        topic: &topic,
                        data: data.get(),
                        msg_id: msg_id.as_deref(),
                        prio,
                        reply,
                        stream: None,
                        retain: None,
                        receipt: false,
                    };
                    self.submit_publish(idx, args)
                }
            };
            if let Err(r) = result {
                *self.counters.errors_sent.entry(r.code.as_str()).or_default() += 1;
                let a = Answer::Refused { code: r.code, message: &r.message, retry_after_ms: r.retry_after_ms };
                self.batch_item(idx, i as u32, answer_json(&a));
            }
        }
    }

    fn set_busy(&mut self, idx: usize, batch: usize) {
        if let Some(h) = self.conns[idx].http.as_mut() {
            h.busy = true;
            h.batch = vec![None; batch];
            h.batch_pending = batch;
        }
    }

    fn http_refusal(&mut self, idx: usize, r: &Refusal) {
        *self.counters.errors_sent.entry(r.code.as_str()).or_default() += 1;
        let a = Answer::Refused { code: r.code, message: &r.message, retry_after_ms: r.retry_after_ms };
        let (status, reason) = status_of(r.code);
        self.http_reply(idx, status, reason, &answer_json(&a), r.retry_after_ms);
    }

    fn http_reply(&mut self, idx: usize, status: u16, reason: &str, body: &str, retry: Option<u64>) {
        let resp = json_response(status, reason, body, retry, false);
        self.http_done(idx, &resp);
    }

    /// Queues the answer to the request in flight and reads on.
    pub(crate) fn http_done(&mut self, idx: usize, response: &[u8]) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        let close = conn.http.as_ref().is_some_and(|h| h.close_after);
        if let Some(h) = conn.http.as_mut() {
            h.busy = false;
        }
        self.reply(idx, |o| o.extend_from_slice(response));
        if let Some(c) = self.conns.get(idx) {
            // Input may have been paused behind this request.
            c.wake();
        }
        if close {
            if let Some(c) = self.conns.get_mut(idx) {
                c.phase = Phase::Closing;
                c.wake();
            }
            return;
        }
        self.resume_input(idx);
    }

    /// One item of the batch in flight is answered; when all are, the
    /// response goes out with the items in request order.
    pub(crate) fn batch_item(&mut self, idx: usize, index: u32, body: String) {
        let Some(h) = self.conns.get_mut(idx).and_then(|c| c.http.as_mut()) else { return };
        let Some(slot) = h.batch.get_mut(index as usize) else { return };
        if slot.replace(body).is_none() {
            h.batch_pending -= 1;
        }
        if h.batch_pending > 0 {
            return;
        }
        let (open, close) = if h.cf_api { (r#"{"result":{"responses":["#, "]}}") } else { (r#"{"results":["#, "]}") };
        let mut out = String::from(open);
        for (i, item) in std::mem::take(&mut h.batch).into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(item.as_deref().unwrap_or("null"));
        }
        out.push_str(close);
        let resp = json_response(200, "OK", &out, None, false);
        self.http_done(idx, &resp);
    }
}

enum Route {
    One,
    Batch,
    CfPublish,
    CfBroadcast,
}
