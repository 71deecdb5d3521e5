//! TLS on the public listener (`[tls] cert_file`, `key_file`; PROTOCOL-EXTENSIONS §7).
//!
//! rustls with the *ring* provider does every cryptographic step; this file
//! only reads PEM files and builds configs. Each shard gets its own
//! `ServerConfig` with its own session cache, so a handshake never touches a
//! lock another core holds (the cache's mutex is taken by one thread only).
//! A reload (SIGHUP) builds fresh configs and hands one to each shard:
//! connections already open keep the config they were accepted with; new
//! ones get the new certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TLS 1.2/1.3 sessions a shard remembers for resumption.
pub const SESSION_CACHE: usize = 1024;

/// One shard's TLS server config.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// Reads `cert_file` (a PEM chain, leaf first) and `key_file` (a PEM
/// PKCS#8, PKCS#1 or SEC1 private key) into a config template.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert_file {}: no CERTIFICATE block", cert_file.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the key in {} does not fit the certificate: {e}", key_file.display()))?;
    // WebSocket upgrades and the HTTP API are HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// One config per shard from `template`, each with its own session cache.
pub fn per_shard(template: &rustls::ServerConfig, shards: usize) -> Vec<ServerTls> {
    (0..shards)
        .map(|_| {
            let mut c = template.clone();
            c.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
            Arc::new(c)
        })
        .collect()
}
