//! A minimal WebSocket client codec for load generation: the upgrade
//! request, masked text frames out, unmasked server frames in, and a fast
//! scan of `msg` frames for the fields the loadgen checks (no full JSON
//! parse on the hot path).

/// The upgrade request for `/ws` (a fixed key; the loadgen checks the 101).
pub fn upgrade_request(host: &str, token: Option<&str>) -> Vec<u8> {
    upgrade_request_at(host, "/ws", token)
}

/// The upgrade request for `path` (`/ws`, or `/connection/websocket`).
pub fn upgrade_request_at(host: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    format!(
        "GET {path}{query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// An HS256 JWT for `tenant` (sub `loadgen`, valid for an hour), signed by
/// jsonwebtoken: what `--hs256-secret` makes every connection present.
pub fn mint_token(secret: &str, tenant: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({"sub": "loadgen", "tenant": tenant, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)?)
}

/// If `buf` holds a complete HTTP response head: (bytes used, status).
pub fn parse_response_head(buf: &[u8]) -> Option<(usize, u16)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
    Some((end, status))
}

/// Cheap per-frame mask generator (xorshift; masks need not be secret here).
#[derive(Debug)]
pub struct Masker(u32);

impl Masker {
    /// A generator seeded with `seed` (non-zero).
    pub fn new(seed: u32) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0.to_ne_bytes()
    }

    /// Appends a masked, final text frame with `payload` to `out`.
    pub fn text_frame(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.frame(0x1, payload, out);
    }

    /// Appends a masked, final frame of `opcode` (text 0x1, pong 0xA, …).
    pub fn frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
        let mask = self.next();
        out.push(0x80 | (opcode & 0x0f));
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }
}

/// A server frame at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// Opcode (1 text, 8 close, 9 ping, 10 pong…).
    pub opcode: u8,
    /// Payload range within the buffer.
    pub start: usize,
    /// End of the payload (and of the frame).
    pub end: usize,
}

/// Parses one unmasked server frame at the front of `buf`, if complete.
pub fn parse_frame(buf: &[u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (start, len) = match buf[1] & 0x7f {
        126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    // A hostile 64-bit length must not overflow: it just never completes.
    let end = usize::checked_add(start, len)?;
    (buf.len() >= end).then_some(Frame { opcode, start, end })
}

/// The unsigned integer after `key` (e.g. `"seq":`) in `text`.
pub fn find_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &text[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// Leading decimal digits of `b`: (value, digits used).
fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// A `msg`'s `seq` and its data's `t`, read where shardcast (and the
/// reference servers) put them: `{"op":"msg","topic":"…","seq":N,…,
/// "data":{"t":T,…}}`; any other layout falls back to a search. This is the
/// loadgen's hottest function (one call per delivery).
pub fn msg_seq_t(text: &[u8]) -> (Option<u64>, Option<u64>) {
    const HEAD: &[u8] = b"{\"op\":\"msg\",\"topic\":\"";
    const SEQ: &[u8] = b",\"seq\":";
    const T: &[u8] = b"{\"t\":";
    let fast = || {
        let rest = text.strip_prefix(HEAD)?;
        let rest = &rest[memchr::memchr(b'"', rest)? + 1..];
        let rest = rest.strip_prefix(SEQ)?;
        let (seq, n) = digits(rest)?;
        let rest = &rest[n..];
        let data = &rest[memchr::memchr(b'{', rest)?..];
        let t = digits(data.strip_prefix(T)?)?.0;
        Some((Some(seq), Some(t)))
    };
    fast().unwrap_or_else(|| (find_u64(text, b"\"seq\":"), find_u64(text, b"\"t\":")))
}

/// A Centrifugo `pub` push's offset and `t`: `{"push":{"channel":"…",
/// "pub":{"data":{"t":T,…},"offset":N…}}}` as shardcast encodes it, with a
/// search as the fallback. None for any other message.
pub fn cf_offset_t(text: &[u8]) -> Option<(u64, Option<u64>)> {
    const HEAD: &[u8] = b"{\"push\":{\"channel\":\"";
    const PUB: &[u8] = b",\"pub\":{\"data\":{\"t\":";
    const OFFSET: &[u8] = b"\"offset\":";
    let rest = text.strip_prefix(HEAD)?;
    let rest = &rest[memchr::memchr(b'"', rest)? + 1..];
    let t = match rest.strip_prefix(PUB) {
        Some(r) => digits(r).map(|d| d.0),
        None if rest.starts_with(b",\"pub\":") => find_u64(rest, b"{\"t\":"),
        None => return None,
    };
    let at = memchr::memmem::rfind(rest, OFFSET)?;
    Some((digits(&rest[at + OFFSET.len()..])?.0, t))
}

/// A peer payload's `s` and `t` (`{"s":N,"t":T,…}`, as the loadgen writes
/// it), with a search as the fallback.
pub fn peer_seq_t(payload: &[u8]) -> (Option<u64>, Option<u64>) {
    let fast = || {
        let (s, n) = digits(payload.strip_prefix(b"{\"s\":")?)?;
        let t = digits(payload[5 + n..].strip_prefix(b",\"t\":")?)?.0;
        Some((Some(s), Some(t)))
    };
    fast().unwrap_or_else(|| (find_u64(payload, b"\"s\":"), find_u64(payload, b"\"t\":")))
}

/// The string after `key` (which ends with the opening quote), up to the
/// next quote (topic names need no escaping).
pub fn find_str(text: &[u8], key: &[u8]) -> Option<String> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let end = text[at..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&text[at..at + end]).into_owned())
}

/// The `op` of a server message (`{"op":"msg",...}` → `msg`).
pub fn op(text: &[u8]) -> &[u8] {
    const KEY: &[u8] = b"{\"op\":\"";
    if !text.starts_with(KEY) {
        return b"";
    }
    let rest = &text[KEY.len()..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_pushes() {
        let t = br#"{"push":{"channel":"a/b","pub":{"data":{"t":77,"p":"xx"},"offset":12}}}"#;
        assert_eq!(cf_offset_t(t), Some((12, Some(77))));
        let t = br#"{"push":{"channel":"a/b","pub":{"data":[1],"offset":3,"info":{"user":"u","client":""}}}}"#;
        assert_eq!(cf_offset_t(t), Some((3, None)));
        assert_eq!(cf_offset_t(br#"{"push":{"channel":"a/b","join":{"info":{}}}}"#), None);
        assert_eq!(cf_offset_t(b"{}"), None);
    }

    #[test]
    fn frames_and_fields() {
        let mut out = Vec::new();
        Masker::new(7).text_frame(b"hello", &mut out);
        assert_eq!((out[0], out[1]), (0x81, 0x85));
        let mut pong = Vec::new();
        Masker::new(7).frame(0xA, b"sc", &mut pong);
        assert_eq!((pong[0], pong[1], pong.len()), (0x8A, 0x82, 8), "a masked pong echoing the payload");
        let server = [&[0x81u8, 0x1b][..], br#"{"op":"msg","seq":42,"t":9}"#].concat();
        let f = parse_frame(&server).unwrap();
        let text = &server[f.start..f.end];
        assert_eq!(op(text), b"msg");
        assert_eq!(find_u64(text, b"\"seq\":"), Some(42));
        assert_eq!(find_u64(text, b"\"t\":"), Some(9));
        assert!(parse_frame(&server[..10]).is_none());
        assert!(parse_frame(&[0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert_eq!(msg_seq_t(text), (Some(42), Some(9)));
        let real = br#"{"op":"msg","topic":"a/b","seq":7,"epoch":"e1","data":{"t":123,"p":"x{"}}"#;
        assert_eq!(msg_seq_t(real), (Some(7), Some(123)));
        assert_eq!(peer_seq_t(br#"{"s":5,"t":66,"p":"xx"}"#), (Some(5), Some(66)));
        assert_eq!(peer_seq_t(br#"{"t":66,"s":5}"#), (Some(5), Some(66)));
        assert_eq!(parse_response_head(b"HTTP/1.1 101 Switching\r\nA: b\r\n\r\nrest"), Some((32, 101)));
    }
}
