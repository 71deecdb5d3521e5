//! The loadgen must catch a server that loses, duplicates or reorders
//! publications: a small WebSocket server here speaks just enough of the
//! protocol and injects one fault; the loadgen binary has to exit non-zero
//! and say what it saw. The same server without a fault must pass.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Seq 3 is acked but never delivered.
    Lose,
    /// Seq 2 is delivered twice.
    Duplicate,
    /// Seqs 4 and 5 go out swapped.
    Reorder,
}

fn server_frame(text: &str) -> Vec<u8> {
    let mut f = vec![0x81];
    if text.len() < 126 {
        f.push(text.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(text.as_bytes());
    f
}

/// Reads one masked client frame's payload.
fn read_frame(s: &mut TcpStream) -> Option<String> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let mut len = (h[1] & 0x7f) as usize;
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).ok()?;
        len = u16::from_be_bytes(l) as usize;
    }
    let mut mask = [0u8; 4];
    s.read_exact(&mut mask).ok()?;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    String::from_utf8(p).ok()
}

fn serve(listener: TcpListener, fault: Fault) {
    let subs: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let held: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let seq = Arc::new(Mutex::new(0u64));
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { return };
        let (subs, seq, held) = (subs.clone(), seq.clone(), held.clone());
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read_exact(&mut b).is_err() {
                    return;
                }
                head.push(b[0]);
            }
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n");
            while let Some(text) = read_frame(&mut s) {
                let topic =
                    text.split("\"topic\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
                if text.contains("\"op\":\"sub\"") {
                    let reply = format!(r#"{{"op":"subscribed","id":1,"topic":"{topic}","epoch":"e","seq":0}}"#);
                    let _ = s.write_all(&server_frame(&reply));
                    subs.lock().unwrap().push(s.try_clone().unwrap());
                } else if text.contains("\"op\":\"pub\"") {
                    let data = text.split("\"data\":").nth(1).map(|d| d.trim_end_matches('}')).unwrap_or("{}");
                    let mut seq = seq.lock().unwrap();
                    *seq += 1;
                    let n = *seq;
                    let msg = server_frame(&format!(
                        r#"{{"op":"msg","topic":"{topic}","seq":{n},"epoch":"e","data":{data}}}}}"#
                    ));
                    let mut out: Vec<u8> = match (fault, n) {
                        (Fault::Lose, 3) => Vec::new(),
                        (Fault::Duplicate, 2) => [msg.clone(), msg].concat(),
                        (Fault::Reorder, 4) => {
                            *held.lock().unwrap() = Some(msg);
                            Vec::new()
                        }
                        (Fault::Reorder, 5) => [msg, held.lock().unwrap().take().unwrap_or_default()].concat(),
                        _ => msg,
                    };
                    for sub in subs.lock().unwrap().iter_mut() {
                        let _ = sub.write_all(&out);
                    }
                    out.clear();
                    let ack = format!(r#"{{"op":"ack","topic":"{topic}","seq":{n},"epoch":"e","dup":false}}"#);
                    let _ = s.write_all(&server_frame(&ack));
                }
            }
        });
    }
}

/// Runs a small fanout against a server with `fault`: (success, stdout).
fn run(fault: Fault) -> (bool, String) {
    run_with(fault, &["--rate", "50", "--processes", "1"])
}

fn run_with(fault: Fault, load: &[&str]) -> (bool, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || serve(listener, fault));
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast-loadgen"))
        .args(["fanout", "--addr", &addr.to_string(), "--subscribers", "3", "--publishers", "1"])
        .args(["--duration", "0.5", "--drain", "5"])
        .args(load)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn closed_loop_per_subscriber_window_across_processes() {
    // Two worker processes share the window through the slots file; the
    // run publishes, every subscriber gets every publication, and the
    // drain ends as soon as they have (well before --drain 5).
    let t = std::time::Instant::now();
    let (ok, out) = run_with(Fault::None, &["--rate", "0", "--window", "4", "--processes", "2"]);
    assert!(ok, "{out}");
    let acked: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("publishes     "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(acked > 4, "the window must keep refilling: {out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "exact drain: {:?}\n{out}", t.elapsed());
}

#[test]
fn a_correct_server_passes() {
    let (ok, out) = run(Fault::None);
    assert!(ok, "{out}");
    assert!(out.contains("verify        OK"), "{out}");
}

#[test]
fn loss_is_caught() {
    let (ok, out) = run(Fault::Lose);
    assert!(!ok, "{out}");
    assert!(out.contains("VIOLATIONS") && out.contains("lost 3,"), "{out}");
}

#[test]
fn duplicates_are_caught() {
    let (ok, out) = run(Fault::Duplicate);
    assert!(!ok, "{out}");
    assert!(out.contains("duplicates 3,"), "{out}");
}

#[test]
fn reordering_is_caught() {
    let (ok, out) = run(Fault::Reorder);
    assert!(!ok, "{out}");
    assert!(out.contains("VIOLATIONS"), "{out}");
}
