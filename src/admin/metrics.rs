//! Rendering merged shard snapshots as Prometheus text (format 0.0.4) and
//! as JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::conn::stats::{Latency, ShardStats, Totals, TOP_TOPICS};

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str("shardcast_");
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One sample per shard of `f`.
    fn per_shard(&mut self, t: &Totals, name: &str, kind: &str, help: &str, f: impl Fn(&ShardStats) -> u64) {
        self.family(name, kind, help);
        for s in &t.shards {
            self.sample(name, &[("shard", s.shard.to_string())], f(s) as f64);
        }
    }

    /// One sample per shard and label value of a labelled counter.
    fn per_shard_labelled<K: ToString>(
        &mut self,
        t: &Totals,
        name: &str,
        help: &str,
        label: &str,
        f: impl Fn(&ShardStats) -> Vec<(K, u64)>,
    ) {
        self.family(name, "counter", help);
        for s in &t.shards {
            for (k, v) in f(s) {
                self.sample(name, &[("shard", s.shard.to_string()), (label, k.to_string())], v as f64);
            }
        }
    }

    fn summary(&mut self, name: &str, help: &str, h: &Histogram<u64>) {
        self.family(name, "summary", help);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let v = if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e6 };
            self.sample(name, &[("quantile", q.to_string())], v);
        }
        let sum: f64 = h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum();
        self.sample(&format!("{name}_sum"), &[], sum / 1e6);
        self.sample(&format!("{name}_count"), &[], h.len() as f64);
    }
}

impl Out {
    /// A labelled summary family from compact histograms: quantiles,
    /// `_sum` and `_count` per label set.
    fn labelled_summary<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl Iterator<Item = (Vec<(&'static str, String)>, &'a Latency)>,
    ) {
        self.family(name, "summary", help);
        for (labels, lat) in rows {
            for q in [0.5, 0.99, 0.999] {
                let mut l = labels.clone();
                l.push(("quantile", q.to_string()));
                self.sample(name, &l, lat.quantile_us(q) as f64 / 1e6);
            }
            let sum: f64 = lat.histogram().map_or(0.0, |h| {
                h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum()
            });
            self.sample(&format!("{name}_sum"), &labels, sum / 1e6);
            self.sample(&format!("{name}_count"), &labels, lat.count() as f64);
        }
    }

    /// Per consumer group and per service topic series (the busiest ones).
    fn groups_and_services(&mut self, t: &Totals) {
        let groups = t.groups();
        let gl = |g: &crate::conn::stats::GroupStats| vec![("topic", g.topic.clone()), ("group", g.group.clone())];
        type G = fn(&crate::conn::stats::GroupStats) -> u64;
        let rows: [(&str, &str, &str, G); 7] = [
            ("consumer_group_members", "gauge", "Members of the group.", |g| g.members),
            ("consumer_group_pending", "gauge", "Publications the group holds not handed out.", |g| g.pending),
            ("consumer_group_inflight", "gauge", "Publications handed out, not settled.", |g| g.inflight),
            ("consumer_group_handoffs_total", "counter", "Hand-offs to members (every attempt).", |g| g.handoffs),
            ("consumer_group_redeliveries_total", "counter", "Hand-offs after the first attempt.", |g| g.redeliveries),
            ("consumer_group_done_total", "counter", "Publications settled done.", |g| g.done),
            ("consumer_group_dead_lettered_total", "counter", "Publications sent to the dead-letter topic.", |g| {
                g.dead_lettered
            }),
        ];
        for (name, kind, help, f) in rows {
            self.family(name, kind, help);
            for g in &groups {
                self.sample(name, &gl(g), f(g) as f64);
            }
        }
        self.labelled_summary(
            "consumer_group_ack_latency_seconds",
            "Hand-off of the attempt settled done to that settle.",
            groups.iter().map(|g| (gl(g), &g.ack_latency)),
        );
        let services = t.services();
        type S = fn(&crate::conn::stats::ServiceStats) -> u64;
        let rows: [(&str, &str, S); 6] = [
            ("service_requests_total", "Requests made to the service topic.", |s| s.requests),
            ("service_answered_total", "Requests that got their final reply.", |s| s.answered),
            ("service_timeouts_total", "Requests answered timeout.", |s| s.timeouts),
            ("service_fallbacks_total", "Requests sent on to their fallback.", |s| s.fallbacks),
            ("service_cancels_total", "Requests cancelled by their requester (cancel or disconnect).", |s| s.cancels),
            ("service_no_responders_total", "Requests answered no_responders.", |s| s.no_responders),
        ];
        for (name, help, f) in rows {
            self.family(name, "counter", help);
            for (topic, st) in &services {
                self.sample(name, &[("topic", topic.clone())], f(st) as f64);
            }
        }
        self.labelled_summary(
            "service_first_reply_seconds",
            "Request to its first reply forwarded.",
            services.iter().map(|(t, s)| (vec![("topic", t.clone())], &s.first_reply)),
        );
        self.labelled_summary(
            "service_reply_seconds",
            "Request to its final reply forwarded.",
            services.iter().map(|(t, s)| (vec![("topic", t.clone())], &s.final_reply)),
        );
    }
}

/// `{count, p50_us, p99_us, p999_us}` of a compact histogram.
fn latency_json(l: &Latency) -> serde_json::Value {
    json!({"count": l.count(), "p50_us": l.quantile_us(0.5), "p99_us": l.quantile_us(0.99), "p999_us": l.quantile_us(0.999)})
}

fn map_pairs<K: Clone>(m: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Lag of the busiest topics: the owner's last seq minus the last seq every
/// local subscriber on every shard has been sent (0 when nothing is queued).
pub fn topic_lag(t: &Totals) -> Vec<(String, u64, u64)> {
    let mut oldest: HashMap<&str, u64> = HashMap::new();
    for s in &t.shards {
        for (topic, seq) in &s.backlog {
            let e = oldest.entry(topic.as_str()).or_insert(*seq);
            *e = (*e).min(*seq);
        }
    }
    let mut top: Vec<(String, u64, u64)> = t
        .shards
        .iter()
        .flat_map(|s| s.top_topics.iter())
        .map(|(topic, last)| {
            let lag = oldest.get(topic.as_str()).map_or(0, |o| last.saturating_sub(o.saturating_sub(1)));
            (topic.clone(), *last, lag)
        })
        .collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    top.truncate(TOP_TOPICS);
    top
}

/// Appends the admin listener's own counters to a rendered exposition.
pub fn render_admin(text: &mut String, c: &super::AdminCounters) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = Out { text: std::mem::take(text) };
    o.family("admin_connections_refused_total", "counter", "Admin connections answered 503 (all slots busy).");
    o.sample("admin_connections_refused_total", &[], c.refused.load(Relaxed) as f64);
    o.family("admin_request_timeouts_total", "counter", "Admin requests cut off at the whole-request deadline.");
    o.sample("admin_request_timeouts_total", &[], c.timeouts.load(Relaxed) as f64);
    o.family("admin_unauthorized_total", "counter", "Admin requests refused 401 (admin.token).");
    o.sample("admin_unauthorized_total", &[], c.unauthorized.load(Relaxed) as f64);
    o.family("admin_connections_active", "gauge", "Admin connections being served.");
    o.sample("admin_connections_active", &[], c.active.load(Relaxed) as f64);
    *text = o.text;
}

/// The Prometheus exposition of a snapshot.
pub fn render(t: &Totals, draining: bool) -> String {
    let mut o = Out { text: String::with_capacity(16 * 1024) };
    o.family("draining", "gauge", "1 while a graceful drain runs.");
    o.sample("draining", &[], if draining { 1.0 } else { 0.0 });
    crate::cluster::stats::render(&mut o.text);
    o.per_shard(t, "connections_open", "gauge", "Connections open.", |s| s.connections_open);
    o.per_shard(t, "connections_opened_total", "counter", "Connections accepted.", |s| s.counters.connections_opened);
    o.per_shard_labelled(
        t,
        "connections_closed_total",
        "Connections closed, by the close code sent (0: none).",
        "code",
        |s| map_pairs(&s.counters.closed_by_code),
    );
    o.per_shard(t, "connections_refused_total", "counter", "Connections refused (limit or drain).", |s| {
        s.counters.connections_refused
    });
    o.per_shard(t, "handshakes_total", "counter", "WebSocket upgrades completed.", |s| s.counters.handshakes);
    o.per_shard(t, "handshake_failures_total", "counter", "Upgrade requests refused.", |s| {
        s.counters.handshakes_failed
    });
    o.per_shard(t, "handshake_timeouts_total", "counter", "Upgrades not finished in time.", |s| {
        s.counters.handshake_timeouts
    });
    o.per_shard(t, "http_requests_total", "counter", "HTTP API requests.", |s| s.counters.http_requests);
    o.per_shard(t, "subscriptions", "gauge", "Subscriptions held on the shard.", |s| s.subscriptions);
    o.per_shard(t, "topics_owned", "gauge", "Topics the shard owns.", |s| s.owned_topics);
    o.per_shard(t, "groups_owned", "gauge", "Consumer groups the shard owns.", |s| s.groups_owned);
    o.per_shard(t, "group_pending", "gauge", "Group publications not handed out yet.", |s| s.group_pending);
    o.per_shard(t, "group_inflight", "gauge", "Group publications handed out, not settled.", |s| s.group_inflight);
    o.per_shard(t, "group_bytes", "gauge", "Bytes consumer groups retain.", |s| s.group_bytes);
    o.per_shard(t, "requests_open", "gauge", "Requests open (requester side).", |s| s.requests_open);
    o.per_shard(t, "requests_serving", "gauge", "Requests being answered here.", |s| s.requests_serving);
    o.per_shard(t, "cluster_held", "gauge", "Durable mode: publications waiting for the store.", |s| s.cluster_held);
    o.per_shard(t, "cluster_loading", "gauge", "Durable mode: commands waiting for topic loads.", |s| {
        s.cluster_loading
    });
    o.per_shard(t, "cluster_streams_owned", "gauge", "Cluster: streams (units of ownership) this node owns.", |s| {
        s.cluster_owned
    });
    let mut store = crate::conn::stats::Latency::default();
    for s in &t.shards {
        store.merge(&s.counters.store_latency);
    }
    o.labelled_summary(
        "cluster_store_seconds",
        "Durable mode: publish received to stored (what an ack waits for the store).",
        std::iter::once((Vec::new(), &store)),
    );
    o.per_shard(t, "topics_local", "gauge", "Topics with local subscribers.", |s| s.local_topics);
    o.per_shard(t, "replay_retained", "gauge", "Publications kept in replay rings.", |s| s.retained.0);
    o.per_shard(t, "replay_retained_bytes", "gauge", "Bytes kept in replay rings.", |s| s.retained.1);
    o.per_shard(t, "tenants_tracked", "gauge", "Tenant publish buckets held (bounded by rates.max_tenants).", |s| {
        s.tenants_tracked
    });
    o.per_shard(
        t,
        "tenant_table_overflow_total",
        "counter",
        "Publishes metered by the shared bucket of a full tenant table.",
        |s| s.tenant_table_overflow,
    );
    o.per_shard(t, "retained_values", "gauge", "Retained values held (bounded per tenant).", |s| s.retained_values.0);
    o.per_shard(t, "retained_bytes", "gauge", "Retained value bytes (retained.shard_budget_bytes).", |s| {
        s.retained_values.1
    });
    o.per_shard(t, "stream_bytes", "gauge", "Token stream text held (bounded by streams.shard_budget_bytes).", |s| {
        s.stream_bytes
    });
    o.per_shard(t, "owner_bytes", "gauge", "Replay + dedupe bytes held (bounded by replay.shard_budget_bytes).", |s| {
        s.owner_bytes
    });
    o.per_shard_labelled(
        t,
        "owner_evictions_total",
        "State the owner dropped to stay in bounds, by reason.",
        "reason",
        |s| {
            let w = &s.owner;
            vec![
                ("topic_own_idle", w.evicted_own),
                ("topic_empty_idle", w.evicted_empty),
                ("topic_released_quiet", w.released_idle),
                ("replay_age", w.replay_aged),
                ("replay_budget", w.replay_budget),
                ("dedupe_age", w.dedupe_aged),
                ("dedupe_budget", w.dedupe_budget),
            ]
        },
    );
    o.per_shard_labelled(
        t,
        "owner_refused_total",
        "Topic creations refused at a table bound, by reason.",
        "reason",
        |s| vec![("too_many_topics", s.owner.refused_table_full), ("tenant_topic_quota", s.owner.refused_tenant_quota)],
    );
    o.per_shard(t, "owner_sweep_budget_hits_total", "counter", "Sweep ticks that stopped at their work budget.", |s| {
        s.owner.sweep_budget_hits
    });
    o.per_shard_labelled(
        t,
        "centrifugo_refused_total",
        "Centrifugo commands or API calls refused at a [centrifugo] limit, by limit.",
        "limit",
        |s| map_pairs(&s.counters.cf_refused),
    );
    o.per_shard_labelled(t, "control_refused_total", "sub/unsub refused at the ingress, by reason.", "reason", |s| {
        map_pairs(&s.counters.control_refused)
    });
    o.per_shard(t, "publishes_accepted_total", "counter", "Publications sequenced (as owner).", |s| {
        s.counters.publishes_accepted
    });
    o.per_shard_labelled(t, "publishes_rejected_total", "Publications refused, by reason.", "reason", |s| {
        map_pairs(&s.counters.publishes_rejected)
    });
    o.per_shard(t, "frames_encoded_total", "counter", "msg frames encoded (one per publish).", |s| {
        s.counters.frames_encoded
    });
    o.per_shard(t, "deliveries_total", "counter", "Frames queued on subscribers.", |s| s.counters.deliveries);
    o.per_shard_labelled(
        t,
        "dropped_total",
        "Publications dropped for a connection (reported by gap), by reason.",
        "reason",
        |s| vec![("slow_consumer", s.counters.dropped_slow)],
    );
    o.per_shard(t, "slow_consumer_closes_total", "counter", "Connections closed with 4000.", |s| {
        s.counters.slow_consumer_closes
    });
    o.per_shard_labelled(t, "errors_sent_total", "error replies, by code.", "code", |s| {
        map_pairs(&s.counters.errors_sent)
    });
    o.per_shard(t, "replay_hits_total", "counter", "Resumes served from the replay ring.", |s| s.counters.replay_hits);
    o.per_shard(t, "replayed_total", "counter", "Publications replayed.", |s| s.counters.replayed);
    o.per_shard_labelled(t, "replay_misses_total", "Resumes refused, by reason.", "reason", |s| {
        map_pairs(&s.counters.replay_misses)
    });
    o.per_shard(t, "dedupe_hits_total", "counter", "Publishes answered dup: true.", |s| s.counters.dedupe_hits);
    o.per_shard_labelled(t, "rate_limited_total", "Publishes refused by a rate limit, by scope.", "scope", |s| {
        map_pairs(&s.counters.rate_limited)
    });
    o.per_shard(t, "pings_sent_total", "counter", "Pings sent to quiet connections.", |s| s.counters.pings_sent);
    o.per_shard(t, "ping_timeouts_total", "counter", "Connections closed 1001 for no pong.", |s| {
        s.counters.ping_timeouts
    });
    o.per_shard(t, "close_linger_expired_total", "counter", "Closing connections dropped at the linger bound.", |s| {
        s.counters.close_linger_expired
    });
    type Field = fn(&ShardStats) -> u64;
    let counters: [(&str, &str, Field); 53] = [
        ("cluster_appends_total", "Durable mode: publications handed to JetStream.", |s| s.counters.cluster_appends),
        ("cluster_stored_total", "Durable mode: publications JetStream stored (then acked and delivered).", |s| {
            s.counters.cluster_stored
        }),
        ("cluster_loads_total", "Durable mode: topics loaded from JetStream.", |s| s.counters.cluster_loads),
        ("cluster_load_errors_total", "Durable mode: topic loads that failed (their commands refused).", |s| {
            s.counters.cluster_load_errors
        }),
        ("cluster_forwards_total", "Cluster: publishes forwarded to the node owning their partition.", |s| {
            s.counters.cluster_forwards
        }),
        ("cluster_forwarded_total", "Cluster: answers to forwarded publishes (acks and refusals).", |s| {
            s.counters.cluster_forwarded
        }),
        ("cluster_replicated_total", "Cluster: publications stored by other nodes, applied to mirrors here.", |s| {
            s.counters.cluster_replicated
        }),
        ("cluster_reloads_total", "Cluster: mirrors reloaded from JetStream (a gap, an ownership change).", |s| {
            s.counters.cluster_reloads
        }),
        ("cluster_ownership_moves_total", "Cluster: streams this node took or gave up.", |s| {
            s.counters.cluster_ownership_moves
        }),
        (
            "cluster_stale_reads_total",
            "Cluster: loads older than the topic's state (a lagging replica), redone.",
            |s| s.counters.cluster_stale_reads,
        ),
        ("centrifugo_api_refused_total", "Centrifugo server API requests refused for their API key (401).", |s| {
            s.counters.cf_api_refused
        }),
        ("centrifugo_connects_total", "Centrifugo-protocol connects answered.", |s| s.counters.cf_connects),
        ("centrifugo_recovered_total", "Centrifugo subscribes answered recovered: true.", |s| s.counters.cf_recovered),
        (
            "centrifugo_insufficient_state_total",
            "Centrifugo connections closed 3010 (behind past the soft limit; the SDK recovers).",
            |s| s.counters.cf_insufficient_state,
        ),
        ("stream_appends_merged_total", "Stream appends past the soft limit merged into one rollup msg.", |s| {
            s.counters.stream_appends_merged
        }),
        ("receipts_sent_total", "Delivery receipts sent to publishers.", |s| s.counters.receipts_sent),
        ("retained_expired_total", "Retained values whose ttl_ms passed (the expired msg published).", |s| {
            s.owner.retained_expired
        }),
        ("retained_refused_total", "retain publishes refused at retained.max_per_tenant / shard_budget_bytes.", |s| {
            s.owner.retained_refused
        }),
        ("streams_opened_total", "Token streams opened (as owner).", |s| s.owner.streams_opened),
        ("streams_dropped_total", "Closed streams dropped after streams.keep_closed_ms.", |s| s.owner.streams_dropped),
        ("streams_refused_total", "Appends refused at a stream bound (publishes_rejected has the reason).", |s| {
            s.owner.streams_refused
        }),
        ("streams_abandoned_total", "Open streams ended by the server after streams.idle_timeout_ms.", |s| {
            s.counters.streams_abandoned
        }),
        ("replies_too_large_total", "Requests ended because their replies passed requests.max_reply_bytes.", |s| {
            s.counters.replies_too_large
        }),
        ("requests_total", "Requests made by this shard's connections.", |s| s.counters.requests),
        ("requests_refused_total", "Requests refused at the requests bounds.", |s| s.counters.requests_refused),
        ("requests_no_responders_total", "Requests the owner found no member for.", |s| {
            s.counters.requests_no_responders
        }),
        ("requests_answered_total", "Requests that got their final reply.", |s| s.counters.requests_answered),
        ("requests_timed_out_total", "Requests answered timeout.", |s| s.counters.requests_timed_out),
        ("requests_fallbacks_total", "Requests sent on to their fallback.", |s| s.counters.requests_fallbacks),
        (
            "requests_cancelled_total",
            "Requests cancelled (requester cancel, disconnect) or cancelled at a responder.",
            |s| s.counters.requests_cancelled,
        ),
        ("replies_dropped_total", "Replies to requests no longer served (cancelled, timed out, unknown).", |s| {
            s.counters.replies_dropped
        }),
        ("group_dead_letter_refused_total", "Dead-letter publications refused by their topic's owner.", |s| {
            s.counters.group_dead_letter_refused
        }),
        ("group_joins_total", "Group joins answered (members joined or re-joined).", |s| s.counters.group_joins),
        ("group_joins_refused_total", "Group joins refused by the owner (bounds).", |s| s.counters.group_joins_refused),
        ("groups_created_total", "Consumer groups created (as owner).", |s| s.counters.groups_created),
        ("groups_expired_total", "Groups dropped after empty_expire_ms without members.", |s| {
            s.counters.groups_expired
        }),
        ("group_handoffs_total", "Publications handed to a group member (as owner).", |s| s.counters.group_handoffs),
        ("group_deliveries_total", "Group hand-offs queued on a local member.", |s| s.counters.group_deliveries),
        ("group_redeliveries_total", "Hand-offs after the first attempt.", |s| s.counters.group_redeliveries),
        ("group_settles_total", "Settles applied.", |s| s.counters.group_settles),
        ("group_deadlines_missed_total", "In-flight publications whose ack_wait passed.", |s| {
            s.counters.group_deadlines_missed
        }),
        ("group_dead_lettered_total", "Publications sent to a dead-letter topic.", |s| s.counters.group_dead_lettered),
        ("group_backpressure_total", "Publishes refused overloaded because a group is full.", |s| {
            s.counters.group_backpressure
        }),
        ("group_dropped_on_expiry_total", "Publications a group held when it expired.", |s| {
            s.counters.group_dropped_on_expiry
        }),
        ("tls_handshakes_total", "TLS handshakes completed.", |s| s.counters.tls_handshakes),
        ("tls_errors_total", "TLS connections dropped for a TLS error.", |s| s.counters.tls_errors),
        ("tls_reloads_total", "TLS configs taken from a reload (SIGHUP), per shard.", |s| s.counters.tls_reloads),
        ("reads_paused_total", "Connections left unread until their retry_after_ms.", |s| s.counters.reads_paused),
        ("peer_eofs_total", "Peers that half-closed; owed answers still sent.", |s| s.counters.peer_eofs),
        ("fanout_slices_parked_total", "Fanouts continued in a later slice.", |s| s.counters.fanout_parked),
        ("tokens_expired_total", "Connections closed 4001 at their token's expiry.", |s| s.counters.tokens_expired),
        ("origin_refused_total", "Upgrades refused 403 for their Origin.", |s| s.counters.origin_refused),
        ("forbidden_total", "Commands refused forbidden (outside tenant or caps).", |s| s.counters.forbidden),
    ];
    for (name, help, f) in counters {
        o.per_shard(t, name, "counter", help, f);
    }
    o.per_shard_labelled(
        t,
        "auth_refused_total",
        "Upgrades and HTTP requests refused 401, by reason.",
        "reason",
        |s| map_pairs(&s.counters.auth_refused),
    );
    o.family("quota_refused_total", "counter", "Refusals by a tenant's quota, by tenant and kind.");
    for s in &t.shards {
        for ((tenant, kind), n) in &s.counters.quota_refused {
            let labels = [("shard", s.shard.to_string()), ("tenant", tenant.clone()), ("kind", kind.to_string())];
            o.sample("quota_refused_total", &labels, *n as f64);
        }
    }
    o.per_shard(t, "sends_total", "counter", "send calls by connection writers.", |s| s.counters.sends);
    o.per_shard(t, "bytes_sent_total", "counter", "Bytes sent by connection writers.", |s| s.counters.bytes_sent);
    o.per_shard(t, "outbound_queue_bytes", "gauge", "Bytes queued on all connections.", |s| s.outbound_bytes);
    o.per_shard(t, "outbound_queue_max_bytes", "gauge", "Largest per-connection queue.", |s| s.outbound_max_bytes);
    o.per_shard(t, "doorbell_kicks_total", "counter", "Wake-ups written to the shard's doorbell.", |s| {
        s.doorbell_kicks
    });
    o.per_shard(t, "internal_errors_total", "counter", "Bookkeeping errors (should stay 0).", |s| {
        s.counters.internal_errors
    });
    for (name, kind, help) in [
        ("ring_occupancy", "gauge", "Messages on a mesh ring."),
        ("ring_overflow", "gauge", "Control messages waiting for ring room."),
        ("ring_full_total", "counter", "Data refused for a full ring."),
        ("ring_pushed_total", "counter", "Messages pushed on a ring."),
        ("ring_answers_owed", "gauge", "Requests sent on a ring not answered yet."),
        ("ring_credit_refused_total", "counter", "Requests refused: answers owed reached the ring capacity."),
        ("ring_overflow_high_water", "gauge", "Longest the control overflow queue has been."),
    ] {
        o.family(name, kind, help);
        for s in &t.shards {
            for r in &s.rings {
                let v = match name {
                    "ring_occupancy" => r.occupancy,
                    "ring_overflow" => r.overflow,
                    "ring_full_total" => r.full_events,
                    "ring_answers_owed" => r.owed,
                    "ring_credit_refused_total" => r.credit_refusals,
                    "ring_overflow_high_water" => r.overflow_high_water,
                    _ => r.pushed,
                };
                o.sample(name, &[("from", s.shard.to_string()), ("to", r.to.to_string())], v as f64);
            }
        }
    }
    o.summary("publish_deliver_latency_seconds", "Publish read to frame queued on subscribers.", &t.deliver_latency());
    o.summary("publish_ack_latency_seconds", "Publish read to ack queued.", &t.ack_latency());
    o.groups_and_services(t);
    o.family("topic_last_seq", "gauge", "Last seq of the busiest topics.");
    let lag = topic_lag(t);
    for (topic, last, _) in &lag {
        o.sample("topic_last_seq", &[("topic", topic.clone())], *last as f64);
    }
    o.family("topic_lag", "gauge", "Last seq minus the slowest subscriber's sent seq, busiest topics.");
    for (topic, _, l) in &lag {
        o.sample("topic_lag", &[("topic", topic.clone())], *l as f64);
    }
    o.text
}

/// The same figures as JSON, for humans and scripts.
pub fn json(t: &Totals, draining: bool) -> serde_json::Value {
    let lat = |h: Histogram<u64>| {
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        json!({"count": h.len(), "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": h.max()})
    };
    let shards: Vec<_> = t
        .shards
        .iter()
        .map(|s| {
            let c = &s.counters;
            json!({
                "shard": s.shard,
                "connections_open": s.connections_open,
                "connections_opened": c.connections_opened,
                "connections_closed": c.connections_closed,
                "closed_by_code": c.closed_by_code,
                "connections_refused": c.connections_refused,
                "subscriptions": s.subscriptions,
                "topics_owned": s.owned_topics,
                "publishes_accepted": c.publishes_accepted,
                "publishes_rejected": c.publishes_rejected,
                "deliveries": c.deliveries,
                "dropped_slow": c.dropped_slow,
                "slow_consumer_closes": c.slow_consumer_closes,
                "errors_sent": c.errors_sent,
                "replay_hits": c.replay_hits,
                "replay_misses": c.replay_misses,
                "dedupe_hits": c.dedupe_hits,
                "rate_limited": c.rate_limited,
                "outbound_bytes": s.outbound_bytes,
                "rings": s.rings.iter().map(|r| json!({"to": r.to, "occupancy": r.occupancy, "overflow": r.overflow, "full_events": r.full_events, "pushed": r.pushed})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let lag: Vec<_> = topic_lag(t)
        .into_iter()
        .map(|(topic, last, lag)| json!({"topic": topic, "last_seq": last, "lag": lag}))
        .collect();
    json!({
        "draining": draining,
        "connections_open": t.sum(|s| s.connections_open),
        "subscriptions": t.sum(|s| s.subscriptions),
        "publishes_accepted": t.sum(|s| s.counters.publishes_accepted),
        "deliveries": t.sum(|s| s.counters.deliveries),
        "publish_deliver_latency": lat(t.deliver_latency()),
        "publish_ack_latency": lat(t.ack_latency()),
        "topics": lag,
        "groups": t.groups().into_iter().map(|g| json!({
            "topic": g.topic, "group": g.group, "members": g.members, "pending": g.pending,
            "inflight": g.inflight, "handoffs": g.handoffs, "redeliveries": g.redeliveries,
            "done": g.done, "dead_lettered": g.dead_lettered, "ack_latency": latency_json(&g.ack_latency),
        })).collect::<Vec<_>>(),
        "services": t.services().into_iter().map(|(topic, s)| json!({
            "topic": topic, "requests": s.requests, "answered": s.answered, "timeouts": s.timeouts,
            "fallbacks": s.fallbacks, "cancels": s.cancels, "no_responders": s.no_responders,
            "first_reply": latency_json(&s.first_reply), "final_reply": latency_json(&s.final_reply),
        })).collect::<Vec<_>>(),
        "shards": shards,
    })
}
