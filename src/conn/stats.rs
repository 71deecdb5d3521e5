//! Per-shard counters and latency histograms.
//!
//! Plain integers owned by the shard's thread: no atomics on the data path.
//! The control plane asks each shard for a [`ShardStats`] snapshot and
//! merges them (histograms too) on the asking side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How many of the busiest topics a snapshot names (each gets a lag series).
pub const TOP_TOPICS: usize = 20;

/// How many consumer groups (busiest by hand-offs) a scrape names.
pub const TOP_GROUPS: usize = 50;

/// How many service topics (busiest by requests) a scrape names.
pub const TOP_SERVICES: usize = 50;

/// Highest latency tracked, µs (60 s); larger samples are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A compact latency histogram for per-group and per-service figures: two
/// significant figures and 32-bit counts (about 10 KiB), allocated on the
/// first sample, so a group or service that never records costs nothing.
#[derive(Debug, Clone, Default)]
pub struct Latency(Option<Box<Histogram<u32>>>);

impl Latency {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.0
            .get_or_insert_with(|| {
                // Invariant: constant, valid bounds.
                Box::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds"))
            })
            .saturating_record(us);
    }

    /// Adds `other`'s samples.
    pub fn merge(&mut self, other: &Latency) {
        match (&mut self.0, &other.0) {
            (Some(a), Some(b)) => {
                let _ = a.add(&**b);
            }
            (None, Some(b)) => self.0 = Some(b.clone()),
            _ => {}
        }
    }

    /// The samples, if any.
    pub fn histogram(&self) -> Option<&Histogram<u32>> {
        self.0.as_deref()
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// The value at quantile `q`, µs (0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

/// One consumer group's figures (its owner's snapshot).
#[derive(Debug, Clone, Default)]
pub struct GroupStats {
    /// Topic.
    pub topic: String,
    /// Group name.
    pub group: String,
    /// Members now.
    pub members: u64,
    /// Publications held not handed out (ready or in backoff).
    pub pending: u64,
    /// Handed out, not settled.
    pub inflight: u64,
    /// Hand-offs (every attempt).
    pub handoffs: u64,
    /// Hand-offs after the first attempt.
    pub redeliveries: u64,
    /// Settled `done`.
    pub done: u64,
    /// Sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Hand-off of the attempt that was settled `done` → that settle.
    pub ack_latency: Latency,
}

/// One service topic's request figures, counted on the requesters' shards
/// under the topic the request was made to (a fallback's outcome counts
/// for the service first asked).
#[derive(Debug, Clone, Default)]
pub struct ServiceStats {
    /// Requests made.
    pub requests: u64,
    /// Requests that got their final reply.
    pub answered: u64,
    /// Requests answered `no_responders`.
    pub no_responders: u64,
    /// Requests answered `timeout`.
    pub timeouts: u64,
    /// Requests sent on to their fallback.
    pub fallbacks: u64,
    /// Requests the requester cancelled (`cancel` or disconnect).
    pub cancels: u64,
    /// Request → first reply forwarded.
    pub first_reply: Latency,
    /// Request → final reply forwarded.
    pub final_reply: Latency,
}

impl ServiceStats {
    /// Adds `other`'s figures.
    pub fn merge(&mut self, other: &ServiceStats) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.no_responders += other.no_responders;
        self.timeouts += other.timeouts;
        self.fallbacks += other.fallbacks;
        self.cancels += other.cancels;
        self.first_reply.merge(&other.first_reply);
        self.final_reply.merge(&other.final_reply);
    }
}

/// Counters a shard increments as it works.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Connections accepted.
    pub connections_opened: u64,
    /// Connections closed (socket gone).
    pub connections_closed: u64,
    /// Connections refused at the limit or while draining.
    pub connections_refused: u64,
    /// Closed connections by the close code the server sent (0: none sent,
    /// e.g. the peer just went away).
    pub closed_by_code: BTreeMap<u16, u64>,
    /// WebSocket upgrades completed.
    pub handshakes: u64,
    /// Upgrade requests refused (garbage, wrong version, head too large…).
    pub handshakes_failed: u64,
    /// Plain HTTP requests on the public listener.
    pub http_requests: u64,
    /// Text messages handled as commands.
    pub commands: u64,
    /// Connections that did not finish the upgrade in time (slowloris).
    pub handshake_timeouts: u64,
    /// Streams closed for a framing or UTF-8 error.
    pub protocol_errors: u64,
    /// `error` replies by code.
    pub errors_sent: BTreeMap<&'static str, u64>,
    /// Subscriptions added.
    pub subscribes: u64,
    /// Subscriptions removed by `unsub`.
    pub unsubscribes: u64,
    /// Subscribes the owner refused, by reason (topic table bounds).
    pub subscribes_refused: BTreeMap<&'static str, u64>,
    /// `sub`/`unsub` refused at the ingress: the control rate limit, or the
    /// ring to the owner holds no room.
    pub control_refused: BTreeMap<&'static str, u64>,
    /// Publications sequenced by this shard (as owner).
    pub publishes_accepted: u64,
    /// Publications refused, by reason.
    pub publishes_rejected: BTreeMap<&'static str, u64>,
    /// `msg` frames encoded (one per accepted publish: encode-once).
    pub frames_encoded: u64,
    /// Frames queued on a local subscriber.
    pub deliveries: u64,
    /// Normal frames dropped for a slow subscriber (reported by `gap`).
    pub dropped_slow: u64,
    /// Connections closed with 4000 slow consumer.
    pub slow_consumer_closes: u64,
    /// Resumes served from the replay ring.
    pub replay_hits: u64,
    /// Publications replayed.
    pub replayed: u64,
    /// Resumes refused, by reason.
    pub replay_misses: BTreeMap<&'static str, u64>,
    /// Publishes answered as duplicates (`dup: true`).
    pub dedupe_hits: u64,
    /// Publishes refused by a rate limit, by scope (connection, tenant).
    pub rate_limited: BTreeMap<&'static str, u64>,
    /// Server pings sent to idle connections.
    pub pings_sent: u64,
    /// Liveness sweeps skipped because the shard itself ran late.
    pub liveness_sweeps_deferred: u64,
    /// Connections closed (1001) for not answering a ping.
    pub ping_timeouts: u64,
    /// Closing connections dropped at the close linger bound (the peer
    /// neither read the rest nor sent its FIN in time).
    pub close_linger_expired: u64,
    /// Peers that shut their write side (EOF) while open; what they were
    /// owed was still answered.
    pub peer_eofs: u64,
    /// Fanouts that ran out of a slice's budget and were parked to continue
    /// after the reactor ran.
    pub fanout_parked: u64,
    /// Acks held for a confirmation (`AckMode::AfterConfirm`).
    pub acks_held: u64,
    /// Times a connection refused `rate_limited` was left unread until its
    /// `retry_after_ms` (push back instead of more refusals).
    pub reads_paused: u64,
    /// Connections closed 4001 at their token's expiry.
    pub tokens_expired: u64,
    /// Group joins answered (members joined or re-joined).
    pub group_joins: u64,
    /// Group joins refused by the owner (bounds).
    pub group_joins_refused: u64,
    /// Consumer groups created (as owner).
    pub groups_created: u64,
    /// Groups dropped after empty_expire_ms without members.
    pub groups_expired: u64,
    /// Publications handed to a group member (as owner).
    pub group_handoffs: u64,
    /// Group hand-offs queued on a local member.
    pub group_deliveries: u64,
    /// Hand-offs after the first attempt.
    pub group_redeliveries: u64,
    /// Settles applied.
    pub group_settles: u64,
    /// In-flight publications whose ack_wait passed.
    pub group_deadlines_missed: u64,
    /// Publications sent to a dead-letter topic.
    pub group_dead_lettered: u64,
    /// Publishes refused overloaded because a group is full.
    pub group_backpressure: u64,
    /// Publications a group held when it expired.
    pub group_dropped_on_expiry: u64,
    /// Dead-letter publications refused by their topic's owner (bounds).
    pub group_dead_letter_refused: u64,
    /// Requests made by this shard's connections.
    pub requests: u64,
    /// Requests refused at the requests bounds.
    pub requests_refused: u64,
    /// Requests the owner found no member for.
    pub requests_no_responders: u64,
    /// Requests that got their final reply.
    pub requests_answered: u64,
    /// Requests answered timeout.
    pub requests_timed_out: u64,
    /// Requests sent on to their fallback.
    pub requests_fallbacks: u64,
    /// Requests cancelled (requester cancel, disconnect) or cancelled at a responder.
    pub requests_cancelled: u64,
    /// Replies to requests no longer served (cancelled, timed out, unknown).
    pub replies_dropped: u64,
    /// Requests ended because their replies passed requests.max_reply_bytes.
    pub replies_too_large: u64,
    /// Open streams the server ended for idleness (`reason: abandoned`).
    pub streams_abandoned: u64,
    /// Delivery receipts sent to publishers.
    pub receipts_sent: u64,
    /// Stream appends past the soft limit merged into a `rollup` msg.
    pub stream_appends_merged: u64,
    /// Centrifugo subscribes answered `recovered: true`.
    pub cf_recovered: u64,
    /// Centrifugo connections closed 3010 (fell behind past the soft limit).
    pub cf_insufficient_state: u64,
    /// Centrifugo `connect`s answered.
    pub cf_connects: u64,
    /// Centrifugo server API requests refused for their API key (401).
    pub cf_api_refused: u64,
    /// Centrifugo commands refused at a `[centrifugo]` limit, by limit.
    pub cf_refused: BTreeMap<&'static str, u64>,
    /// Durable mode: publications handed to the store.
    pub cluster_appends: u64,
    /// Durable mode: publications reported stored.
    pub cluster_stored: u64,
    /// Durable mode: topics loaded from the store.
    pub cluster_loads: u64,
    /// Durable mode: loads that failed (the waiting commands refused).
    pub cluster_load_errors: u64,
    /// Cluster: publishes forwarded to the node owning their partition.
    pub cluster_forwards: u64,
    /// Cluster: answers to forwarded publishes (acks and refusals).
    pub cluster_forwarded: u64,
    /// Cluster: publications other nodes stored, applied to mirrors here.
    pub cluster_replicated: u64,
    /// Cluster: mirrors reloaded for a gap or an ownership change.
    pub cluster_reloads: u64,
    /// Cluster: ownership changes (a stream taken or given up) seen here.
    pub cluster_ownership_moves: u64,
    /// Cluster: loads answered with a state older than the topic's (a
    /// lagging replica), loaded again.
    pub cluster_stale_reads: u64,
    /// Durable mode: publish received → stored (the ack's wait for the store).
    pub store_latency: Latency,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS connections dropped for a TLS error (bad handshake, bad record,
    /// no common version or cipher suite, plaintext on a TLS listener).
    pub tls_errors: u64,
    /// TLS configs this shard took from a reload (SIGHUP).
    pub tls_reloads: u64,
    /// Times the expiry heap dropped its stale entries (refreshes).
    pub expiry_compactions: u64,
    /// Upgrades and HTTP requests refused 401, by reason.
    pub auth_refused: BTreeMap<&'static str, u64>,
    /// Upgrades refused 403 for their `Origin`.
    pub origin_refused: u64,
    /// Commands refused `forbidden` (outside the tenant or caps).
    pub forbidden: u64,
    /// Refusals by a tenant's quota, by (tenant, kind).
    pub quota_refused: BTreeMap<(String, &'static str), u64>,
    /// `send` calls made by connection writers.
    pub sends: u64,
    /// Bytes those sends wrote.
    pub bytes_sent: u64,
    /// Bookkeeping that should never happen (a bug if non-zero).
    pub internal_errors: u64,
    /// Publish read → frame queued on this shard's subscribers, µs.
    pub deliver_latency_us: Histogram<u64>,
    /// Publish read → ack queued, µs.
    pub ack_latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Counters {
    /// All zero.
    pub fn new() -> Self {
        Self {
            connections_opened: 0,
            connections_closed: 0,
            connections_refused: 0,
            closed_by_code: BTreeMap::new(),
            handshakes: 0,
            handshakes_failed: 0,
            http_requests: 0,
            commands: 0,
            protocol_errors: 0,
            handshake_timeouts: 0,
            errors_sent: BTreeMap::new(),
            subscribes: 0,
            unsubscribes: 0,
            subscribes_refused: BTreeMap::new(),
            control_refused: BTreeMap::new(),
            publishes_accepted: 0,
            publishes_rejected: BTreeMap::new(),
            frames_encoded: 0,
            deliveries: 0,
            dropped_slow: 0,
            slow_consumer_closes: 0,
            replay_hits: 0,
            replayed: 0,
            replay_misses: BTreeMap::new(),
            dedupe_hits: 0,
            rate_limited: BTreeMap::new(),
            pings_sent: 0,
            liveness_sweeps_deferred: 0,
            ping_timeouts: 0,
            close_linger_expired: 0,
            peer_eofs: 0,
            fanout_parked: 0,
            acks_held: 0,
            tokens_expired: 0,
            group_joins: 0,
            group_joins_refused: 0,
            groups_created: 0,
            groups_expired: 0,
            group_handoffs: 0,
            group_deliveries: 0,
            group_redeliveries: 0,
            group_settles: 0,
            group_deadlines_missed: 0,
            group_dead_lettered: 0,
            group_backpressure: 0,
            group_dropped_on_expiry: 0,
            group_dead_letter_refused: 0,
            requests: 0,
            requests_refused: 0,
            requests_no_responders: 0,
            requests_answered: 0,
            requests_timed_out: 0,
            requests_fallbacks: 0,
            requests_cancelled: 0,
            replies_dropped: 0,
            replies_too_large: 0,
            streams_abandoned: 0,
            receipts_sent: 0,
            stream_appends_merged: 0,
            cf_recovered: 0,
            cf_insufficient_state: 0,
            cf_connects: 0,
            cf_api_refused: 0,
            cf_refused: BTreeMap::new(),
            cluster_appends: 0,
            cluster_stored: 0,
            cluster_loads: 0,
            cluster_load_errors: 0,
            cluster_forwards: 0,
            cluster_forwarded: 0,
            cluster_replicated: 0,
            cluster_reloads: 0,
            cluster_ownership_moves: 0,
            cluster_stale_reads: 0,
            store_latency: Latency::default(),
            tls_handshakes: 0,
            tls_errors: 0,
            tls_reloads: 0,
            expiry_compactions: 0,
            reads_paused: 0,
            auth_refused: BTreeMap::new(),
            origin_refused: 0,
            forbidden: 0,
            quota_refused: BTreeMap::new(),
            sends: 0,
            bytes_sent: 0,
            internal_errors: 0,
            deliver_latency_us: histogram(),
            ack_latency_us: histogram(),
        }
    }

    /// Records publish → delivery-queued latency.
    pub fn record_deliver(&mut self, received_at: Instant) {
        let us = received_at.elapsed().as_micros() as u64;
        self.deliver_latency_us.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Durable mode: one publication stored `d` after it was received.
    pub fn record_store(&mut self, d: Duration) {
        self.cluster_stored += 1;
        self.store_latency.record(d);
    }

    /// Records publish → ack-queued latency.
    pub fn record_ack(&mut self, received_at: Instant) {
        let us = received_at.elapsed().as_micros() as u64;
        self.ack_latency_us.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// A shard's counters plus gauges, as sent over the control plane.
#[derive(Debug, Clone)]
pub struct ShardStats {
    /// Shard index.
    pub shard: usize,
    /// Counters.
    pub counters: Counters,
    /// Connections open now.
    pub connections_open: u64,
    /// Local subscriptions now.
    pub subscriptions: u64,
    /// Topics with local subscribers now.
    pub local_topics: u64,
    /// Topics owned now.
    pub owned_topics: u64,
    /// Consumer groups this shard owns.
    pub groups_owned: u64,
    /// Publications those groups hold not handed out (ready or in backoff).
    pub group_pending: u64,
    /// Publications handed out and not settled.
    pub group_inflight: u64,
    /// Bytes those groups retain.
    pub group_bytes: u64,
    /// Requests open on this shard (requester side).
    pub requests_open: u64,
    /// Requests this shard's connections are answering.
    pub requests_serving: u64,
    /// Durable mode: publications waiting for the store here.
    pub cluster_held: u64,
    /// Durable mode: commands waiting for topic loads here.
    pub cluster_loading: u64,
    /// Cluster: streams this node owns (every shard sees the same).
    pub cluster_owned: u64,
    /// Sum of interest counts over owned topics (must equal the sum of all
    /// shards' `subscriptions` for this shard's topics when quiet).
    pub owned_interest: u64,
    /// Bytes queued on all connections.
    pub outbound_bytes: u64,
    /// Largest per-connection outbound queue, bytes.
    pub outbound_max_bytes: u64,
    /// Per outgoing ring: (to shard, occupancy, overflow queue length,
    /// full events, messages pushed).
    pub rings: Vec<RingStats>,
    /// Wake-ups written to this shard's doorbell.
    pub doorbell_kicks: u64,
    /// Publications and bytes retained in this shard's replay rings.
    pub retained: (u64, u64),
    /// Unfinished input held by connections (bytes).
    pub inbound_bytes: u64,
    /// Replay + dedupe bytes the owner holds (bounded by the shard budget).
    pub owner_bytes: u64,
    /// Token stream text the owner holds (bounded by `streams.shard_budget_bytes`).
    pub stream_bytes: u64,
    /// Retained values held, and their bytes.
    pub retained_values: (u64, u64),
    /// Tenant publish buckets tracked (bounded by `rates.max_tenants`).
    pub tenants_tracked: u64,
    /// Publishes metered by the shared bucket of a full tenant table.
    pub tenant_table_overflow: u64,
    /// The owner's counters.
    pub owner: crate::topic::owner::OwnerStats,
    /// The owned topics with the highest seqs: (topic, last seq).
    pub top_topics: Vec<(String, u64)>,
    /// The busiest groups this shard owns (at most [`TOP_GROUPS`]).
    pub top_groups: Vec<GroupStats>,
    /// Per service topic, as seen by this shard's requesters (at most
    /// `requests.max_services`, the rest under `(other)`).
    pub services: Vec<(String, ServiceStats)>,
    /// For local topics with frames still queued: (topic, oldest queued seq).
    pub backlog: Vec<(String, u64)>,
}

/// One outgoing ring's figures.
#[derive(Debug, Clone, Copy)]
pub struct RingStats {
    /// Destination shard.
    pub to: usize,
    /// Messages on the ring now.
    pub occupancy: u64,
    /// Control messages waiting for room.
    pub overflow: u64,
    /// Data refused because the ring was full.
    pub full_events: u64,
    /// Messages pushed.
    pub pushed: u64,
    /// Answers owed by the destination now.
    pub owed: u64,
    /// Requests refused for lack of answer credit.
    pub credit_refusals: u64,
    /// Longest the overflow queue has been.
    pub overflow_high_water: u64,
}

/// Sums over all shards.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Per-shard snapshots, by shard index.
    pub shards: Vec<ShardStats>,
}

impl Totals {
    /// Sums one figure over all shards.
    pub fn sum(&self, f: impl Fn(&ShardStats) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Merged publish → ack-queued latency over all shards.
    pub fn ack_latency(&self) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.shards {
            let _ = h.add(&s.counters.ack_latency_us);
        }
        h
    }

    /// The busiest groups over all shards (each lives on one owner).
    pub fn groups(&self) -> Vec<&GroupStats> {
        let mut all: Vec<&GroupStats> = self.shards.iter().flat_map(|s| s.top_groups.iter()).collect();
        all.sort_by(|a, b| b.handoffs.cmp(&a.handoffs).then_with(|| (&a.topic, &a.group).cmp(&(&b.topic, &b.group))));
        all.truncate(TOP_GROUPS);
        all
    }

    /// Per service topic, merged over the requesters' shards; the busiest
    /// [`TOP_SERVICES`] by requests.
    pub fn services(&self) -> Vec<(String, ServiceStats)> {
        let mut by: BTreeMap<&str, ServiceStats> = BTreeMap::new();
        for s in &self.shards {
            for (topic, st) in &s.services {
                by.entry(topic).or_default().merge(st);
            }
        }
        let mut all: Vec<(String, ServiceStats)> = by.into_iter().map(|(t, s)| (t.to_owned(), s)).collect();
        all.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(&b.0)));
        all.truncate(TOP_SERVICES);
        all
    }

    /// Merged publish → delivery-queued latency over all shards.
    pub fn deliver_latency(&self) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.shards {
            let _ = h.add(&s.counters.deliver_latency_us);
        }
        h
    }
}
