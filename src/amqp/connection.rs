//! The connection task: handshake, then the frame loop.
//!
//! One task per connection owns everything of that connection: its
//! channels, their consumers, delivery tags and unacked messages, and the
//! buffer of frames to send. It reads frames, runs commands against the
//! broker, drains the outbox queues fill for its consumers, and hands
//! encoded bytes to the writer task. On any exit it gives unacked messages
//! back to their queues and cancels its consumers, so nothing is lost.

use super::channel::Channel;
use super::codec::{
    self, Frame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER,
};
use super::error::*;
use super::{sasl, writer, AmqpSettings};
use crate::broker::limits::ConnectionSlots;
use crate::broker::{
    AlarmSet, Broker, Caller, ClientInfo, ConnState, ConnectionInfo, NetCounters, Outbox,
    OutboxItem, Queue, RouteScratch, TlsInfo, Vhost,
};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use warren_queues::ConsumerId;

/// Frame size allowed before tune-ok (the spec's minimum frame_max).
const FRAME_MIN_SIZE: usize = 4096;
/// How long the handshake, and a broker shutting down, wait for close-ok
/// after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a closing connection keeps reading (and discarding) before the
/// socket goes: RabbitMQ's `?CLOSING_TIMEOUT`, or the heartbeat interval
/// when that is shorter.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client whose tune-ok is refused waits before the socket
/// closes without a word: RabbitMQ's `?SILENT_CLOSE_DELAY`, so a client
/// cannot make us renegotiate in a tight loop.
const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);
const READ_CHUNK: usize = 64 * 1024;
/// The longest a publisher waits, between two reads, on a queue past its
/// memory budget that nobody consumes (see the flow arm of `run`).
const UNCONSUMED_FLOW_PAUSE: Duration = Duration::from_secs(1);

/// Why the connection ended (for the log, through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum End {
    PeerClosed,
    Io(std::io::Error),
    Closed,
    Timeout(&'static str),
}

/// A connection's confirm tags written but not yet covered by a flush:
/// (channel, channel epoch, tags), and whether a sealer for them is
/// registered with the flusher.
#[derive(Default)]
pub(super) struct ConfirmBatch {
    pub(super) items: Vec<(u16, u64, Vec<u64>)>,
    pub(super) registered: bool,
}

pub(super) struct Connection {
    pub(super) id: u64,
    pub(super) broker: Arc<Broker>,
    pub(super) vhost: Arc<Vhost>,
    /// The user in this vhost: every permission check goes through it.
    pub(super) caller: Caller,
    pub(super) settings: Arc<AmqpSettings>,
    pub(super) frame_max: usize,
    pub(super) channel_max: u16,
    heartbeat: u16,
    /// Frames waiting to go to the writer.
    pub(super) out: BytesMut,
    tx: mpsc::Sender<writer::Chunk>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) channels: HashMap<u16, Channel>,
    /// Client capabilities we honour.
    pub(super) cancel_notify: bool,
    blocked_notify: bool,
    /// Publisher blocking by resource alarms (RabbitMQ's throttle).
    throttle: Throttle,
    /// Set once we sent connection.close: only close/close-ok count now.
    closing_since: Option<Instant>,
    /// Set once we sent close-ok to the client's connection.close: frames
    /// still in flight are read and dropped until the client closes the
    /// socket (or [`Connection::closing_timeout`] passes), so a client
    /// with publishes in flight sees no EPIPE.
    closed_since: Option<Instant>,
    /// The broker is shutting down: closing waits are short.
    shutting_down: bool,
    /// The connection is over: the task ends after this turn.
    done: bool,
    /// Deliveries written whose credit returns on write (no-ack, or no
    /// prefetch limit), to be credited back to their queues.
    pub(super) settle: Vec<(Arc<Queue>, ConsumerId, u32)>,
    /// Stream deliveries framed since the last chunk went to the writer,
    /// which reports them to their queues once written.
    pub(super) stream_written: writer::Written,
    pub(super) route_scratch: RouteScratch,
    /// Reused by acks, nacks and rejects: the settled deliveries, and the
    /// seqs of one queue among them (see `Connection::settle`).
    pub(super) settle_scratch: (Vec<super::channel::Unacked>, Vec<warren_queues::Unacked>),
    /// Channels with confirm tags written to disk this turn.
    pub(super) flush_waiting: Vec<u16>,
    /// Channels with publishes this turn whose confirms may be due.
    pub(super) confirm_waiting: Vec<u16>,
    /// Confirm tags waiting for the next flush (see `request_flushes`).
    pub(super) confirm_batch: Arc<std::sync::Mutex<ConfirmBatch>>,
    /// A queue we published to asked publishers to pause: reading from
    /// the socket waits until it drains (deliveries still go out).
    pub(super) flow_wait: Option<Arc<Queue>>,
    outbox_items: Vec<OutboxItem>,
    /// Output held back until definition writes are durable: a reply that
    /// promises a durable declare, delete or bind, and everything written
    /// after it (so replies, deliveries and confirms keep their order).
    pub(super) hold: Option<Hold>,
    last_sent: Instant,
    /// What the management API sees of us; also how it asks us to close.
    info: Arc<ConnectionInfo>,
    /// The unacked view's queries (see `crate::broker::unacked`), taken
    /// by the task's loop.
    queries: Option<crate::broker::unacked::QueryReceiver>,
    /// Held for the connection's life: its places in the vhost's and the
    /// user's connection limits.
    _slots: ConnectionSlots,
    /// The announced sizes of the bodies the channels are receiving, all
    /// together (bounded by `max_unfinished_body_bytes`, see `channel_frame`).
    pub(super) unfinished_body: u64,
}

/// RabbitMQ's publisher throttling by resource alarms: while an alarm is
/// in effect the connection is "blocking"; once it publishes it is
/// "blocked" and reads nothing more (consumers' deliveries and acks
/// already read still flow) until every alarm clears.
#[derive(Default)]
struct Throttle {
    /// The alarms in effect.
    alarms: AlarmSet,
    /// A publish arrived while an alarm was in effect: reading stops.
    blocked: bool,
    /// connection.blocked was sent; connection.unblocked is owed.
    notified: bool,
}

/// Output from `from` bytes into the connection's buffer on waits until
/// the first `need` definition writes are durable.
pub(super) struct Hold {
    pub(super) from: usize,
    need: u64,
}

/// Serves one client socket until it closes.
pub async fn serve(
    socket: TcpStream,
    broker: Arc<Broker>,
    settings: Arc<AmqpSettings>,
    shutdown: watch::Receiver<bool>,
) {
    let (peer, local) = match (socket.peer_addr(), socket.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    let _ = socket.set_nodelay(true);
    // The halves of a TCP socket need no lock between them.
    let (rd, wr) = socket.into_split();
    let ends = Ends {
        peer,
        local,
        tls: None,
    };
    serve_stream(rd, wr, ends, broker, settings, shutdown).await;
}

/// Serves one client socket of an AMQPS listener: the TLS handshake (within
/// the AMQP handshake's timeout), then AMQP as on a plain socket.
pub async fn serve_tls(
    socket: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<Broker>,
    settings: Arc<AmqpSettings>,
    shutdown: watch::Receiver<bool>,
) {
    let (peer, local) = match (socket.peer_addr(), socket.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    let _ = socket.set_nodelay(true);
    let stream =
        match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(socket)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // A client without the certificate fail_if_no_peer_cert asks
                // for, one that does not trust ours, a plain-AMQP client...
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        };
    let session = crate::tls::Session::of(stream.get_ref().1);
    let (rd, wr) = tokio::io::split(stream);
    let ends = Ends {
        peer,
        local,
        tls: Some(session),
    };
    serve_stream(rd, wr, ends, broker, settings, shutdown).await;
}

/// Where a connection comes from, and its TLS session if any.
struct Ends {
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<crate::tls::Session>,
}

/// The connection task proper, over either kind of stream (compiled once
/// for each, so the plain path pays nothing for TLS).
async fn serve_stream<R, W>(
    rd: R,
    wr: W,
    ends: Ends,
    broker: Arc<Broker>,
    settings: Arc<AmqpSettings>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Ends { peer, local, tls } = ends;
    let mut rd = super::counting::CountingRead::new(rd);
    let net = Arc::new(NetCounters::default());
    let (tx, rx) = mpsc::channel(writer::WRITER_QUEUE);
    let writer = tokio::spawn(writer::run(
        wr,
        rx,
        Arc::new(AtomicBool::new(false)),
        net.clone(),
    ));
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);

    let hs = tokio::time::timeout(
        settings.handshake_timeout,
        handshake(
            &mut rd,
            &mut rbuf,
            &tx,
            &broker,
            &settings,
            peer,
            tls.as_ref(),
        ),
    )
    .await;
    let conn = match hs {
        Ok(Some(h)) => h,
        Ok(None) => {
            drop(tx);
            let _ = writer.await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let id = broker.next_id();
    let mut conn = conn;
    conn.caller.conn = id;
    tracing::info!(%peer, conn = id, user = %conn.user, vhost = %conn.vhost.name, "connection opened");
    let (query_tx, queries) = crate::broker::unacked::mailbox();
    let info = Arc::new(
        ConnectionInfo::new(
            id,
            peer,
            local,
            conn.user.clone(),
            conn.vhost.name.clone(),
            conn.channel_max,
            conn.frame_max as u32,
            conn.heartbeat,
            conn.client,
        )
        .with_login(
            &conn.mechanism,
            tls.map(|t| TlsInfo {
                protocol: t.protocol,
                cipher: t.cipher,
            }),
        )
        .with_net(net)
        .with_queries(query_tx),
    );
    // Deregistered by cleanup (Broker::connection_closed).
    broker.register_connection(info.clone());
    let mut c = Connection {
        id,
        broker,
        vhost: conn.vhost,
        caller: conn.caller,
        settings,
        frame_max: conn.frame_max,
        channel_max: conn.channel_max,
        heartbeat: conn.heartbeat,
        out: BytesMut::with_capacity(64 * 1024),
        tx,
        outbox: Arc::new(Outbox::default()),
        channels: HashMap::new(),
        cancel_notify: conn.cancel_notify,
        blocked_notify: conn.blocked_notify,
        throttle: Throttle::default(),
        closing_since: None,
        closed_since: None,
        shutting_down: false,
        done: false,
        settle: Vec::new(),
        stream_written: Vec::new(),
        route_scratch: RouteScratch::default(),
        settle_scratch: (Vec::new(), Vec::new()),
        flush_waiting: Vec::new(),
        confirm_waiting: Vec::new(),
        confirm_batch: Arc::default(),
        flow_wait: None,
        outbox_items: Vec::new(),
        hold: None,
        last_sent: Instant::now(),
        info,
        queries: Some(queries),
        _slots: conn.slots,
        unfinished_body: 0,
    };
    // A bug that panics mid-connection must not strand its consumers and
    // unacked messages: the cleanup runs either way.
    let end = CatchUnwind(Box::pin(c.run(&mut rd, &mut rbuf, &mut shutdown))).await;
    c.info.net.store_recv(rd.octets, rd.reads);
    c.cleanup();
    let end = match end {
        Ok(end) => end,
        Err(_) => {
            tracing::error!(%peer, conn = id, "connection task panicked; its resources were released");
            End::Closed
        }
    };
    // Let the writer send what is queued (a close-ok, say) before the socket goes.
    drop(c.tx);
    let _ = writer.await;
    tracing::info!(%peer, conn = id, reason = ?end, "connection closed");
}

/// Polls a future, turning a panic inside it into `Err`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

struct Handshaken {
    vhost: Arc<Vhost>,
    /// The connection's places in its vhost's and user's limits.
    slots: ConnectionSlots,
    user: String,
    /// The SASL mechanism used.
    mechanism: String,
    caller: Caller,
    frame_max: usize,
    channel_max: u16,
    heartbeat: u16,
    cancel_notify: bool,
    blocked_notify: bool,
    client: ClientInfo,
}

/// Reads the next frame during the handshake; `None` on EOF, error or a
/// frame that is not a channel-0 method (heartbeats are skipped).
async fn next_method<R: AsyncRead + Unpin>(rd: &mut R, rbuf: &mut BytesMut) -> Option<AMQPClass> {
    loop {
        match codec::read_frame(rbuf, FRAME_MIN_SIZE) {
            Ok(Some(f)) if f.kind == FRAME_HEARTBEAT => continue,
            Ok(Some(f)) if f.kind == FRAME_METHOD && f.channel == 0 => {
                if !codec::method_tables_ok(&f.payload) {
                    return None;
                }
                return amq_protocol::protocol::parse_class(&f.payload[..])
                    .ok()
                    .map(|(_, c)| c);
            }
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        rbuf.reserve(READ_CHUNK);
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(tx: &mpsc::Sender<writer::Chunk>, method: AMQPClass) {
    let mut b = BytesMut::new();
    codec::write_method(&mut b, 0, method);
    let _ = tx.send(b.freeze().into()).await;
}

/// Sends connection.close and waits briefly for close-ok.
async fn refuse<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    tx: &mpsc::Sender<writer::Chunk>,
    code: u16,
    text: String,
    class_method: (u16, u16),
) {
    send(
        tx,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: short_text(text),
            class_id: class_method.0,
            method_id: class_method.1,
        })),
    )
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(m) = next_method(rd, rbuf).await {
            if matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) {
                break;
            }
        }
    })
    .await;
}

fn server_properties(settings: &AmqpSettings) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "exchange_exchange_bindings",
        "publisher_confirms",
        "connection.blocked",
        "direct_reply_to",
        "consumer_priorities",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Warren"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s(&settings.cluster_name));
    p.insert("copyright".into(), s("Copyright (c) the Warren authors"));
    p.insert(
        "information".into(),
        s("Licensed under the MIT license. An AMQP 0-9-1 broker compatible with RabbitMQ."),
    );
    p
}

/// The client properties the management API shows.
/// A string client property; `None` if absent or not a string.
fn text_property(props: &FieldTable, key: &str) -> Option<String> {
    match props.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn client_info(props: &FieldTable) -> ClientInfo {
    let text = |k: &str| text_property(props, k).unwrap_or_default();
    let capabilities = match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t
            .inner()
            .iter()
            .filter_map(|(k, v)| match v {
                AMQPValue::Boolean(b) => Some((k.as_str().to_owned(), *b)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    ClientInfo {
        product: text("product"),
        platform: text("platform"),
        version: text("version"),
        connection_name: text("connection_name"),
        capabilities,
        properties: super::fields::to_table(props),
    }
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Negotiates a limit: the client's lower value wins; 0 means "no limit"
/// (for the side that says it).
fn negotiate<T: Ord + Copy + Default>(server: T, client: T) -> T {
    let zero = T::default();
    if client == zero {
        server
    } else if server == zero {
        client
    } else {
        client.min(server)
    }
}

/// RabbitMQ's check of tune-ok: no value below the minimum, and none
/// above the server's limit, "no limit" (0) included, where it has one.
fn check_tune_ok(settings: &AmqpSettings, tune: &connection::TuneOk) -> Result<(), String> {
    check_negotiated(
        "frame_max",
        FRAME_MIN_SIZE as u64,
        settings.frame_max.into(),
        tune.frame_max.into(),
    )?;
    check_negotiated(
        "channel_max",
        1,
        settings.channel_max.into(),
        tune.channel_max.into(),
    )
}

fn check_negotiated(field: &str, min: u64, server: u64, client: u64) -> Result<(), String> {
    let detail = if field == "channel_max" && client == 0 {
        " (no limit)"
    } else {
        ""
    };
    if client != 0 && client < min {
        Err(format!(
            "negotiated {field} = {client}{detail} is lower than the minimum allowed value ({min})"
        ))
    } else if server != 0 && (client == 0 || client > server) {
        Err(format!(
            "negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
        ))
    } else {
        Ok(())
    }
}

/// Why a connection.start-ok does not log in.
enum LoginError {
    /// RabbitMQ's 403 text, sent to clients that ask for it.
    Refused(String),
    /// A mechanism not offered here, or a malformed response: RabbitMQ
    /// logs this text and drops the socket after `SILENT_CLOSE_DELAY`,
    /// sending nothing.
    Silent(String),
}

/// The user and mechanism a connection.start-ok logs in with.
fn log_in(
    broker: &Broker,
    settings: &AmqpSettings,
    start_ok: &connection::StartOk,
    tls: Option<&crate::tls::Session>,
    peer: SocketAddr,
) -> Result<(String, sasl::Mechanism), LoginError> {
    let name = start_ok.mechanism.as_str();
    let mechanism =
        sasl::chosen(&settings.auth_mechanisms, tls.is_some(), name).map_err(LoginError::Silent)?;
    let refused = |e, user: &str| LoginError::Refused(refused_text(name, e, user));
    let user = match mechanism {
        sasl::Mechanism::External => {
            // The certificate is the credential: its subject names the
            // user, and no password is asked for
            // (rabbitmq_auth_mechanism_ssl).
            let user = tls
                .ok_or("not a TLS-enabled connection")
                .and_then(|t| t.login_name(settings.ssl_cert_login_from))
                .map_err(|why| {
                    tracing::warn!(%peer, "EXTERNAL login refused: {why}");
                    refused(crate::broker::AuthError::Refused, "")
                })?;
            broker
                .authenticate_external(&user, peer.ip())
                .map_err(|e| refused(e, &user))?;
            user
        }
        sasl::Mechanism::Plain | sasl::Mechanism::Amqplain => {
            let (user, pass) = sasl::credentials(mechanism, start_ok.response.as_bytes())
                .ok_or_else(|| LoginError::Silent(format!("{name} response invalid")))?;
            broker
                .authenticate(&user, &pass, peer.ip())
                .map_err(|e| refused(e, &user))?;
            user
        }
    };
    Ok((user, mechanism))
}

/// RabbitMQ's 403 text for a refused login.
fn refused_text(mechanism: &str, e: crate::broker::AuthError, user: &str) -> String {
    match e {
        crate::broker::AuthError::Refused => format!(
            "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        ),
        crate::broker::AuthError::LoopbackOnly => format!(
            "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile. User '{user}' can only connect via localhost"
        ),
    }
}

async fn handshake<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    tx: &mpsc::Sender<writer::Chunk>,
    broker: &Broker,
    settings: &AmqpSettings,
    peer: SocketAddr,
    tls: Option<&crate::tls::Session>,
) -> Option<Handshaken> {
    // Protocol header.
    while rbuf.len() < 8 {
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    if &rbuf[..8] != PROTOCOL_HEADER {
        tracing::info!(%peer, "bad protocol header; answering with ours");
        let _ = tx.send(Bytes::from_static(PROTOCOL_HEADER).into()).await;
        return None;
    }
    let _ = rbuf.split_to(8);
    // The configured mechanisms; EXTERNAL on TLS connections only, as
    // rabbitmq_auth_mechanism_ssl offers it.
    let mechanisms = sasl::offered(&settings.auth_mechanisms, tls.is_some());
    send(
        tx,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(settings),
            mechanisms: mechanisms.into(),
            locales: "en_US".into(),
        })),
    )
    .await;
    let Some(AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok))) =
        next_method(rd, rbuf).await
    else {
        return None;
    };
    let auth_close = client_capability(&start_ok.client_properties, "authentication_failure_close");
    let cancel_notify = client_capability(&start_ok.client_properties, "consumer_cancel_notify");
    let blocked_notify = client_capability(&start_ok.client_properties, "connection.blocked");
    let client = client_info(&start_ok.client_properties);
    // `{client_id}` in topic permissions: Warren's extension for AMQP
    // 0-9-1 (see broker::authz::ClientTopics).
    let client_id = text_property(&start_ok.client_properties, "client_id");
    let (user, mechanism) = match log_in(broker, settings, &start_ok, tls, peer) {
        Ok((user, mechanism)) => (user, mechanism.name().to_owned()),
        Err(LoginError::Refused(text)) => {
            tracing::warn!(%peer, "{text}");
            if auth_close {
                refuse(rd, rbuf, tx, ACCESS_REFUSED, text, (10, 11)).await;
            }
            return None;
        }
        Err(LoginError::Silent(text)) => {
            // Nothing is sent, and the client waits: repeated bad logins
            // cannot be cheap (rabbit_reader's handshake errors).
            tracing::warn!(%peer, "{text}");
            tokio::time::sleep(SILENT_CLOSE_DELAY).await;
            return None;
        }
    };
    send(
        tx,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: settings.channel_max,
            frame_max: settings.frame_max,
            heartbeat: settings.heartbeat,
        })),
    )
    .await;
    let Some(AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune))) =
        next_method(rd, rbuf).await
    else {
        return None;
    };
    if let Err(text) = check_tune_ok(settings, &tune) {
        // RabbitMQ sends nothing here: it logs, waits, and drops the socket.
        tracing::error!(%peer, "failed to negotiate connection parameters: {text}");
        tokio::time::sleep(SILENT_CLOSE_DELAY).await;
        return None;
    }
    let frame_max = negotiate(settings.frame_max, tune.frame_max) as usize;
    let channel_max = negotiate(settings.channel_max, tune.channel_max);
    // The client decides about heartbeats: 0 turns them off.
    let heartbeat = if tune.heartbeat == 0 {
        0
    } else {
        negotiate(settings.heartbeat, tune.heartbeat)
    };
    let Some(AMQPClass::Connection(connection::AMQPMethod::Open(open))) =
        next_method(rd, rbuf).await
    else {
        return None;
    };
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = broker.vhost(vhost_name) else {
        tracing::warn!(%peer, vhost = vhost_name, "connection refused: unknown vhost");
        refuse(
            rd,
            rbuf,
            tx,
            NOT_ALLOWED,
            format!("NOT_ALLOWED - vhost {vhost_name} not found"),
            (10, 40),
        )
        .await;
        return None;
    };
    // As RabbitMQ: the vhost's connection limit, then the user's, then
    // the permission.
    let admitted = broker
        .admit_connection(&user, vhost_name)
        .and_then(|slots| {
            let caller = broker.caller(&user, vhost_name, 0)?;
            Ok((slots, caller.with_client_id(client_id)))
        });
    let (slots, caller) = match admitted {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%peer, user = %user, vhost = vhost_name, "connection refused: {}", e.text);
            refuse(
                rd,
                rbuf,
                tx,
                NOT_ALLOWED,
                format!("NOT_ALLOWED - {}", e.text),
                (10, 40),
            )
            .await;
            return None;
        }
    };
    send(
        tx,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await;
    Some(Handshaken {
        vhost,
        slots,
        user,
        mechanism,
        caller,
        frame_max,
        channel_max,
        heartbeat,
        cancel_notify,
        blocked_notify,
        client,
    })
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut super::counting::CountingRead<R>,
        rbuf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let tick_every = if self.heartbeat == 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(500 * self.heartbeat as u64).min(Duration::from_secs(1))
        };
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut paused_since: Option<tokio::time::Instant> = None;
        let outbox = self.outbox.clone();
        let info = self.info.clone();
        let mut queries = self.queries.take();
        let mut alarms = self.broker.alarms().subscribe();
        let mut alarms_live = true;
        self.alarms_changed(*alarms.borrow_and_update(), rbuf);
        // Frames the client pipelined behind connection.open arrived with
        // the handshake's reads: handle them now, not after the next read.
        if !rbuf.is_empty() {
            self.read_frames(rbuf);
            self.end_read_turn();
        }
        let end = loop {
            if let Err(end) = self.end_turn().await {
                break end;
            }
            // A close-ok (or anything else) held for a flush goes first.
            if self.done && self.hold.is_none() {
                break End::Closed;
            }
            let flow = self.flow_wait.clone();
            // When this pause began: the loop turns for other reasons
            // meanwhile, and the wait below must not restart each turn.
            paused_since = match (&flow, paused_since) {
                (None, _) => None,
                (Some(_), None) => Some(tokio::time::Instant::now()),
                (Some(_), since) => since,
            };
            let blocked = self.throttle.blocked;
            tokio::select! {
                res = rd.read_buf(rbuf), if flow.is_none() && !blocked => {
                    match res {
                        Ok(0) => break End::PeerClosed,
                        Err(e) => break End::Io(e),
                        Ok(_) => {}
                    }
                    last_read = Instant::now();
                    self.read_frames(rbuf);
                    self.end_read_turn();
                    if rbuf.capacity() - rbuf.len() < 4096 {
                        rbuf.reserve(READ_CHUNK);
                    }
                }
                _ = async {
                    if let Some(q) = &flow {
                        if q.counts().1 == 0 && q.flow_needs_consumers() {
                            // Nobody consumes it: only a basic.get, purge
                            // or delete can drain it, perhaps our own,
                            // still unread behind the publishes. One read
                            // a second gets through, so that cannot stall
                            // us for good.
                            let until = paused_since.unwrap_or_else(tokio::time::Instant::now)
                                + UNCONSUMED_FLOW_PAUSE;
                            let _ = tokio::time::timeout_at(until, q.flow_resumed()).await;
                        } else {
                            q.flow_resumed().await;
                        }
                    }
                }, if flow.is_some() => {
                    // Woken when the queue drains (or goes): no polling.
                    if let Some(q) = &flow {
                        if !q.flow_blocked()
                            || q.is_deleted()
                            || (q.counts().1 == 0 && q.flow_needs_consumers())
                        {
                            self.flow_wait = None;
                        }
                    }
                }
                _ = outbox.notified() => {}
                Some(q) = async {
                    match &mut queries {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.answer_unacked(q),
                res = alarms.changed(), if alarms_live => {
                    match res {
                        Ok(()) => self.alarms_changed(*alarms.borrow_and_update(), rbuf),
                        // The broker is going away.
                        Err(_) => alarms_live = false,
                    }
                }
                reason = info.close_requested(), if self.closing_since.is_none() => {
                    // A client that already closed is only waited for.
                    if self.closed_since.is_some() {
                        break End::Closed;
                    }
                    self.close_connection(ConnectionError {
                        code: CONNECTION_FORCED,
                        text: format!("CONNECTION_FORCED - {reason}"),
                        class_id: 0,
                        method_id: 0,
                    });
                }
                _ = tick.tick() => {
                    // For the management API; at most once a tick, off the hot path.
                    self.info.set_channels(self.channel_snapshots());
                    self.info.net.store_recv(rd.octets, rd.reads);
                    self.check_timeouts();
                    let now = Instant::now();
                    if self.flow_wait.is_some() || self.throttle.blocked {
                        // Time spent paused by us is not the peer's silence.
                        last_read = now;
                    }
                    if let Some(since) = self.closing_since {
                        if now - since > self.closing_timeout() {
                            break End::Timeout("close-ok");
                        }
                    }
                    if let Some(since) = self.closed_since {
                        if now - since > self.closing_timeout() {
                            break End::Timeout("socket close after close-ok");
                        }
                    }
                    if self.heartbeat != 0 {
                        let hb = Duration::from_secs(self.heartbeat as u64);
                        if now - last_read > hb * 2 {
                            tracing::warn!(conn = self.id, timeout = ?hb, "missed heartbeats from client");
                            break End::Timeout("heartbeat");
                        }
                        if now - self.last_sent >= hb / 2 && self.out.is_empty() {
                            codec::write_heartbeat(&mut self.out);
                        }
                    }
                }
                res = shutdown.changed() => {
                    if res.is_ok() && *shutdown.borrow() {
                        self.shutting_down = true;
                    }
                    if self.shutting_down && self.closed_since.is_some() {
                        break End::Closed;
                    }
                    if self.shutting_down && self.closing_since.is_none() {
                        self.close_connection(ConnectionError {
                            code: CONNECTION_FORCED,
                            text: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into(),
                            class_id: 0,
                            method_id: 0,
                        });
                    }
                }
            }
        };
        if self.closing_since.is_some() || self.closed_since.is_some() || self.done {
            return End::Closed;
        }
        end
    }

    /// The end of every turn of the loop: deliveries are drained on every
    /// turn, not only when woken (publishes may have filled our own
    /// outbox), and what is framed goes to the writer.
    async fn end_turn(&mut self) -> Result<(), End> {
        self.drain_outbox();
        // Message counters (publishes, deliveries, acks) reach the
        // shared ones once a turn, not once a message.
        self.route_scratch.flush_counts();
        // Only what precedes a hold goes out (see `hold`).
        let ready = self.hold.as_ref().map_or(self.out.len(), |h| h.from);
        if ready > 0 {
            let bytes = self.out.split_to(ready).freeze();
            if let Some(h) = &mut self.hold {
                h.from = 0;
            }
            // Held stream deliveries are not in this chunk: they wait.
            let written = if self.hold.is_none() {
                std::mem::take(&mut self.stream_written)
            } else {
                Vec::new()
            };
            if self
                .tx
                .send(writer::Chunk { bytes, written })
                .await
                .is_err()
            {
                return Err(End::Io(std::io::ErrorKind::BrokenPipe.into()));
            }
            self.last_sent = Instant::now();
        }
        if self.hold.is_none() {
            // Held no-ack deliveries are not written yet: no credit.
            self.credit_no_ack();
        }
        Ok(())
    }

    /// After the frames of one read: one flush request per channel, and
    /// one (multiple) confirm per channel for what needs no disk.
    fn end_read_turn(&mut self) {
        self.request_flushes();
        self.send_ready_confirms();
    }

    /// How long a closing connection waits for close-ok, or for the client
    /// to close its socket after our close-ok. A shutdown waits less: the
    /// server gives its connections a few seconds in all.
    fn closing_timeout(&self) -> Duration {
        if self.shutting_down {
            return CLOSE_TIMEOUT;
        }
        let hb = Duration::from_secs(self.heartbeat.into());
        if self.heartbeat > 0 && hb < CLOSING_TIMEOUT {
            hb
        } else {
            CLOSING_TIMEOUT
        }
    }

    /// Handles every whole frame in the read buffer.
    fn read_frames(&mut self, rbuf: &mut BytesMut) {
        // A blocked connection leaves what it has not read in the buffer,
        // as RabbitMQ does: a publish half read waits for the unblock.
        while !self.done && !self.throttle.blocked {
            let limit = if self.frame_max == 0 {
                0
            } else {
                self.frame_max
            };
            match codec::read_frame(rbuf, limit) {
                Ok(Some(f)) => {
                    let content = f.kind == FRAME_HEADER || f.kind == FRAME_BODY;
                    if let Err(e) = self.frame(f) {
                        self.close_connection(e);
                    }
                    if content {
                        self.publish_received();
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // The stream cannot be trusted past a bad frame.
                    rbuf.clear();
                    self.close_connection(ConnectionError {
                        code: FRAME_ERROR,
                        text: format!("FRAME_ERROR - {e}"),
                        class_id: 0,
                        method_id: 0,
                    });
                    return;
                }
            }
        }
    }

    fn frame(&mut self, f: Frame) -> Result<(), ConnectionError> {
        if self.closed_since.is_some() {
            // We sent close-ok: whatever is still in flight is dropped.
            return Ok(());
        }
        if self.closing_since.is_some() {
            // After our close, only close and close-ok matter.
            if f.channel == 0 && f.kind == FRAME_METHOD {
                match parse_connection_method(&f.payload) {
                    Some(connection::AMQPMethod::CloseOk(_)) => self.done = true,
                    Some(connection::AMQPMethod::Close(_)) => {
                        self.send_method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.done = true;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        // Heartbeats belong on channel 0, content frames elsewhere.
        let misplaced = match f.kind {
            FRAME_HEARTBEAT => f.channel != 0,
            FRAME_METHOD => false,
            _ => f.channel == 0,
        };
        if misplaced {
            return Err(unexpected_frame(&f));
        }
        if f.kind == FRAME_HEARTBEAT {
            return Ok(());
        }
        if f.channel == 0 {
            return self.connection_method(&f.payload);
        }
        self.channel_frame(f)
    }

    fn connection_method(&mut self, payload: &[u8]) -> Result<(), ConnectionError> {
        let cm = super::assembler::class_method(payload);
        match parse_connection_method(payload) {
            Some(connection::AMQPMethod::Close(c)) => {
                tracing::debug!(
                    conn = self.id,
                    code = c.reply_code,
                    text = c.reply_text.as_str(),
                    "client closed the connection"
                );
                self.release_all_channels();
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                // As RabbitMQ: keep reading (and dropping) until the client
                // closes the socket, so its publishes in flight get no EPIPE.
                self.closed_since = Some(Instant::now());
                self.flow_wait = None;
                Ok(())
            }
            Some(connection::AMQPMethod::CloseOk(_)) => Ok(()),
            Some(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            // A channel-class method, or a handshake method once open.
            _ => Err(ConnectionError {
                code: CHANNEL_ERROR,
                text: "CHANNEL_ERROR - unexpected method in connection state running".into(),
                class_id: cm.0,
                method_id: cm.1,
            }),
        }
    }

    /// The alarms in effect changed (or the connection just opened): a
    /// blocked connection is unblocked once none is left (and reads what
    /// it had left unread); one that is running becomes "blocking".
    fn alarms_changed(&mut self, alarms: AlarmSet, rbuf: &mut BytesMut) {
        self.throttle.alarms = alarms;
        if alarms.any() || !self.throttle.blocked {
            self.show_state();
            return;
        }
        self.throttle.blocked = false;
        if self.throttle.notified {
            self.throttle.notified = false;
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        self.show_state();
        tracing::info!(conn = self.id, "resource alarms cleared: reading again");
        if !rbuf.is_empty() {
            self.read_frames(rbuf);
            self.end_read_turn();
        }
    }

    /// A content frame was read: under an alarm the connection blocks
    /// (RabbitMQ's `publish_received`), telling clients that asked for it.
    fn publish_received(&mut self) {
        let t = &mut self.throttle;
        if !t.alarms.any()
            || t.blocked
            || self.closing_since.is_some()
            || self.closed_since.is_some()
        {
            return;
        }
        t.blocked = true;
        let reason = t.alarms.reason();
        tracing::info!(conn = self.id, %reason, "publisher blocked by a resource alarm");
        if self.blocked_notify && !t.notified {
            t.notified = true;
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: reason.into(),
                })),
            );
        }
        self.show_state();
    }

    /// The state the management API shows.
    fn show_state(&self) {
        let state = match (self.throttle.blocked, self.throttle.alarms.any()) {
            (true, _) => ConnState::Blocked,
            (false, true) => ConnState::Blocking,
            (false, false) => ConnState::Running,
        };
        self.info.set_state(state);
    }

    pub(super) fn send_method(&mut self, channel: u16, method: AMQPClass) {
        codec::write_method(&mut self.out, channel, method);
    }

    /// Sends connection.close and stops handling anything but close-ok.
    pub(super) fn close_connection(&mut self, e: ConnectionError) {
        // Once closed, errors (a bad frame in flight) are only logged.
        if self.closing_since.is_some() || self.closed_since.is_some() || self.done {
            tracing::debug!(conn = self.id, code = e.code, text = %e.text, "error on a closing connection");
            return;
        }
        tracing::warn!(conn = self.id, code = e.code, text = %e.text, "closing connection");
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: short_text(e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.closing_since = Some(Instant::now());
        self.flow_wait = None;
        // Close-ok must be read, whatever the alarms.
        self.throttle.blocked = false;
        // Free what the channels hold now, as RabbitMQ does on close.
        self.release_all_channels();
    }

    fn release_all_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(ch) = self.remove_channel(id) {
                self.release_channel(ch);
            }
        }
    }

    /// Moves deliveries and cancellations from the outbox into frames.
    fn drain_outbox(&mut self) {
        let mut items = std::mem::take(&mut self.outbox_items);
        self.outbox.take_into(&mut items);
        for item in items.drain(..) {
            match item {
                OutboxItem::Deliver(d) => self.deliver(d),
                OutboxItem::Cancelled {
                    session,
                    tag,
                    consumer,
                } => self.consumer_cancelled(session, &tag, consumer),
                OutboxItem::Confirmed {
                    session,
                    epoch,
                    tags,
                    ok,
                } => self.confirmed(session, epoch, &tags, ok),
                OutboxItem::TxCommitted { session, epoch, ok } => {
                    self.tx_committed(session, epoch, ok)
                }
                OutboxItem::DefinitionsFlushed { ok } => self.definitions_flushed(ok),
                OutboxItem::Reply(r) => self.deliver_reply(r),
            }
        }
        self.outbox_items = items;
    }

    /// Holds every reply from now on until the definition writes made so
    /// far are durable: called before the reply of a method that may have
    /// written some (declares, deletes, binds). Nothing is held when
    /// nothing is pending; a reply may wait for another client's writes
    /// too, never longer than one group commit.
    pub(super) fn hold_for_definitions(&mut self) {
        let Some(p) = self.broker.persistence() else {
            return;
        };
        let need = p.definitions_written();
        if need <= p.definitions_durable_upto() {
            return;
        }
        match &mut self.hold {
            // Released once a flush covers this write too.
            Some(h) => h.need = h.need.max(need),
            None => {
                self.hold = Some(Hold {
                    from: self.out.len(),
                    need,
                });
                self.wait_for_flush();
            }
        }
    }

    fn wait_for_flush(&self) {
        if let Some(p) = self.broker.persistence() {
            let outbox = self.outbox.clone();
            p.flusher.after_flush(Box::new(move |ok| {
                let _ = outbox.push_all(vec![OutboxItem::DefinitionsFlushed { ok }]);
            }));
        }
    }

    /// A flush ended: release held output once the writes it waits for
    /// are durable (some made after the hold began may need one more
    /// flush; writes by others after that never delay it).
    fn definitions_flushed(&mut self, ok: bool) {
        let Some(h) = &self.hold else {
            return;
        };
        let durable = self
            .broker
            .persistence()
            .map_or(u64::MAX, |p| p.definitions_durable_upto());
        if !ok {
            // The disk failed: the writes may never be durable. Answer
            // anyway rather than hang the connection; it is logged.
            tracing::error!(
                conn = self.id,
                "definitions flush failed; replying regardless"
            );
        } else if durable < h.need {
            self.wait_for_flush();
            return;
        }
        self.hold = None;
    }

    /// Gives the write credit of deliveries written so far back to their
    /// queues (no-ack consumers, and those without a prefetch limit).
    fn credit_no_ack(&mut self) {
        for (q, consumer, n) in self.settle.drain(..) {
            q.credit_written(consumer, n);
        }
    }

    /// Forgets a channel (closed by either side, or with the connection)
    /// and counts it as closed for the churn figures.
    pub(super) fn remove_channel(&mut self, id: u16) -> Option<Channel> {
        let ch = self.channels.remove(&id);
        if let Some(ch) = &ch {
            self.unfinished_body = self.unfinished_body.saturating_sub(ch.pending_body());
            self.broker.churn.add(crate::broker::Churn::ChannelClosed);
        }
        ch
    }

    /// Everything the connection holds goes back to the broker.
    fn cleanup(&mut self) {
        self.release_all_channels();
        // Deliveries that were queued for us but never written, and any a
        // queue dispatched while its consumer was being cancelled: the
        // closed outbox hands later ones straight back to their queues.
        for item in self.outbox.close() {
            if let OutboxItem::Deliver(d) = item {
                d.queue.undeliver(d.message, d.no_ack, d.deadline, d.held);
            }
        }
        self.settle.clear();
        self.broker.connection_closed(self.id);
    }
}

fn parse_connection_method(payload: &[u8]) -> Option<connection::AMQPMethod> {
    if !codec::method_tables_ok(payload) {
        return None;
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok((_, AMQPClass::Connection(m))) => Some(m),
        _ => None,
    }
}

/// RabbitMQ's 505 for a frame on the wrong channel: its type and (the
/// first 16 of) its octets, as Erlang prints a binary.
fn unexpected_frame(f: &Frame) -> ConnectionError {
    let (which, bytes) = if f.payload.len() <= 16 {
        ("all", &f.payload[..])
    } else {
        ("first", &f.payload[..16])
    };
    conn_err(
        UNEXPECTED_FRAME,
        format!(
            "UNEXPECTED_FRAME - type {}, {which} octets = {}",
            f.kind,
            erlang_binary(bytes)
        ),
    )
}

/// A binary as Erlang's `~p` prints it: `<<"text">>` when printable,
/// else `<<1,2,3>>`.
fn erlang_binary(b: &[u8]) -> String {
    let printable = !b.is_empty()
        && b.iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
    if printable {
        format!("<<\"{}\">>", String::from_utf8_lossy(b))
    } else {
        let items: Vec<String> = b.iter().map(u8::to_string).collect();
        format!("<<{}>>", items.join(","))
    }
}

pub(super) fn conn_err(code: u16, text: impl Into<String>) -> ConnectionError {
    ConnectionError {
        code,
        text: text.into(),
        class_id: 0,
        method_id: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::negotiate;

    #[test]
    fn negotiation_takes_the_lower_nonzero_value() {
        assert_eq!(negotiate(131072u32, 0), 131072);
        assert_eq!(negotiate(131072u32, 4096), 4096);
        assert_eq!(negotiate(131072u32, 1 << 20), 131072);
        assert_eq!(negotiate(0u16, 100), 100);
    }
}
