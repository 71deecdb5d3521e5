//! Fuzzing every decoder network input reaches (issue 11 item 10): HTTP
//! request heads, WebSocket frames and fragments, commands (native and
//! Centrifugo), tokens, topic names and capability patterns, `data`
//! validation. Each property asserts
//! no panic, bounded memory, and the documented outcome.
//!
//! CI runs the default case count; the long run is the same file with
//! `PROPTEST_CASES=10000000 cargo test --release --test fuzz_decoders`
//! (see `benches/fuzz.sh`).

use proptest::prelude::*;
use shardcast::auth::{pattern, Verifier, VerifierConfig};
use shardcast::proto::frame::{self, CloseCode, MessageAssembler};
use shardcast::proto::handshake::{self, HandshakeOutcome};
use shardcast::proto::message;
use shardcast::topic::name;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A request head that is often almost valid: real header names, random
/// values, random order, random damage.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let names = prop_oneof![
        Just("Host".to_string()),
        Just("Upgrade".to_string()),
        Just("Connection".to_string()),
        Just("Sec-WebSocket-Key".to_string()),
        Just("Sec-WebSocket-Version".to_string()),
        Just("Sec-WebSocket-Protocol".to_string()),
        Just("Content-Length".to_string()),
        Just("Transfer-Encoding".to_string()),
        Just("Authorization".to_string()),
        Just("Origin".to_string()),
        "[A-Za-z-]{1,12}",
    ];
    let values = prop_oneof![
        Just("websocket".to_string()),
        Just("Upgrade".to_string()),
        Just("13".to_string()),
        Just("dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        Just("chunked".to_string()),
        "[0-9+ -]{0,20}",
        "[ -~]{0,40}",
    ];
    let line = (names, values).prop_map(|(n, v)| format!("{n}: {v}\r\n"));
    let target = prop_oneof![
        Just("/ws".to_string()),
        Just("/echo".to_string()),
        Just("/v1/publish".to_string()),
        Just("/ws?token=a.b.c".to_string()),
        "[ -~]{0,30}"
    ];
    let method = prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "[A-Z]{0,8}"];
    (
        method,
        target,
        proptest::collection::vec(line, 0..12),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, t, lines, end, tail)| {
            let mut v = format!("{m} {t} HTTP/1.1\r\n{}", lines.concat()).into_bytes();
            if end {
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(&tail);
            v
        })
}

/// A byte stream of client frames: random opcodes, fin and reserved bits,
/// lengths (the length field may lie), masks, payloads, and garbage.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let one = (0u8..16, any::<bool>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 4]>())
        .prop_map(|(op, fin, bits, payload, mask)| {
            let mut out = Vec::new();
            frame::write_client_frame(op, fin, &payload, mask, &mut out);
            out[0] |= bits & 0x70; // reserved bits sometimes
            if bits & 0x80 != 0 {
                out[1] &= 0x7f; // sometimes unmasked
            }
            out
        });
    let garbage = proptest::collection::vec(any::<u8>(), 0..40);
    proptest::collection::vec(prop_oneof![4 => one, 1 => garbage], 1..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn http_heads_never_panic_and_stay_in_bounds(buf in head()) {
        match handshake::parse(&buf, &["shardcast.v1".to_string()], Some("/echo")) {
            HandshakeOutcome::Upgrade(u) => prop_assert!(u.head_len <= buf.len()),
            HandshakeOutcome::Http(r) => prop_assert!(r.head_len <= buf.len()),
            HandshakeOutcome::Incomplete => prop_assert!(buf.len() <= handshake::MAX_REQUEST_HEAD),
            HandshakeOutcome::Reject(status, _) => prop_assert!([400, 404, 426, 431, 501].contains(&status)),
        }
    }

    #[test]
    fn arbitrary_heads_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = handshake::parse(&buf, &[], None);
    }

    #[test]
    fn frame_streams_decode_or_fail_with_a_close_code(mut stream in frames(), max in 1usize..1024) {
        let mut asm = MessageAssembler::default();
        let mut pos = 0;
        loop {
            match asm.decode(&mut stream[pos..], max) {
                Ok(None) => break,
                Ok(Some((n, _event))) => {
                    prop_assert!(n > 0 && pos + n <= stream.len());
                    pos += n;
                }
                Err(e) => {
                    let ok = [CloseCode::PROTOCOL, CloseCode::INVALID_UTF8, CloseCode::TOO_BIG];
                    prop_assert!(ok.contains(&e.code), "{:?}", e.code);
                    break;
                }
            }
            // Memory held for a message in progress stays within the limit.
            prop_assert!(asm.buffered() <= 2 * max + 300, "{} > {}", asm.buffered(), max);
        }
    }

    #[test]
    fn commands_parse_or_get_an_error_code(text in prop_oneof![
        "[ -~]{0,200}",
        r#"\{"op":"(sub|unsub|pub|ping|auth|x)"(,"id":[0-9-]{1,22})?(,"topic":"[a-z/]{0,20}")?(,"data":[\[\]{}0-9",:]{0,20})?(,"token":"[a-z.]{0,10}")?\}"#,
    ]) {
        match message::parse_command(&text) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.code.as_str().is_empty() && !e.message.is_empty()),
        }
    }

    #[test]
    fn centrifugo_commands_parse_or_are_refused(text in prop_oneof![
        "[ -~\n\r]{0,200}",
        r#"\{("id":[0-9-]{1,12},)?"(connect|subscribe|unsubscribe|publish|presence|presence_stats|history|rpc|refresh|send|x)":\{("channel":"[a-z/]{0,12}",)?("recover":(true|1),)?("offset":[0-9-]{1,22},)?("epoch":"[a-z]{0,4}",)?("limit":[0-9-]{1,22},)?("since":\{"offset":[0-9]{1,3}\},)?("data":[\[\]{}0-9",:]{0,20})?\}\}(\n\{\})?"#,
    ]) {
        use shardcast::proto::centrifugo;
        let mut n = 0;
        for line in centrifugo::lines(&text) {
            n += 1;
            // Ok: a command (or a method not served, answered 104); Err:
            // the connection is closed 3501, with a reason.
            if let Err(e) = centrifugo::parse_command(line) {
                prop_assert!(!e.0.is_empty());
            }
            prop_assert!(!line.contains('\n'));
        }
        prop_assert!(n <= text.matches('\n').count() + 1);
    }

    #[test]
    fn tokens_never_verify_by_accident(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5)) {
        let v = Verifier::new(&VerifierConfig {
            keys: vec![shardcast::auth::KeySource::Secret { kid: None, secret: "fuzz-secret-0123456789".into() }],
            ..VerifierConfig::default()
        }).unwrap();
        let token = parts.join(".");
        prop_assert!(v.verify(&token, 1_700_000_000).is_err());
    }

    #[test]
    fn names_and_patterns_never_panic(a in "[a-z*#/.:_-]{0,40}", b in "[a-z/]{0,40}") {
        let valid_name = name::validate(&b).is_ok();
        let valid_pattern = pattern::valid(&a);
        let m = pattern::matches(&a, &b);
        // A pattern without wildcards matches exactly itself.
        if valid_pattern && !a.contains('*') && !a.contains('#') {
            prop_assert_eq!(m, a == b);
        }
        // `tenant/#` matches every valid topic of the tenant.
        if valid_name {
            let all = format!("{}/#", b.split('/').next().unwrap());
            prop_assert!(pattern::matches(&all, &b));
        }
    }

    #[test]
    fn data_validation_never_panics(s in "[ -~\\\\\"\\[\\]{}]{0,200}", depth in 1usize..80) {
        let _ = shardcast::proto::json_check::check_data(&s, depth);
    }
}
