use super::*;

/// A masked client frame (the RFC's §5.7 mask).
fn client(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(op, fin, payload, [0x37, 0xfa, 0x21, 0x3d], &mut out);
    out
}

fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<String>, FrameError> {
    let mut buf = bytes.to_vec();
    let mut asm = MessageAssembler::default();
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some((n, ev)) = asm.decode(&mut buf[pos..], max)? {
        pos += n;
        if let Some(ev) = ev {
            out.push(format!("{ev:?}"));
        }
    }
    assert_eq!(pos, bytes.len(), "every byte consumed");
    Ok(out)
}

#[test]
fn rfc_masked_hello() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    assert_eq!(decode_all(&bytes, 1024).unwrap(), vec![r#"Text("Hello")"#]);
}

#[test]
fn every_prefix_is_incomplete() {
    let bytes = client(1, true, &[b'x'; 300]);
    for n in 0..bytes.len() {
        let mut buf = bytes[..n].to_vec();
        let mut asm = MessageAssembler::default();
        assert_eq!(asm.decode(&mut buf, 1024).unwrap(), None, "prefix {n}");
    }
}

#[test]
fn fragments_reassemble_with_control_frames_between() {
    let mut bytes = client(1, false, b"Hel");
    bytes.extend(client(9, true, b"p"));
    bytes.extend(client(0, false, b"lo "));
    bytes.extend(client(0, true, "wörld".as_bytes()));
    bytes.extend(client(1, true, b"next"));
    let got = decode_all(&bytes, 1024).unwrap();
    assert_eq!(got, vec![r#"Ping([112])"#, r#"Text("Hello wörld")"#, r#"Text("next")"#]);
}

#[test]
fn utf8_split_across_fragments_is_fine_invalid_is_1007() {
    let e = "é".as_bytes();
    let mut bytes = client(1, false, &e[..1]);
    bytes.extend(client(0, true, &e[1..]));
    assert_eq!(decode_all(&bytes, 64).unwrap(), vec![r#"Text("é")"#]);
    let err = decode_all(&client(1, true, &[0xff, 0xfe]), 64).unwrap_err();
    assert_eq!(err.code, CloseCode::INVALID_UTF8);
}

#[test]
fn size_limit_applies_to_frames_and_messages() {
    let err = decode_all(&client(1, true, &[b'a'; 65]), 64).unwrap_err();
    assert_eq!(err.code, CloseCode::TOO_BIG);
    // The header alone is enough to refuse: no need to buffer the payload.
    let head = &client(1, true, &[b'a'; 70_000])[..14];
    let mut buf = head.to_vec();
    let err = MessageAssembler::default().decode(&mut buf, 65_536).unwrap_err();
    assert_eq!(err.code, CloseCode::TOO_BIG);
    let mut frags = client(1, false, &[b'a'; 40]);
    frags.extend(client(0, true, &[b'a'; 40]));
    assert_eq!(decode_all(&frags, 64).unwrap_err().code, CloseCode::TOO_BIG);
}

#[test]
fn protocol_violations_are_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x81, 0x01, b'a']),
        ("rsv1", {
            let mut f = client(1, true, b"a");
            f[0] |= 0x40;
            f
        }),
        ("reserved opcode", client(3, true, b"a")),
        ("reserved control", client(0xb, true, b"")),
        ("fragmented ping", client(9, false, b"")),
        ("long ping", client(9, true, &[0; 126])),
        ("orphan continuation", client(0, true, b"a")),
        ("text inside fragment", {
            let mut f = client(1, false, b"a");
            f.extend(client(1, true, b"b"));
            f
        }),
        ("close 1 byte", client(8, true, &[3])),
        ("close bad code", client(8, true, &[0x03, 0xed])),
    ];
    for (name, bytes) in cases {
        let err = decode_all(&bytes, 1024).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL, "{name}");
    }
}

#[test]
fn close_frames() {
    assert_eq!(decode_all(&client(8, true, b""), 64).unwrap(), vec!["Close(None)"]);
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    assert_eq!(decode_all(&client(8, true, &p), 64).unwrap(), vec!["Close(Some(1000))"]);
    let mut bad = 1000u16.to_be_bytes().to_vec();
    bad.push(0xff);
    assert_eq!(decode_all(&client(8, true, &bad), 64).unwrap_err().code, CloseCode::INVALID_UTF8);
}

#[test]
fn binary_is_reassembled_with_its_payload() {
    let mut bytes = client(2, false, b"ab");
    bytes.extend(client(0, true, b"cd"));
    assert_eq!(decode_all(&bytes, 64).unwrap(), vec!["Binary([97, 98, 99, 100])"]);
}

/// RFC 6455 §8.1 fail-fast: invalid UTF-8 in a text fragment closes 1007
/// at that fragment, before the message ends; a code point split across
/// fragments is fine.
#[test]
fn invalid_text_fails_at_the_fragment() {
    let mut asm = MessageAssembler::default();
    let mut first = client(1, false, "ok \u{00fc}".as_bytes());
    let (n, ev) = asm.decode(&mut first, 64).unwrap().unwrap();
    assert_eq!((n, ev.is_none()), (first.len(), true));
    let mut bad = client(0, false, &[0xce, 0xba, 0xff]);
    assert_eq!(asm.decode(&mut bad, 64).unwrap_err().code, CloseCode::INVALID_UTF8);
    // "κ" (ce ba) split over two fragments.
    let mut bytes = client(1, false, &[b'x', 0xce]);
    bytes.extend(client(0, false, &[0xba]));
    bytes.extend(client(0, true, b"!"));
    assert_eq!(decode_all(&bytes, 64).unwrap(), vec!["Text(\"x\u{3ba}!\")"]);
}

#[test]
fn server_frames_round_trip_through_tungstenite_header_parser() {
    for len in [0usize, 5, 125, 126, 65_535, 65_536] {
        let mut out = Vec::new();
        write_frame(ServerOp::Text, &vec![b'x'; len], &mut out);
        assert_eq!(out.len(), header_len(len) + len);
        let (h, l) = FrameHeader::parse(&mut Cursor::new(&out)).unwrap().unwrap();
        assert_eq!((l as usize, h.mask, h.is_final), (len, None, true));
    }
    let mut close = Vec::new();
    write_close(CloseCode::SLOW_CONSUMER, "slow consumer", &mut close);
    assert_eq!(&close[..4], &[0x88, 15, 0x0f, 0xa0]);
}

#[test]
fn unmask_matches_bytewise_xor_at_every_length() {
    let mask = [1, 2, 3, 4];
    for len in 0..40 {
        let data: Vec<u8> = (0..len as u8).collect();
        let mut fast = data.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(fast, slow, "len {len}");
    }
}
