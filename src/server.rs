//! Listeners and shutdown.
//!
//! [`start`] binds the AMQP, management HTTP and Prometheus listeners (each
//! on one or more addresses; tests bind port 0 and read the real addresses
//! back) before it writes anything, then opens the data directory and
//! spawns the accept loops, the HTTP servers, the sampler that turns
//! message counters into rates and the resource alarms' monitor.
//! [`Server::shutdown`] stops accepting, asks every connection to close
//! (320 CONNECTION_FORCED, as RabbitMQ does) and waits for them; dropping
//! a [`Server`] stops it at once.

use crate::amqp::{connection, AmqpSettings};
use crate::broker::Broker;
use crate::config::Config;
use crate::mgmt::MgmtState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct Server {
    amqp_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    prometheus_addrs: Vec<SocketAddr>,
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
        "management HTTP" => "http",
        _ => "prometheus",
    }
}

/// The listeners, bound and not yet serving.
struct Bound {
    amqp: Vec<TcpListener>,
    http: Vec<TcpListener>,
    prometheus: Vec<TcpListener>,
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
    let bound = Bound {
        amqp: bind_all("AMQP", config.listeners.amqp.addrs())?,
        http: bind_all("management HTTP", config.listeners.http.addrs())?,
        prometheus: bind_all("Prometheus", config.listeners.prometheus.addrs())?,
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
    for addr in &amqp_addrs {
        tracing::info!(%addr, "AMQP listener ready");
    }
    for addr in &http_addrs {
        tracing::info!(%addr, "management HTTP listener ready");
    }
    for addr in &prometheus_addrs {
        tracing::info!(%addr, "Prometheus listener ready");
    }
    let (shutdown, rx) = watch::channel(false);
    let state = Arc::new(MgmtState {
        broker: broker.clone(),
        node: config.amqp.cluster_name.clone(),
        cluster_name: config.amqp.cluster_name.clone(),
        amqp_addrs: amqp_addrs.clone(),
        http_addrs: http_addrs.clone(),
        prometheus_addrs: prometheus_addrs.clone(),
        data_dir: config.storage.data_dir.clone(),
        started: std::time::Instant::now(),
    });
    let mut http = Vec::new();
    for l in bound.prometheus {
        let app = crate::mgmt::metrics_router(state.clone());
        http.push(serve_http(l, app, "Prometheus", rx.clone()));
    }
    for l in bound.http {
        let app = crate::mgmt::router(state.clone());
        http.push(serve_http(l, app, "management", rx.clone()));
    }
    let sampler = tokio::spawn(sample_rates(
        broker.clone(),
        Duration::from_millis(config.management.collect_statistics_interval),
    ));
    let monitor = tokio::spawn(crate::broker::alarms::monitor(broker.alarms().clone()));
    let accept = bound
        .amqp
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, broker.clone(), settings.clone(), rx.clone())))
        .collect();
    Server {
        amqp_addrs,
        http_addrs,
        prometheus_addrs,
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
/// users) until shutdown.
fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    rx: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let stop = shutdown_signal(rx);
    tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc)
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

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    settings: Arc<AmqpSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((sock, _)) => {
                    conns.spawn(connection::serve(sock, broker.clone(), settings.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
