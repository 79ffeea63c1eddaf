//! TLS set-up shared by the AMQPS and HTTPS listeners: turns a
//! certificate section of `rabbit.toml` ([`SslOptions`]) into a rustls
//! acceptor, and reads what a connection's client certificate says about
//! its owner (its subject DN or CN, for SASL EXTERNAL; formatting in
//! `tls/dn.rs`).
//!
//! rustls with the ring provider, always passed explicitly: tests link
//! other rustls users, and a process-wide default provider could then be
//! ambiguous.

mod dn;

use crate::config::{SslOptions, Verify};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A TLS listener's acceptor, built from its certificate section.
/// `section` ("ssl_options", "management.ssl") names the keys in errors,
/// which also name the file.
pub fn acceptor(opts: &SslOptions, section: &str) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (Some(certfile), Some(keyfile)) = (&opts.certfile, &opts.keyfile) else {
        return Err(format!(
            "{section}.certfile and {section}.keyfile are needed"
        ));
    };
    let certs = read_certs(certfile, &format!("{section}.certfile"))?;
    let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
        format!(
            "{section}.keyfile: cannot read a PEM private key from {}: {e}",
            keyfile.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{section}: {e}"))?;
    let builder = match (opts.verify, &opts.cacertfile) {
        (Verify::VerifyPeer, Some(cafile)) => {
            let key = format!("{section}.cacertfile");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile, &key)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "{key}: {} holds an unusable CA certificate: {e}",
                        cafile.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if opts.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| format!("{key}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (Verify::VerifyPeer, None) => {
            return Err(format!(
                "{section}.verify = \"verify_peer\" needs {section}.cacertfile"
            ))
        }
        (Verify::VerifyNone, _) => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{section}.keyfile: {} does not go with {section}.certfile {}: {e}",
            keyfile.display(),
            certfile.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in a PEM file; none is an error.
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{key}: cannot read PEM certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// What the management API shows of a connection's TLS session, and what
/// the client certificate says about its owner, for SASL EXTERNAL.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// "TLSv1.3", "TLSv1.2".
    pub protocol: String,
    pub cipher: String,
    /// The client sent a certificate, verified against the CA: only when
    /// the listener verifies peers (`verify_peer`).
    pub peer_cert: bool,
    /// That certificate's subject as RabbitMQ writes it
    /// (`CN=client,O=Test,C=GB`), if it could be parsed.
    pub peer_dn: Option<String>,
    /// Its subject CNs, joined with "," as RabbitMQ joins them; `None`
    /// without one.
    pub peer_cn: Option<String>,
}

/// Which part of a client certificate names the user of an EXTERNAL
/// login: RabbitMQ's `ssl_cert_login_from`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFrom {
    /// The whole subject, RFC 4514 style (RabbitMQ's default).
    #[default]
    DistinguishedName,
    /// The subject's common name(s).
    CommonName,
}

impl Session {
    pub fn of(conn: &rustls::ServerConnection) -> Session {
        let protocol = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .replace('_', ".")
            .replace("TLSv1.", "tlsv1.");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("")
            .to_owned();
        // A listener without verify_peer asks for no certificate, so any
        // certificate present has been verified against the CA.
        let cert = conn.peer_certificates().and_then(|chain| chain.first());
        let subject = cert.and_then(|c| {
            use x509_cert::der::Decode;
            x509_cert::Certificate::from_der(c.as_ref())
                .ok()
                .map(|c| c.tbs_certificate.subject)
        });
        Session {
            protocol,
            cipher,
            peer_cert: cert.is_some(),
            peer_dn: subject.as_ref().map(dn::distinguished_name),
            peer_cn: subject.as_ref().and_then(dn::common_names),
        }
    }

    /// The user an EXTERNAL login names, or why there is none (the
    /// reasons `rabbitmq_auth_mechanism_ssl` logs).
    pub fn login_name(&self, from: LoginFrom) -> Result<String, &'static str> {
        if !self.peer_cert {
            return Err("connection peer presented no TLS (x.509) certificate");
        }
        match from {
            LoginFrom::DistinguishedName => self.peer_dn.clone(),
            LoginFrom::CommonName => self.peer_cn.clone(),
        }
        .ok_or("no name found")
    }
}

/// How long an HTTPS client has for its TLS handshake.
const HTTPS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TLS handshakes an HTTPS listener runs at once; more clients wait in the
/// listen backlog, so half-open handshakes cannot take the descriptors
/// that the HTTP connection bound keeps for AMQP.
const HTTPS_MAX_HANDSHAKES: usize = 64;

/// A TCP listener whose connections are TLS streams, for axum (the
/// management API over HTTPS). Handshakes run in tasks of their own, so a
/// slow or silent client holds up nobody else's.
pub struct HttpsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshakes: tokio::task::JoinSet<Option<(HttpsStream, std::net::SocketAddr)>>,
}

pub type HttpsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl HttpsListener {
    pub fn new(tcp: tokio::net::TcpListener, acceptor: TlsAcceptor) -> Self {
        HttpsListener {
            tcp,
            acceptor,
            handshakes: tokio::task::JoinSet::new(),
        }
    }

    fn start_handshake(&mut self, sock: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HTTPS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(stream)) => Some((stream, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTPS: TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "HTTPS: TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = HttpsStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                res = self.tcp.accept(), if self.handshakes.len() < HTTPS_MAX_HANDSHAKES => match res {
                    Ok((sock, peer)) => self.start_handshake(sock, peer),
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
