//! TLS: the AMQPS listener (lapin over rustls), peer verification and
//! `fail_if_no_peer_cert`, SASL EXTERNAL (offered only when
//! `auth_mechanisms` lists it; the user is the client certificate's DN or
//! CN as `ssl_cert_login_from` says), the management API over HTTPS, and the start-up
//! errors for bad certificate files. Certificates come from rcgen
//! (tests/common/certs.rs).

mod common;

use common::certs::{dn_of, Certs, STRANGER_CN};
use common::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::amqp::sasl::Mechanism;
use warren::config::{Config, Verify};
use warren::tls::LoginFrom;

/// The user the client certificate names (created by the configuration).
const TLS_USER: &str = "tls-user";

/// An AMQPS listener on 127.0.0.1:0 with the generated server certificate;
/// `verify_peer` against the generated CA when `verify`.
fn with_tls(certs: &Certs, verify: bool, fail_if_no_peer_cert: bool) -> impl FnOnce(&mut Config) {
    let (cert, key, ca) = (
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem"),
    );
    move |c: &mut Config| {
        c.listeners.ssl = Some("127.0.0.1:0".parse().unwrap());
        c.ssl_options.certfile = Some(cert);
        c.ssl_options.keyfile = Some(key);
        if verify {
            c.ssl_options.cacertfile = Some(ca);
            c.ssl_options.verify = Verify::VerifyPeer;
            c.ssl_options.fail_if_no_peer_cert = fail_if_no_peer_cert;
        }
        c.auth.users.push(warren::config::User {
            name: TLS_USER.into(),
            password: "unused-password".into(),
            tags: vec![],
        });
    }
}

/// EXTERNAL listed after RabbitMQ's default mechanisms (as
/// `auth_mechanisms.3 = EXTERNAL`), the user named as `from` says.
fn with_external(from: LoginFrom) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.auth.auth_mechanisms = vec![Mechanism::Plain, Mechanism::Amqplain, Mechanism::External];
        c.auth.ssl_cert_login_from = from;
    }
}

fn amqps_port(s: &TestBroker) -> u16 {
    s.amqps_addrs()[0].port()
}

/// lapin's TLS settings: trusts the generated CA; presents the client
/// certificate `name` (`"client"`, `"stranger"`, `"rogue"`) if given.
fn tls_config(certs: &Certs, identity: Option<&str>) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: identity.map(|name| OwnedIdentity::PKCS8 {
            pem: certs.pem(&format!("{name}.pem")).into_bytes(),
            key: certs.pem(&format!("{name}.key")).into_bytes(),
        }),
        cert_chain: Some(certs.pem("ca.pem")),
    }
}

/// A lapin connection over TLS to `localhost` (the server certificate's
/// name), as `uri_rest` says (credentials, vhost, query).
async fn amqps_connect(
    s: &TestBroker,
    userinfo: &str,
    query: &str,
    tls: OwnedTLSConfig,
) -> lapin::Result<Connection> {
    let uri = format!("amqps://{userinfo}localhost:{}/%2f{query}", amqps_port(s));
    within(Connection::connect_with_config(
        &uri,
        ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().unwrap(),
    ))
    .await
}

#[tokio::test]
async fn amqps_publish_and_get_with_lapin() {
    let certs = Certs::generate(TLS_USER);
    let s = start_with(with_tls(&certs, false, false)).await;
    let c = amqps_connect(&s, "guest:guest@", "", tls_config(&certs, None))
        .await
        .expect("AMQPS connection");
    let ch = c.create_channel().await.unwrap();
    let q = uniq("tls");
    queue(&ch, &q, false).await;
    publish(&ch, "", &q, b"over tls").await;
    assert_eq!(drain(&ch, &q).await, vec![b"over tls".to_vec()]);
    // Bodies larger than the socket buffers, both ways: encrypted records
    // the socket could not take at once must still go out.
    let big: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 3 << 20]).collect();
    for body in &big {
        publish(&ch, "", &q, body).await;
    }
    let mut consumer = consume(&ch, &q, true).await;
    for body in &big {
        assert!(next(&mut consumer).await.data == *body);
    }
    // The API tells the TLS connection from a plain one.
    let plain = connect(&s).await;
    eventually(|| async {
        get_ok(&s, "/api/connections")
            .await
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let conns = get_ok(&s, "/api/connections").await;
    let port = |c: &serde_json::Value| c["port"].as_u64().unwrap() as u16;
    let tls = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| port(c) == amqps_port(&s))
        .unwrap();
    assert_eq!(tls["ssl"], true, "{tls}");
    assert!(
        tls["ssl_protocol"].as_str().unwrap().starts_with("tlsv1."),
        "{tls}"
    );
    assert_eq!(tls["auth_mechanism"], "PLAIN");
    let other = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| port(c) != amqps_port(&s))
        .unwrap();
    assert_eq!(other["ssl"], false, "{other}");
    let overview = get_ok(&s, "/api/overview").await;
    let protocols: Vec<&str> = overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["protocol"].as_str().unwrap())
        .collect();
    assert!(protocols.contains(&"amqp/ssl"), "{protocols:?}");
    c.close(200, "bye".into()).await.unwrap();
    plain.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn external_logs_in_as_the_certificate_cn() {
    let certs = Certs::generate(TLS_USER);
    let s = start_with(|c| {
        with_tls(&certs, true, false)(c);
        with_external(LoginFrom::CommonName)(c);
    })
    .await;
    let c = amqps_connect(
        &s,
        "",
        "?auth_mechanism=external",
        tls_config(&certs, Some("client")),
    )
    .await
    .expect("EXTERNAL login with the client certificate");
    let ch = c.create_channel().await.unwrap();
    let q = uniq("external");
    queue(&ch, &q, false).await;
    eventually(|| async {
        !get_ok(&s, "/api/connections")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let conns = get_ok(&s, "/api/connections").await;
    assert_eq!(conns[0]["user"], TLS_USER, "{conns}");
    assert_eq!(conns[0]["auth_mechanism"], "EXTERNAL", "{conns}");
    c.close(200, "bye".into()).await.unwrap();

    // A certificate whose CN names no user: 403, as for a bad password.
    let e = amqps_connect(
        &s,
        "",
        "?auth_mechanism=external",
        tls_config(&certs, Some("stranger")),
    )
    .await
    .expect_err("no such user");
    assert_eq!(
        soft_code(&e),
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.".into()
        ),
        "CN {STRANGER_CN}"
    );
    // PLAIN still works beside it, with or without a certificate.
    let c = amqps_connect(&s, "guest:guest@", "", tls_config(&certs, None))
        .await
        .unwrap();
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// The mechanisms connection.start offers on a TLS connection to `addr`,
/// presenting the client certificate `identity` if given.
async fn offered_mechanisms(certs: &Certs, addr: SocketAddr, identity: Option<&str>) -> String {
    let mut tls = tls_client(certs, identity)
        .connect(server_name(), tcp(addr).await)
        .await
        .unwrap();
    read_start(&mut tls).await
}

/// Sends the protocol header; returns the mechanisms of the server's
/// connection.start.
async fn read_start<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
) -> String {
    tls.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    // connection.start: one method frame (type, channel, size, payload, end).
    let mut buf = Vec::new();
    while buf.len() < 7 || buf.len() < 8 + frame_size(&buf) {
        let mut chunk = [0u8; 4096];
        let n = within(tls.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed before connection.start");
        buf.extend_from_slice(&chunk[..n]);
    }
    use amq_protocol::protocol::{connection::AMQPMethod, parse_class, AMQPClass};
    match parse_class(&buf[7..7 + frame_size(&buf)]) {
        Ok((_, AMQPClass::Connection(AMQPMethod::Start(start)))) => start.mechanisms.to_string(),
        other => panic!("expected connection.start, got {other:?}"),
    }
}

fn frame_size(buf: &[u8]) -> usize {
    u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize
}

#[tokio::test]
async fn external_logs_in_as_the_distinguished_name_by_default() {
    let certs = Certs::generate(TLS_USER);
    let dn = dn_of(TLS_USER);
    let s = start_with(|c| {
        with_tls(&certs, true, false)(c);
        with_external(LoginFrom::DistinguishedName)(c);
        c.auth.users.push(warren::config::User {
            name: dn.clone(),
            password: "unused-password".into(),
            tags: vec![],
        });
    })
    .await;
    let c = amqps_connect(
        &s,
        "",
        "?auth_mechanism=external",
        tls_config(&certs, Some("dn")),
    )
    .await
    .expect("EXTERNAL login as the certificate's subject");
    eventually(|| async {
        !get_ok(&s, "/api/connections")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let conns = get_ok(&s, "/api/connections").await;
    assert_eq!(conns[0]["user"], dn.as_str(), "{conns}");
    c.close(200, "bye".into()).await.unwrap();
    // The CN alone ("CN=tls-user" here) is nobody's name in this mode.
    let e = amqps_connect(
        &s,
        "",
        "?auth_mechanism=external",
        tls_config(&certs, Some("client")),
    )
    .await
    .expect_err("CN=tls-user is no user");
    assert_eq!(soft_code(&e).0, 403, "{e}");
    s.shutdown().await;
}

/// Sends start-ok with `mechanism` (and a PLAIN-shaped response) after
/// connection.start on `stream`, asking for authentication_failure_close;
/// returns what the server sent before it closed the socket.
async fn start_ok_then_eof<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    mechanism: &str,
) -> Vec<u8> {
    use amq_protocol::protocol::{connection, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};
    let mut caps = FieldTable::default();
    caps.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let start_ok = common::raw_amqp::method_bytes(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    );
    stream.write_all(&start_ok).await.unwrap();
    let mut rest = Vec::new();
    let _ = within(stream.read_to_end(&mut rest)).await;
    rest
}

/// The mechanisms offered over TLS, then the rest of the handshake with
/// `mechanism`: what the server sent before closing.
async fn offered_then_refused(
    certs: &Certs,
    addr: SocketAddr,
    identity: Option<&str>,
    mechanism: &str,
) -> (String, Vec<u8>) {
    let mut tls = tls_client(certs, identity)
        .connect(server_name(), tcp(addr).await)
        .await
        .unwrap();
    let offered = read_start(&mut tls).await;
    (offered, start_ok_then_eof(&mut tls, mechanism).await)
}

#[tokio::test]
async fn external_is_offered_only_when_listed_and_on_tls() {
    let certs = Certs::generate(TLS_USER);
    // RabbitMQ's default: no EXTERNAL, even with a verified certificate.
    // Naming it anyway gets what RabbitMQ gives a mechanism it did not
    // offer: no connection.close, the socket closed after a delay.
    let s = start_with(with_tls(&certs, true, false)).await;
    let addr = s.amqps_addrs()[0];
    let (offered, rest) = offered_then_refused(&certs, addr, Some("client"), "EXTERNAL").await;
    assert_eq!(offered, "PLAIN AMQPLAIN");
    assert!(rest.is_empty(), "sent {rest:?}");
    s.shutdown().await;

    // Listed: offered on every TLS connection, as RabbitMQ does; without
    // a certificate the login is refused (403), not the mechanism.
    let s = start_with(|c| {
        with_tls(&certs, true, false)(c);
        with_external(LoginFrom::CommonName)(c);
    })
    .await;
    let addr = s.amqps_addrs()[0];
    assert_eq!(
        offered_mechanisms(&certs, addr, Some("client")).await,
        "PLAIN AMQPLAIN EXTERNAL"
    );
    assert_eq!(
        offered_mechanisms(&certs, addr, None).await,
        "PLAIN AMQPLAIN EXTERNAL"
    );
    let e = amqps_connect(&s, "", "?auth_mechanism=external", tls_config(&certs, None))
        .await
        .expect_err("no certificate, no EXTERNAL login");
    assert_eq!(
        soft_code(&e),
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.".into()
        )
    );
    // Never on a plain TCP listener.
    let mut r = common::raw_amqp::Raw::connect(&s).await;
    assert_eq!(r.start().await.mechanisms.to_string(), "PLAIN AMQPLAIN");
    s.shutdown().await;
}

#[tokio::test]
async fn fail_if_no_peer_cert_refuses_clients_without_a_trusted_certificate() {
    let certs = Certs::generate(TLS_USER);
    let s = start_with(with_tls(&certs, true, true)).await;
    amqps_connect(&s, "guest:guest@", "", tls_config(&certs, None))
        .await
        .expect_err("a client without a certificate is refused");
    amqps_connect(&s, "guest:guest@", "", tls_config(&certs, Some("rogue")))
        .await
        .expect_err("a certificate from another CA is refused");
    let c = amqps_connect(&s, "guest:guest@", "", tls_config(&certs, Some("client")))
        .await
        .expect("a certificate from the CA is accepted");
    c.close(200, "bye".into()).await.unwrap();
    // The plain listener is not affected.
    let c = connect(&s).await;
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn management_api_over_https() {
    let certs = Certs::generate(TLS_USER);
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let s = start_with(move |c| {
        c.management.ssl.listeners = Some("127.0.0.1:0".parse().unwrap());
        c.management.ssl.certfile = Some(cert);
        c.management.ssl.keyfile = Some(key);
    })
    .await;
    let addr = s.https_addrs()[0];
    let (status, body) = https_get(&certs, addr, "/api/overview", Some(GUEST)).await;
    assert_eq!(status, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    let https: Vec<&serde_json::Value> = overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["protocol"] == "https")
        .collect();
    assert_eq!(https.len(), 1, "{overview}");
    assert_eq!(https[0]["port"], addr.port());
    // The same auth as over HTTP.
    let (status, _) = https_get(&certs, addr, "/api/overview", None).await;
    assert_eq!(status, 401);
    // Plain HTTP on the HTTPS port gets no answer.
    let mut sock = tcp(addr).await;
    sock.write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = within(sock.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start_naming_key_and_file() {
    let certs = Certs::generate(TLS_USER);
    let start_err = |f: Box<dyn FnOnce(&mut Config)>| async move {
        let dir = temp_dir("data");
        let mut cfg = test_config(&dir);
        f(&mut cfg);
        let e = warren::server::start(&cfg)
            .await
            .err()
            .expect("start refused")
            .to_string();
        assert!(
            !dir.exists(),
            "nothing is written before the certificates load"
        );
        e
    };
    let missing = certs.path("missing.pem");
    let (m, sk, sp) = (
        missing.clone(),
        certs.path("server.key"),
        certs.path("server.pem"),
    );
    let e = start_err(Box::new(move |c| {
        c.listeners.ssl = Some("127.0.0.1:0".parse().unwrap());
        c.ssl_options.certfile = Some(m);
        c.ssl_options.keyfile = Some(sk);
    }))
    .await;
    assert!(
        e.contains("ssl_options.certfile") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    // A certificate where the key should be.
    let e = start_err(Box::new(move |c| {
        c.listeners.ssl = Some("127.0.0.1:0".parse().unwrap());
        c.ssl_options.certfile = Some(sp.clone());
        c.ssl_options.keyfile = Some(sp);
    }))
    .await;
    assert!(
        e.contains("ssl_options.keyfile") && e.contains("server.pem"),
        "{e}"
    );
    // The HTTPS section names its own keys; a key where the CA should be.
    let (sp, sk) = (certs.path("server.pem"), certs.path("server.key"));
    let e = start_err(Box::new(move |c| {
        c.management.ssl.listeners = Some("127.0.0.1:0".parse().unwrap());
        c.management.ssl.certfile = Some(sp);
        c.management.ssl.keyfile = Some(sk.clone());
        c.management.ssl.cacertfile = Some(sk);
        c.management.ssl.verify = Verify::VerifyPeer;
    }))
    .await;
    assert!(
        e.contains("management.ssl.cacertfile") && e.contains("server.key"),
        "{e}"
    );
}

#[test]
fn the_amqps_flag_without_certificates_is_refused_by_name() {
    let work = temp_dir("cwd");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--amqps-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
        ])
        .current_dir(&work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren kept running without the certificates its AMQPS listener needs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("ssl_options.certfile"), "{err}");
    assert!(!work.join("data").exists());
}

// ---------------------------------------------------------------------------
// A TLS client of our own (tokio-rustls) for what lapin does not expose.

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

async fn tcp(addr: SocketAddr) -> tokio::net::TcpStream {
    within(tokio::net::TcpStream::connect(addr)).await.unwrap()
}

/// Trusts the generated CA; presents the client certificate `identity`.
fn tls_client(certs: &Certs, identity: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(certs.path(&format!("{name}.pem")))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS GET (Basic `auth` if given): (status, body).
async fn https_get(
    certs: &Certs,
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let mut tls = within(tls_client(certs, None).connect(server_name(), tcp(addr).await))
        .await
        .expect("TLS handshake with the HTTPS listener");
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // rustls reports a peer that closes without close_notify as an error;
    // what was read by then is the whole answer.
    let _ = within(tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head[9..12].parse().unwrap(), body.to_owned())
}
