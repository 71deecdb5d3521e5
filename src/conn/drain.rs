//! Graceful drain on one shard.
//!
//! Every publication acked before the signal must reach every subscriber
//! that keeps up, and nothing may be written after a connection's close.
//! Rings are FIFO per pair, so two barrier rounds over the mesh order it:
//!
//! 1. On `begin_drain` a shard stops its intake (no new connections, no new
//!    publishes) and sends barrier 1 to every peer. A shard that has begun
//!    draining and holds barrier 1 from every peer has sequenced every
//!    publish any peer routed to it before stopping, and pushed their
//!    `Deliver`s; it sends barrier 2.
//! 2. A shard holding barrier 2 from every peer has received every `Deliver`
//!    addressed to it, so it queues `drain` and close 1012 *behind* each
//!    connection's queued publications, and the writers flush and close.

use super::core::ShardCore;
use crate::conn::Phase;
use crate::mesh::MeshMsg;
use crate::proto::frame::{self, CloseCode};
use crate::proto::message;

/// Drain progress of one shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainState {
    /// Barriers received per round from peers.
    seen: [usize; 2],
    /// Barrier 2 was sent.
    sent_second: bool,
    /// Connections were told to go.
    closing: bool,
}

impl ShardCore {
    /// Stops intake and starts the barrier rounds.
    pub fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.broadcast_barrier(1);
        self.advance_drain();
    }

    fn broadcast_barrier(&mut self, round: u8) {
        for s in 0..self.map.shards {
            if s != self.id {
                self.send_to(s, MeshMsg::DrainBarrier { round });
            }
        }
    }

    /// A peer's barrier arrived.
    pub(crate) fn on_drain_barrier(&mut self, round: u8) {
        if let Some(n) = self.drain.seen.get_mut(usize::from(round).wrapping_sub(1)) {
            *n += 1;
        }
        self.advance_drain();
    }

    fn advance_drain(&mut self) {
        let peers = self.map.shards - 1;
        if self.draining && !self.drain.sent_second && self.drain.seen[0] >= peers {
            self.drain.sent_second = true;
            self.broadcast_barrier(2);
        }
        if self.drain.sent_second && !self.drain.closing && self.drain.seen[1] >= peers {
            self.drain.closing = true;
            self.close_all_for_drain();
        }
    }

    /// Queues `drain` + close 1012 behind everything each connection has
    /// queued; connections still in their handshake are answered 503.
    fn close_all_for_drain(&mut self) {
        // Everything sequenced before the drain goes out before the close.
        self.settle_fanout();
        let after = self.policy.liveness.drain_reconnect_after_ms;
        let mut tail = Vec::with_capacity(64);
        message::drain(&mut tail, after);
        frame::write_close(CloseCode::RESTART, "service restart", &mut tail);
        let refuse = crate::proto::handshake::reject_response(503, "Service Unavailable");
        // Centrifugo: close 3001 "shutdown"; the SDKs reconnect and recover.
        let (code, reason) = crate::proto::centrifugo::close_of(CloseCode::RESTART);
        let mut cf_tail = Vec::with_capacity(32);
        frame::write_close(code, reason, &mut cf_tail);
        for (_, c) in self.conns.iter_mut() {
            match c.phase {
                Phase::Open if c.cf.is_some() => {
                    c.out.push_last(&cf_tail);
                    c.close_code = Some(code.0);
                }
                Phase::Open => {
                    c.out.push_last(&tail);
                    c.close_code = Some(CloseCode::RESTART.0);
                }
                Phase::Handshake => {
                    c.out.push_control(usize::MAX, |o| o.extend_from_slice(&refuse));
                }
                // HTTP API connections: what is queued goes out, then FIN.
                Phase::Http => {}
                Phase::Closing => continue,
            }
            c.phase = Phase::Closing;
            c.wake();
        }
    }

    /// Whether this shard has told its connections to go.
    pub fn drain_closing(&self) -> bool {
        self.drain.closing
    }
}
