//! Listeners and shutdown.
//!
//! [`start`] binds the AMQP and management HTTP listeners (tests bind port
//! 0 and read the real addresses back), spawns the accept loop, the HTTP
//! server and the sampler that turns message counters into rates; [`Server::shutdown`] stops
//! accepting, asks every connection to close (320 CONNECTION_FORCED, as
//! RabbitMQ does) and waits for them.

use crate::amqp::{connection, AmqpSettings};
use crate::broker::Broker;
use crate::config::Config;
use crate::mgmt::MgmtState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Server {
    amqp_addr: SocketAddr,
    http_addr: SocketAddr,
    http: tokio::task::JoinHandle<()>,
    prometheus_addr: SocketAddr,
    prometheus: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn prometheus_addr(&self) -> SocketAddr {
        self.prometheus_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Closes every connection, waits (up to a few seconds) for them, and
    /// makes everything written durable.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        self.sampler.abort();
        let _ = self.http.await;
        let _ = self.prometheus.await;
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close()).await;
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Storage(warren_queues::DiskError),
    Bind(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Storage(e) => write!(f, "cannot open the data directory: {e}"),
            StartError::Bind(e) => write!(f, "cannot bind a listener: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Opens the data directory (recovering what it holds), binds the
/// listeners and starts serving.
pub async fn start(config: &Config) -> Result<Server, StartError> {
    let (bc, sc) = (config.broker_config(), config.storage_config());
    // Recovery reads the whole store: keep it off the async workers.
    let broker = tokio::task::spawn_blocking(move || Broker::open(&bc, &sc))
        .await
        .expect("recovery does not panic")
        .map_err(StartError::Storage)?;
    let broker_on_error = broker.clone();
    let started = start_with(config, broker).await;
    if started.is_err() {
        broker_on_error.close();
    }
    started.map_err(StartError::Bind)
}

async fn start_with(config: &Config, broker: Arc<Broker>) -> std::io::Result<Server> {
    let settings = Arc::new(config.amqp_settings());
    let listener = TcpListener::bind(config.listeners.amqp).await?;
    let amqp_addr = listener.local_addr()?;
    let http_listener = TcpListener::bind(config.listeners.http).await?;
    let http_addr = http_listener.local_addr()?;
    let prom_listener = TcpListener::bind(config.listeners.prometheus).await?;
    let prometheus_addr = prom_listener.local_addr()?;
    tracing::info!(addr = %amqp_addr, "AMQP listener ready");
    tracing::info!(addr = %http_addr, "management HTTP listener ready");
    tracing::info!(addr = %prometheus_addr, "Prometheus listener ready");
    let (shutdown, rx) = watch::channel(false);
    let state = Arc::new(MgmtState {
        broker: broker.clone(),
        node: config.amqp.cluster_name.clone(),
        cluster_name: config.amqp.cluster_name.clone(),
        amqp_addr,
        http_addr,
        prometheus_addr,
        data_dir: config.storage.data_dir.clone(),
        started: std::time::Instant::now(),
    });
    let metrics_app = crate::mgmt::metrics_router(state.clone());
    let app = crate::mgmt::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown_signal(rx.clone());
    let prometheus = tokio::spawn(async move {
        if let Err(e) = axum::serve(prom_listener, metrics_app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "Prometheus HTTP server failed");
        }
    });
    let stop = shutdown_signal(rx.clone());
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "management HTTP server failed");
        }
    });
    let sampler = tokio::spawn(sample_rates(
        broker.clone(),
        Duration::from_millis(config.management.collect_statistics_interval),
    ));
    let accept = tokio::spawn(accept_loop(listener, broker.clone(), settings, rx));
    Ok(Server {
        amqp_addr,
        http_addr,
        prometheus_addr,
        prometheus,
        http,
        sampler,
        broker,
        shutdown,
        accept,
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
    let mut trim = Trimmer::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                broker.sample_rates((now - last).as_secs_f64());
                last = now;
                trim.check(&broker);
            }
            _ = clock.tick() => broker.clock().tick(),
        }
    }
}

/// Gives memory back to the OS once a backlog has drained. glibc's malloc
/// keeps freed small blocks in its heaps: after a 1,000,000-message backlog
/// of 100-byte messages was consumed, RSS stayed ~230 MiB; `malloc_trim`
/// returns it (to ~9 MiB). Trimming walks the heaps, so it runs off the
/// async workers and only when queued memory fell by [`TRIM_AFTER`] since
/// its peak, not on every sample. (mimalloc was tried instead: it returned
/// less, and its eagerly committed arenas added ~40 MiB to an idle broker.)
#[derive(Default)]
struct Trimmer {
    /// The most queued memory seen since the last trim (estimated).
    peak: u64,
    running: Arc<std::sync::atomic::AtomicBool>,
}

/// How much queued memory must have gone before a trim is worth it.
const TRIM_AFTER: u64 = 32 << 20;

impl Trimmer {
    fn check(&mut self, broker: &Broker) {
        let (_, now) = broker.ready_memory();
        self.peak = self.peak.max(now);
        if self.peak - now < TRIM_AFTER {
            return;
        }
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.peak = now;
        let running = self.running.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            trim_heap();
            tracing::debug!(elapsed = ?started.elapsed(), "returned freed memory to the OS");
            running.store(false, Ordering::Release);
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // heaps; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

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
