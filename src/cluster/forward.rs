//! Forwarded publishes between nodes (docs/ARCHITECTURE.md, "Forwarding"):
//! a node whose client publishes into a partition another node owns sends
//! the publish as a core NATS request to `sc.own.<stream>`; the owner's
//! answer (ack or refusal) comes back as the reply. Both are small JSON
//! objects; nothing here touches a socket.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::mesh::msg::{RetainArg, StreamArg};
use crate::mesh::{PubReply, PublishReq, Requester};
use crate::proto::message::{ErrorCode, Prio};
use crate::topic::owned::Epoch;

/// The subject the owner of `stream` answers forwarded publishes on.
pub fn subject(stream: usize) -> String {
    format!("sc.own.{stream}")
}

/// A forwarded publish (strings borrowed when unescaped).
#[derive(Serialize, Deserialize)]
struct Fwd<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    #[serde(borrow)]
    d: Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    m: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<bool>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    f: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    x: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    s: Option<(Cow<'a, str>, bool, Option<Cow<'a, str>>)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<Retain>,
}

/// Retained-value fields: retain, ttl_ms, if_seq, expire.
type Retain = (bool, Option<u64>, Option<u64>, Option<u64>);

/// A publish as the forward request's payload.
pub fn encode_publish(req: &PublishReq) -> Vec<u8> {
    let f = Fwd {
        t: Cow::Borrowed(&req.topic),
        d: Cow::Borrowed(&req.data),
        m: req.msg_id.as_deref().map(Cow::Borrowed),
        p: req.prio.map(|p| p == Prio::Critical),
        f: req.from.as_deref().map(Cow::Borrowed),
        x: req.extra.as_deref().map(Cow::Borrowed),
        s: req.stream.as_deref().map(|s| (Cow::Borrowed(&*s.name), s.end, s.reason.map(Cow::Borrowed))),
        r: req.retain.as_deref().map(|r| (r.retain, r.ttl_ms, r.if_seq, r.expire)),
    };
    serde_json::to_vec(&f).unwrap_or_default()
}

/// A forward request's payload back into a publish for the owner shard
/// (None: not one of ours). The topic was validated by the node that
/// forwarded it and is checked again here.
pub fn decode_publish(body: &[u8], to: Requester) -> Option<PublishReq> {
    let f: Fwd<'_> = serde_json::from_slice(body).ok()?;
    crate::topic::name::validate(&f.t).ok()?;
    serde_json::from_str::<serde::de::IgnoredAny>(&f.d).ok()?;
    Some(PublishReq {
        to,
        topic: (*f.t).into(),
        data: (*f.d).into(),
        msg_id: f.m.map(|m| (*m).into()),
        prio: f.p.map(|c| if c { Prio::Critical } else { Prio::Normal }),
        from: f.f.map(|x| Arc::<str>::from(&*x)),
        received_at: Instant::now(),
        extra: f.x.map(|x| (*x).into()),
        stream: f.s.map(|(name, end, reason)| {
            Box::new(StreamArg { name: (*name).into(), end, reason: reason.map(|_| "abandoned") })
        }),
        retain: f.r.map(|(retain, ttl_ms, if_seq, expire)| Box::new(RetainArg { retain, ttl_ms, if_seq, expire })),
    })
}

#[derive(Serialize, Deserialize)]
struct Ans<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dup: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<u64>,
}

/// The owner's answer as the reply payload.
pub fn encode_reply(reply: &PubReply) -> Vec<u8> {
    let a = match reply {
        PubReply::Ack { seq, epoch, dup, .. } => {
            Ans { seq: Some(*seq), epoch: Some(epoch.as_str()), dup: *dup, code: None, retry: None }
        }
        PubReply::Refused { code, retry_after_ms, .. } => {
            Ans { seq: None, epoch: None, dup: false, code: Some(code.as_str()), retry: *retry_after_ms }
        }
    };
    serde_json::to_vec(&a).unwrap_or_default()
}

/// A reply payload back into the answer for the publisher.
pub fn decode_reply(topic: &str, body: &[u8]) -> PubReply {
    let Ok(a) = serde_json::from_slice::<Ans<'_>>(body) else {
        return refused(ErrorCode::Internal, None);
    };
    match (a.seq, a.epoch.and_then(Epoch::parse), a.code) {
        (Some(seq), Some(epoch), None) => PubReply::Ack { topic: topic.into(), seq, epoch, dup: a.dup },
        (_, _, Some(code)) => refused(code_of(code), a.retry),
        _ => refused(ErrorCode::Internal, None),
    }
}

/// A refusal with the message this node gives for `code`.
pub fn refused(code: ErrorCode, retry_after_ms: Option<u64>) -> PubReply {
    let message = match code {
        ErrorCode::Overloaded => "the node that owns the topic is overloaded or changing; retry later",
        ErrorCode::Timeout => "the node that owns the topic did not answer in time (the publish may be stored: retry with the same msg_id)",
        ErrorCode::Conflict => "if_seq did not match the retained value's seq",
        ErrorCode::BadRequest => "the node that owns the topic refused the publish as malformed",
        ErrorCode::RateLimited => "rate limited by the node that owns the topic",
        _ => "the node that owns the topic refused the publish",
    };
    PubReply::Refused { code, message, retry_after_ms }
}

fn code_of(s: &str) -> ErrorCode {
    match s {
        "overloaded" => ErrorCode::Overloaded,
        "timeout" => ErrorCode::Timeout,
        "conflict" => ErrorCode::Conflict,
        "bad_request" => ErrorCode::BadRequest,
        "rate_limited" => ErrorCode::RateLimited,
        "forbidden" => ErrorCode::Forbidden,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{ConnRef, ReplyKind};

    fn to() -> Requester {
        Requester { conn: ConnRef { idx: 7, gen: 9 }, id: None, kind: ReplyKind::Ws, receipt: false }
    }

    #[test]
    fn a_publish_survives_the_trip() {
        let req = PublishReq {
            to: to(),
            topic: "acme/room.1".into(),
            data: r#"{"a":[1,2],"q":"\"x\""}"#.into(),
            msg_id: Some("m-1".into()),
            prio: Some(Prio::Critical),
            from: Some("alice".into()),
            received_at: Instant::now(),
            extra: None,
            stream: Some(Box::new(StreamArg { name: "s1".into(), end: true, reason: None })),
            retain: Some(Box::new(RetainArg { retain: true, ttl_ms: Some(5), if_seq: None, expire: None })),
        };
        let back = decode_publish(&encode_publish(&req), to()).unwrap();
        assert_eq!(
            (&*back.topic, &*back.data, back.msg_id.as_deref()),
            ("acme/room.1", r#"{"a":[1,2],"q":"\"x\""}"#, Some("m-1"))
        );
        assert_eq!(back.prio, Some(Prio::Critical));
        assert_eq!(back.from.as_deref(), Some("alice"));
        assert!(back.stream.as_ref().is_some_and(|s| &*s.name == "s1" && s.end));
        assert!(back.retain.as_ref().is_some_and(|r| r.retain && r.ttl_ms == Some(5)));
    }

    #[test]
    fn bad_forwards_are_refused_not_trusted() {
        assert!(decode_publish(b"not json", to()).is_none());
        assert!(decode_publish(br#"{"t":"no-tenant","d":"1"}"#, to()).is_none());
        assert!(decode_publish(br#"{"t":"a/b","d":"{not json"}"#, to()).is_none());
    }

    #[test]
    fn answers_survive_the_trip() {
        let e = Epoch::parse("abcdefabcdef").unwrap();
        let ack = PubReply::Ack { topic: "a/b".into(), seq: 42, epoch: e, dup: true };
        match decode_reply("a/b", &encode_reply(&ack)) {
            PubReply::Ack { seq, epoch, dup, .. } => assert_eq!((seq, epoch, dup), (42, e, true)),
            r => panic!("{r:?}"),
        }
        let no = refused(ErrorCode::Overloaded, Some(100));
        match decode_reply("a/b", &encode_reply(&no)) {
            PubReply::Refused { code, retry_after_ms, .. } => {
                assert_eq!((code, retry_after_ms), (ErrorCode::Overloaded, Some(100)))
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(decode_reply("a/b", b"{}"), PubReply::Refused { code: ErrorCode::Internal, .. }));
    }
}
