//! The HTTP/1.1 request that opens every public connection (RFC 6455 §4.2).
//!
//! Parsing is httparse over the bytes received so far; the accept key comes
//! from tungstenite. A request is either a valid WebSocket upgrade at `/ws`,
//! a plain HTTP request the caller may route (the HTTP API), or an error with
//! the status to answer before closing.

use tungstenite::handshake::derive_accept_key;

/// Upper bound on the request head; a longer head is answered 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Maximum header count accepted in a request head.
const MAX_HEADERS: usize = 32;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Request target, e.g. `/ws`.
    pub path: String,
    /// Length of the head in bytes (the body, if any, starts here).
    pub head_len: usize,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Content-Type`, if given.
    pub content_type: Option<String>,
    /// The client asked to close after this request.
    pub close: bool,
}

/// What the connection should do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The head is not complete yet; read more.
    Incomplete,
    /// A valid upgrade: send `response` and switch to WebSocket framing.
    /// Bytes after `head_len` are already WebSocket frames.
    Upgrade {
        /// The `101 Switching Protocols` response to send.
        response: Vec<u8>,
        /// Length of the request head.
        head_len: usize,
    },
    /// A well-formed HTTP request that is not an upgrade to `/ws`.
    Http(HttpRequest),
    /// Answer with this status and reason, then close.
    Reject(u16, &'static str),
}

/// Parses the request head at the front of `buf`. `shard` goes into an
/// informational `X-Shardcast-Shard` response header.
pub fn parse(buf: &[u8], shard: usize) -> HandshakeOutcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_HEAD => {
            return HandshakeOutcome::Reject(431, "Request Header Fields Too Large")
        }
        Ok(httparse::Status::Partial) => return HandshakeOutcome::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return HandshakeOutcome::Reject(431, "Request Header Fields Too Large")
        }
        Err(_) => return HandshakeOutcome::Reject(400, "Bad Request"),
    };
    if head_len > MAX_REQUEST_HEAD {
        return HandshakeOutcome::Reject(431, "Request Header Fields Too Large");
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes())))
    };
    let wants_upgrade = has_token("upgrade", "websocket");
    if !wants_upgrade {
        let content_length = match header("content-length").map(parse_usize) {
            Some(None) => return HandshakeOutcome::Reject(400, "Bad Request"),
            Some(Some(n)) => Some(n),
            None => None,
        };
        return HandshakeOutcome::Http(HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            head_len,
            content_length,
            content_type: header("content-type").map(|v| String::from_utf8_lossy(v).into_owned()),
            close: has_token("connection", "close"),
        });
    }
    if path != "/ws" && !path.starts_with("/ws?") {
        return HandshakeOutcome::Reject(404, "Not Found");
    }
    if method != "GET" || req.version != Some(1) || !has_token("connection", "upgrade") {
        return HandshakeOutcome::Reject(400, "Bad Request");
    }
    if header("sec-websocket-version").map(trim) != Some(b"13") {
        return HandshakeOutcome::Reject(426, "Upgrade Required");
    }
    let Some(key) = header("sec-websocket-key").map(trim) else {
        return HandshakeOutcome::Reject(400, "Bad Request");
    };
    let accept = derive_accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nX-Shardcast-Shard: {shard}\r\n\r\n"
    );
    HandshakeOutcome::Upgrade { response: response.into_bytes(), head_len }
}

/// A complete HTTP/1.1 response with a small body; `extra` is zero or more
/// header lines, each ending in `\r\n`.
pub fn response(status: u16, reason: &str, extra: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The response sent for [`HandshakeOutcome::Reject`]: it always closes.
pub fn reject_response(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{status} {reason}\n");
    response(status, reason, "Connection: close\r\n", "text/plain", body.as_bytes())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_usize(v: &[u8]) -> Option<usize> {
    std::str::from_utf8(trim(v)).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_sample_key_upgrades() {
        let HandshakeOutcome::Upgrade { response, head_len } = parse(UPGRADE, 3) else {
            panic!("expected upgrade");
        };
        assert_eq!(head_len, UPGRADE.len());
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        // The accept value from RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("X-Shardcast-Shard: 3\r\n"));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..UPGRADE.len() {
            assert_eq!(parse(&UPGRADE[..n], 0), HandshakeOutcome::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn garbage_is_bad_request() {
        assert_eq!(parse(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 0), HandshakeOutcome::Reject(400, "Bad Request"));
    }

    #[test]
    fn endless_head_is_431() {
        let mut req = b"GET /ws HTTP/1.1\r\n".to_vec();
        while req.len() <= MAX_REQUEST_HEAD {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse(&req, 0), HandshakeOutcome::Reject(431, _)));
    }

    #[test]
    fn wrong_version_and_missing_key() {
        let v8 = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("Version: 13", "Version: 8");
        assert_eq!(parse(v8.as_bytes(), 0), HandshakeOutcome::Reject(426, "Upgrade Required"));
        let nokey = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(parse(nokey.as_bytes(), 0), HandshakeOutcome::Reject(400, "Bad Request"));
        let post = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("GET", "POST");
        assert_eq!(parse(post.as_bytes(), 0), HandshakeOutcome::Reject(400, "Bad Request"));
        let path = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("/ws", "/other");
        assert_eq!(parse(path.as_bytes(), 0), HandshakeOutcome::Reject(404, "Not Found"));
    }

    #[test]
    fn plain_http_is_routed() {
        let req =
            b"POST /v1/publish HTTP/1.1\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n{\"topic\":1}";
        let HandshakeOutcome::Http(r) = parse(req, 0) else { panic!() };
        assert_eq!((r.method.as_str(), r.path.as_str(), r.content_length), ("POST", "/v1/publish", Some(12)));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(!r.close);
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse(bad, 0), HandshakeOutcome::Reject(400, "Bad Request"));
    }
}
