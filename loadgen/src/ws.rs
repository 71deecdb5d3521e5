//! A minimal WebSocket client codec for load generation: the upgrade
//! request, masked text frames out, unmasked server frames in, and a fast
//! scan of `msg` frames for the fields the loadgen checks (no full JSON
//! parse on the hot path).

/// The upgrade request for `/ws` (a fixed key; the loadgen checks the 101).
pub fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
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
        let mask = self.next();
        out.push(0x81);
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
    let end = start + len;
    (buf.len() >= end).then_some(Frame { opcode, start, end })
}

/// The unsigned integer after `key` (e.g. `"seq":`) in `text`.
pub fn find_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
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

/// The string after `key` (which ends with the opening quote), up to the
/// next quote (topic names need no escaping).
pub fn find_str(text: &[u8], key: &[u8]) -> Option<String> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
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
    fn frames_and_fields() {
        let mut out = Vec::new();
        Masker::new(7).text_frame(b"hello", &mut out);
        assert_eq!((out[0], out[1]), (0x81, 0x85));
        let server = [&[0x81u8, 0x1b][..], br#"{"op":"msg","seq":42,"t":9}"#].concat();
        let f = parse_frame(&server).unwrap();
        let text = &server[f.start..f.end];
        assert_eq!(op(text), b"msg");
        assert_eq!(find_u64(text, b"\"seq\":"), Some(42));
        assert_eq!(find_u64(text, b"\"t\":"), Some(9));
        assert!(parse_frame(&server[..10]).is_none());
        assert_eq!(parse_response_head(b"HTTP/1.1 101 Switching\r\nA: b\r\n\r\nrest"), Some((32, 101)));
    }
}
