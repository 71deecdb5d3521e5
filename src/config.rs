//! The core-mapping and limits config (`tuning/*.toml`).
//!
//! Parsed once on the main thread before any shard starts; shards get a
//! read-only copy. Every key has a default (the embedded
//! `tuning/default.toml`), unknown keys are errors, and validation errors
//! name the field and the problem.

use std::net::SocketAddr;

use serde::Deserialize;

/// The embedded default config, `tuning/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../tuning/default.toml");

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("config: {0}")]
    Parse(String),
    /// A value out of range or inconsistent with the host.
    #[error("config: `{field}`: {problem}")]
    Invalid {
        /// Dotted field name, e.g. `shards.cpus`.
        field: &'static str,
        /// What is wrong, in plain words.
        problem: String,
    },
}

/// Shortest accepted glommio preemption timer, µs (docs/GLOMMIO-NOTES.md).
pub const MIN_PREEMPT_US: u64 = 10_000;

/// The whole config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Shards and the mesh.
    #[serde(default)]
    pub shards: ShardsConfig,
    /// Per-connection and per-shard limits.
    #[serde(default)]
    pub limits: Limits,
    /// Replay rings and dedupe windows.
    #[serde(default)]
    pub replay: ReplayConfig,
    /// Publish rate limits.
    #[serde(default)]
    pub rates: RateConfig,
    /// Pings, timeouts and drain.
    #[serde(default)]
    pub liveness: LivenessConfig,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Tokens, tenants and browser origins.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Per-tenant quotas (token tenants).
    #[serde(default)]
    pub quotas: QuotasConfig,
    /// TLS on the public listener.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Consumer groups (PROTOCOL-EXTENSIONS §2).
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Request/reply (PROTOCOL-EXTENSIONS §3).
    #[serde(default)]
    pub requests: RequestsConfig,
    /// Token streams (PROTOCOL-EXTENSIONS §4).
    #[serde(default)]
    pub streams: StreamsConfig,
    /// Retained values (PROTOCOL-EXTENSIONS §5).
    #[serde(default)]
    pub retained: RetainedConfig,
    /// Presence (PROTOCOL-EXTENSIONS §6).
    #[serde(default)]
    pub presence: PresenceConfig,
    /// The Centrifugo-compatible endpoint and server API (PROTOCOL-EXTENSIONS §7).
    #[serde(default)]
    pub centrifugo: CentrifugoConfig,
    /// Durability and the cluster on NATS JetStream (PROTOCOL-EXTENSIONS §7).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: publications stored in NATS JetStream before they are acked
/// and delivered (docs/ARCHITECTURE.md, "Cluster and durability").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server (JetStream enabled), e.g. `nats://127.0.0.1:4222`;
    /// empty: in-memory only.
    pub nats_url: String,
    /// This node's name in the cluster, stamped on its appends (`Sc-Inc`).
    pub node_id: String,
    /// JetStream streams the topics' partitions are spread over.
    pub streams: u32,
    /// Replicas of each stream (1, or 3 on a three-server NATS cluster).
    pub replicas: usize,
    /// Publications handed to JetStream and not yet stored, per shard; past
    /// it publishes are refused `overloaded` (before they are sequenced).
    pub max_inflight: usize,
    /// Topics waiting to be loaded from JetStream, per shard, and the
    /// commands one of them may hold meanwhile; past them, `overloaded`.
    pub max_loading: usize,
    /// How long one JetStream request (append, load) may take before it
    /// is retried (appends) or failed (loads).
    pub request_timeout_ms: u64,
    /// A stream's ownership lease (KV `SC_LEASES`): renewed every third of
    /// it; a node that has not renewed for half of it stops sequencing;
    /// another node takes the stream once it expired.
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            node_id: String::new(),
            streams: 8,
            replicas: 1,
            max_inflight: 65_536,
            max_loading: 4096,
            request_timeout_ms: 5000,
            lease_ms: 3000,
        }
    }
}

/// `[centrifugo]`: the Centrifugo client protocol at
/// `/connection/websocket` and the server API at `/api/publish` and
/// `/api/broadcast`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentrifugoConfig {
    /// Serve `/connection/websocket` (JSON protocol v2).
    pub enabled: bool,
    /// The key `X-API-Key` (or `Authorization: apikey <key>`) must carry on
    /// `/api/*`; empty: the server API refuses every request (401).
    pub api_key: String,
    /// A connection must send `connect` within this long, else close 3502.
    pub connect_timeout_ms: u64,
    /// Channels one `broadcast` may name.
    pub max_broadcast_channels: usize,
    /// Commands one text frame may carry (more: close 3501).
    pub max_commands_per_frame: usize,
    /// Subscribes and presence queries one connection may have waiting for
    /// their answers (more: error 106).
    pub max_pending_per_connection: usize,
}

impl Default for CentrifugoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            api_key: String::new(),
            connect_timeout_ms: 10_000,
            max_broadcast_channels: 1000,
            max_commands_per_frame: 256,
            max_pending_per_connection: 256,
        }
    }
}

/// `[presence]`: bounds of presence, kept by each topic's owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Subscribers a `presence` reply lists at most (`count` stays exact).
    pub max_list: usize,
    /// Subscribers with `presence: true` (join/leave events) one tenant may
    /// have per shard; past it such a `sub` gets `overloaded`.
    pub max_watchers_per_tenant: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { max_list: 100, max_watchers_per_tenant: 10_000 }
    }
}

/// `[retained]`: bounds of retained values, kept by each topic's owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetainedConfig {
    /// Retained values one tenant may hold per shard; past it a `retain`
    /// publish making a new one gets `overloaded`.
    pub max_per_tenant: usize,
    /// Retained value bytes per shard; past it, `overloaded`.
    pub shard_budget_bytes: usize,
}

impl Default for RetainedConfig {
    fn default() -> Self {
        Self { max_per_tenant: 10_000, shard_budget_bytes: 64 << 20 }
    }
}

/// `[streams]`: bounds of token streams, kept by each topic's owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Text bytes one stream may hold; past it an append gets `overloaded`.
    pub max_stream_bytes: usize,
    /// Streams (open or kept closed) per topic; a new one replaces the
    /// oldest closed stream, and with none closed gets `overloaded`.
    pub max_per_topic: usize,
    /// Stream text bytes per shard; past it an append gets `overloaded`.
    pub shard_budget_bytes: usize,
    /// How long a closed stream's text is kept for late joiners, ms.
    pub keep_closed_ms: u64,
    /// An open stream without an append this long is ended by the server
    /// (`"reason":"abandoned"`), ms.
    pub idle_timeout_ms: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            max_stream_bytes: 256 << 10,
            max_per_topic: 16,
            shard_budget_bytes: 64 << 20,
            keep_closed_ms: 60_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// `[requests]`: bounds of request/reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Open requests per shard (requester side); past it `req` gets `overloaded`.
    pub max_open: usize,
    /// Open requests per connection; past it `req` gets `overloaded`.
    pub max_per_connection: usize,
    /// Bytes of request data kept for fallbacks per shard.
    pub max_held_bytes: usize,
    /// Reply bytes one request may stream; past it the responder gets
    /// `overloaded` and the requester a final `overloaded` error.
    pub max_reply_bytes: usize,
    /// Service topics one shard keeps request metrics for; requests to
    /// further topics are counted under `(other)`.
    pub max_services: usize,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        Self {
            max_open: 10_000,
            max_per_connection: 256,
            max_held_bytes: 64 << 20,
            max_reply_bytes: 4 << 20,
            max_services: 1024,
        }
    }
}

/// `[groups]`: bounds of consumer groups, kept by each topic's owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Groups per topic.
    pub max_per_topic: usize,
    /// Groups one shard owns (each may keep a 10 KiB ack-latency histogram).
    pub max_groups: usize,
    /// Members per group.
    pub max_members: usize,
    /// Publications a group holds not yet handed out (ready or waiting out
    /// a backoff); past it a publish to the topic gets `overloaded`.
    pub max_pending: usize,
    /// Bytes a group retains (pending and in flight); past it, `overloaded`.
    pub max_pending_bytes: usize,
    /// A group without members keeps what it holds this long, ms.
    pub empty_expire_ms: u64,
    /// First redelivery backoff, ms; doubles per attempt (full jitter),
    /// capped at the group's `ack_wait_ms`.
    pub backoff_base_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_per_topic: 16,
            max_groups: 4096,
            max_members: 1024,
            max_pending: 10_000,
            max_pending_bytes: 16 << 20,
            empty_expire_ms: 300_000,
            backoff_base_ms: 100,
        }
    }
}

/// `[tls]`: when both files are set the public listener speaks only TLS
/// (`wss://…/ws`, `https://…/v1/publish`). SIGHUP re-reads both files;
/// open connections keep their session, new ones get the new certificate.
// Default: no TLS, as tuning/default.toml says (a test checks they agree).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first ("" = no TLS).
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// `[quotas]`: what one tenant (the token's `tenant`) may use; `default`
/// applies to every tenant, `[quotas.tenants.NAME]` overrides it field by
/// field. 0 means "not set here": a tenant's 0 falls back to the default,
/// the default's 0 to the global limit (or none).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Every tenant's quota.
    pub default: crate::auth::TenantQuota,
    /// Overrides by tenant.
    pub tenants: std::collections::BTreeMap<String, crate::auth::TenantQuota>,
}

/// `[auth]`: JWT identity (PROTOCOL-EXTENSIONS §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every `/ws` upgrade and HTTP publish needs a valid token.
    pub required: bool,
    /// HMAC secrets (HS256/384/512); any one verifies. No `kid`.
    pub hs256_secrets: Vec<String>,
    /// PEM public key files (RSA, EC P-256/P-384, Ed25519); each answers to
    /// the `kid` of its file name without extension.
    pub public_keys: Vec<std::path::PathBuf>,
    /// Keys with an explicit `kid`: `[[auth.keys]] kid = "..."` and either
    /// `secret = "..."` or `pem_file = "..."`.
    pub keys: Vec<AuthKey>,
    /// Allowed `alg`s; empty: every algorithm the keys can verify.
    pub algorithms: Vec<String>,
    /// Required `aud` ("" = not checked).
    pub audience: String,
    /// Required `iss` ("" = not checked).
    pub issuer: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// Browser origins allowed to upgrade (empty = any); others get 403.
    pub origins: Vec<String>,
    /// Serve a non-loopback address without tokens (refused otherwise).
    pub allow_anonymous_public: bool,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthKey {
    /// The `kid` tokens name it by.
    pub kid: String,
    /// An HMAC secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM public key file.
    #[serde(default)]
    pub pem_file: Option<std::path::PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            hs256_secrets: Vec::new(),
            public_keys: Vec::new(),
            keys: Vec::new(),
            algorithms: Vec::new(),
            audience: String::new(),
            issuer: String::new(),
            leeway_secs: 5,
            origins: Vec::new(),
            allow_anonymous_public: false,
        }
    }
}

impl AuthConfig {
    /// The verifier's view of this section.
    pub fn verifier_config(&self) -> crate::auth::VerifierConfig {
        use crate::auth::KeySource;
        let mut keys: Vec<KeySource> =
            self.hs256_secrets.iter().map(|s| KeySource::Secret { kid: None, secret: s.clone() }).collect();
        keys.extend(self.public_keys.iter().map(|p| KeySource::Pem { kid: None, path: p.clone() }));
        for k in &self.keys {
            if let Some(s) = &k.secret {
                keys.push(KeySource::Secret { kid: Some(k.kid.clone()), secret: s.clone() });
            }
            if let Some(p) = &k.pem_file {
                keys.push(KeySource::Pem { kid: Some(k.kid.clone()), path: p.clone() });
            }
        }
        crate::auth::VerifierConfig {
            keys,
            algorithms: self.algorithms.clone(),
            audience: (!self.audience.is_empty()).then(|| self.audience.clone()),
            issuer: (!self.issuer.is_empty()).then(|| self.issuer.clone()),
            leeway_secs: self.leeway_secs,
        }
    }
}

/// `[admin]`: metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoints at all.
    pub enabled: bool,
    /// Where (loopback by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Admin connections served at once (one thread each); past it: 503.
    pub max_connections: usize,
    /// A whole admin request (head) must arrive within this, ms; else 408.
    pub request_timeout_ms: u64,
    /// When set, every endpoint but `/healthz` needs `Authorization:
    /// Bearer <token>` (401 otherwise).
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_connections: 64,
            request_timeout_ms: 2000,
            token: String::new(),
        }
    }
}

/// `[replay]`: per-topic history kept by the owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Publications kept per topic.
    pub max_count: usize,
    /// Bytes of encoded frames kept per topic.
    pub max_bytes: usize,
    /// Oldest publication kept, ms.
    pub max_age_ms: u64,
    /// `msg_id`s remembered per topic for dedupe.
    pub dedupe_count: usize,
    /// How long a `msg_id` is remembered, ms.
    pub dedupe_age_ms: u64,
    /// Replay + dedupe bytes one shard keeps over all its topics; past it
    /// the oldest retained state of the shard goes first.
    pub shard_budget_bytes: usize,
    /// How often the owner's sweep runs, ms.
    pub sweep_interval_ms: u64,
}

/// `[rates]`: token buckets for publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// Publishes per second per connection.
    pub connection_per_sec: f64,
    /// Burst per connection.
    pub connection_burst: f64,
    /// Publishes per second per tenant (whole process).
    pub tenant_per_sec: f64,
    /// Burst per tenant (whole process).
    pub tenant_burst: f64,
    /// Control commands (`sub`, `unsub`) per second per connection.
    pub control_per_sec: f64,
    /// Burst of control commands per connection.
    pub control_burst: f64,
    /// Tenants whose publish bucket one shard tracks; past it, new tenants
    /// share one bucket (counter `tenant_table_overflow`).
    pub max_tenants: usize,
}

/// `[liveness]`: pings and drain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Ping a connection silent for this long, ms.
    pub ping_interval_ms: u64,
    /// Close (1001) a pinged connection silent for this much longer, ms.
    pub ping_timeout_ms: u64,
    /// Graceful drain: the process exits within this bound, ms.
    pub drain_timeout_ms: u64,
    /// `reconnect_after_ms` sent in `drain`.
    pub drain_reconnect_after_ms: u64,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener address (port 0 picks a free port, shared by all shards).
    pub listen: SocketAddr,
    /// Accept backlog per shard listener.
    pub backlog: u32,
    /// WebSocket subprotocols the server speaks; the first one a client
    /// offers in `Sec-WebSocket-Protocol` is echoed.
    pub subprotocols: Vec<String>,
    /// A WebSocket endpoint that echoes every message through the `/ws`
    /// read loop and writer, for RFC 6455 suites ("" = off).
    pub echo_path: String,
}

/// Which CPUs run shards.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Cpus {
    /// `"all"`: every CPU this process may run on.
    All(String),
    /// An explicit list.
    List(Vec<usize>),
}

/// `[shards]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// CPUs, one shard each.
    pub cpus: Cpus,
    /// Virtual partitions.
    pub partitions: u32,
    /// Slots per SPSC ring.
    pub ring_capacity: usize,
    /// glommio preemption timer, µs.
    pub preempt_timer_us: u64,
    /// glommio DMA memory per executor, KiB.
    pub io_memory_kib: usize,
    /// Busy-poll this long before an idle shard sleeps in io_uring, µs.
    pub spin_before_park_us: u64,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound message, bytes.
    pub max_message_bytes: usize,
    /// Connections per shard.
    pub max_connections_per_shard: usize,
    /// Subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Delivery receipts outstanding per connection.
    pub max_receipts_per_connection: usize,
    /// Outbound soft limit per connection, bytes.
    pub outbound_soft_bytes: usize,
    /// Outbound hard limit per connection, bytes.
    pub outbound_hard_bytes: usize,
    /// Topics owned per shard.
    pub max_topics_per_shard: usize,
    /// Topics one tenant may own per shard.
    pub max_topics_per_tenant: usize,
    /// Deepest nesting of arrays/objects accepted in a publication's `data`.
    pub max_data_depth: usize,
    /// Deliveries a shard makes per slice before yielding to its reactor.
    pub fanout_budget: usize,
    /// Upgrade deadline, ms.
    pub handshake_timeout_ms: u64,
}

/// The embedded default, parsed. Every section's `Default` comes from here,
/// so the file is the single source of default values.
fn embedded() -> Config {
    toml::from_str::<EmbeddedDefault>(DEFAULT_TOML)
        .map(|d| Config {
            server: d.server,
            shards: d.shards,
            limits: d.limits,
            replay: d.replay,
            rates: d.rates,
            liveness: d.liveness,
            admin: d.admin,
            auth: d.auth,
            quotas: d.quotas,
            tls: d.tls,
            groups: d.groups,
            requests: d.requests,
            streams: d.streams,
            retained: d.retained,
            presence: d.presence,
            centrifugo: d.centrifugo,
            cluster: d.cluster,
        })
        // Invariant: the embedded file is tested to parse (tests below).
        .expect("embedded tuning/default.toml parses")
}

/// The embedded file must spell out every key (no defaults to fall back on).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedDefault {
    server: ServerConfig,
    shards: ShardsConfig,
    limits: Limits,
    replay: ReplayConfig,
    rates: RateConfig,
    liveness: LivenessConfig,
    admin: AdminConfig,
    auth: AuthConfig,
    quotas: QuotasConfig,
    tls: TlsConfig,
    groups: GroupsConfig,
    requests: RequestsConfig,
    streams: StreamsConfig,
    retained: RetainedConfig,
    presence: PresenceConfig,
    centrifugo: CentrifugoConfig,
    cluster: ClusterConfig,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_count: 4096,
            max_bytes: 4 << 20,
            max_age_ms: 300_000,
            dedupe_count: 4096,
            dedupe_age_ms: 120_000,
            shard_budget_bytes: 256 << 20,
            sweep_interval_ms: 100,
        }
    }
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            connection_per_sec: 20_000.0,
            connection_burst: 40_000.0,
            tenant_per_sec: 100_000.0,
            tenant_burst: 200_000.0,
            control_per_sec: 1_000.0,
            control_burst: 2_000.0,
            max_tenants: 100_000,
        }
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 30_000,
            ping_timeout_ms: 15_000,
            drain_timeout_ms: 10_000,
            drain_reconnect_after_ms: 1_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backlog: 4096,
            subprotocols: vec!["shardcast.v1".into(), "shardcast".into()],
            echo_path: String::new(),
        }
    }
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            cpus: Cpus::All("all".into()),
            partitions: 1024,
            ring_capacity: 8192,
            preempt_timer_us: 100_000,
            io_memory_kib: 64,
            spin_before_park_us: 0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_connections_per_shard: 200_000,
            max_subscriptions_per_connection: 1024,
            max_receipts_per_connection: 1024,
            outbound_soft_bytes: 1 << 20,
            outbound_hard_bytes: 4 << 20,
            max_topics_per_shard: 1_000_000,
            max_topics_per_tenant: 100_000,
            max_data_depth: 64,
            fanout_budget: 16384,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        embedded()
    }
}

impl Config {
    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text)
    }

    /// Checks ranges and consistency (not the host: see [`Config::shard_cpus`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| Err(ConfigError::Invalid { field, problem: problem.into() });
        let a = &self.auth;
        if a.required && a.hs256_secrets.is_empty() && a.public_keys.is_empty() && a.keys.is_empty() {
            return invalid("auth.required", "needs at least one key (hs256_secrets, public_keys or [[auth.keys]])");
        }
        if a.keys.iter().any(|k| k.secret.is_some() == k.pem_file.is_some()) {
            return invalid("auth.keys", "each [[auth.keys]] entry needs exactly one of secret or pem_file");
        }
        if !a.required && !a.allow_anonymous_public && !self.server.listen.ip().is_loopback() {
            return invalid(
                "auth.required",
                &format!(
                    "server.listen {} is not a loopback address and [auth] required = false: anyone who can reach \
                     it could read and publish every tenant's topics. Configure keys and set required = true, \
                     or set auth.allow_anonymous_public = true to serve it anonymously on purpose",
                    self.server.listen
                ),
            );
        }
        if let Err(e) = crate::auth::Verifier::new(&a.verifier_config()) {
            return invalid("auth", &e);
        }
        let t = &self.tls;
        if t.cert_file.as_os_str().is_empty() != t.key_file.as_os_str().is_empty() {
            return invalid("tls", "set both cert_file and key_file, or neither");
        }
        if t.enabled() {
            if let Err(e) = crate::auth::tls::load(&t.cert_file, &t.key_file) {
                return invalid("tls", &e);
            }
        }
        let g = &self.groups;
        if g.max_per_topic == 0
            || g.max_groups == 0
            || g.max_members == 0
            || g.max_pending == 0
            || g.max_pending_bytes == 0
        {
            return invalid(
                "groups",
                "max_per_topic, max_groups, max_members, max_pending and max_pending_bytes must be positive",
            );
        }
        let q = &self.requests;
        if q.max_open == 0
            || q.max_per_connection == 0
            || q.max_held_bytes == 0
            || q.max_reply_bytes == 0
            || q.max_services == 0
        {
            return invalid(
                "requests",
                "max_open, max_per_connection, max_held_bytes, max_reply_bytes and max_services must be positive",
            );
        }
        let st = &self.streams;
        if st.max_stream_bytes == 0
            || st.max_per_topic == 0
            || st.shard_budget_bytes == 0
            || st.keep_closed_ms == 0
            || st.idle_timeout_ms == 0
        {
            return invalid("streams", "every bound must be positive");
        }
        if self.retained.max_per_tenant == 0 || self.retained.shard_budget_bytes == 0 {
            return invalid("retained", "max_per_tenant and shard_budget_bytes must be positive");
        }
        if self.presence.max_list == 0 || self.presence.max_watchers_per_tenant == 0 {
            return invalid("presence", "max_list and max_watchers_per_tenant must be positive");
        }
        if g.backoff_base_ms == 0 || g.empty_expire_ms == 0 {
            return invalid("groups", "backoff_base_ms and empty_expire_ms must be positive");
        }
        if self.admin.max_connections == 0 || self.admin.max_connections > 4096 {
            return invalid("admin.max_connections", "must be between 1 and 4096");
        }
        if self.admin.request_timeout_ms == 0 {
            return invalid("admin.request_timeout_ms", "must be at least 1");
        }
        if let Cpus::All(s) = &self.shards.cpus {
            if s != "all" {
                return invalid("shards.cpus", "must be \"all\" or a list of CPU ids like [0, 1]");
            }
        }
        if let Cpus::List(list) = &self.shards.cpus {
            if list.is_empty() {
                return invalid("shards.cpus", "the list is empty: name at least one CPU");
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return invalid("shards.cpus", "a CPU is listed twice");
            }
        }
        if self.server.backlog == 0 {
            return invalid("server.backlog", "must be at least 1");
        }
        if self.shards.partitions == 0 {
            return invalid("shards.partitions", "must be at least 1");
        }
        if self.shards.ring_capacity < 2 * crate::mesh::ring::CONTROL_RESERVE {
            return invalid("shards.ring_capacity", "must be at least 128 (64 slots are kept for control traffic)");
        }
        if !(MIN_PREEMPT_US..=1_000_000).contains(&self.shards.preempt_timer_us) {
            return invalid(
                "shards.preempt_timer_us",
                "must be between 10000 and 1000000: shorter timers can wedge a glommio 0.9 executor (docs/GLOMMIO-NOTES.md)",
            );
        }
        let l = &self.limits;
        if !(128..=16 << 20).contains(&l.max_message_bytes) {
            return invalid("limits.max_message_bytes", "must be between 128 and 16777216");
        }
        if l.max_connections_per_shard == 0 {
            return invalid("limits.max_connections_per_shard", "must be at least 1");
        }
        if l.max_subscriptions_per_connection == 0 {
            return invalid("limits.max_subscriptions_per_connection", "must be at least 1");
        }
        if l.outbound_soft_bytes == 0 || l.outbound_hard_bytes < l.outbound_soft_bytes {
            return invalid(
                "limits.outbound_hard_bytes",
                "must be at least outbound_soft_bytes, which must be positive",
            );
        }
        if l.outbound_hard_bytes < l.max_message_bytes + 1024 {
            return invalid("limits.outbound_hard_bytes", "must exceed max_message_bytes by at least 1024");
        }
        if l.max_topics_per_shard == 0 {
            return invalid("limits.max_topics_per_shard", "must be at least 1");
        }
        if !(1..=10_000).contains(&l.max_data_depth) {
            return invalid("limits.max_data_depth", "must be between 1 and 10000");
        }
        if l.fanout_budget == 0 {
            return invalid("limits.fanout_budget", "must be at least 1");
        }
        if l.max_topics_per_tenant == 0 {
            return invalid("limits.max_topics_per_tenant", "must be at least 1");
        }
        if l.handshake_timeout_ms == 0 {
            return invalid("limits.handshake_timeout_ms", "must be at least 1");
        }
        let r = &self.replay;
        if r.max_count == 0 || r.max_bytes == 0 || r.max_age_ms == 0 {
            return invalid("replay.max_count", "replay bounds (max_count, max_bytes, max_age_ms) must be positive");
        }
        if r.dedupe_count == 0 || r.dedupe_age_ms == 0 {
            return invalid("replay.dedupe_count", "dedupe bounds (dedupe_count, dedupe_age_ms) must be positive");
        }
        if r.shard_budget_bytes < r.max_bytes {
            return invalid("replay.shard_budget_bytes", "must be at least replay.max_bytes");
        }
        if !(10..=10_000).contains(&r.sweep_interval_ms) {
            return invalid("replay.sweep_interval_ms", "must be between 10 and 10000");
        }
        let q = &self.rates;
        if !(q.control_per_sec.is_finite() && q.control_per_sec > 0.0) || q.control_burst < 1.0 {
            return invalid("rates.control_per_sec", "the control rate must be positive and its burst at least 1");
        }
        if q.max_tenants == 0 {
            return invalid("rates.max_tenants", "must be at least 1");
        }
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(q.connection_per_sec) || q.connection_burst < 1.0 || !ok(q.tenant_per_sec) || q.tenant_burst < 1.0 {
            return invalid("rates", "rates must be positive and bursts at least 1");
        }
        let v = &self.liveness;
        if v.ping_interval_ms < 100 || v.ping_timeout_ms < 100 {
            return invalid("liveness.ping_interval_ms", "ping interval and timeout must be at least 100 ms");
        }
        if v.drain_timeout_ms == 0 {
            return invalid("liveness.drain_timeout_ms", "must be at least 1");
        }
        let c = &self.cluster;
        let node_ok = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.');
        if !c.node_id.chars().all(node_ok) || c.node_id.len() > 128 {
            return invalid("cluster.node_id", "only A-Z a-z 0-9 - _ . (at most 128): it is a NATS KV key");
        }
        if c.lease_ms < 300 || c.streams == 0 || c.streams > 1024 {
            return invalid("cluster.lease_ms", "lease_ms at least 300; streams in 1..=1024");
        }
        Ok(())
    }

    /// The CPUs shards run on, checked against the CPUs this process may use.
    pub fn shard_cpus(&self) -> Result<Vec<usize>, ConfigError> {
        let online: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        match &self.shards.cpus {
            Cpus::All(_) if online.is_empty() => Err(ConfigError::Invalid {
                field: "shards.cpus",
                problem: "cannot read this process's CPU set; list the CPUs explicitly".into(),
            }),
            Cpus::All(_) => Ok(online),
            Cpus::List(list) => match list.iter().find(|c| !online.contains(c)) {
                Some(c) => Err(ConfigError::Invalid {
                    field: "shards.cpus",
                    problem: format!("CPU {c} is not available to this process (available: {online:?})"),
                }),
                None => Ok(list.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_defaults() {
        let cfg = Config::from_toml(DEFAULT_TOML).unwrap();
        let empty = Config::from_toml("").unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{empty:?}"), "section defaults equal the file");
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.server.backlog, 4096);
        assert_eq!(cfg.shards.cpus, Cpus::All("all".into()));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert!(err("[shards]\ncpus = []").contains("`shards.cpus`"));
        assert!(err("[cluster]\nnode_id = \"host:8080\"").contains("`cluster.node_id`"));
        assert!(err("[cluster]\nlease_ms = 10").contains("`cluster.lease_ms`"));
        assert!(Config::from_toml("[cluster]\nnode_id = \"node-1.eu_west\"").is_ok());
        assert!(err("[shards]\ncpus = [0, 0]").contains("listed twice"));
        assert!(err("[shards]\ncpus = \"some\"").contains("`shards.cpus`"));
        assert!(err("[shards]\npartitions = 0").contains("`shards.partitions`"));
        assert!(err("[limits]\noutbound_soft_bytes = 10\noutbound_hard_bytes = 5").contains("outbound_hard_bytes"));
        assert!(err("[server]\nlisten = \"nope\"").contains("listen"));
        assert!(err("[server]\nbogus = 1").contains("bogus"));
    }

    #[test]
    fn unavailable_cpu_is_named() {
        let cfg = Config::from_toml("[shards]\ncpus = [0, 4096]").unwrap();
        let e = cfg.shard_cpus().unwrap_err().to_string();
        assert!(e.contains("CPU 4096 is not available"), "{e}");
    }
}
