//! WebSocket framing (RFC 6455 §5) over caller-owned byte buffers.
//!
//! Header parsing and formatting come from tungstenite's [`FrameHeader`];
//! this module adds what a server needs on top: unmasking in place, the
//! masking rule for client frames, control-frame rules, fragment reassembly
//! bounded by the message size limit, and close-frame validation. Decoding
//! never allocates for an unfragmented frame: payloads are borrowed from the
//! caller's buffer.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The close codes this server sends (see the protocol's "Close codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: Self = Self(1000);
    /// Going away: ping timeout.
    pub const GOING_AWAY: Self = Self(1001);
    /// Protocol error: malformed frames.
    pub const PROTOCOL: Self = Self(1002);
    /// Invalid UTF-8 in a text message or close reason.
    pub const INVALID_UTF8: Self = Self(1007);
    /// Policy violation (limits, auth).
    pub const POLICY: Self = Self(1008);
    /// Message too big.
    pub const TOO_BIG: Self = Self(1009);
    /// Internal error.
    pub const INTERNAL: Self = Self(1011);
    /// Service restart (drain).
    pub const RESTART: Self = Self(1012);
    /// Slow consumer: critical or control frames could not be delivered.
    pub const SLOW_CONSUMER: Self = Self(4000);
    /// The connection's token expired without a refresh (4001).
    pub const TOKEN_EXPIRED: Self = Self(4001);
}

/// Why a connection's inbound byte stream must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close {})", code.0)]
pub struct FrameError {
    /// The close code to send.
    pub code: CloseCode,
    /// The close reason to send (short, ASCII).
    pub reason: &'static str,
}

impl FrameError {
    fn new(code: CloseCode, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// One decoded event of the inbound stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete text message, already checked to be valid UTF-8.
    Text(&'a str),
    /// A complete binary message (the protocol rejects these with an
    /// error; the echo endpoint sends it back).
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (liveness only).
    Pong,
    /// A close frame: the peer's code (if any). Echo a close and shut down.
    Close(Option<u16>),
}

/// The kind of fragmented message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FragKind {
    Text,
    Binary,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragmented {
    /// Text or binary, from the first frame.
    kind: FragKind,
    /// Payload so far (bounded by the message size limit).
    buf: Vec<u8>,
    /// Text: bytes of `buf` already known to be valid UTF-8 (each fragment
    /// is checked as it arrives, so invalid text fails fast, RFC 6455 §8.1,
    /// without re-reading what came before).
    checked: usize,
    /// The final fragment arrived and the message was handed out; the buffer
    /// is released at the next `decode`.
    done: bool,
}

/// Reassembles fragmented messages and applies the RFC's frame rules.
///
/// Holds no buffer while no fragmented message is in progress, so an idle
/// connection costs nothing here.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    /// The fragmented message in progress, if any.
    frag: Option<Fragmented>,
}

/// Result of [`MessageAssembler::decode`]: how many bytes were consumed and
/// what, if anything, completed.
pub type Step<'a> = (usize, Option<Decoded<'a>>);

impl MessageAssembler {
    /// Bytes held for a fragmented message in progress (bounded by the
    /// message size limit; 0 when none is).
    pub fn buffered(&self) -> usize {
        self.frag.as_ref().map_or(0, |f| f.buf.capacity())
    }

    /// Decodes at most one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (nothing
    /// is consumed), otherwise the number of bytes consumed and the completed
    /// event, if the frame completed one. `buf` is unmasked in place.
    /// `max_message` bounds a single frame and a reassembled message alike.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8], max_message: usize) -> Result<Option<Step<'a>>, FrameError> {
        if self.frag.as_ref().is_some_and(|f| f.done) {
            self.frag = None;
        }
        let mut cursor = Cursor::new(&*buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => return Err(FrameError::new(CloseCode::PROTOCOL, "reserved opcode")),
        };
        let hlen = cursor.position() as usize;
        check_header(&header, len, max_message)?;
        let len = len as usize; // bounded by max_message above
        if buf.len() - hlen < len {
            return Ok(None);
        }
        let total = hlen + len;
        let payload = &mut buf[hlen..total];
        if let Some(mask) = header.mask {
            unmask(payload, mask);
        }
        let payload: &'a [u8] = payload;
        let event = self.on_frame(&header, payload, max_message)?;
        Ok(Some((total, event)))
    }

    fn on_frame<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Decoded<'a>>, FrameError> {
        match header.opcode {
            OpCode::Control(c) => control_frame(c, payload).map(Some),
            OpCode::Data(Data::Continue) => {
                let Some(f) = self.frag.as_mut() else {
                    return Err(FrameError::new(CloseCode::PROTOCOL, "continuation without start"));
                };
                if f.buf.len() + payload.len() > max_message {
                    return Err(FrameError::new(CloseCode::TOO_BIG, "message too big"));
                }
                f.buf.extend_from_slice(payload);
                if f.kind == FragKind::Text {
                    check_partial_utf8(f)?;
                }
                if !header.is_final {
                    return Ok(None);
                }
                f.done = true;
                let f: &'a Fragmented = f;
                Ok(Some(match f.kind {
                    FragKind::Binary => Decoded::Binary(&f.buf),
                    FragKind::Text => Decoded::Text(utf8(&f.buf)?),
                }))
            }
            OpCode::Data(kind) => {
                if self.frag.is_some() {
                    return Err(FrameError::new(CloseCode::PROTOCOL, "new message inside fragmented one"));
                }
                let kind = if kind == Data::Text { FragKind::Text } else { FragKind::Binary };
                if !header.is_final {
                    let buf = payload.to_vec();
                    let mut f = Fragmented { kind, buf, checked: 0, done: false };
                    if kind == FragKind::Text {
                        check_partial_utf8(&mut f)?;
                    }
                    self.frag = Some(f);
                    return Ok(None);
                }
                Ok(Some(match kind {
                    FragKind::Text => Decoded::Text(utf8(payload)?),
                    FragKind::Binary => Decoded::Binary(payload),
                }))
            }
        }
    }
}

/// Checks the unchecked tail of a text message in progress: an invalid
/// sequence fails now (1007); a sequence cut at the fragment's end waits.
fn check_partial_utf8(f: &mut Fragmented) -> Result<(), FrameError> {
    match std::str::from_utf8(&f.buf[f.checked..]) {
        Ok(_) => f.checked = f.buf.len(),
        Err(e) if e.error_len().is_none() => f.checked += e.valid_up_to(),
        Err(_) => return Err(FrameError::new(CloseCode::INVALID_UTF8, "invalid UTF-8")),
    }
    Ok(())
}

fn check_header(h: &FrameHeader, len: u64, max_message: usize) -> Result<(), FrameError> {
    if h.rsv1 || h.rsv2 || h.rsv3 {
        return Err(FrameError::new(CloseCode::PROTOCOL, "reserved bits set"));
    }
    if h.mask.is_none() {
        return Err(FrameError::new(CloseCode::PROTOCOL, "client frame not masked"));
    }
    if let OpCode::Control(_) = h.opcode {
        if !h.is_final || len > 125 {
            return Err(FrameError::new(CloseCode::PROTOCOL, "bad control frame"));
        }
    }
    if len > max_message as u64 {
        return Err(FrameError::new(CloseCode::TOO_BIG, "message too big"));
    }
    Ok(())
}

fn control_frame(c: Control, payload: &[u8]) -> Result<Decoded<'_>, FrameError> {
    match c {
        Control::Ping => Ok(Decoded::Ping(payload)),
        Control::Pong => Ok(Decoded::Pong),
        Control::Close => parse_close(payload).map(Decoded::Close),
        Control::Reserved(_) => Err(FrameError::new(CloseCode::PROTOCOL, "reserved opcode")),
    }
}

/// Validates a close payload (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::new(CloseCode::PROTOCOL, "bad close payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::new(CloseCode::PROTOCOL, "bad close code"));
            }
            utf8(&payload[2..])?;
            Ok(Some(code))
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(bytes).map_err(|_| FrameError::new(CloseCode::INVALID_UTF8, "invalid utf-8"))
}

/// XORs `buf` with the 4-byte client mask, eight bytes at a time.
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Server frame opcodes this crate emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOp {
    /// A text data frame.
    Text,
    /// A binary data frame.
    Binary,
    /// A pong control frame.
    Pong,
    /// A ping control frame.
    Ping,
    /// A close control frame.
    Close,
}

/// Appends an unmasked, final server frame header for `len` payload bytes.
pub fn write_header(op: ServerOp, len: usize, out: &mut Vec<u8>) {
    let opcode = match op {
        ServerOp::Text => OpCode::Data(Data::Text),
        ServerOp::Binary => OpCode::Data(Data::Binary),
        ServerOp::Pong => OpCode::Control(Control::Pong),
        ServerOp::Ping => OpCode::Control(Control::Ping),
        ServerOp::Close => OpCode::Control(Control::Close),
    };
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(len as u64, out);
}

/// Appends a complete server frame (header and payload).
pub fn write_frame(op: ServerOp, payload: &[u8], out: &mut Vec<u8>) {
    write_header(op, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason`.
pub fn write_close(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    write_header(ServerOp::Close, 2 + reason.len(), out);
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a masked client frame (for clients, tools and tests: the server
/// itself only sends unmasked frames).
pub fn write_client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
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

/// Length of a server frame header for `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

#[cfg(test)]
mod tests;
