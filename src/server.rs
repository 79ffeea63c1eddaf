//! Listeners and shutdown.
//!
//! [`start`] binds the AMQP, management HTTP and Prometheus listeners (each
//! on one or more addresses; tests bind port 0 and read the real addresses
//! back), and the AMQPS and HTTPS ones when configured (their certificates
//! loaded first), before it writes anything, then opens the data directory and
//! spawns the accept loops, the HTTP servers, the sampler that turns
//! message counters into rates and the resource alarms' monitor.
//! [`Server::shutdown`] stops accepting, asks every connection to close
//! (320 CONNECTION_FORCED, as RabbitMQ does) and waits for them; dropping
//! a [`Server`] stops it at once.

use crate::amqp::{connection, AmqpSettings};
use crate::broker::Broker;
use crate::config::Config;
use crate::mgmt::conn::{BoundedListener, HttpLimits, Peer};
use crate::mgmt::MgmtState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub struct Server {
    amqp_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    prometheus_addrs: Vec<SocketAddr>,
    amqps_addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    broker: Arc<Broker>,
    /// The serving tasks; `None` once shut down (by [`Server::shutdown`]
    /// or by drop), so the other path does nothing.
    tasks: Option<Tasks>,
}

/// What runs while the server serves.
struct Tasks {
    shutdown: watch::Sender<bool>,
    accept: Vec<JoinHandle<()>>,
    http: Vec<JoinHandle<()>>,
    sampler: JoinHandle<()>,
    /// Measures memory and free disk for the resource alarms.
    monitor: JoinHandle<()>,
}

impl Server {
    /// The first AMQP address bound (see [`Server::amqp_addrs`]).
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addrs[0]
    }

    /// Every AMQP address bound, in the configured order.
    pub fn amqp_addrs(&self) -> &[SocketAddr] {
        &self.amqp_addrs
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addrs[0]
    }

    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    pub fn prometheus_addr(&self) -> SocketAddr {
        self.prometheus_addrs[0]
    }

    pub fn prometheus_addrs(&self) -> &[SocketAddr] {
        &self.prometheus_addrs
    }

    /// The AMQPS (AMQP over TLS) addresses bound; empty without
    /// `listeners.ssl`.
    pub fn amqps_addrs(&self) -> &[SocketAddr] {
        &self.amqps_addrs
    }

    /// The management API's HTTPS addresses; empty without
    /// `management.ssl.listeners`.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Closes every connection, waits (up to a few seconds) for them, and
    /// makes everything written durable.
    pub async fn shutdown(mut self) {
        let Some(t) = self.tasks.take() else { return };
        let _ = t.shutdown.send(true);
        for a in t.accept {
            let _ = a.await;
        }
        // Awaited after the abort: the sampler holds the broker, and the
        // store only closes (its directory can be reopened) once the last
        // holder is gone.
        t.sampler.abort();
        let _ = t.sampler.await;
        t.monitor.abort();
        let _ = t.monitor.await;
        for h in t.http {
            let _ = h.await;
        }
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close()).await;
    }
}

/// A server dropped without [`Server::shutdown`] (a test that ends, a
/// panic) stops at once: its listeners and tasks are aborted (connections
/// are dropped without a connection.close, as if the process had exited)
/// and the store is flushed and closed, so its data directory can be
/// removed or reopened. Closing the store blocks briefly (the final
/// flush): on a multi-threaded runtime it runs under `block_in_place`, so
/// the other tasks on the worker move elsewhere meanwhile.
impl Drop for Server {
    fn drop(&mut self) {
        let Some(t) = self.tasks.take() else { return };
        let _ = t.shutdown.send(true);
        for h in t
            .accept
            .iter()
            .chain(&t.http)
            .chain([&t.sampler, &t.monitor])
        {
            h.abort();
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .unwrap_or(false);
        if multi_thread {
            tokio::task::block_in_place(|| self.broker.close());
        } else {
            self.broker.close();
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Storage(warren_queues::DiskError),
    /// A TLS listener's certificate, key or CA file is missing or unusable
    /// (the message names the key and the file).
    Tls(String),
    /// A listener's address could not be bound (nothing was written yet).
    Bind {
        /// "AMQP", "management HTTP" or "Prometheus".
        listener: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Storage(e) => write!(f, "cannot open the data directory: {e}"),
            StartError::Tls(e) => write!(f, "cannot set up TLS: {e}"),
            StartError::Bind {
                listener,
                addr,
                error,
            } => {
                write!(f, "cannot bind the {listener} listener to {addr}: {error}")?;
                if error.kind() == std::io::ErrorKind::AddrInUse {
                    write!(
                        f,
                        " (is another broker, or RabbitMQ, listening there? \
                         choose another address with --{}-listen or in rabbit.toml)",
                        flag_of(listener)
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartError {}

fn flag_of(listener: &str) -> &'static str {
    match listener {
        "AMQP" => "amqp",
        "AMQPS" => "amqps",
        "management HTTP" => "http",
        "management HTTPS" => "https",
        _ => "prometheus",
    }
}

/// The listeners, bound and not yet serving.
struct Bound {
    amqp: Vec<TcpListener>,
    http: Vec<TcpListener>,
    prometheus: Vec<TcpListener>,
    /// Empty when not configured, as is the acceptor.
    amqps: Vec<TcpListener>,
    amqps_tls: Option<TlsAcceptor>,
    https: Vec<TcpListener>,
    https_tls: Option<TlsAcceptor>,
}

impl Bound {
    fn addrs(ls: &[TcpListener]) -> Vec<SocketAddr> {
        ls.iter()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
            .collect()
    }
}

/// Binds every listener, then opens the data directory (recovering what it
/// holds) and starts serving. A listener that cannot be bound stops the
/// start before anything is written: no data directory, no users.
pub async fn start(config: &Config) -> Result<Server, StartError> {
    let amqps = config.listeners.ssl.as_ref();
    let https = config.management.ssl.listeners.as_ref();
    // Certificates first: a bad file stops the start before any bind.
    let amqps_tls = amqps
        .map(|_| crate::tls::acceptor(&config.ssl_options, "ssl_options"))
        .transpose()
        .map_err(StartError::Tls)?;
    let https_tls = https
        .map(|_| crate::tls::acceptor(&config.management.ssl.options(), "management.ssl"))
        .transpose()
        .map_err(StartError::Tls)?;
    let bound = Bound {
        amqp: bind_all("AMQP", config.listeners.amqp.addrs())?,
        http: bind_all("management HTTP", config.listeners.http.addrs())?,
        prometheus: bind_all("Prometheus", config.listeners.prometheus.addrs())?,
        amqps: match amqps {
            Some(a) => bind_all("AMQPS", a.addrs())?,
            None => Vec::new(),
        },
        amqps_tls,
        https: match https {
            Some(a) => bind_all("management HTTPS", a.addrs())?,
            None => Vec::new(),
        },
        https_tls,
    };
    let (bc, sc) = (config.broker_config(), config.storage_config());
    // Recovery reads the whole store: keep it off the async workers.
    // Clients that connect meanwhile wait in the listen backlog.
    let broker = tokio::task::spawn_blocking(move || Broker::open(&bc, &sc))
        .await
        .expect("recovery does not panic")
        .map_err(StartError::Storage)?;
    Ok(serve(config, broker, bound))
}

/// Binds one listener's addresses. A later address with port 0 takes the
/// port the first one got, so one port serves both families. The IPv6
/// wildcard `[::]` is skipped with a warning on a machine without IPv6,
/// when another address of the listener is bound.
fn bind_all(listener: &'static str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out: Vec<TcpListener> = Vec::new();
    for &configured in addrs {
        let mut addr = configured;
        if addr.port() == 0 {
            if let Some(first) = out.first() {
                addr.set_port(first.local_addr().map(|a| a.port()).unwrap_or(0));
            }
        }
        match bind_one(addr) {
            Ok(l) => out.push(l),
            Err(error) if no_ipv6(&addr, &error) && addrs.len() > 1 => {
                tracing::warn!(%addr, %error, "IPv6 is not available here; the {listener} listener skips this address");
            }
            Err(error) => {
                return Err(StartError::Bind {
                    listener,
                    addr,
                    error,
                })
            }
        }
    }
    if out.is_empty() {
        return Err(StartError::Bind {
            listener,
            addr: addrs[0],
            error: std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address could be bound",
            ),
        });
    }
    Ok(out)
}

/// Whether binding the IPv6 wildcard failed only because the machine has
/// no IPv6.
fn no_ipv6(addr: &SocketAddr, e: &std::io::Error) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
        )
}

/// One listening socket: SO_REUSEADDR (a restart does not wait for
/// TIME_WAIT), and IPv6 sockets IPv6-only, so `[::]:P` and `0.0.0.0:P`
/// can both be bound whatever the system's `bindv6only` default.
fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn serve(config: &Config, broker: Arc<Broker>, bound: Bound) -> Server {
    let settings = Arc::new(config.amqp_settings());
    let amqp_addrs = Bound::addrs(&bound.amqp);
    let http_addrs = Bound::addrs(&bound.http);
    let prometheus_addrs = Bound::addrs(&bound.prometheus);
    let amqps_addrs = Bound::addrs(&bound.amqps);
    let https_addrs = Bound::addrs(&bound.https);
    for (addrs, what) in [
        (&amqp_addrs, "AMQP"),
        (&amqps_addrs, "AMQPS"),
        (&http_addrs, "management HTTP"),
        (&https_addrs, "management HTTPS"),
        (&prometheus_addrs, "Prometheus"),
    ] {
        for addr in addrs {
            tracing::info!(%addr, "{what} listener ready");
        }
    }
    let (shutdown, rx) = watch::channel(false);
    let state = Arc::new(MgmtState {
        broker: broker.clone(),
        node: config.amqp.cluster_name.clone(),
        cluster_name: config.amqp.cluster_name.clone(),
        amqp_addrs: amqp_addrs.clone(),
        http_addrs: http_addrs.clone(),
        prometheus_addrs: prometheus_addrs.clone(),
        amqps_addrs: amqps_addrs.clone(),
        https_addrs: https_addrs.clone(),
        data_dir: config.storage.data_dir.clone(),
        started: std::time::Instant::now(),
    });
    let http_limits = Arc::new(HttpLimits {
        connections: Arc::new(Semaphore::new(config.limits.http_max_connections as usize)),
        idle_timeout: Duration::from_secs(config.limits.http_idle_timeout_secs),
        unauthenticated_timeout: Duration::from_secs(
            config.limits.http_unauthenticated_timeout_secs,
        ),
    });
    let mut http = Vec::new();
    for l in bound.prometheus {
        let app = crate::mgmt::metrics_router(state.clone());
        let l = BoundedListener::new(l, http_limits.clone());
        http.push(serve_http(l, app, "Prometheus", rx.clone()));
    }
    for l in bound.http {
        let app = crate::mgmt::router(state.clone());
        let l = BoundedListener::new(l, http_limits.clone());
        http.push(serve_http(l, app, "management", rx.clone()));
    }
    let amqp_slots = Arc::new(Semaphore::new(amqp_connection_cap(config)));
    if let Some(tls) = bound.https_tls {
        for l in bound.https {
            let app = crate::mgmt::router(state.clone());
            let l = crate::tls::HttpsListener::new(l, tls.clone());
            let l = BoundedListener::new(l, http_limits.clone());
            http.push(serve_http(l, app, "management HTTPS", rx.clone()));
        }
    }
    let sampler = tokio::spawn(sample_rates(
        broker.clone(),
        Duration::from_millis(config.management.collect_statistics_interval),
    ));
    let monitor = tokio::spawn(crate::broker::alarms::monitor(broker.alarms().clone()));
    let plain = bound.amqp.into_iter().map(|l| (l, None));
    let tls = bound.amqps_tls;
    let accept = plain
        .chain(bound.amqps.into_iter().map(|l| (l, tls.clone())))
        .map(|(l, tls)| {
            let (b, s, rx) = (broker.clone(), settings.clone(), rx.clone());
            tokio::spawn(accept_loop(l, tls, b, s, amqp_slots.clone(), rx))
        })
        .collect();
    Server {
        amqp_addrs,
        http_addrs,
        prometheus_addrs,
        amqps_addrs,
        https_addrs,
        broker,
        tasks: Some(Tasks {
            shutdown,
            accept,
            http,
            sampler,
            monitor,
        }),
    }
}

/// Serves an HTTP router (with the peer's address, for the loopback-only
/// users) until shutdown, over plain TCP or TLS.
fn serve_http<L>(
    listener: BoundedListener<L>,
    app: axum::Router,
    what: &'static str,
    rx: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let stop = shutdown_signal(rx);
    tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<Peer>();
        // tap_io only to get axum's connect-info impl for any listener.
        if let Err(e) = axum::serve(listener.tap_io(|_| {}), svc)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "{what} HTTP server failed");
        }
    })
}

/// Resolves once shutdown is signalled (or the signal's sender is gone).
async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// Turns the message counters into per-second rates every `every`
/// (`management.collect_statistics_interval`), and advances the coarse
/// clock deliveries are stamped with.
async fn sample_rates(broker: Arc<Broker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = tokio::time::interval(crate::broker::registry::CLOCK_TICK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                broker.sample_rates((now - last).as_secs_f64());
                last = now;
            }
            _ = clock.tick() => broker.clock().tick(),
        }
    }
}

/// How many AMQP connections the node serves at once: the configured
/// `connection_max` (0: none), and in any case what the open-files limit
/// leaves after the HTTP connections and the reserve, so running out of
/// descriptors makes clients wait rather than breaking accept and the store.
fn amqp_connection_cap(config: &Config) -> usize {
    let nofile = raise_nofile_limit();
    let l = &config.limits;
    let by_fds = nofile
        .saturating_sub(l.http_max_connections)
        .saturating_sub(l.fd_reserve)
        .max(1);
    let cap = match l.connection_max {
        0 => by_fds,
        n => n.min(by_fds),
    };
    if l.connection_max == 0 || cap < l.connection_max {
        tracing::info!(
            open_files = nofile,
            cap,
            "AMQP connections are capped by the open-files limit"
        );
    }
    // Tokio's semaphore holds at most usize::MAX >> 3 permits.
    (cap.min(1 << 40)) as usize
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as RabbitMQ's
/// packaging advises) and returns the soft limit now in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = lim.rlim_cur as u64;
    soft
}

/// Accepts AMQP clients (AMQPS ones when `tls` is set), each in a task of
/// its own, while a connection slot is free: past the
/// node's cap (`limits.connection_max`, and the file descriptors left
/// after the reserve) clients wait in the listen backlog, as RabbitMQ's
/// ranch makes them wait. A failed accept (out of descriptors after all)
/// backs off, up to a second, instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    broker: Arc<Broker>,
    settings: Arc<AmqpSettings>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    let mut full_logged = false;
    loop {
        let ready = slots.clone().try_acquire_owned().ok();
        if ready.is_some() {
            full_logged = false;
        } else if !full_logged {
            tracing::warn!("AMQP connection limit reached; new clients wait until one closes");
            full_logged = true;
        }
        let next = async {
            let permit = match ready {
                Some(p) => p,
                None => slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the AMQP connection semaphore is never closed"),
            };
            (permit, listener.accept().await)
        };
        tokio::select! {
            (permit, res) = next => match res {
                Ok((sock, _)) => {
                    backoff = Duration::from_millis(10);
                    let (b, s, sd) = (broker.clone(), settings.clone(), shutdown.clone());
                    let tls = tls.clone();
                    conns.spawn(async move {
                        match tls {
                            None => connection::serve(sock, b, s, sd).await,
                            Some(a) => connection::serve_tls(sock, a, b, s, sd).await,
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    drop(permit);
                    tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; aborting them");
        conns.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ipv6_wildcard_is_skipped_for_want_of_ipv6() {
        let no_family = std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
        let no_addr = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        let any6: SocketAddr = "[::]:5672".parse().unwrap();
        assert!(no_ipv6(&any6, &no_family));
        assert!(no_ipv6(&any6, &no_addr));
        assert!(!no_ipv6(&any6, &in_use), "a busy port is an error");
        let lo6: SocketAddr = "[::1]:5672".parse().unwrap();
        assert!(!no_ipv6(&lo6, &no_family), "a configured address must bind");
        let any4: SocketAddr = "0.0.0.0:5672".parse().unwrap();
        assert!(!no_ipv6(&any4, &no_family));
    }

    #[test]
    fn port_zero_on_several_addresses_shares_the_first_port() {
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ls = rt
            .block_on(async { bind_all("AMQP", &addrs) })
            .expect("binds");
        let got = Bound::addrs(&ls);
        assert_eq!(got.len(), 2);
        assert_ne!(got[0].port(), 0);
        assert_eq!(got[0].port(), got[1].port());
    }
}
