//! Bad input from the network: every case gets its documented error or close
//! code, and nothing else breaks (the connection stays usable after an
//! `error`; other connections never notice a close).

mod common;

use common::*;
use serde_json::json;
use tungstenite::Message;

fn expect_error(c: &mut Client, code: &str, id: Option<u64>) {
    let e = c.expect_op("error");
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["id"].as_u64(), id, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
}

#[test]
fn bad_commands_get_errors_and_the_connection_stays_usable() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        (r#"{"op":"sub","id":1,"topic":"acme"}"#.into(), "bad_topic", Some(1)),
        (r#"{"op":"sub","id":2,"topic":"acme/room 1"}"#.into(), "bad_topic", Some(2)),
        (r#"{"op":"pub","id":3,"topic":"a//b","data":1}"#.into(), "bad_topic", Some(3)),
        (r#"{"op":"unsub","id":4,"topic":"x"}"#.into(), "bad_topic", Some(4)),
        (format!(r#"{{"op":"sub","id":5,"topic":"a/{}"}}"#, "x".repeat(300)), "bad_topic", Some(5)),
        ("{not json".into(), "bad_request", None),
        ("[]".into(), "bad_request", None),
        (r#"{"op":"pub","id":6,"topic":"a/b"}"#.into(), "bad_request", Some(6)),
        (r#"{"id":7}"#.into(), "bad_request", Some(7)),
        (r#"{"op":"sub","id":8}"#.into(), "bad_request", Some(8)),
        (r#"{"op":"teleport","id":9}"#.into(), "unknown_op", Some(9)),
        (r#"{"op":"unsub","id":10,"topic":"a/b"}"#.into(), "not_subscribed", Some(10)),
    ];
    for (text, code, id) in cases {
        c.ws.send(Message::text(text.clone())).unwrap();
        expect_error(&mut c, code, id);
        c.sync();
    }
    // A binary frame is an error, not a close.
    c.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    expect_error(&mut c, "bad_request", None);
    // The connection still works end to end.
    c.sub("acme/still-here");
    c.publish("acme/still-here", json!("ok"));
    assert_eq!(c.expect_op("msg")["data"], "ok");
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.counters.errors_sent.get("bad_topic").copied().unwrap_or(0)), 5);
    assert_eq!(stats.sum(|s| s.counters.errors_sent.get("bad_request").copied().unwrap_or(0)), 6);
    server.shutdown();
}

#[test]
fn fragmented_text_is_reassembled_and_pings_are_answered() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    let msg = br#"{"op":"ping","id":77}"#;
    let mut frames = client_frame(0x1, false, &msg[..5]);
    frames.extend(client_frame(0x9, true, b"hb")); // a ping between fragments
    frames.extend(client_frame(0x0, false, &msg[5..12]));
    frames.extend(client_frame(0x0, true, &msg[12..]));
    c.send_raw(&frames);
    match c.ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hb"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    assert_eq!(c.expect_op("pong")["id"], 77);
    server.shutdown();
}

fn closed_with(bytes: &[u8], want: u16) {
    let server = server_with(|c| c.limits.max_message_bytes = 1024);
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr);
    bystander.sub("acme/bystander");
    let mut c = Client::connect(addr);
    c.send_raw(bytes);
    assert_eq!(c.expect_close(), want);
    // Everyone else carries on.
    let mut p = Client::connect(addr);
    p.publish("acme/bystander", json!(1));
    assert_eq!(bystander.expect_op("msg")["seq"], 1);
    let stats = wait_stats(&server, "the closed connection gone", |t| t.sum(|s| s.connections_open) == 2);
    let code = stats.shards.iter().map(|s| s.counters.closed_by_code.get(&want).copied().unwrap_or(0)).sum::<u64>();
    assert_eq!(code, 1, "the close code is counted");
    server.shutdown();
}

#[test]
fn oversized_message_closes_1009() {
    closed_with(&client_frame(0x1, true, &vec![b' '; 2000]), 1009);
}

#[test]
fn oversized_fragmented_message_closes_1009() {
    let mut frames = client_frame(0x1, false, &[b' '; 600]);
    frames.extend(client_frame(0x0, true, &[b' '; 600]));
    closed_with(&frames, 1009);
}

#[test]
fn invalid_utf8_closes_1007() {
    closed_with(&client_frame(0x1, true, b"{\"op\":\"\xff\xfe\"}"), 1007);
}

#[test]
fn malformed_frames_close_1002() {
    closed_with(&[0x81, 0x02, b'h', b'i'], 1002); // unmasked client frame
    closed_with(&client_frame(0x3, true, b"x"), 1002); // reserved opcode
}

#[test]
fn client_close_is_echoed() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    closed_with(&client_frame(0x8, true, &payload), 1000);
}

#[test]
fn garbage_instead_of_upgrade_is_answered_and_closed_and_others_are_fine() {
    let server = server();
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr);
    bystander.sub("acme/live");
    for garbage in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage-tls-hello\r\n\r\n"[..],
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"\0\0\0\0\r\n\r\n",
    ] {
        let reply = raw_exchange(addr, garbage);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 4"), "an HTTP error status: {text}");
        assert!(text.contains("Connection: close"), "{text}");
    }
    // A head that never ends is cut off at the size limit.
    let mut long = b"GET /ws HTTP/1.1\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    let text = String::from_utf8_lossy(&raw_exchange(addr, &long)).to_string();
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let mut p = Client::connect(addr);
    p.publish("acme/live", json!("alive"));
    assert_eq!(bystander.expect_op("msg")["data"], "alive");
    let stats = server.stats();
    assert_eq!(stats.sum(|s| s.counters.handshakes_failed), 5);
    server.shutdown();
}

#[test]
fn subscription_limit_is_enforced() {
    let server = server_with(|c| c.limits.max_subscriptions_per_connection = 3);
    let mut c = Client::connect(server.local_addr());
    for i in 0..3 {
        c.sub(&format!("acme/r{i}"));
    }
    c.send(json!({"op":"sub","id":4,"topic":"acme/r3"}));
    expect_error(&mut c, "too_many_subscriptions", Some(4));
    // Re-subscribing to a held topic is not a new subscription.
    c.sub("acme/r0");
    server.shutdown();
}

/// Issue 9 defect 8: `data` nested 30,000 levels deep, or holding a lone
/// surrogate escape, was forwarded; subscribers' JSON parsers reject such
/// frames. Now: `bad_request`, nothing published, connection still usable.
#[test]
fn data_too_deep_or_with_lone_surrogates_is_refused() {
    let server = server_with(high_rates);
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let cmd = format!(r#"{{"op":"pub","id":1,"topic":"acme/deep","data":{deep}}}"#);
    c.ws.send(tungstenite::Message::text(cmd)).unwrap();
    let e = c.expect_op("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("bad_request"), Some(1)), "{e}");
    c.ws.send(tungstenite::Message::text(r#"{"op":"pub","id":2,"topic":"acme/deep","data":"\ud800"}"#)).unwrap();
    let e = c.expect_op("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("bad_request"), Some(2)), "{e}");
    let mut http = Http::connect(addr);
    let r = http.request("POST", "/v1/publish", "application/json", br#"{"topic":"acme/deep","data":"\udc00"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let ok = c.publish("acme/deep", serde_json::json!({"nested": [[["fine"]]], "emoji": "\u{1F600}"}));
    assert_eq!(ok["seq"], 1, "nothing was published before: {ok}");
    server.shutdown();
}
