//! Protocol messages (docs/PROTOCOL.md): parsing client commands and encoding
//! server replies straight into frame buffers.
//!
//! `data` is carried as raw JSON text from the publisher's message into the
//! `msg` frame and never re-serialized. Encoders append a complete WebSocket
//! text frame to a caller-owned `Vec<u8>`, so replies cost no allocation of
//! their own.

use std::borrow::Cow;
use std::io::Write;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Error codes of the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, a missing or mistyped field, a binary frame.
    BadRequest,
    /// An `op` this server does not know.
    UnknownOp,
    /// A topic that breaks the naming rules.
    BadTopic,
    /// `unsub` for a topic the connection is not subscribed to.
    NotSubscribed,
    /// A publish over a rate limit.
    RateLimited,
    /// The engine cannot take the publish now (a full mesh ring).
    Overloaded,
    /// Over the per-connection subscription limit.
    TooManySubscriptions,
    /// Outside the token's tenant or caps.
    Forbidden,
    /// A token that does not verify (on `auth`).
    Unauthorized,
    /// A bug or an unexpected state on the server.
    Internal,
    /// `settle` of a publication the member does not hold.
    NotFound,
    /// A group command from a connection that is not a member.
    NotMember,
    /// A `req` nobody can answer.
    NoResponders,
    /// `if_seq` did not match the retained value's seq.
    Conflict,
    /// A `req` without a final reply within `timeout_ms`.
    Timeout,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::BadTopic => "bad_topic",
            Self::NotSubscribed => "not_subscribed",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::NotMember => "not_member",
            Self::NoResponders => "no_responders",
            Self::Timeout => "timeout",
            Self::Conflict => "conflict",
        }
    }
}

/// Delivery priority of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prio {
    /// May be dropped for a slow consumer (who then gets a `gap`).
    #[default]
    Normal,
    /// Never dropped; a consumer that cannot keep up is closed instead.
    Critical,
}

/// A resume position carried by `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The last seq the client saw.
    pub seq: u64,
    /// The epoch that seq belongs to.
    pub epoch: String,
}

/// A parsed client command. Borrowed from the inbound message where possible.
#[derive(Debug)]
pub enum Command<'a> {
    /// Subscribe, optionally resuming after `since`.
    Sub {
        /// Echoed in the reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// Resume position.
        since: Option<Since>,
        /// Join this consumer group instead of subscribing.
        group: Option<GroupSub<'a>>,
        /// First a rollup of each token stream of the topic.
        streams: bool,
        /// First the topic's retained value.
        last: bool,
        /// Also `join`/`leave` events of the topic.
        presence: bool,
    },
    /// Who is subscribed to a topic.
    Presence {
        /// Echoed in the reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
    },
    /// The topic's retained value.
    Get {
        /// Echoed in the reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
    },
    /// Unsubscribe (or leave `group`).
    Unsub {
        /// Echoed in the reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// Leave this consumer group.
        group: Option<Cow<'a, str>>,
    },
    /// A request to one member of a group on `topic`.
    Req {
        /// Echoed on every reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// The request, verbatim JSON.
        data: &'a RawValue,
        /// Deadline for the final reply, ms.
        timeout_ms: u64,
        /// Where the request goes when nobody answers in time.
        fallback: Option<Cow<'a, str>>,
        /// Only this group's members may answer.
        group: Option<Cow<'a, str>>,
    },
    /// A responder's (partial or final) reply.
    Reply {
        /// The request's opaque id.
        req: Cow<'a, str>,
        /// The reply, verbatim JSON.
        data: &'a RawValue,
        /// More replies follow.
        more: bool,
    },
    /// The requester cancels its request `id`.
    Cancel {
        /// The request's command id.
        id: Option<u64>,
    },
    /// Settle a group publication (`ack: true` groups).
    Settle {
        /// Echoed in an error reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// The group.
        group: Cow<'a, str>,
        /// The publication's seq.
        seq: u64,
        /// What became of it.
        outcome: Outcome,
    },
    /// Publish.
    Pub {
        /// Echoed in the reply.
        id: Option<u64>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// The payload, verbatim JSON text.
        data: &'a RawValue,
        /// Idempotency key.
        msg_id: Option<Cow<'a, str>>,
        /// Delivery priority, if given (echoed in `msg` only when given).
        prio: Option<Prio>,
        /// Append to this token stream (`data` is a JSON string).
        stream: Option<Cow<'a, str>>,
        /// This append closes the stream.
        end: bool,
        /// Make it the topic's retained value.
        retain: Option<RetainArgs>,
        /// Send a `receipt` once every subscriber of the moment got it.
        receipt: bool,
    },
    /// Application-level ping.
    Ping {
        /// Echoed in the reply.
        id: Option<u64>,
    },
    /// Token refresh.
    Auth {
        /// Echoed in the reply.
        id: Option<u64>,
        /// The new JWT.
        token: Cow<'a, str>,
    },
}

/// The retained-value fields of a `pub` (PROTOCOL-EXTENSIONS §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainArgs {
    /// The value expires this long after it was published, ms.
    pub ttl_ms: Option<u64>,
    /// Only if the retained value's seq is this (0: none).
    pub if_seq: Option<u64>,
}

/// Longest `ttl_ms` (7 days).
pub const MAX_TTL_MS: u64 = 7 * 86_400_000;

/// The group fields of a `sub` (PROTOCOL-EXTENSIONS §2); defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSub<'a> {
    /// Group name.
    pub name: Cow<'a, str>,
    /// Members settle what they get.
    pub ack: bool,
    /// Unsettled publications this member may hold (default 1).
    pub max_inflight: u32,
    /// Deadline to settle, ms (default 30000).
    pub ack_wait_ms: u64,
    /// Attempts before the dead-letter topic (default 5).
    pub max_deliver: u32,
    /// Dead-letter topic (default `<topic>/dlq`).
    pub dead_letter: Option<Cow<'a, str>>,
}

/// `timeout_ms` of a `req` that names none.
pub const DEFAULT_REQ_TIMEOUT_MS: u64 = 30_000;
/// Longest `timeout_ms`.
pub const MAX_REQ_TIMEOUT_MS: u64 = 600_000;

/// Longest group name, bytes.
pub const MAX_GROUP_NAME: usize = 64;
/// Highest `max_inflight` a member may ask for.
pub const MAX_INFLIGHT: u32 = 1024;
/// Highest `max_deliver`.
pub const MAX_DELIVER: u32 = 100;
/// Longest `ack_wait_ms` and `delay_ms` (one hour).
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// The outcome of a `settle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled.
    Done,
    /// Give it again, after `delay_ms` (None: the backoff).
    Retry(Option<u64>),
    /// Still working: extend the deadline.
    Working,
    /// Give up: to the dead-letter topic.
    Dead,
}

/// A command that cannot be executed, with the reply to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct CommandError {
    /// The command's `id`, if it could be read.
    pub id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: Cow<'static, str>,
}

impl CommandError {
    /// An error answering command `id`.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self { id, code, message: message.into() }
    }
}

/// Longest accepted `msg_id`, in bytes.
pub const MAX_MSG_ID: usize = 128;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "some_raw")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prio: Option<Cow<'a, str>>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(default)]
    ack: Option<bool>,
    #[serde(default)]
    max_inflight: Option<u32>,
    #[serde(default)]
    ack_wait_ms: Option<u64>,
    #[serde(default)]
    max_deliver: Option<u32>,
    #[serde(borrow, default)]
    dead_letter: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    outcome: Option<Cow<'a, str>>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(borrow, default)]
    fallback: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    req: Option<Cow<'a, str>>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(default)]
    end: Option<bool>,
    #[serde(default)]
    streams: Option<bool>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    if_seq: Option<u64>,
    #[serde(default)]
    last: Option<bool>,
    #[serde(default)]
    receipt: Option<bool>,
    #[serde(default)]
    presence: Option<bool>,
}

/// Longest stream name, bytes.
pub const MAX_STREAM_NAME: usize = 128;

/// Present-but-null `data` is a value (`null`), not a missing field.
pub(crate) fn some_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Parses one client message.
pub fn parse_command(text: &str) -> Result<Command<'_>, CommandError> {
    let wire: Wire<'_> = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => {
            // Recover the id, if the JSON is well-formed enough, to echo it.
            let id = read_id(text).ok().flatten();
            return Err(CommandError::new(id, ErrorCode::BadRequest, format!("invalid message: {e}")));
        }
    };
    let id = check_id(wire.id)?;
    let Some(op) = wire.op else {
        return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `op`"));
    };
    match op.as_ref() {
        "sub" => {
            let topic = need_topic(wire.topic, id)?;
            let group = match wire.group {
                None => None,
                Some(name) => {
                    check_group(&name, id)?;
                    let bad = |m: &'static str| Err(CommandError::new(id, ErrorCode::BadRequest, m));
                    let max_inflight = wire.max_inflight.unwrap_or(1);
                    if !(1..=MAX_INFLIGHT).contains(&max_inflight) {
                        return bad("`max_inflight` must be between 1 and 1024");
                    }
                    let ack_wait_ms = wire.ack_wait_ms.unwrap_or(30_000);
                    if !(1..=MAX_WAIT_MS).contains(&ack_wait_ms) {
                        return bad("`ack_wait_ms` must be between 1 and 3600000");
                    }
                    let max_deliver = wire.max_deliver.unwrap_or(5);
                    if !(1..=MAX_DELIVER).contains(&max_deliver) {
                        return bad("`max_deliver` must be between 1 and 100");
                    }
                    if wire.since.is_some() {
                        return bad("a group member does not resume: `since` and `group` do not go together");
                    }
                    Some(GroupSub {
                        name,
                        ack: wire.ack.unwrap_or(false),
                        max_inflight,
                        ack_wait_ms,
                        max_deliver,
                        dead_letter: wire.dead_letter,
                    })
                }
            };
            Ok(Command::Sub {
                id,
                topic,
                since: wire.since,
                group,
                streams: wire.streams.unwrap_or(false),
                last: wire.last.unwrap_or(false),
                presence: wire.presence.unwrap_or(false),
            })
        }
        "presence" => {
            let topic = need_topic(wire.topic, id)?;
            Ok(Command::Presence { id, topic })
        }
        "get" => {
            let topic = need_topic(wire.topic, id)?;
            Ok(Command::Get { id, topic })
        }
        "unsub" => {
            let topic = need_topic(wire.topic, id)?;
            if let Some(g) = &wire.group {
                check_group(g, id)?;
            }
            Ok(Command::Unsub { id, topic, group: wire.group })
        }
        "req" => {
            let topic = need_topic(wire.topic, id)?;
            let Some(data) = wire.data else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `data`"));
            };
            let timeout_ms = wire.timeout_ms.unwrap_or(DEFAULT_REQ_TIMEOUT_MS);
            if !(1..=MAX_REQ_TIMEOUT_MS).contains(&timeout_ms) {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "`timeout_ms` must be between 1 and 600000"));
            }
            if let Some(g) = &wire.group {
                check_group(g, id)?;
            }
            Ok(Command::Req { id, topic, data, timeout_ms, fallback: wire.fallback, group: wire.group })
        }
        "reply" => {
            let Some(req) = wire.req else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `req`"));
            };
            if req.is_empty() || req.len() > 64 {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "`req` is not a request id"));
            }
            let Some(data) = wire.data else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `data`"));
            };
            Ok(Command::Reply { req, data, more: wire.more.unwrap_or(false) })
        }
        "cancel" => Ok(Command::Cancel { id }),
        "settle" => {
            let topic = need_topic(wire.topic, id)?;
            let Some(group) = wire.group else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `group`"));
            };
            check_group(&group, id)?;
            let Some(seq) = wire.seq else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `seq`"));
            };
            if wire.delay_ms.is_some_and(|d| d > MAX_WAIT_MS) {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "`delay_ms` must be at most 3600000"));
            }
            let outcome = match wire.outcome.as_deref() {
                Some("done") => Outcome::Done,
                Some("retry") => Outcome::Retry(wire.delay_ms),
                Some("working") => Outcome::Working,
                Some("dead") => Outcome::Dead,
                _ => {
                    return Err(CommandError::new(
                        id,
                        ErrorCode::BadRequest,
                        "`outcome` must be \"done\", \"retry\", \"working\" or \"dead\"",
                    ))
                }
            };
            Ok(Command::Settle { id, topic, group, seq, outcome })
        }
        "ping" => Ok(Command::Ping { id }),
        "auth" => match wire.token {
            Some(token) => Ok(Command::Auth { id, token }),
            None => Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `token`")),
        },
        "pub" => {
            let topic = need_topic(wire.topic, id)?;
            let Some(data) = wire.data else {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "missing field `data`"));
            };
            if wire.msg_id.as_ref().is_some_and(|m| m.len() > MAX_MSG_ID) {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "`msg_id` longer than 128 bytes"));
            }
            let prio = parse_prio(wire.prio.as_deref(), id)?;
            let end = wire.end.unwrap_or(false);
            match &wire.stream {
                Some(s) if s.is_empty() || s.len() > MAX_STREAM_NAME => {
                    return Err(CommandError::new(id, ErrorCode::BadRequest, "`stream` must be 1 to 128 bytes"));
                }
                Some(_) if !data.get().starts_with('"') => {
                    return Err(CommandError::new(
                        id,
                        ErrorCode::BadRequest,
                        "an append to a stream carries a JSON string as `data`",
                    ));
                }
                None if wire.end.is_some() => {
                    return Err(CommandError::new(id, ErrorCode::BadRequest, "`end` goes with `stream`"));
                }
                _ => {}
            }
            let retain = match wire.retain.unwrap_or(false) {
                true => {
                    if wire.ttl_ms.is_some_and(|t| !(1..=MAX_TTL_MS).contains(&t)) {
                        return Err(CommandError::new(
                            id,
                            ErrorCode::BadRequest,
                            "`ttl_ms` must be between 1 and 604800000",
                        ));
                    }
                    Some(RetainArgs { ttl_ms: wire.ttl_ms, if_seq: wire.if_seq })
                }
                false if wire.ttl_ms.is_some() || wire.if_seq.is_some() => {
                    return Err(CommandError::new(
                        id,
                        ErrorCode::BadRequest,
                        "`ttl_ms` and `if_seq` go with `retain: true`",
                    ));
                }
                false => None,
            };
            let receipt = wire.receipt.unwrap_or(false);
            Ok(Command::Pub { id, topic, data, msg_id: wire.msg_id, prio, stream: wire.stream, end, retain, receipt })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(CommandError::new(id, ErrorCode::UnknownOp, format!("unknown op `{shown}`")))
        }
    }
}

/// A group name: 1 to 64 bytes of `[A-Za-z0-9_.-]`.
fn check_group(name: &str, id: Option<u64>) -> Result<(), CommandError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_GROUP_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CommandError::new(id, ErrorCode::BadRequest, "`group` must be 1-64 characters of A-Z a-z 0-9 _ - ."))
    }
}

fn need_topic(t: Option<Cow<'_, str>>, id: Option<u64>) -> Result<Cow<'_, str>, CommandError> {
    t.ok_or_else(|| CommandError::new(id, ErrorCode::BadRequest, "missing field `topic`"))
}

/// One publication of the HTTP API (`POST /v1/publish` body, or an element
/// of the `POST /v1/publish/batch` array).
#[derive(Debug, Deserialize)]
pub struct HttpPublish<'a> {
    /// Topic name (not yet validated).
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    /// Verbatim JSON payload (`null` included).
    #[serde(borrow, default, deserialize_with = "some_raw")]
    pub data: Option<&'a RawValue>,
    /// Idempotency key.
    #[serde(borrow, default)]
    pub msg_id: Option<Cow<'a, str>>,
    /// `"normal"` or `"critical"`.
    #[serde(borrow, default)]
    pub prio: Option<Cow<'a, str>>,
}

impl<'a> HttpPublish<'a> {
    /// Checks the fields the way a WebSocket `pub` is checked.
    pub fn checked(self) -> Result<CheckedPublish<'a>, CommandError> {
        let Some(data) = self.data else {
            return Err(CommandError::new(None, ErrorCode::BadRequest, "missing field `data`"));
        };
        if self.msg_id.as_ref().is_some_and(|m| m.len() > MAX_MSG_ID) {
            return Err(CommandError::new(None, ErrorCode::BadRequest, "`msg_id` longer than 128 bytes"));
        }
        let prio = parse_prio(self.prio.as_deref(), None)?;
        Ok((self.topic, data, self.msg_id, prio))
    }
}

/// `prio`: absent, `"normal"` or `"critical"`.
fn parse_prio(prio: Option<&str>, id: Option<u64>) -> Result<Option<Prio>, CommandError> {
    match prio {
        None => Ok(None),
        Some("normal") => Ok(Some(Prio::Normal)),
        Some("critical") => Ok(Some(Prio::Critical)),
        Some(_) => Err(CommandError::new(id, ErrorCode::BadRequest, "`prio` must be \"normal\" or \"critical\"")),
    }
}

/// A checked HTTP publication: topic, verbatim data, `msg_id`, `prio`.
pub type CheckedPublish<'a> = (Cow<'a, str>, &'a RawValue, Option<Cow<'a, str>>, Option<Prio>);

/// Most publications in one batch request.
pub const MAX_BATCH: usize = 1000;

/// Parses a batch body: a JSON array of publications.
pub fn parse_http_batch(text: &str) -> Result<Vec<HttpPublish<'_>>, CommandError> {
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
        CommandError::new(None, ErrorCode::BadRequest, format!("body must be a JSON array of publications: {e}"))
    })?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(CommandError::new(
            None,
            ErrorCode::BadRequest,
            format!("a batch holds 1 to {MAX_BATCH} publications"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            serde_json::from_str(raw.get())
                .map_err(|e| CommandError::new(None, ErrorCode::BadRequest, format!("publication {i}: {e}")))
        })
        .collect()
}

/// Reads `id` first so that every later error can echo it. A present `id`
/// that is not an unsigned integer is itself a `bad_request`.
fn read_id(text: &str) -> Result<Option<u64>, CommandError> {
    let parsed: IdOnly = serde_json::from_str(text)
        .map_err(|e| CommandError::new(None, ErrorCode::BadRequest, format!("invalid JSON: {e}")))?;
    check_id(parsed.id)
}

fn check_id(id: Option<serde_json::Value>) -> Result<Option<u64>, CommandError> {
    match id {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| CommandError::new(None, ErrorCode::BadRequest, "`id` must be an unsigned integer")),
    }
}

/// Appends one text frame whose JSON payload `body` writes.
pub fn append_text_frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0x81, 126, 0, 0]);
    body(out);
    let len = out.len() - start - 4;
    if len <= 125 {
        out[start + 1] = len as u8;
        out.drain(start + 2..start + 4);
    } else if len <= 0xffff {
        out[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
    } else {
        let mut ext = [0u8; 9];
        ext[0] = 127;
        ext[1..].copy_from_slice(&(len as u64).to_be_bytes());
        out.splice(start + 1..start + 4, ext);
    }
}

fn id_field(out: &mut Vec<u8>, id: Option<u64>) {
    if let Some(id) = id {
        let _ = write!(out, ",\"id\":{id}");
    }
}

/// Writes a JSON string (with escaping).
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The fields of a publication frame.
#[derive(Debug, Clone, Copy)]
pub struct MsgFields<'a> {
    /// Validated topic name.
    pub topic: &'a str,
    /// Sequence number.
    pub seq: u64,
    /// Topic epoch.
    pub epoch: &'a str,
    /// Idempotency key, if the publisher gave one.
    pub msg_id: Option<&'a str>,
    /// Priority, if the publisher gave one.
    pub prio: Option<Prio>,
    /// The authenticated publisher's `sub` (set by the server, never by the
    /// client).
    pub from: Option<&'a str>,
    /// Verbatim JSON payload.
    pub data: &'a str,
    /// Extra JSON fields (`"k":v,…` without braces) written before `data`;
    /// only the server sets it (a dead-letter publication's `dead`).
    pub extra: Option<&'a str>,
}

/// Appends the `msg` frame for a publication: encoded once per publish, then
/// shared byte-for-byte by every subscriber.
pub fn msg(out: &mut Vec<u8>, m: &MsgFields<'_>) {
    append_text_frame(out, |o| msg_body(o, m, None));
}

/// Appends a group member's `msg` (`ack: true` groups): the publication's
/// fields plus `group` and `attempt`, encoded for this one hand-off.
pub fn group_msg(out: &mut Vec<u8>, m: &MsgFields<'_>, group: &str, attempt: u32) {
    append_text_frame(out, |o| msg_body(o, m, Some((group, attempt))));
}

/// The JSON of a `msg`, with `group` and `attempt` for a group hand-off.
fn msg_body(o: &mut Vec<u8>, m: &MsgFields<'_>, group: Option<(&str, u32)>) {
    let _ = write!(o, "{{\"op\":\"msg\",\"topic\":\"{}\",\"seq\":{},\"epoch\":\"{}\"", m.topic, m.seq, m.epoch);
    if let Some(mid) = m.msg_id {
        o.extend_from_slice(b",\"msg_id\":");
        json_str(o, mid);
    }
    match m.prio {
        Some(Prio::Critical) => o.extend_from_slice(b",\"prio\":\"critical\""),
        Some(Prio::Normal) => o.extend_from_slice(b",\"prio\":\"normal\""),
        None => {}
    }
    if let Some(from) = m.from {
        o.extend_from_slice(b",\"from\":");
        json_str(o, from);
    }
    if let Some(extra) = m.extra {
        o.push(b',');
        o.extend_from_slice(extra.as_bytes());
    }
    if let Some((group, attempt)) = group {
        let _ = write!(o, ",\"group\":\"{group}\",\"attempt\":{attempt}");
    }
    o.extend_from_slice(b",\"data\":");
    o.extend_from_slice(m.data.as_bytes());
    o.push(b'}');
}

/// Appends the `subscribed` reply to a group join.
pub fn subscribed_group(out: &mut Vec<u8>, id: Option<u64>, topic: &str, epoch: &str, seq: u64, group: &str) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"subscribed\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"epoch\":\"{epoch}\",\"seq\":{seq},\"group\":\"{group}\"}}");
    });
}

/// Appends the `unsubscribed` reply to a group leave.
pub fn unsubscribed_group(out: &mut Vec<u8>, id: Option<u64>, topic: &str, group: &str) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"unsubscribed\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"group\":\"{group}\"}}");
    });
}

/// Encodes the `msg` frame of a publication on its own, and says where the
/// verbatim `data` sits in it (the frame ends with `data` and `}`).
pub fn msg_frame(scratch: &mut Vec<u8>, m: &MsgFields<'_>) -> (Box<[u8]>, (usize, usize)) {
    scratch.clear();
    msg(scratch, m);
    let end = scratch.len() - 1;
    (Box::from(&scratch[..]), (end - m.data.len(), end))
}

/// Appends an `ack`.
pub fn ack(out: &mut Vec<u8>, id: Option<u64>, topic: &str, seq: u64, epoch: &str, dup: bool) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"ack\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"seq\":{seq},\"epoch\":\"{epoch}\",\"dup\":{dup}}}");
    });
}

/// How a `sub` with `since` turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No `since` was given.
    NotAsked,
    /// Recovered: this many replayed frames follow.
    Recovered(u64),
    /// Not recovered, for this reason (`epoch_mismatch`, `expired`, `limit`).
    Failed(&'static str),
}

/// Appends a `join` or `leave` event.
pub fn presence_event(out: &mut Vec<u8>, op: &str, topic: &str, client: &str, conn: &str) {
    append_text_frame(out, |o| {
        let _ = write!(o, "{{\"op\":\"{op}\",\"topic\":\"{topic}\",\"client\":");
        json_str(o, client);
        let _ = write!(o, ",\"conn\":\"{conn}\"}}");
    });
}

/// Appends a `presence` reply: the exact count and the listed clients
/// (client, conn id).
pub fn presence(out: &mut Vec<u8>, id: Option<u64>, topic: &str, count: u64, clients: &[(&str, String)]) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"presence\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"count\":{count},\"clients\":[");
        for (i, (client, conn)) in clients.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            o.extend_from_slice(b"{\"client\":");
            json_str(o, client);
            let _ = write!(o, ",\"conn\":\"{conn}\"}}");
        }
        o.extend_from_slice(b"]}");
    });
}

/// Appends a delivery `receipt` for publish `id`.
pub fn receipt(out: &mut Vec<u8>, id: Option<u64>, topic: &str, seq: u64, delivered: u64, dropped: u64) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"receipt\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"seq\":{seq},\"delivered\":{delivered},\"dropped\":{dropped}}}");
    });
}

/// Appends a `value` reply to `get`: the retained value's seq and `data`,
/// and its time to live when it has one.
pub fn value(out: &mut Vec<u8>, id: Option<u64>, topic: &str, seq: u64, data: &str, ttl_ms: Option<u64>) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"value\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"seq\":{seq}");
        if let Some(t) = ttl_ms {
            let _ = write!(o, ",\"ttl_ms\":{t}");
        }
        o.extend_from_slice(b",\"data\":");
        o.extend_from_slice(data.as_bytes());
        o.push(b'}');
    });
}

/// Appends a `subscribed` reply.
pub fn subscribed(out: &mut Vec<u8>, id: Option<u64>, topic: &str, epoch: &str, seq: u64, rec: Recovery) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"subscribed\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"epoch\":\"{epoch}\",\"seq\":{seq}");
        match rec {
            Recovery::NotAsked => {}
            Recovery::Recovered(n) => {
                let _ = write!(o, ",\"recovered\":true,\"replayed\":{n}");
            }
            Recovery::Failed(reason) => {
                let _ = write!(o, ",\"recovered\":false,\"replayed\":0,\"reason\":\"{reason}\"");
            }
        }
        o.push(b'}');
    });
}

/// Appends an `unsubscribed` reply.
pub fn unsubscribed(out: &mut Vec<u8>, id: Option<u64>, topic: &str) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"unsubscribed\"");
        id_field(o, id);
        let _ = write!(o, ",\"topic\":\"{topic}\"}}");
    });
}

/// Appends an `authed` reply (`exp`: the new token's, if it has one).
pub fn authed(out: &mut Vec<u8>, id: Option<u64>, exp: Option<u64>) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"authed\"");
        id_field(o, id);
        if let Some(exp) = exp {
            let _ = write!(o, ",\"exp\":{exp}");
        }
        o.push(b'}');
    });
}

/// Appends a `pong` reply.
pub fn pong(out: &mut Vec<u8>, id: Option<u64>) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"pong\"");
        id_field(o, id);
        o.push(b'}');
    });
}

/// Appends a `request` to a responder.
pub fn request(out: &mut Vec<u8>, req: &str, topic: &str, data: &str, deadline_ms: u64, from: Option<&str>) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"request\",\"req\":");
        json_str(o, req);
        let _ = write!(o, ",\"topic\":\"{topic}\",\"deadline_ms\":{deadline_ms}");
        if let Some(f) = from {
            o.extend_from_slice(b",\"from\":");
            json_str(o, f);
        }
        o.extend_from_slice(b",\"data\":");
        o.extend_from_slice(data.as_bytes());
        o.push(b'}');
    });
}

/// Appends a `reply` to a requester.
pub fn reply(out: &mut Vec<u8>, id: Option<u64>, data: &str, more: bool) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"reply\"");
        id_field(o, id);
        if more {
            o.extend_from_slice(b",\"more\":true");
        }
        o.extend_from_slice(b",\"data\":");
        o.extend_from_slice(data.as_bytes());
        o.push(b'}');
    });
}

/// Appends a `cancel` to a responder.
pub fn cancel(out: &mut Vec<u8>, req: &str) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"cancel\",\"req\":");
        json_str(o, req);
        o.push(b'}');
    });
}

/// Appends the `timeout` error of a request (`partial` if replies were
/// forwarded).
pub fn timeout_error(out: &mut Vec<u8>, id: Option<u64>, partial: bool) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"error\"");
        id_field(o, id);
        o.extend_from_slice(b",\"code\":\"timeout\",\"message\":\"no final reply within timeout_ms\"");
        if partial {
            o.extend_from_slice(b",\"partial\":true");
        }
        o.push(b'}');
    });
}

/// Appends an `error` reply.
pub fn error(out: &mut Vec<u8>, id: Option<u64>, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"op\":\"error\"");
        id_field(o, id);
        let _ = write!(o, ",\"code\":\"{}\",\"message\":", code.as_str());
        json_str(o, message);
        if let Some(ms) = retry_after_ms {
            let _ = write!(o, ",\"retry_after_ms\":{ms}");
        }
        o.push(b'}');
    });
}

/// Appends a `gap` notice.
pub fn gap(out: &mut Vec<u8>, topic: &str, from: u64, to: u64) {
    append_text_frame(out, |o| {
        let _ = write!(o, "{{\"op\":\"gap\",\"topic\":\"{topic}\",\"from\":{from},\"to\":{to}}}");
    });
}

/// Appends a `drain` notice.
pub fn drain(out: &mut Vec<u8>, reconnect_after_ms: u64) {
    append_text_frame(out, |o| {
        let _ = write!(o, "{{\"op\":\"drain\",\"reconnect_after_ms\":{reconnect_after_ms}}}");
    });
}

#[cfg(test)]
mod tests;
