//! The naive server a typical team writes first: tokio + tokio-tungstenite,
//! one broadcast channel, one task per client that forwards every
//! publication of the topics it subscribed to (each client task re-encodes
//! and sends each message on its own).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use shardcast_peers::{ack, msg, parse, subscribed, Cmd, Seqs};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:9203")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    assert!(a.listen.ip().is_loopback(), "loopback only");
    let listener = TcpListener::bind(a.listen).await?;
    let (tx, _) = broadcast::channel::<Arc<(String, String)>>(65536);
    let seqs = Arc::new(Mutex::new(Seqs::default()));
    eprintln!("naive-ws on {}", a.listen);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (tx, seqs) = (tx.clone(), seqs.clone());
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
            let (mut sink, mut source) = ws.split();
            let mut rx = tx.subscribe();
            let mut topics: HashSet<String> = HashSet::new();
            loop {
                tokio::select! {
                    m = source.next() => {
                        let Some(Ok(Message::Text(t))) = m else { return };
                        let reply = match parse(t.as_str()) {
                            Cmd::Sub(topic) => {
                                let r = subscribed(&topic, seqs.lock().unwrap().last(&topic));
                                topics.insert(topic);
                                r
                            }
                            Cmd::Pub(topic, data) => {
                                // Sequence and broadcast under the lock so seqs go out in order.
                                let mut s = seqs.lock().unwrap();
                                let seq = s.next(&topic);
                                let _ = tx.send(Arc::new((topic.clone(), msg(&topic, seq, data))));
                                ack(&topic, seq)
                            }
                            Cmd::Other => continue,
                        };
                        if sink.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                    b = rx.recv() => match b {
                        Ok(m) if topics.contains(&m.0) => {
                            if sink.send(Message::text(m.1.clone())).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                }
            }
        });
    }
}
