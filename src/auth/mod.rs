//! Identity (PROTOCOL-EXTENSIONS §1): JWT verification, the claims shardcast
//! uses, and capability patterns.
//!
//! Signatures are checked by `jsonwebtoken` (RustCrypto backend); nothing
//! here is cryptography. Time is passed in (`now` in Unix seconds), so `exp`
//! and `nbf` are judged against the shard's clock, not read inside. A token
//! is verified once per connection (and once per `auth` refresh); every
//! later `sub`/`pub` is a pattern match that allocates nothing.

pub mod pattern;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use pattern::matches;

/// Why a token was refused (all answered 401 `unauthorized`, or `error`
/// `unauthorized` on an `auth` refresh).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("a token is required")]
    Missing,
    /// Not three base64url parts, or a header or claims that are not JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not among the configured algorithms (`none` never is).
    #[error("token algorithm not allowed")]
    Algorithm,
    /// `kid` names no configured key.
    #[error("unknown key id")]
    UnknownKid,
    /// No configured key verifies the signature.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `sub` or `tenant` missing or empty, or `caps` malformed.
    #[error("bad claims: {0}")]
    Claims(&'static str),
}

impl AuthError {
    /// A short label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::Issuer => "issuer",
            Self::Claims(_) => "claims",
        }
    }
}

/// Capability patterns of one connection (full topic patterns: `*` is one
/// segment, a trailing `#` any number of further segments, zero included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Patterns `sub` may use.
    pub sub: Vec<Box<str>>,
    /// Patterns `pub` may use.
    pub publ: Vec<Box<str>>,
}

/// Who a connection is, from its verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`: stamped as `from` on every publication it makes.
    pub sub: Arc<str>,
    /// `tenant`: every topic it touches starts with `tenant/`; the key of
    /// its rate limits and quotas.
    pub tenant: Arc<str>,
    /// `exp`, Unix seconds.
    pub exp: Option<u64>,
    /// What it may do inside its tenant.
    pub caps: Caps,
    /// Its tenant's quota (resolved when the token is accepted).
    pub quota: TenantQuota,
}

impl Identity {
    /// Whether `topic` is inside the tenant.
    fn in_tenant(&self, topic: &str) -> bool {
        topic.len() > self.tenant.len()
            && topic.as_bytes()[self.tenant.len()] == b'/'
            && topic.starts_with(&*self.tenant)
    }

    /// Whether it may subscribe to `topic`.
    pub fn may_sub(&self, topic: &str) -> bool {
        self.in_tenant(topic) && self.caps.sub.iter().any(|p| matches(p, topic))
    }

    /// Whether it may publish to `topic`.
    pub fn may_pub(&self, topic: &str) -> bool {
        self.in_tenant(topic) && self.caps.publ.iter().any(|p| matches(p, topic))
    }
}

/// The claims read from a token (the registered ones shardcast checks
/// itself, plus `tenant` and `caps`).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    tenant: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    caps: Option<CapsClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsClaim {
    #[serde(default)]
    sub: Vec<String>,
    #[serde(default, rename = "pub")]
    publ: Vec<String>,
}

/// One configured verification key.
struct Key {
    /// The `kid` it answers to (PEM files: the file name without extension;
    /// `[[auth.keys]]`: as given; `hs256_secrets`: none).
    kid: Option<String>,
    /// Which algorithms it can verify.
    family: Family,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

/// A key as the config gives it.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HMAC secret (HS256/384/512).
    Secret {
        /// Its `kid`, if tokens name it.
        kid: Option<String>,
        /// The secret bytes.
        secret: String,
    },
    /// A PEM public key file (RSA, EC P-256/P-384 or Ed25519).
    Pem {
        /// Its `kid` (default: the file name without extension).
        kid: Option<String>,
        /// The file.
        path: std::path::PathBuf,
    },
}

/// What the verifier needs from the config.
#[derive(Debug, Clone, Default)]
pub struct VerifierConfig {
    /// The keys.
    pub keys: Vec<KeySource>,
    /// Allowed `alg` values; empty: every algorithm the keys can verify.
    pub algorithms: Vec<String>,
    /// `aud` required when set.
    pub audience: Option<String>,
    /// `iss` required when set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
}

/// Verifies tokens against the configured keys. Built once at start,
/// shared read-only by every shard.
pub struct Verifier {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Verifier {
    /// Loads the keys. Errors name the key or the algorithm that is wrong.
    pub fn new(cfg: &VerifierConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        for k in &cfg.keys {
            match k {
                KeySource::Secret { kid, secret } => {
                    if secret.is_empty() {
                        return Err("an HMAC secret is empty".into());
                    }
                    keys.push(Key {
                        kid: kid.clone(),
                        family: Family::Hmac,
                        key: DecodingKey::from_secret(secret.as_bytes()),
                    });
                }
                KeySource::Pem { kid, path } => {
                    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let (family, key) = load_pem(&pem).ok_or_else(|| {
                        format!("{}: not a PEM RSA, EC (P-256/P-384) or Ed25519 public key", path.display())
                    })?;
                    let kid = kid.clone().or_else(|| file_stem(path));
                    keys.push(Key { kid, family, key });
                }
            }
        }
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            let alg: Algorithm = a.parse().map_err(|_| format!("unknown algorithm {a:?}"))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            for k in &keys {
                let add: &[Algorithm] = match k.family {
                    Family::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                    Family::Rsa => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    Family::Ec => &[Algorithm::ES256, Algorithm::ES384],
                    Family::Ed => &[Algorithm::EdDSA],
                };
                for a in add {
                    if !algorithms.contains(a) {
                        algorithms.push(*a);
                    }
                }
            }
        }
        Ok(Self {
            keys,
            algorithms,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
            leeway: cfg.leeway_secs,
        })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Verifies `token` at `now` (Unix seconds) and returns who it is.
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let family = family_of(header.alg);
        let mut validation = Validation::new(header.alg);
        // exp and nbf are checked below against `now`, not the wall clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = self.audience.is_some();
        if let Some(a) = &self.audience {
            validation.set_audience(&[a]);
        }
        if let Some(i) = &self.issuer {
            validation.set_issuer(&[i]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        let candidates = self.keys.iter().filter(|k| k.family == family);
        let mut named = false;
        let mut claims = None;
        let mut last = AuthError::BadSignature;
        for k in candidates {
            if let Some(kid) = &header.kid {
                if k.kid.as_deref() != Some(kid.as_str()) {
                    continue;
                }
                named = true;
            }
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(t) => {
                    claims = Some(t.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => {
                            AuthError::BadSignature
                        }
                        K::InvalidAudience => return Err(AuthError::Audience),
                        K::InvalidIssuer => return Err(AuthError::Issuer),
                        K::MissingRequiredClaim(c) if c == "aud" => return Err(AuthError::Audience),
                        K::MissingRequiredClaim(c) if c == "iss" => return Err(AuthError::Issuer),
                        K::InvalidAlgorithm => AuthError::Algorithm,
                        _ => return Err(AuthError::Malformed),
                    };
                }
            }
        }
        if header.kid.is_some() && !named {
            return Err(AuthError::UnknownKid);
        }
        let c = claims.ok_or(last)?;
        if c.exp.is_some_and(|exp| now > exp.saturating_add(self.leeway)) {
            return Err(AuthError::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        let sub = c.sub.filter(|s| !s.is_empty()).ok_or(AuthError::Claims("sub is required"))?;
        let tenant = c
            .tenant
            .filter(|t| crate::topic::name::valid_segment(t))
            .ok_or(AuthError::Claims("tenant is required (one topic segment)"))?;
        let caps = match c.caps {
            None => {
                let all: Box<str> = format!("{tenant}/#").into();
                Caps { sub: vec![all.clone()], publ: vec![all] }
            }
            Some(k) => {
                let check =
                    |v: Vec<String>| -> Result<Vec<Box<str>>, AuthError> {
                        v.into_iter()
                            .map(|p| {
                                if pattern::valid(&p) {
                                    Ok(p.into())
                                } else {
                                    Err(AuthError::Claims("bad caps pattern"))
                                }
                            })
                            .collect()
                    };
                Caps { sub: check(k.sub)?, publ: check(k.publ)? }
            }
        };
        Ok(Identity { sub: sub.into(), tenant: tenant.into(), exp: c.exp, caps, quota: TenantQuota::default() })
    }

    /// The leeway on `exp`, seconds (a connection is closed 4001 once its
    /// token's `exp` plus this has passed).
    pub fn leeway(&self) -> u64 {
        self.leeway
    }
}

fn file_stem(p: &Path) -> Option<String> {
    p.file_stem().map(|s| s.to_string_lossy().into_owned())
}

fn load_pem(pem: &[u8]) -> Option<(Family, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Some((Family::Ed, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Family::Ec, k));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Family::Rsa, k));
    }
    None
}

/// What a shard needs to admit a connection: the verifier and the rules
/// around it. Built once from the config, shared read-only by every shard.
#[derive(Debug)]
pub struct Access {
    /// Token verification.
    pub verifier: Verifier,
    /// Every upgrade and HTTP publish needs a valid token.
    pub required: bool,
    /// Browser origins allowed to upgrade (empty: any).
    pub origins: Vec<String>,
    /// WebSocket subprotocols spoken.
    pub subprotocols: Vec<String>,
    /// Per-tenant quotas.
    pub quotas: Quotas,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            // Invariant: no keys, no algorithms: nothing that can fail.
            verifier: Verifier::new(&VerifierConfig::default()).expect("an empty verifier"),
            required: false,
            origins: Vec::new(),
            subprotocols: vec!["shardcast.v1".into(), "shardcast".into()],
            quotas: Quotas::default(),
        }
    }
}

impl Access {
    /// Whether an upgrade with this `Origin` may proceed. Clients that send
    /// no `Origin` are not browsers and are judged by their token alone.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        self.origins.is_empty() || origin.is_none_or(|o| self.origins.iter().any(|a| a == o))
    }

    /// Who the client is: `Ok(None)` for an anonymous client where tokens
    /// are optional; a given token must be valid either way.
    pub fn authenticate(&self, token: Option<&str>, now: u64) -> Result<Option<Identity>, AuthError> {
        match token {
            None if self.required => Err(AuthError::Missing),
            None => Ok(None),
            Some(t) => self.verify(t, now).map(Some),
        }
    }

    /// Verifies a token and attaches its tenant's quota.
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let mut id = self.verifier.verify(token, now)?;
        id.quota = self.quotas.of(&id.tenant);
        Ok(id)
    }
}

/// One tenant's quota as configured (`[quotas.default]`,
/// `[quotas.tenants.NAME]`); 0 means "not set here".
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantQuota {
    /// Connections in the whole process.
    pub connections: u64,
    /// Subscriptions in the whole process.
    pub subscriptions: u64,
    /// Topics owned per shard.
    pub topics: u64,
    /// Publishes per second in the whole process.
    pub publish_per_sec: f64,
    /// Publish burst in the whole process.
    pub publish_burst: f64,
}

impl TenantQuota {
    /// `self`, with every unset field taken from `base`.
    pub fn over(self, base: TenantQuota) -> TenantQuota {
        let u = |a: u64, b: u64| if a == 0 { b } else { a };
        let f = |a: f64, b: f64| if a == 0.0 { b } else { a };
        TenantQuota {
            connections: u(self.connections, base.connections),
            subscriptions: u(self.subscriptions, base.subscriptions),
            topics: u(self.topics, base.topics),
            publish_per_sec: f(self.publish_per_sec, base.publish_per_sec),
            publish_burst: f(self.publish_burst, base.publish_burst),
        }
    }
}

/// The configured quotas, resolved per tenant.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    /// `[quotas.default]`.
    pub default: TenantQuota,
    /// Overrides, already resolved over the default.
    pub tenants: std::collections::HashMap<Box<str>, TenantQuota>,
}

impl Quotas {
    /// From the config sections.
    pub fn new(default: TenantQuota, tenants: &std::collections::BTreeMap<String, TenantQuota>) -> Self {
        Self { default, tenants: tenants.iter().map(|(k, v)| (k.as_str().into(), v.over(default))).collect() }
    }

    /// The quota of `tenant`.
    pub fn of(&self, tenant: &str) -> TenantQuota {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }

    /// Per-tenant topic quotas that differ from the default (for the owner).
    pub fn topic_overrides(&self) -> std::collections::HashMap<Box<str>, usize> {
        self.tenants.iter().filter(|(_, q)| q.topics > 0).map(|(k, q)| (k.clone(), q.topics as usize)).collect()
    }
}
