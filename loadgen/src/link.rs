//! A connection's byte stream: plain TCP, or TLS over it (`--tls-ca`).
//!
//! rustls does the cryptography; this only moves bytes between it and a
//! non-blocking mio socket. Reads loop to `WouldBlock` (edge-triggered
//! events): a short plaintext read says nothing about the socket.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;

/// A connection's stream.
pub enum Link {
    Plain(TcpStream),
    Tls(Box<TlsLink>),
}

pub struct TlsLink {
    conn: rustls::ClientConnection,
    sock: TcpStream,
}

/// A client config trusting the certificates in the PEM file `ca`.
pub fn client_config(ca: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl Link {
    /// Wraps `sock`, in TLS (server name `localhost`) when `tls` is given.
    pub fn new(sock: TcpStream, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Link> {
        Ok(match tls {
            None => Link::Plain(sock),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
                Link::Tls(Box::new(TlsLink { conn, sock }))
            }
        })
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => &mut t.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Link::Tls(_))
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Link::Plain(s) => return s.read(buf),
            Link::Tls(t) => t,
        };
        loop {
            match t.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if t.conn.read_tls(&mut t.sock)? == 0 {
                return Ok(0);
            }
            t.conn.process_new_packets().map_err(io::Error::other)?;
            t.flush()?;
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Link::Plain(s) => return s.write(buf),
            Link::Tls(t) => t,
        };
        let n = t.conn.writer().write(buf)?;
        t.flush()?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends what rustls holds (a no-op for plain TCP).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(_) => Ok(()),
            Link::Tls(t) => t.flush(),
        }
    }
}

impl TlsLink {
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
