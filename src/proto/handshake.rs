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
    /// Request path without the query, e.g. `/v1/publish`.
    pub path: String,
    /// A token from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// Length of the head in bytes (the body, if any, starts here).
    pub head_len: usize,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Content-Type`, if given.
    pub content_type: Option<String>,
    /// The client asked to close after this request.
    pub close: bool,
    /// A server API key: `X-API-Key: <k>` or `Authorization: apikey <k>`
    /// (the Centrifugo server API).
    pub api_key: Option<String>,
}

/// What the connection should do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The head is not complete yet; read more.
    Incomplete,
    /// A valid upgrade at `/ws`: the caller checks the token and origin,
    /// then sends [`upgrade_response`] and switches to WebSocket framing.
    /// Bytes after `head_len` are already WebSocket frames.
    Upgrade(Upgrade),
    /// A well-formed HTTP request that is not an upgrade to `/ws`.
    Http(HttpRequest),
    /// Answer with this status and reason, then close.
    Reject(u16, &'static str),
}

/// A well-formed upgrade request, before identity and origin are judged.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` for the response.
    pub accept: String,
    /// Length of the request head.
    pub head_len: usize,
    /// A token from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// `Origin`, if the client (a browser) sent one.
    pub origin: Option<String>,
    /// The first protocol in `Sec-WebSocket-Protocol` that `supported` lists.
    pub protocol: Option<String>,
    /// The upgrade is to `[server] echo_path`, not `/ws`.
    pub echo: bool,
    /// The upgrade is to the Centrifugo endpoint (`/connection/websocket`).
    pub centrifugo: bool,
}

/// The `101 Switching Protocols` response; `shard` goes into an
/// informational `X-Shardcast-Shard` header.
pub fn upgrade_response(u: &Upgrade, shard: usize) -> Vec<u8> {
    let proto = u.protocol.as_deref().map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{proto}X-Shardcast-Shard: {shard}\r\n\r\n",
        u.accept
    )
    .into_bytes()
}

/// A server API key: `X-API-Key`, else `Authorization: apikey <k>`.
fn api_key_of(x: Option<&[u8]>, auth: Option<&[u8]>) -> Option<String> {
    if let Some(k) = x.map(trim).and_then(|k| std::str::from_utf8(k).ok()) {
        return Some(k.to_owned());
    }
    let v = std::str::from_utf8(trim(auth?)).ok()?;
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim().to_owned())
}

/// The token of a request: `Authorization: Bearer <t>`, else `?token=<t>`.
fn token_of(auth: Option<&[u8]>, query: Option<&str>) -> Option<String> {
    if let Some(v) = auth {
        let v = trim(v);
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return std::str::from_utf8(trim(&v[7..])).ok().map(str::to_owned);
        }
    }
    query?.split('&').find_map(|kv| kv.strip_prefix("token=")).filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Parses the request head at the front of `buf`. `shard` goes into an
/// informational `X-Shardcast-Shard` response header.
pub fn parse(buf: &[u8], supported: &[String], echo_path: Option<&str>) -> HandshakeOutcome {
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
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let token = token_of(header("authorization"), query);
    // Repeated header lines of a list-valued field are one list (RFC 9110
    // §5.3): `Connection: keep-alive` + `Connection: Upgrade` is an upgrade.
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| h.value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes())))
    };
    let wants_upgrade = has_token("upgrade", "websocket");
    if !wants_upgrade {
        // RFC 9112 §6.1 and §6.3: a body framed two ways is how requests are
        // smuggled; refuse it, and refuse chunked bodies (not supported), so
        // no byte of a body is ever read as the next request.
        let te = req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        let mut lengths = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length"));
        let content_length = match lengths.next().map(|h| parse_length(h.value)) {
            Some(None) => return HandshakeOutcome::Reject(400, "Bad Request"),
            Some(Some(n)) => Some(n),
            None => None,
        };
        if lengths.any(|h| parse_length(h.value) != content_length) {
            return HandshakeOutcome::Reject(400, "Bad Request");
        }
        if te && content_length.is_some() {
            return HandshakeOutcome::Reject(400, "Bad Request");
        }
        if te {
            return HandshakeOutcome::Reject(501, "Not Implemented");
        }
        return HandshakeOutcome::Http(HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            token,
            head_len,
            content_length,
            content_type: header("content-type").map(|v| String::from_utf8_lossy(v).into_owned()),
            close: has_token("connection", "close"),
            api_key: api_key_of(header("x-api-key"), header("authorization")),
        });
    }
    let echo = echo_path.is_some_and(|e| e == path);
    let centrifugo = path == super::centrifugo::PATH;
    if path != "/ws" && !echo && !centrifugo {
        return HandshakeOutcome::Reject(404, "Not Found");
    }
    if method != "GET" || req.version != Some(1) || !has_token("connection", "upgrade") {
        return HandshakeOutcome::Reject(400, "Bad Request");
    }
    if header("sec-websocket-version").map(trim) != Some(b"13") {
        return HandshakeOutcome::Reject(426, "Upgrade Required");
    }
    // RFC 6455 §4.2.1: the key is the base64 of 16 bytes.
    let Some(key) = header("sec-websocket-key").map(trim).filter(|k| valid_key(k)) else {
        return HandshakeOutcome::Reject(400, "Bad Request");
    };
    // RFC 6455 §4.2.2: answer with one of the offered protocols we speak
    // (a browser fails a connection whose offer goes unanswered).
    let offered = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .filter_map(|p| std::str::from_utf8(trim(p)).ok());
    let mut protocol = None;
    for p in offered {
        if supported.iter().any(|s| s == p) {
            protocol = Some(p.to_owned());
            break;
        }
    }
    HandshakeOutcome::Upgrade(Upgrade {
        accept: derive_accept_key(key),
        head_len,
        token,
        origin: header("origin").and_then(|o| std::str::from_utf8(trim(o)).ok()).map(str::to_owned),
        protocol,
        echo,
        centrifugo,
    })
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
/// A 426 names the version this server speaks (RFC 6455 §4.4).
pub fn reject_response(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{status} {reason}\n");
    let extra =
        if status == 426 { "Sec-WebSocket-Version: 13\r\nConnection: close\r\n" } else { "Connection: close\r\n" };
    response(status, reason, extra, "text/plain", body.as_bytes())
}

/// A `Sec-WebSocket-Key`: 24 base64 characters encoding 16 bytes (so the
/// 22nd character carries only 2 bits and the last two are `==`).
fn valid_key(k: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    k.len() == 24 && k[..21].iter().all(b64) && b"AQgw".contains(&k[21]) && &k[22..] == b"=="
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

/// `Content-Length`: 1*DIGIT, nothing else (no sign, no list, no spaces
/// inside), at most 18 digits.
fn parse_length(v: &[u8]) -> Option<usize> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_sample_key_upgrades() {
        let HandshakeOutcome::Upgrade(u) = parse(UPGRADE, &[], None) else {
            panic!("expected upgrade");
        };
        assert_eq!(u.head_len, UPGRADE.len());
        let text = String::from_utf8(upgrade_response(&u, 3)).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        // The accept value from RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("X-Shardcast-Shard: 3\r\n"));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..UPGRADE.len() {
            assert_eq!(parse(&UPGRADE[..n], &[], None), HandshakeOutcome::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn garbage_is_bad_request() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", &[], None),
            HandshakeOutcome::Reject(400, "Bad Request")
        );
    }

    #[test]
    fn endless_head_is_431() {
        let mut req = b"GET /ws HTTP/1.1\r\n".to_vec();
        while req.len() <= MAX_REQUEST_HEAD {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse(&req, &[], None), HandshakeOutcome::Reject(431, _)));
    }

    #[test]
    fn wrong_version_and_missing_key() {
        let v8 = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("Version: 13", "Version: 8");
        assert_eq!(parse(v8.as_bytes(), &[], None), HandshakeOutcome::Reject(426, "Upgrade Required"));
        let nokey = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(parse(nokey.as_bytes(), &[], None), HandshakeOutcome::Reject(400, "Bad Request"));
        let post = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("GET", "POST");
        assert_eq!(parse(post.as_bytes(), &[], None), HandshakeOutcome::Reject(400, "Bad Request"));
        let path = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("/ws", "/other");
        assert_eq!(parse(path.as_bytes(), &[], None), HandshakeOutcome::Reject(404, "Not Found"));
    }

    #[test]
    fn plain_http_is_routed() {
        let req =
            b"POST /v1/publish HTTP/1.1\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n{\"topic\":1}";
        let HandshakeOutcome::Http(r) = parse(req, &[], None) else { panic!() };
        assert_eq!((r.method.as_str(), r.path.as_str(), r.content_length), ("POST", "/v1/publish", Some(12)));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(!r.close);
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse(bad, &[], None), HandshakeOutcome::Reject(400, "Bad Request"));
    }

    /// Issue 9 defect 4: each of these was served (CL+TE by Content-Length,
    /// so a request hidden in a chunked body ran).
    #[test]
    fn ambiguous_body_framing_is_refused() {
        let bad = |h: &str| parse(format!("POST /v1/publish HTTP/1.1\r\n{h}\r\n\r\n").as_bytes(), &[], None);
        let r400 = HandshakeOutcome::Reject(400, "Bad Request");
        assert_eq!(bad("Content-Length: 5\r\nTransfer-Encoding: chunked"), r400);
        assert_eq!(bad("Transfer-Encoding: chunked\r\nContent-Length: 5"), r400);
        assert_eq!(bad("Content-Length: 5\r\nContent-Length: 6"), r400);
        assert_eq!(bad("Content-Length: +5"), r400);
        assert_eq!(bad("Content-Length: 5, 5"), r400);
        assert_eq!(bad("Content-Length: -1"), r400);
        assert_eq!(bad("Transfer-Encoding: chunked"), HandshakeOutcome::Reject(501, "Not Implemented"));
        let HandshakeOutcome::Http(r) = bad("Content-Length: 5\r\nContent-Length: 5") else { panic!() };
        assert_eq!(r.content_length, Some(5), "identical repeats are one value");
    }

    /// Issue 9 defect 7: each of these got 101 or a wrong answer.
    #[test]
    fn handshake_strictness() {
        let up = String::from_utf8(UPGRADE.to_vec()).unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        for bad_key in ["", "not base64!", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZR==", "dGhlIHNhbXBsZSBub25j"]
        {
            let r = up.replace(key, bad_key);
            assert_eq!(parse(r.as_bytes(), &[], None), HandshakeOutcome::Reject(400, "Bad Request"), "key {bad_key:?}");
        }
        let text = String::from_utf8(reject_response(426, "Upgrade Required")).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        let split =
            up.replace("Connection: keep-alive, Upgrade\r\n", "Connection: keep-alive\r\nConnection: Upgrade\r\n");
        assert!(matches!(parse(split.as_bytes(), &[], None), HandshakeOutcome::Upgrade(_)), "split Connection lines");
        let split = up.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\nUpgrade: websocket\r\n");
        assert!(matches!(parse(split.as_bytes(), &[], None), HandshakeOutcome::Upgrade(_)), "split Upgrade lines");
    }

    #[test]
    fn tokens_origin_and_protocols_are_read() {
        let up = |extra: &str, target: &str| {
            let r = format!(
                "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            );
            let supported = ["shardcast.v1".to_string(), "json".to_string()];
            match parse(r.as_bytes(), &supported, Some("/echo")) {
                HandshakeOutcome::Upgrade(u) => u,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(up("Authorization: Bearer abc.def.ghi\r\n", "/ws").token.as_deref(), Some("abc.def.ghi"));
        assert_eq!(up("", "/ws?x=1&token=q.r.s").token.as_deref(), Some("q.r.s"));
        assert_eq!(up("", "/ws").token, None);
        assert_eq!(up("Origin: https://a.example\r\n", "/ws").origin.as_deref(), Some("https://a.example"));
        let u = up("Sec-WebSocket-Protocol: chat, json, shardcast.v1\r\n", "/ws");
        assert_eq!(u.protocol.as_deref(), Some("json"), "the client's first offer we speak");
        assert!(String::from_utf8(upgrade_response(&u, 0)).unwrap().contains("Sec-WebSocket-Protocol: json\r\n"));
        assert_eq!(up("Sec-WebSocket-Protocol: chat\r\n", "/ws").protocol, None);
        let HandshakeOutcome::Http(r) =
            parse(b"POST /v1/publish?token=t.u.v HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &[], None)
        else {
            panic!()
        };
        assert_eq!((r.path.as_str(), r.token.as_deref()), ("/v1/publish", Some("t.u.v")));
    }
}
