//! Shared bits of the reference servers: the protocol subset the loadgen
//! speaks (`sub` → `subscribed`, `pub` → `ack` + `msg` with a per-topic seq),
//! and WebSocket framing for a single-threaded server.

use std::collections::HashMap;

/// Per-topic sequence numbers.
#[derive(Default)]
pub struct Seqs(HashMap<String, u64>);

impl Seqs {
    /// The next seq of `topic`.
    pub fn next(&mut self, topic: &str) -> u64 {
        let s = self.0.entry(topic.to_string()).or_default();
        *s += 1;
        *s
    }

    /// The last seq of `topic`.
    pub fn last(&self, topic: &str) -> u64 {
        self.0.get(topic).copied().unwrap_or(0)
    }
}

/// What a client command asks for.
pub enum Cmd<'a> {
    /// Subscribe to a topic.
    Sub(String),
    /// Publish raw JSON `data` to a topic.
    Pub(String, &'a str),
    /// Anything else (ignored).
    Other,
}

/// Parses a client command (the subset the loadgen sends).
pub fn parse(text: &str) -> Cmd<'_> {
    #[derive(serde::Deserialize)]
    struct W<'a> {
        op: String,
        topic: Option<String>,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    match serde_json::from_str::<W<'_>>(text) {
        Ok(W { op, topic: Some(t), .. }) if op == "sub" => Cmd::Sub(t),
        Ok(W { op, topic: Some(t), data: Some(d) }) if op == "pub" => Cmd::Pub(t, d.get()),
        _ => Cmd::Other,
    }
}

/// The JSON replies, shardcast-shaped.
pub fn subscribed(topic: &str, seq: u64) -> String {
    format!(r#"{{"op":"subscribed","id":1,"topic":"{topic}","epoch":"peer","seq":{seq}}}"#)
}

/// An ack.
pub fn ack(topic: &str, seq: u64) -> String {
    format!(r#"{{"op":"ack","topic":"{topic}","seq":{seq},"epoch":"peer","dup":false}}"#)
}

/// A publication.
pub fn msg(topic: &str, seq: u64, data: &str) -> String {
    format!(r#"{{"op":"msg","topic":"{topic}","seq":{seq},"epoch":"peer","data":{data}}}"#)
}

/// Appends an unmasked server text frame.
pub fn server_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Decodes one masked client frame at the front of `buf`: (bytes used,
/// opcode, unmasked payload).
pub fn client_frame(buf: &[u8]) -> Option<(usize, u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (mut at, len) = match buf[1] & 0x7f {
        126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    let mask = if buf[1] & 0x80 != 0 {
        let m = [*buf.get(at)?, *buf.get(at + 1)?, *buf.get(at + 2)?, *buf.get(at + 3)?];
        at += 4;
        m
    } else {
        [0; 4]
    };
    let end = at + len;
    let payload = buf.get(at..end)?.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
    Some((end, op, payload))
}

/// The `Sec-WebSocket-Accept` value for a key (RFC 6455 §1.3).
pub fn accept_key(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}
