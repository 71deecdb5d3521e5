mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
fn poll(c: &mut Client) -> serde_json::Value {
    loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
#[test]
fn tmp_latency() {
    let server = server();
    let addr = server.local_addr();
    for to in [None, Some(1u64), Some(5)] {
        let mut r = Client::connect_to_shard(addr, 0);
        assert_eq!(r.ask(json!({"op":"sub","id":1,"topic":"acme/svc","group":"w"}))["op"], "subscribed");
        let mut q = Client::connect_to_shard(addr, 1);
        r.ws.get_ref().set_read_timeout(to.map(Duration::from_millis)).unwrap();
        let mut t1 = vec![];
        for i in 0..20 {
            let t = Instant::now();
            q.send(json!({"op":"req","id":i,"topic":"acme/svc","data":1,"timeout_ms":5000}));
            let req = poll(&mut r);
            t1.push(t.elapsed().as_micros());
            r.send(json!({"op":"reply","req":req["req"],"data":2}));
            q.expect_op("reply");
        }
        t1.sort();
        println!("timeout {to:?}: req→request p50 {} max {}", t1[10], t1[19]);
        r.send(json!({"op":"unsub","id":2,"topic":"acme/svc","group":"w"}));
        drop(r);
    }
    server.shutdown();
}
