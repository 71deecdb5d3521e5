//! `[server] echo_path` (PROTOCOL-EXTENSIONS §7): the conformance endpoint
//! echoes every message through the `/ws` read loop and writer; `/ws`
//! itself is unchanged, and the path is off by default.

mod common;

use std::net::TcpStream;

use common::*;
use tungstenite::Message;

fn connect(addr: std::net::SocketAddr, path: &str) -> Result<tungstenite::WebSocket<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client::client(format!("ws://{addr}{path}"), stream).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        other => panic!("{other}"),
    })
}

#[test]
fn echo_path_echoes_text_binary_and_fragments() {
    let server = server_with(|c| {
        c.server.echo_path = "/echo".into();
        c.limits.max_message_bytes = 1 << 20;
    });
    let addr = server.local_addr();
    let mut ws = connect(addr, "/echo").expect("upgrade at the echo path");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let msgs = vec![
        Message::text("hello, not a command"),
        Message::binary(vec![0u8, 159, 146, 150]),
        Message::binary(big),
        Message::text("ü".repeat(40_000)),
    ];
    for m in &msgs {
        ws.send(m.clone()).unwrap();
        loop {
            match ws.read().unwrap() {
                Message::Ping(_) | Message::Pong(_) => continue,
                got => {
                    assert_eq!(&got, m);
                    break;
                }
            }
        }
    }
    ws.close(None).unwrap();
    // /ws still parses commands: a binary frame there is refused.
    let mut c = Client::connect(addr);
    c.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(c.expect_op("error")["code"], "bad_request");
    server.shutdown();
}

#[test]
fn echo_path_is_off_by_default() {
    let server = server();
    match connect(server.local_addr(), "/echo") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 404),
        other => panic!("{:?}", other.map(|_| ())),
    }
    server.shutdown();
}
