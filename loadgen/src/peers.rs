//! Protocol adapters: the same scenarios drive shardcast (WebSocket + JSON),
//! Redis pub/sub (RESP2 over TCP) and NATS core (its text protocol), so the
//! side-by-side comparison measures the systems, not three load generators.
//!
//! Redis and NATS carry no sequence number, so the publisher puts its own
//! counter in the payload (`{"s":N,"t":ns,"p":"…"}`); with one publisher per
//! topic that is exactly the per-topic order shardcast's `seq` gives. Acks:
//! Redis answers every PUBLISH with an integer; NATS publishers connect with
//! `"verbose":true`, so the server answers every PUB with `+OK`. (Every
//! system thus acknowledges every publish, as shardcast does.)
//!
//! The parsers are small and hand-written on purpose: the loadgen scans only
//! the few fields it verifies, without allocating per message.

use std::fmt::Write as _;

/// Which wire protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum Proto {
    /// shardcast's WebSocket protocol (also spoken by the naive and raw
    /// reference servers in `benches/peers`).
    Ws,
    /// Redis pub/sub (SUBSCRIBE / PUBLISH).
    Redis,
    /// NATS core (SUB / PUB).
    Nats,
    /// shardcast's Centrifugo endpoint: subscribers speak the Centrifugo
    /// client protocol (JSON) at `/connection/websocket`, as the SDKs do;
    /// publishers speak `/ws` (the backend's side, whose acks carry the
    /// seq the verification counts on).
    Centrifugo,
}

impl Proto {
    /// Spoken over WebSocket to shardcast.
    pub fn is_ws(self) -> bool {
        matches!(self, Proto::Ws | Proto::Centrifugo)
    }
}

/// What a server said, as far as the loadgen cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription is in place (Redis `subscribe` reply, NATS `PONG`
    /// after `SUB` + `PING`).
    Subscribed,
    /// A publication's payload.
    Msg(&'a [u8]),
    /// A publish was accepted (Redis integer reply, NATS `+OK`).
    Ack,
    /// NATS asks for a `PONG`.
    Ping,
    /// An error reply, with its text.
    Error(&'a [u8]),
    /// Anything else (NATS `INFO`, a Redis reply we do not use).
    Other,
}

/// The bytes a subscriber writes right after connecting.
pub fn subscribe(proto: Proto, topic: &str, out: &mut Vec<u8>) {
    match proto {
        Proto::Ws | Proto::Centrifugo => unreachable!("WebSocket subscribes after the upgrade"),
        Proto::Redis => resp_command(&[b"SUBSCRIBE", topic.as_bytes()], out),
        Proto::Nats => {
            out.extend_from_slice(NATS_CONNECT_QUIET);
            out.extend_from_slice(format!("SUB {topic} 1\r\nPING\r\n").as_bytes());
        }
    }
}

/// The bytes a publisher writes right after connecting (its first `PONG`
/// or nothing marks it ready).
pub fn hello_publisher(proto: Proto, out: &mut Vec<u8>) -> bool {
    match proto {
        Proto::Ws | Proto::Centrifugo | Proto::Redis => false,
        Proto::Nats => {
            out.extend_from_slice(NATS_CONNECT_VERBOSE);
            out.extend_from_slice(b"PING\r\n");
            true
        }
    }
}

const NATS_CONNECT_QUIET: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"echo\":false}\r\n";
const NATS_CONNECT_VERBOSE: &[u8] =
    b"CONNECT {\"verbose\":true,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"echo\":false}\r\n";

/// Appends one publish of `payload` to `topic`.
pub fn publish(proto: Proto, topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    match proto {
        Proto::Ws | Proto::Centrifugo => unreachable!("WebSocket publishes are JSON in a masked frame"),
        Proto::Redis => resp_command(&[b"PUBLISH", topic.as_bytes(), payload], out),
        Proto::Nats => {
            let mut head = String::with_capacity(topic.len() + 16);
            let _ = write!(head, "PUB {topic} {}\r\n", payload.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The payload a peer publisher sends: its own per-topic counter `s`, the
/// send time `t` and padding.
pub fn payload(seq: u64, t: u64, pad: &str, out: &mut Vec<u8>) {
    out.clear();
    let _ = std::io::Write::write_fmt(out, format_args!(r#"{{"s":{seq},"t":{t},"p":"{pad}"}}"#));
}

fn resp_command(args: &[&[u8]], out: &mut Vec<u8>) {
    let mut head = String::with_capacity(16);
    let _ = write!(head, "*{}\r\n", args.len());
    out.extend_from_slice(head.as_bytes());
    for a in args {
        head.clear();
        let _ = write!(head, "${}\r\n", a.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Decodes the next complete server message at the front of `buf`:
/// (bytes used, event); None until a whole message is there.
pub fn next_event(proto: Proto, buf: &[u8]) -> Option<(usize, Event<'_>)> {
    match proto {
        Proto::Ws | Proto::Centrifugo => unreachable!("WebSocket frames are parsed in ws.rs"),
        Proto::Redis => next_resp(buf),
        Proto::Nats => next_nats(buf),
    }
}

/// The line at the front of `buf` without its CRLF, and the bytes used.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn parse_usize(s: &[u8]) -> Option<usize> {
    std::str::from_utf8(s).ok()?.trim().parse().ok()
}

/// RESP2: `*3 $7 message $n topic $m payload` (a publication),
/// `*3 $9 subscribe $n topic :1` (a subscription), `:n` (PUBLISH's reply),
/// `-ERR …`.
fn next_resp(buf: &[u8]) -> Option<(usize, Event<'_>)> {
    let (first, mut at) = line(buf)?;
    match first.first()? {
        b':' | b'+' => Some((at, Event::Ack)),
        b'-' => Some((at, Event::Error(&first[1..]))),
        b'*' => {
            let n = parse_usize(&first[1..])?;
            let mut parts: [&[u8]; 3] = [&[], &[], &[]];
            for k in 0..n {
                let (h, used) = line(&buf[at..])?;
                at += used;
                let item = match h.first()? {
                    b'$' => {
                        let len = parse_usize(&h[1..])?;
                        let item = buf.get(at..at + len)?;
                        buf.get(at + len..at + len + 2)?;
                        at += len + 2;
                        item
                    }
                    _ => &h[1..],
                };
                if let Some(slot) = parts.get_mut(k) {
                    *slot = item;
                }
            }
            let ev = match parts[0] {
                b"message" => Event::Msg(parts[2]),
                b"subscribe" => Event::Subscribed,
                _ => Event::Other,
            };
            Some((at, ev))
        }
        _ => Some((at, Event::Other)),
    }
}

/// NATS: `MSG <subject> <sid> [reply-to] <#bytes>` + payload, `PING`,
/// `PONG`, `+OK`, `-ERR '…'`, `INFO {…}`.
fn next_nats(buf: &[u8]) -> Option<(usize, Event<'_>)> {
    let (first, at) = line(buf)?;
    if first.starts_with(b"MSG ") {
        let len = parse_usize(first.rsplit(|&b| b == b' ').next()?)?;
        let payload = buf.get(at..at + len)?;
        buf.get(at + len..at + len + 2)?;
        return Some((at + len + 2, Event::Msg(payload)));
    }
    let ev = match first {
        b"PING" => Event::Ping,
        b"PONG" => Event::Subscribed,
        b"+OK" => Event::Ack,
        f if f.starts_with(b"-ERR") => Event::Error(&f[4..]),
        _ => Event::Other,
    };
    Some((at, ev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_round_trip() {
        let mut out = Vec::new();
        subscribe(Proto::Redis, "a/b", &mut out);
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na/b\r\n");
        out.clear();
        publish(Proto::Redis, "a/b", b"{\"s\":1}", &mut out);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$3\r\na/b\r\n$7\r\n{\"s\":1}\r\n");
        let stream = b"*3\r\n$9\r\nsubscribe\r\n$3\r\na/b\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$3\r\na/b\r\n$7\r\n{\"s\":1}\r\n:5\r\n-ERR x\r\n";
        let (n1, e1) = next_event(Proto::Redis, stream).unwrap();
        assert_eq!(e1, Event::Subscribed);
        let (n2, e2) = next_event(Proto::Redis, &stream[n1..]).unwrap();
        assert_eq!(e2, Event::Msg(b"{\"s\":1}"));
        let (n3, e3) = next_event(Proto::Redis, &stream[n1 + n2..]).unwrap();
        assert_eq!(e3, Event::Ack);
        let (_, e4) = next_event(Proto::Redis, &stream[n1 + n2 + n3..]).unwrap();
        assert_eq!(e4, Event::Error(b"ERR x"));
        // Incomplete messages wait for more bytes.
        for cut in [1, 5, 20, 30, n2 - 1] {
            assert!(next_event(Proto::Redis, &stream[n1..n1 + cut]).is_none(), "cut {cut}");
        }
    }

    #[test]
    fn nats_round_trip() {
        let mut out = Vec::new();
        publish(Proto::Nats, "a/b", b"hi", &mut out);
        assert_eq!(out, b"PUB a/b 2\r\nhi\r\n");
        let stream =
            b"INFO {\"x\":1}\r\nPONG\r\nMSG a/b 1 2\r\nhi\r\nMSG a/b 1 r 3\r\nabc\r\nPING\r\n+OK\r\n-ERR 'slow'\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((n, e)) = next_event(Proto::Nats, &stream[at..]) {
            seen.push(format!("{e:?}"));
            at += n;
        }
        assert_eq!(at, stream.len());
        assert_eq!(
            seen,
            [
                "Other",
                "Subscribed",
                "Msg([104, 105])",
                "Msg([97, 98, 99])",
                "Ping",
                "Ack",
                "Error([32, 39, 115, 108, 111, 119, 39])"
            ]
        );
        assert!(next_event(Proto::Nats, b"MSG a/b 1 5\r\nhel").is_none());
    }

    #[test]
    fn payload_carries_seq_and_time() {
        let mut p = Vec::new();
        payload(7, 99, "xx", &mut p);
        assert_eq!(p, br#"{"s":7,"t":99,"p":"xx"}"#);
    }
}
