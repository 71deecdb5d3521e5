//! Liveness: ping connections that have gone quiet, close those that stay
//! quiet (1001), and close connections stuck in their upgrade.
//!
//! One sweep per shard every half ping interval walks the slab; a
//! connection costs no timer of its own for this.

use std::time::{Duration, Instant};

use super::core::ShardCore;
use crate::conn::Phase;
use crate::proto::frame::{self, CloseCode, ServerOp};

impl ShardCore {
    /// How often [`ShardCore::sweep_liveness`] should run.
    pub fn liveness_period(&self) -> Duration {
        Duration::from_millis((self.policy.liveness.ping_interval_ms / 2).clamp(50, 5_000))
    }

    /// Pings quiet connections and closes the ones that did not answer.
    ///
    /// Liveness is judged against the shard's own progress: if this sweep
    /// runs more than two periods late, the shard itself was stalled and
    /// input that arrived meanwhile has not been read yet, so nobody is
    /// judged this round (issue 9 defect 2: a stall used to close active
    /// connections with 1001 "ping timeout").
    pub fn sweep_liveness(&mut self, now: Instant) {
        let last = self.last_liveness_sweep.replace(now);
        if last.is_some_and(|t| now.saturating_duration_since(t) > 2 * self.liveness_period()) {
            self.counters.liveness_sweeps_deferred += 1;
            return;
        }
        let interval = Duration::from_millis(self.policy.liveness.ping_interval_ms);
        let deadline = interval + Duration::from_millis(self.policy.liveness.ping_timeout_ms);
        let mut dead = Vec::new();
        let mut stale = Vec::new();
        let period = self.liveness_period();
        let cf_connect_timeout = Duration::from_millis(self.policy.centrifugo.connect_timeout_ms);
        let mut idle_http = Vec::new();
        let mut late_http = Vec::new();
        let request_deadline = Duration::from_millis(self.limits.handshake_timeout_ms);
        for (idx, c) in self.conns.iter_mut() {
            let quiet = now.saturating_duration_since(c.last_seen);
            let started = c.http.as_ref().and_then(|h| h.partial_since);
            if c.phase == Phase::Http && started.is_some_and(|t| now.saturating_duration_since(t) >= request_deadline) {
                late_http.push(idx);
                continue;
            }
            if c.phase == Phase::Http && quiet >= deadline && !c.http.as_ref().is_some_and(|h| h.busy) {
                idle_http.push(idx);
                continue;
            }
            if c.phase != Phase::Open {
                continue;
            }
            if let Some(cfc) = c.cf.as_mut() {
                // Centrifugo: `connect` is due soon after the upgrade, and the
                // server pings (`{}`) every interval whatever the traffic (the
                // SDKs reconnect when a ping is late); the client's `{}`
                // answers keep `last_seen` fresh.
                if !cfc.connected {
                    if now.saturating_duration_since(cfc.opened) >= cf_connect_timeout {
                        stale.push(idx);
                    }
                    continue;
                }
                if quiet >= deadline {
                    dead.push(idx);
                } else if now.saturating_duration_since(cfc.last_ping) + period >= interval {
                    cfc.last_ping = now;
                    let was_empty = c.out.is_empty();
                    c.out.push_control(usize::MAX, crate::proto::centrifugo::ping);
                    self.counters.pings_sent += 1;
                    if was_empty {
                        c.wake();
                    }
                }
                continue;
            }
            if quiet >= deadline {
                dead.push(idx);
            } else if quiet >= interval && !c.ping_out {
                c.ping_out = true;
                let was_empty = c.out.is_empty();
                c.out.push_control(usize::MAX, |o| frame::write_frame(ServerOp::Ping, b"sc", o));
                self.counters.pings_sent += 1;
                if was_empty {
                    c.wake();
                }
            }
        }
        for idx in late_http {
            // A keep-alive request whose head or body did not complete in
            // time: the same 408 the first request gets.
            self.counters.handshake_timeouts += 1;
            self.close_http(idx, &crate::proto::handshake::reject_response(408, "Request Timeout"));
        }
        for idx in idle_http {
            // An idle keep-alive HTTP connection: just a FIN.
            if let Some(c) = self.conns.get_mut(idx) {
                c.phase = Phase::Closing;
                c.wake();
            }
        }
        for idx in stale {
            self.counters.handshake_timeouts += 1;
            let (code, reason) = crate::proto::centrifugo::STALE;
            self.close(idx, code, reason);
        }
        for idx in dead {
            self.counters.ping_timeouts += 1;
            self.hits.hit(
                self.id,
                super::logs::Hit::PingTimeout,
                "closing a connection that stopped answering pings (1001)",
            );
            self.close(idx, CloseCode::GOING_AWAY, "ping timeout");
        }
    }
}
