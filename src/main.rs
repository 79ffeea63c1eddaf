//! The `warren` binary: reads the configuration and flags, starts the
//! server, and shuts it down cleanly on SIGINT or SIGTERM (handlers are
//! installed before anything is bound, so a signal at any point of the
//! start is a clean shutdown, not a kill).

use std::path::PathBuf;
use std::process::ExitCode;
use warren::config::{Config, ListenAddrs};

/// jemalloc instead of glibc's malloc: it gives freed memory back to the
/// OS, so RSS comes down after a backlog is consumed or purged (glibc kept
/// about half of a 186 MB peak; see README, Performance).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: background threads return
/// pages left unused for about a second (dirty decay), straight to the OS
/// (no muzzy stage), instead of on the allocating threads' next calls.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

const USAGE: &str = "\
warren: an AMQP 0-9-1 message broker

USAGE: warren [OPTIONS]

OPTIONS:
  --config PATH               configuration file (default ./rabbit.toml; built-in defaults if absent)
  --amqp-listen ADDR:PORT     AMQP listener (default 0.0.0.0:5672 and [::]:5672)
  --http-listen ADDR:PORT     management HTTP listener (default 0.0.0.0:15672 and [::]:15672)
  --prometheus-listen ADDR:PORT  Prometheus listener (default 0.0.0.0:15692 and [::]:15692)
  --amqps-listen ADDR:PORT    AMQP over TLS listener (default none; certificates from
                              [ssl_options] in the configuration file)
  --https-listen ADDR:PORT    management HTTPS listener (default none; certificates from
                              [management.ssl] in the configuration file)
  --data-dir DIR              data directory (default ./data)

  A listener flag given more than once listens on every address given;
  an IPv6 address is written in brackets: --amqp-listen [::1]:5672.
  Stop the broker with Ctrl-C (SIGINT) or SIGTERM.
  -h, --help                  this text
  -V, --version               the version
";

fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
    let mut config_path: Option<PathBuf> = None;
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("warren {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--config"
            | "--amqp-listen"
            | "--http-listen"
            | "--prometheus-listen"
            | "--amqps-listen"
            | "--https-listen"
            | "--data-dir" => {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?,
                };
                if flag == "--config" {
                    config_path = Some(PathBuf::from(v));
                } else {
                    overrides.push((flag, v));
                }
            }
            other => return Err(format!("unknown argument '{other}'\n\n{USAGE}")),
        }
    }
    let must_exist = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from("rabbit.toml"));
    let mut config = Config::load(&path, must_exist).map_err(|e| e.to_string())?;
    // The first use of a listener flag replaces the file's addresses; a
    // repeat adds to them.
    let mut given: Vec<String> = Vec::new();
    for (flag, v) in overrides {
        let target = match flag.as_str() {
            "--amqp-listen" => &mut config.listeners.amqp,
            "--http-listen" => &mut config.listeners.http,
            "--prometheus-listen" => &mut config.listeners.prometheus,
            // The TLS listeners are off unless configured: a flag turns
            // one on (its certificates still come from the file).
            "--amqps-listen" => config
                .listeners
                .ssl
                .get_or_insert_with(|| ListenAddrs::any(0)),
            "--https-listen" => config
                .management
                .ssl
                .listeners
                .get_or_insert_with(|| ListenAddrs::any(0)),
            "--data-dir" => {
                config.storage.data_dir = PathBuf::from(&v);
                continue;
            }
            _ => unreachable!("flags are matched above"),
        };
        let addr: std::net::SocketAddr = v
            .parse()
            .map_err(|e| format!("{flag}: '{v}' is not an ADDR:PORT ({e})"))?;
        if given.contains(&flag) {
            target.push(addr);
        } else {
            *target = ListenAddrs::new(vec![addr])?;
            given.push(flag);
        }
    }
    // The file's checks again: a TLS listener turned on by a flag needs
    // its certificate keys too.
    config
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(config))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before binding: a signal that comes while the server starts is
        // held and handled once it has started, never the default action.
        let mut stop = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let server = match warren::server::start(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "warren cannot start");
                return ExitCode::FAILURE;
            }
        };
        let which = stop.recv().await;
        tracing::info!(signal = which, "shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGINT and SIGTERM, listened for from the moment they are installed
/// (tokio's `ctrl_c()` would only install its handler when first polled).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for either signal; returns its name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
