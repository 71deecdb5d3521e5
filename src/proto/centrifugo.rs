//! The Centrifugo client protocol v2, JSON encoding, as spoken at
//! `GET /connection/websocket` (PROTOCOL-EXTENSIONS §7): commands in, replies
//! and pushes out, byte for byte what the centrifuge SDKs expect.
//!
//! A text frame carries one or more commands separated by `\n`; every reply
//! and push goes out as its own text frame (a frame never holds a raw
//! newline inside one message). `{}` is a ping from the server and a pong
//! from the client. Channels are shardcast topics, offsets are seqs, epochs
//! are epochs.
//!
//! Sans-io, like the rest of `proto`: nothing here panics on any input.

use std::borrow::Cow;
use std::io::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::frame::CloseCode;
use super::message::{append_text_frame, json_str, ErrorCode};

/// The fields of one publication as Centrifugo shows it.
#[derive(Debug, Clone, Copy)]
pub struct PubFields<'a> {
    /// The channel (topic).
    pub channel: &'a str,
    /// The offset (seq).
    pub offset: u64,
    /// Verbatim JSON payload.
    pub data: &'a str,
    /// The authenticated publisher's `sub` (`info.user`).
    pub user: Option<&'a str>,
    /// A token stream append: its stream and `end` (as `tags`).
    pub stream: Option<(&'a str, bool)>,
}

/// The path of the endpoint.
pub const PATH: &str = "/connection/websocket";

/// A `connect` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectReq<'a> {
    /// A JWT (the same `[auth]` keys and claims as `/ws`).
    #[serde(borrow)]
    pub token: Option<Cow<'a, str>>,
    /// SDK name.
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// SDK version.
    #[serde(borrow)]
    pub version: Option<Cow<'a, str>>,
}

/// A `subscribe` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeReq<'a> {
    /// The channel (a shardcast topic).
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// Recover what was missed after `offset` in `epoch`.
    pub recover: bool,
    /// The epoch of `offset`.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    /// The last offset the client saw.
    pub offset: u64,
    /// Also `join`/`leave` pushes.
    pub join_leave: bool,
    /// Flags: 1 channel compaction (not supported: ignored), 2 reject an
    /// unrecovered resubscribe with error 112.
    pub flag: u64,
}

/// Flag bit: answer a failed recovery with error 112 instead of
/// `recovered: false`.
pub const FLAG_REJECT_UNRECOVERED: u64 = 2;

/// A request naming one channel (`unsubscribe`, `presence`, `presence_stats`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelReq<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
}

/// A `publish` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishReq<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// The payload, verbatim JSON.
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// An `rpc` request: `method` names a service topic (request/reply).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcReq<'a> {
    /// The service topic.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// The request, verbatim JSON.
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// A `refresh` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshReq<'a> {
    /// The fresh token.
    #[serde(borrow)]
    pub token: Cow<'a, str>,
}

/// A `history` request's `since`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SincePos<'a> {
    /// Offset.
    pub offset: u64,
    /// Epoch.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// A `history` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryReq<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// At most this many publications (0: none, only the position).
    pub limit: i64,
    /// After this position.
    #[serde(borrow)]
    pub since: Option<SincePos<'a>>,
    /// Newest first.
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw<'a> {
    id: u32,
    #[serde(borrow)]
    connect: Option<ConnectReq<'a>>,
    #[serde(borrow)]
    subscribe: Option<SubscribeReq<'a>>,
    #[serde(borrow)]
    unsubscribe: Option<ChannelReq<'a>>,
    #[serde(borrow)]
    publish: Option<PublishReq<'a>>,
    #[serde(borrow)]
    presence: Option<ChannelReq<'a>>,
    #[serde(borrow)]
    presence_stats: Option<ChannelReq<'a>>,
    #[serde(borrow)]
    history: Option<HistoryReq<'a>>,
    #[serde(borrow)]
    rpc: Option<RpcReq<'a>>,
    #[serde(borrow)]
    refresh: Option<RefreshReq<'a>>,
    #[serde(borrow)]
    sub_refresh: Option<&'a RawValue>,
    #[serde(borrow)]
    send: Option<&'a RawValue>,
}

/// One parsed command.
#[derive(Debug)]
pub enum CfCommand<'a> {
    /// `{}`: the answer to a server ping.
    Pong,
    /// `connect`.
    Connect(u32, ConnectReq<'a>),
    /// `subscribe`.
    Subscribe(u32, SubscribeReq<'a>),
    /// `unsubscribe`.
    Unsubscribe(u32, ChannelReq<'a>),
    /// `publish`.
    Publish(u32, PublishReq<'a>),
    /// `presence`.
    Presence(u32, ChannelReq<'a>),
    /// `presence_stats`.
    PresenceStats(u32, ChannelReq<'a>),
    /// `history`.
    History(u32, HistoryReq<'a>),
    /// `rpc`.
    Rpc(u32, RpcReq<'a>),
    /// `refresh`.
    Refresh(u32, RefreshReq<'a>),
    /// A command this server does not implement (`sub_refresh`, `send`, an
    /// unknown method): answered `method not found` when it has an id.
    Unsupported(u32),
}

/// Why a line is not a command: the connection is closed 3501.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request: {0}")]
pub struct BadCommand(pub String);

/// Parses one line (one JSON command).
pub fn parse_command(line: &str) -> Result<CfCommand<'_>, BadCommand> {
    let raw: Raw<'_> = serde_json::from_str(line).map_err(|e| BadCommand(e.to_string()))?;
    let id = raw.id;
    Ok(if let Some(c) = raw.connect {
        CfCommand::Connect(id, c)
    } else if let Some(s) = raw.subscribe {
        CfCommand::Subscribe(id, s)
    } else if let Some(u) = raw.unsubscribe {
        CfCommand::Unsubscribe(id, u)
    } else if let Some(p) = raw.publish {
        CfCommand::Publish(id, p)
    } else if let Some(p) = raw.presence {
        CfCommand::Presence(id, p)
    } else if let Some(p) = raw.presence_stats {
        CfCommand::PresenceStats(id, p)
    } else if let Some(h) = raw.history {
        CfCommand::History(id, h)
    } else if let Some(r) = raw.rpc {
        CfCommand::Rpc(id, r)
    } else if let Some(r) = raw.refresh {
        CfCommand::Refresh(id, r)
    } else if raw.sub_refresh.is_some() || raw.send.is_some() || id != 0 {
        CfCommand::Unsupported(id)
    } else {
        CfCommand::Pong
    })
}

/// Splits a text frame into its command lines (blank lines skipped).
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty())
}

/// A Centrifugo client error: code, message, temporary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfError {
    /// The numeric code.
    pub code: u32,
    /// Whether the SDK may retry.
    pub temporary: bool,
}

/// Error 101.
pub const UNAUTHORIZED: CfError = CfError { code: 101, temporary: false };
/// Error 104.
pub const METHOD_NOT_FOUND: CfError = CfError { code: 104, temporary: false };
/// Error 106.
pub const LIMIT_EXCEEDED: CfError = CfError { code: 106, temporary: false };
/// Error 107.
pub const BAD_REQUEST: CfError = CfError { code: 107, temporary: false };
/// Error 108.
pub const NOT_AVAILABLE: CfError = CfError { code: 108, temporary: false };
/// Error 109: the SDK fetches a fresh token and tries again.
pub const TOKEN_EXPIRED: CfError = CfError { code: 109, temporary: false };
/// Error 112.
pub const UNRECOVERABLE: CfError = CfError { code: 112, temporary: false };

/// The Centrifugo error for a shardcast error code.
pub fn error_of(code: ErrorCode) -> CfError {
    let (code, temporary) = match code {
        ErrorCode::Internal => (100, true),
        ErrorCode::Unauthorized => (101, false),
        ErrorCode::BadTopic => (102, false),
        ErrorCode::Forbidden => (103, false),
        ErrorCode::UnknownOp => (104, false),
        ErrorCode::TooManySubscriptions => (106, false),
        ErrorCode::BadRequest | ErrorCode::Conflict => (107, false),
        ErrorCode::NotFound | ErrorCode::NotMember | ErrorCode::NotSubscribed => (108, false),
        // No responder answered (yet): worth a retry.
        ErrorCode::NoResponders | ErrorCode::Timeout => (108, true),
        ErrorCode::RateLimited => (111, true),
        // The mesh ring is full: try again shortly.
        ErrorCode::Overloaded => (111, true),
    };
    CfError { code, temporary }
}

/// The Centrifugo close code and reason for a shardcast close code. Codes
/// 3000–3499 make the SDKs reconnect (and recover), 3500–3999 do not.
pub fn close_of(code: CloseCode) -> (CloseCode, &'static str) {
    let (c, reason) = match code.0 {
        4000 => (3008, "slow"),
        4001 => (3005, "connection expired"),
        1012 => (3001, "shutdown"),
        1001 => (3012, "no pong"),
        1011 => (3004, "internal server error"),
        1002 | 1007 | 1008 | 1009 => (3501, "bad request"),
        c => return (CloseCode(c), ""),
    };
    (CloseCode(c), reason)
}

/// Close 3010: the connection missed publications (it was too slow); the
/// SDK reconnects and recovers them from the replay ring.
pub const INSUFFICIENT_STATE: (CloseCode, &str) = (CloseCode(3010), "insufficient state");
/// Close 3500: a token that is not valid.
pub const INVALID_TOKEN: (CloseCode, &str) = (CloseCode(3500), "invalid token");
/// Close 3501: a malformed command.
pub const BAD_REQUEST_CLOSE: (CloseCode, &str) = (CloseCode(3501), "bad request");
/// Close 3502: no `connect` in time.
pub const STALE: (CloseCode, &str) = (CloseCode(3502), "stale");

fn id_prefix(o: &mut Vec<u8>, id: u32) {
    o.push(b'{');
    if id != 0 {
        let _ = write!(o, "\"id\":{id},");
    }
}

/// A server ping (`{}`).
pub fn ping(out: &mut Vec<u8>) {
    append_text_frame(out, |o| o.extend_from_slice(b"{}"));
}

/// An error reply.
pub fn error(out: &mut Vec<u8>, id: u32, e: CfError, message: &str) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        let _ = write!(o, "\"error\":{{\"code\":{},\"message\":", e.code);
        json_str(o, message);
        if e.temporary {
            o.extend_from_slice(b",\"temporary\":true");
        }
        o.extend_from_slice(b"}}");
    });
}

/// The `connect` reply.
pub fn connected(out: &mut Vec<u8>, id: u32, client: &str, ping_secs: u64, ttl: Option<u64>) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"connect\":{\"client\":");
        json_str(o, client);
        let _ =
            write!(o, ",\"version\":\"shardcast {}\",\"ping\":{ping_secs},\"pong\":true", env!("CARGO_PKG_VERSION"));
        if let Some(ttl) = ttl {
            let _ = write!(o, ",\"expires\":true,\"ttl\":{ttl}");
        }
        o.extend_from_slice(b"}}");
    });
}

/// The `refresh` reply.
pub fn refreshed(out: &mut Vec<u8>, id: u32, client: &str, ttl: Option<u64>) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"refresh\":{\"client\":");
        json_str(o, client);
        let _ = write!(o, ",\"version\":\"shardcast {}\"", env!("CARGO_PKG_VERSION"));
        if let Some(ttl) = ttl {
            let _ = write!(o, ",\"expires\":true,\"ttl\":{ttl}");
        }
        o.extend_from_slice(b"}}");
    });
}

/// How a subscribe turned out, for its reply.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeResult<'a> {
    /// The topic's epoch.
    pub epoch: &'a str,
    /// The position the reply gives: the topic's last seq, or, after a
    /// recovery, the offset recovered from (each recovered publication
    /// then moves the SDK's position).
    pub offset: u64,
    /// The client asked to recover.
    pub was_recovering: bool,
    /// Every missed publication is in `publications`.
    pub recovered: bool,
}

/// The `subscribe` reply; recovered publications go inside it, in order.
pub fn subscribed<'p>(
    out: &mut Vec<u8>,
    id: u32,
    r: &SubscribeResult<'_>,
    pubs: impl ExactSizeIterator<Item = PubFields<'p>>,
) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"subscribe\":{\"recoverable\":true,\"positioned\":true,\"epoch\":");
        json_str(o, r.epoch);
        let _ = write!(o, ",\"offset\":{}", r.offset);
        if r.was_recovering {
            let _ = write!(o, ",\"was_recovering\":true,\"recovered\":{}", r.recovered);
        }
        if pubs.len() > 0 {
            o.extend_from_slice(b",\"publications\":[");
            for (i, p) in pubs.enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                publication(o, &p);
            }
            o.push(b']');
        }
        o.extend_from_slice(b"}}");
    });
}

/// An empty result of `method` (`unsubscribe`, `publish`).
pub fn empty_result(out: &mut Vec<u8>, id: u32, method: &str) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        let _ = write!(o, "\"{method}\":{{}}}}");
    });
}

/// The `rpc` reply.
pub fn rpc_result(out: &mut Vec<u8>, id: u32, data: &str) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"rpc\":{\"data\":");
        verbatim(o, data);
        o.extend_from_slice(b"}}");
    });
}

/// The `presence` reply: every listed member, keyed by connection id.
pub fn presence(out: &mut Vec<u8>, id: u32, members: &[(&str, String)]) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"presence\":{\"presence\":{");
        for (i, (user, client)) in members.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            json_str(o, client);
            o.push(b':');
            client_info(o, user, client);
        }
        o.extend_from_slice(b"}}}");
    });
}

/// The `presence_stats` reply.
pub fn presence_stats(out: &mut Vec<u8>, id: u32, clients: u64, users: u64) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        let _ = write!(o, "\"presence_stats\":{{\"num_clients\":{clients},\"num_users\":{users}}}}}");
    });
}

/// The `history` reply.
pub fn history<'p>(out: &mut Vec<u8>, id: u32, epoch: &str, offset: u64, pubs: impl Iterator<Item = PubFields<'p>>) {
    append_text_frame(out, |o| {
        id_prefix(o, id);
        o.extend_from_slice(b"\"history\":{\"epoch\":");
        json_str(o, epoch);
        let _ = write!(o, ",\"offset\":{offset},\"publications\":[");
        for (i, p) in pubs.enumerate() {
            if i > 0 {
                o.push(b',');
            }
            publication(o, &p);
        }
        o.extend_from_slice(b"]}}");
    });
}

/// A `join` or `leave` push.
pub fn join_leave(out: &mut Vec<u8>, join: bool, channel: &str, user: &str, client: &str) {
    append_text_frame(out, |o| {
        o.extend_from_slice(b"{\"push\":{\"channel\":");
        json_str(o, channel);
        o.extend_from_slice(if join { b",\"join\":{\"info\":" } else { b",\"leave\":{\"info\":" });
        client_info(o, user, client);
        o.extend_from_slice(b"}}}");
    });
}

fn client_info(o: &mut Vec<u8>, user: &str, client: &str) {
    o.extend_from_slice(b"{\"user\":");
    json_str(o, user);
    o.extend_from_slice(b",\"client\":");
    json_str(o, client);
    o.push(b'}');
}

/// Writes verbatim JSON with every raw `\n`/`\r` turned into a space: in
/// valid JSON they can only be whitespace between tokens, and a raw newline
/// would split the message for the SDK.
fn verbatim(o: &mut Vec<u8>, json: &str) {
    let start = o.len();
    o.extend_from_slice(json.as_bytes());
    if json.bytes().any(|b| b == b'\n' || b == b'\r') {
        for b in &mut o[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// One publication object (`pub` of a push, an item of `publications`).
fn publication(o: &mut Vec<u8>, p: &PubFields<'_>) {
    o.extend_from_slice(b"{\"data\":");
    verbatim(o, p.data);
    let _ = write!(o, ",\"offset\":{}", p.offset);
    if let Some(from) = p.user {
        o.extend_from_slice(b",\"info\":{\"user\":");
        json_str(o, from);
        o.extend_from_slice(b",\"client\":\"\"}");
    }
    if let Some((stream, end)) = p.stream {
        o.extend_from_slice(b",\"tags\":{\"stream\":");
        json_str(o, stream);
        let _ = write!(o, ",\"end\":\"{end}\"}}");
    }
    o.push(b'}');
}

/// The `pub` push of a publication as one encoded text frame: built once
/// per publication per shard, shared by every Centrifugo subscriber there.
pub fn pub_frame(p: &PubFields<'_>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(p.data.len() + p.channel.len() + 64);
    append_text_frame(&mut out, |o| {
        o.extend_from_slice(b"{\"push\":{\"channel\":");
        json_str(o, p.channel);
        o.extend_from_slice(b",\"pub\":");
        publication(o, p);
        o.extend_from_slice(b"}}");
    });
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &[u8]) -> String {
        let hl = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        String::from_utf8(frame[hl..].to_vec()).unwrap()
    }

    #[test]
    fn commands_parse_as_the_sdks_send_them() {
        let c = parse_command(r#"{"id":1,"connect":{"token":"t","name":"js","version":"5.8.0"}}"#).unwrap();
        assert!(matches!(c, CfCommand::Connect(1, ConnectReq { token: Some(t), .. }) if t == "t"));
        let c = parse_command(
            r#"{"id":2,"subscribe":{"channel":"a/b","recover":true,"epoch":"e1","offset":7,"flag":3,"join_leave":true}}"#,
        )
        .unwrap();
        match c {
            CfCommand::Subscribe(2, s) => {
                assert_eq!(
                    (&*s.channel, s.recover, &*s.epoch, s.offset, s.flag, s.join_leave),
                    ("a/b", true, "e1", 7, 3, true)
                )
            }
            other => panic!("{other:?}"),
        }
        let c = parse_command(r#"{"id":3,"publish":{"channel":"a/b","data":{"x":[1, 2]}}}"#).unwrap();
        assert!(matches!(c, CfCommand::Publish(3, PublishReq { data: Some(d), .. }) if d.get() == r#"{"x":[1, 2]}"#));
        assert!(matches!(parse_command("{}").unwrap(), CfCommand::Pong));
        assert!(matches!(parse_command(r#"{"id":9,"sub_refresh":{}}"#).unwrap(), CfCommand::Unsupported(9)));
        assert!(matches!(parse_command(r#"{"id":9,"frobnicate":{}}"#).unwrap(), CfCommand::Unsupported(9)));
        assert!(parse_command("{\"id\":").is_err());
        assert!(parse_command(r#"{"id":-1}"#).is_err());
        assert!(parse_command(r#"{"id":1,"subscribe":{"channel":5}}"#).is_err());
        assert_eq!(lines("{}\n\n{\"id\":1}\r\n").collect::<Vec<_>>(), vec!["{}", "{\"id\":1}"]);
    }

    #[test]
    fn a_pub_push_is_one_line_with_the_offset_and_the_data_verbatim() {
        let p = PubFields { channel: "acme/room", offset: 42, data: "{\"t\":\n\"hi\"}", user: None, stream: None };
        let f = pub_frame(&p);
        let t = text(&f);
        assert_eq!(t, r#"{"push":{"channel":"acme/room","pub":{"data":{"t": "hi"},"offset":42}}}"#);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["push"]["pub"]["data"]["t"], "hi");
    }

    #[test]
    fn replies_are_what_the_sdks_read() {
        let mut o = Vec::new();
        let p = PubFields { channel: "a/b", offset: 5, data: "1", user: Some("al\"ice"), stream: Some(("s1", true)) };
        let r = SubscribeResult { epoch: "ep", offset: 4, was_recovering: true, recovered: true };
        subscribed(&mut o, 2, &r, [p].into_iter());
        let v: serde_json::Value = serde_json::from_str(&text(&o)).unwrap();
        assert_eq!(v["id"], 2);
        assert_eq!(v["subscribe"]["recovered"], true);
        assert_eq!(v["subscribe"]["publications"][0]["offset"], 5);
        assert_eq!(v["subscribe"]["publications"][0]["info"]["user"], "al\"ice");
        assert_eq!(v["subscribe"]["publications"][0]["tags"], serde_json::json!({"stream": "s1", "end": "true"}));
        o.clear();
        error(&mut o, 7, error_of(ErrorCode::RateLimited), "slow \"down\"");
        let v: serde_json::Value = serde_json::from_str(&text(&o)).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["error"]["code"].as_u64(), v["error"]["temporary"].as_bool()),
            (Some(7), Some(111), Some(true))
        );
        o.clear();
        ping(&mut o);
        assert_eq!(text(&o), "{}");
        o.clear();
        empty_result(&mut o, 3, "publish");
        assert_eq!(text(&o), r#"{"id":3,"publish":{}}"#);
        assert_eq!(close_of(CloseCode::SLOW_CONSUMER).0, CloseCode(3008));
        assert_eq!(close_of(CloseCode::RESTART).0, CloseCode(3001));
    }
}
