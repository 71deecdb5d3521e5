use super::*;

fn err(text: &str) -> CommandError {
    parse_command(text).unwrap_err()
}

#[test]
fn parses_every_op() {
    let c = parse_command(r#"{"op":"sub","id":1,"topic":"acme/room-1","since":{"seq":41,"epoch":"9f2c41d07ab3"}}"#)
        .unwrap();
    let Command::Sub { id, topic, since, .. } = c else { panic!() };
    assert_eq!((id, &*topic), (Some(1), "acme/room-1"));
    assert_eq!(since, Some(Since { seq: 41, epoch: "9f2c41d07ab3".into() }));

    let c = parse_command(r#"{"op":"pub","id":2,"topic":"acme/room-1","data":{"token":"Hel", "n": [1, 2.50]},"msg_id":"gen-77:3","prio":"critical","extra":true}"#).unwrap();
    let Command::Pub { id, topic, data, msg_id, prio, .. } = c else { panic!() };
    assert_eq!(
        (id, &*topic, msg_id.as_deref(), prio),
        (Some(2), "acme/room-1", Some("gen-77:3"), Some(Prio::Critical))
    );
    assert_eq!(data.get(), r#"{"token":"Hel", "n": [1, 2.50]}"#, "data is carried verbatim");

    assert!(matches!(parse_command(r#"{"op":"unsub","topic":"a/b"}"#).unwrap(), Command::Unsub { id: None, .. }));
    assert!(matches!(parse_command(r#"{"op":"ping","id":9}"#).unwrap(), Command::Ping { id: Some(9) }));
}

#[test]
fn null_data_is_a_value_missing_data_is_an_error() {
    let Command::Pub { data, prio, .. } = parse_command(r#"{"op":"pub","topic":"a/b","data":null}"#).unwrap() else {
        panic!()
    };
    assert_eq!((data.get(), prio), ("null", None));
    let e = err(r#"{"op":"pub","id":3,"topic":"a/b"}"#);
    assert_eq!((e.id, e.code), (Some(3), ErrorCode::BadRequest));
}

#[test]
fn errors_echo_the_id_when_they_can() {
    assert_eq!(err("not json").code, ErrorCode::BadRequest);
    assert_eq!(err("not json").id, None);
    let e = err(r#"{"op":"fly","id":5}"#);
    assert_eq!((e.id, e.code), (Some(5), ErrorCode::UnknownOp));
    let e = err(r#"{"id":6}"#);
    assert_eq!((e.id, e.code), (Some(6), ErrorCode::BadRequest));
    let e = err(r#"{"op":"sub","id":7,"topic":12}"#);
    assert_eq!((e.id, e.code), (Some(7), ErrorCode::BadRequest));
    let e = err(r#"{"op":"ping","id":-1}"#);
    assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
    let e = err(r#"{"op":"pub","id":8,"topic":"a/b","data":1,"prio":"urgent"}"#);
    assert_eq!((e.id, e.code), (Some(8), ErrorCode::BadRequest));
    let long = "x".repeat(129);
    let e = err(&format!(r#"{{"op":"pub","id":9,"topic":"a/b","data":1,"msg_id":"{long}"}}"#));
    assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
    assert_eq!(err("[1,2]").code, ErrorCode::BadRequest);
}

fn payload(frame: &[u8]) -> serde_json::Value {
    let (hlen, len) = match frame[1] {
        126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
        127 => (10, u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize),
        n => (2, n as usize),
    };
    assert_eq!(frame[0], 0x81, "final text frame");
    assert_eq!(frame.len(), hlen + len, "one frame exactly");
    serde_json::from_slice(&frame[hlen..]).unwrap()
}

#[test]
fn encoders_produce_protocol_json() {
    let mut out = Vec::new();
    msg(
        &mut out,
        &MsgFields {
            topic: "acme/room-1",
            seq: 58,
            epoch: "9f2c41d07ab3",
            msg_id: Some("gen-77:3\"q"),
            prio: None,
            from: Some("agent \"7\""),
            data: r#"{"token":"Hel"}"#,
            extra: None,
        },
    );
    let v = payload(&out);
    assert_eq!(
        v,
        serde_json::json!({"op":"msg","topic":"acme/room-1","seq":58,"epoch":"9f2c41d07ab3","msg_id":"gen-77:3\"q","from":"agent \"7\"","data":{"token":"Hel"}})
    );

    type Encoder = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Encoder, serde_json::Value)> = vec![
        (
            Box::new(|o| ack(o, Some(2), "a/b", 58, "e", true)),
            serde_json::json!({"op":"ack","id":2,"topic":"a/b","seq":58,"epoch":"e","dup":true}),
        ),
        (
            Box::new(|o| subscribed(o, Some(1), "a/b", "e", 57, Recovery::Recovered(16))),
            serde_json::json!({"op":"subscribed","id":1,"topic":"a/b","epoch":"e","seq":57,"recovered":true,"replayed":16}),
        ),
        (
            Box::new(|o| subscribed(o, None, "a/b", "e", 0, Recovery::Failed("expired"))),
            serde_json::json!({"op":"subscribed","topic":"a/b","epoch":"e","seq":0,"recovered":false,"replayed":0,"reason":"expired"}),
        ),
        (Box::new(|o| unsubscribed(o, Some(3), "a/b")), serde_json::json!({"op":"unsubscribed","id":3,"topic":"a/b"})),
        (Box::new(|o| pong(o, None)), serde_json::json!({"op":"pong"})),
        (
            Box::new(|o| error(o, Some(4), ErrorCode::RateLimited, "slow \"down\"", Some(250))),
            serde_json::json!({"op":"error","id":4,"code":"rate_limited","message":"slow \"down\"","retry_after_ms":250}),
        ),
        (Box::new(|o| gap(o, "a/b", 5, 9)), serde_json::json!({"op":"gap","topic":"a/b","from":5,"to":9})),
        (Box::new(|o| drain(o, 1500)), serde_json::json!({"op":"drain","reconnect_after_ms":1500})),
    ];
    for (encode, want) in cases {
        let mut out = Vec::new();
        encode(&mut out);
        assert_eq!(payload(&out), want);
    }
}

#[test]
fn frame_lengths_cover_all_header_sizes() {
    for n in [100usize, 125, 126, 200, 65_535, 65_536, 70_000] {
        let mut out = vec![0xAA];
        append_text_frame(&mut out, |o| o.extend(std::iter::repeat_n(b'x', n)));
        let f = &out[1..];
        let (hlen, len) = match f[1] {
            126 => (4, u16::from_be_bytes([f[2], f[3]]) as usize),
            127 => (10, u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize),
            l => (2, l as usize),
        };
        assert_eq!((len, f.len()), (n, hlen + n), "payload {n}");
        assert_eq!(out[0], 0xAA, "earlier bytes untouched");
    }
}

#[test]
fn batch_bounds() {
    let one = r#"{"topic":"a/b","data":1}"#;
    let items = |n: usize| format!("[{}]", vec![one; n].join(","));
    assert_eq!(parse_http_batch(&items(MAX_BATCH)).unwrap().len(), MAX_BATCH);
    assert_eq!(parse_http_batch(&items(MAX_BATCH + 1)).unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(parse_http_batch("[]").unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(parse_http_batch(r#"{"topic":"a/b"}"#).unwrap_err().code, ErrorCode::BadRequest);
}
