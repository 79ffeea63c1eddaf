//! Configuration: `rabbit.toml`, overridden by command-line flags.
//!
//! Every key has a built-in default, so a missing file is fine. Unknown
//! keys and bad values are errors that name the key. The parsed
//! [`Config`] is passed down to the server; nothing reads it globally.

use crate::amqp::AmqpSettings;
use crate::broker::alarms::{self, AlarmConfig, DiskFreeLimit, MemoryWatermark};
use crate::broker::{BrokerConfig, StorageConfig, UserConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub storage: Storage,
    pub amqp: Amqp,
    pub auth: Auth,
    pub management: Management,
    pub limits: Limits,
    /// TLS for the AMQPS listeners (`listeners.ssl`), as RabbitMQ's
    /// `ssl_options`.
    pub ssl_options: SslOptions,
    pub direct_reply_to: DirectReplyTo,
    /// Virtual hosts created at start-up.
    pub vhosts: Vec<String>,
    /// RabbitMQ's `vm_memory_high_watermark.relative` / `.absolute`
    /// (default: relative 0.4).
    pub vm_memory_high_watermark: Limit,
    /// RabbitMQ's `disk_free_limit.absolute` / `.relative` (a multiple
    /// of the memory available; default: absolute 50MB).
    pub disk_free_limit: Limit,
    /// Milliseconds between two measures of memory and free disk
    /// (RabbitMQ's `memory_monitor_interval`).
    pub memory_monitor_interval: u64,
    /// RabbitMQ's `consumer_timeout`: milliseconds a delivery may stay
    /// unacknowledged before its channel is closed (default 1,800,000, 30
    /// minutes; 0: no timeout). Queues override it with
    /// `x-consumer-timeout` or a `consumer-timeout` policy.
    pub consumer_timeout: u64,
}

/// A resource limit as RabbitMQ writes it: `KEY.relative = 0.4` or
/// `KEY.absolute = "1GB"` (bytes, or a number with RabbitMQ's units).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub relative: Option<f64>,
    pub absolute: Option<Bytes>,
}

/// A byte count: an integer, or a string with RabbitMQ's information
/// units ("50MB", "1024MiB", "2G"; see `alarms::parse_information_unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumOrText {
            Num(u64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected a byte count: an integer or a string such as \"50MB\", \"1024MiB\", \"2GB\"",
            )
        };
        match NumOrText::deserialize(d).map_err(|_| bad())? {
            NumOrText::Num(n) => Ok(Bytes(n)),
            NumOrText::Text(t) => alarms::parse_information_unit(&t)
                .map(Bytes)
                .ok_or_else(bad),
        }
    }
}

impl Limit {
    /// The one form given; both is an error (RabbitMQ would silently
    /// take the relative one).
    fn check(&self, key: &str) -> Result<(), String> {
        match (self.relative, self.absolute) {
            (Some(_), Some(_)) => Err(format!(
                "{key}: set either {key}.relative or {key}.absolute, not both"
            )),
            (Some(r), None) if !r.is_finite() || r < 0.0 => {
                Err(format!("{key}.relative: must be a number of at least 0"))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub amqp: ListenAddrs,
    pub http: ListenAddrs,
    pub prometheus: ListenAddrs,
    /// AMQP 0-9-1 over TLS (RabbitMQ's `listeners.ssl`, conventionally
    /// port 5671); none by default.
    pub ssl: Option<ListenAddrs>,
}

/// The addresses one listener binds: one `ADDR:PORT` or several (in the
/// file, a string or an array of strings; parsed from text, a
/// comma-separated list). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs(Vec<SocketAddr>);

impl ListenAddrs {
    /// `addrs` must not be empty: a listener with no address serves nobody.
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Self, String> {
        if addrs.is_empty() {
            return Err("at least one ADDR:PORT is needed".into());
        }
        Ok(ListenAddrs(addrs))
    }

    /// Both families on `port`, as RabbitMQ listens by default: IPv4's
    /// `0.0.0.0` and IPv6's `[::]` (bound IPv6-only, so the two coexist
    /// whatever `net.ipv6.bindv6only` says).
    pub fn any(port: u16) -> Self {
        ListenAddrs(vec![
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([0u16; 8], port)),
        ])
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }

    /// Adds an address (a command-line flag given again).
    pub fn push(&mut self, addr: SocketAddr) {
        self.0.push(addr);
    }
}

impl std::str::FromStr for ListenAddrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let addrs = s
            .split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .map_err(|e| format!("'{}' is not an ADDR:PORT ({e})", a.trim()))
            })
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        ListenAddrs::new(addrs)
    }
}

impl std::fmt::Display for ListenAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(|a| a.to_string()).collect();
        f.write_str(&all.join(", "))
    }
}

impl<'de> Deserialize<'de> for ListenAddrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let text = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an \"ADDR:PORT\" string or an array of them")
        })? {
            OneOrMany::One(s) => s,
            OneOrMany::Many(v) => v.join(","),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub data_dir: PathBuf,
    /// sled's page cache, in MiB.
    pub cache_mb: u64,
    /// Message bodies a queue keeps in memory, in MiB; beyond it, a durable
    /// queue's persistent messages stay on disk only until delivered, and
    /// bodies only memory would hold (non-durable queues', transient ones)
    /// are paged out to the transient area.
    pub queue_memory_mb: u64,
    /// Bytes of messages a stream holds appended but not yet written and
    /// synced, in KiB; past it the stream's publishers are held back
    /// (flow control) until the flusher catches up.
    pub stream_unsynced_kb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub handshake_timeout_secs: u64,
    pub noack_window: u32,
    pub cluster_name: String,
}

/// Direct reply-to (`amq.rabbitmq.reply-to`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectReplyTo {
    /// Bytes of replies (bodies and properties) that may wait for one
    /// requester's channel; replies past it are dropped (at most once).
    pub buffer_bytes: u64,
}

impl Default for DirectReplyTo {
    fn default() -> Self {
        DirectReplyTo {
            buffer_bytes: AmqpSettings::default().reply_buffer_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub default_user: String,
    pub default_pass: String,
    pub loopback_users: Vec<String>,
    pub users: Vec<User>,
    /// The SASL mechanisms offered, in this order (RabbitMQ's
    /// `auth_mechanisms`; default PLAIN and AMQPLAIN). EXTERNAL, when
    /// listed, is offered on TLS connections.
    pub auth_mechanisms: Vec<crate::amqp::sasl::Mechanism>,
    /// What names an EXTERNAL login's user: `distinguished_name` (the
    /// certificate's subject, RabbitMQ's default) or `common_name`.
    pub ssl_cert_login_from: crate::tls::LoginFrom,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Management {
    /// Milliseconds between message-rate samples (RabbitMQ's
    /// `collect_statistics_interval`, default 5000).
    pub collect_statistics_interval: u64,
    /// HTTPS for the management API (RabbitMQ's `management.ssl.*`).
    pub ssl: ManagementSsl,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            collect_statistics_interval: 5000,
            ssl: ManagementSsl::default(),
        }
    }
}

/// Resource bounds: what one client, or many, may hold of the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// AMQP connections the node serves at once (RabbitMQ's
    /// `connection_max`); 0: no limit beyond the file descriptors. Clients
    /// past it wait in the listen backlog, as with RabbitMQ's ranch.
    pub connection_max: u64,
    /// Bytes of unfinished message bodies one connection's channels may
    /// hold together; a body alone may still reach `max_message_size`.
    pub max_unfinished_body_bytes: u64,
    /// HTTP connections (management and Prometheus together) served at once.
    pub http_max_connections: u64,
    /// Seconds an HTTP connection may stay idle between requests.
    pub http_idle_timeout_secs: u64,
    /// Seconds an HTTP connection has, from accept, to complete a request
    /// that passes authentication.
    pub http_unauthenticated_timeout_secs: u64,
    /// File descriptors kept free of AMQP connections: the store, the
    /// HTTP connections and the listeners need them.
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connection_max: 0,
            max_unfinished_body_bytes: 128 * 1024 * 1024,
            http_max_connections: 256,
            http_idle_timeout_secs: 60,
            http_unauthenticated_timeout_secs: 10,
            fd_reserve: 64,
        }
    }
}

/// Certificates for a TLS listener, with RabbitMQ's key names: PEM files
/// for the CA bundle that client certificates are checked against, the
/// server's certificate chain and its private key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SslOptions {
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// Whether clients are asked for a certificate checked against
    /// `cacertfile`.
    pub verify: Verify,
    /// With `verify_peer`: refuse a client that sends no certificate
    /// (else it may connect without one).
    pub fail_if_no_peer_cert: bool,
}

/// Erlang's `ssl` verify modes, as RabbitMQ's configuration names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// No client certificate is asked for.
    #[default]
    VerifyNone,
    /// A client certificate is asked for and must chain to `cacertfile`.
    VerifyPeer,
}

/// `[management.ssl]`: the HTTPS listeners of the management API and
/// their certificates (the same keys as `[ssl_options]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementSsl {
    /// None by default (RabbitMQ's conventional port is 15671).
    pub listeners: Option<ListenAddrs>,
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub verify: Verify,
    pub fail_if_no_peer_cert: bool,
}

impl ManagementSsl {
    pub fn options(&self) -> SslOptions {
        SslOptions {
            cacertfile: self.cacertfile.clone(),
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            verify: self.verify,
            fail_if_no_peer_cert: self.fail_if_no_peer_cert,
        }
    }
}

impl SslOptions {
    /// What a TLS listener needs: a certificate and key, and a CA to
    /// verify peers against. `section` names the keys in the message.
    fn validate(&self, section: &str, listeners: &str) -> Result<(), String> {
        if self.certfile.is_none() || self.keyfile.is_none() {
            return Err(format!(
                "{listeners} is set: {section}.certfile and {section}.keyfile are needed"
            ));
        }
        if self.verify == Verify::VerifyPeer && self.cacertfile.is_none() {
            return Err(format!(
                "{section}.verify = \"verify_peer\" needs {section}.cacertfile"
            ));
        }
        if self.fail_if_no_peer_cert && self.verify != Verify::VerifyPeer {
            return Err(format!(
                "{section}.fail_if_no_peer_cert = true needs {section}.verify = \"verify_peer\""
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Listeners::default(),
            storage: Storage::default(),
            amqp: Amqp::default(),
            auth: Auth::default(),
            management: Management::default(),
            limits: Limits::default(),
            ssl_options: SslOptions::default(),
            direct_reply_to: DirectReplyTo::default(),
            vhosts: vec!["/".into()],
            vm_memory_high_watermark: Limit::default(),
            disk_free_limit: Limit::default(),
            memory_monitor_interval: 500,
            consumer_timeout: crate::broker::vhost::DEFAULT_CONSUMER_TIMEOUT,
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            amqp: ListenAddrs::any(5672),
            http: ListenAddrs::any(15672),
            prometheus: ListenAddrs::any(15692),
            ssl: None,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./data"),
            cache_mb: 8,
            queue_memory_mb: 16,
            stream_unsynced_kb: 64 * 1024,
        }
    }
}

impl Default for Amqp {
    fn default() -> Self {
        let d = AmqpSettings::default();
        Amqp {
            channel_max: d.channel_max,
            frame_max: d.frame_max,
            heartbeat: d.heartbeat,
            max_message_size: d.max_message_size,
            handshake_timeout_secs: d.handshake_timeout.as_secs(),
            noack_window: 2000,
            cluster_name: d.cluster_name,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
            users: Vec::new(),
            auth_mechanisms: crate::amqp::sasl::Mechanism::DEFAULT.to_vec(),
            ssl_cert_login_from: crate::tls::LoginFrom::default(),
        }
    }
}

/// A configuration error, worded for the operator.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses a configuration text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        c.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(c)
    }

    /// Reads `path`; a missing file gives the defaults only when
    /// `must_exist` is false (the default path).
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok(Config::default())
            }
            Err(e) => Err(ConfigError(format!("{}: {e}", path.display()))),
        }
    }

    /// The checks [`Config::parse`] makes, for a configuration changed
    /// afterwards (by command-line flags).
    pub fn validate(&self) -> Result<(), String> {
        if self.amqp.frame_max != 0 && self.amqp.frame_max < 4096 {
            return Err(format!(
                "amqp.frame_max: {} is below the protocol minimum of 4096",
                self.amqp.frame_max
            ));
        }
        if self.amqp.noack_window == 0 {
            return Err("amqp.noack_window: must be at least 1".into());
        }
        if self.amqp.max_message_size == 0 || self.amqp.max_message_size > 512 * 1024 * 1024 {
            return Err("amqp.max_message_size: must be between 1 and 536870912".into());
        }
        if self.limits.max_unfinished_body_bytes == 0 {
            return Err("limits.max_unfinished_body_bytes: must be at least 1".into());
        }
        if self.limits.http_max_connections == 0 {
            return Err("limits.http_max_connections: must be at least 1".into());
        }
        if self.limits.http_idle_timeout_secs == 0
            || self.limits.http_unauthenticated_timeout_secs == 0
        {
            return Err("limits.http_idle_timeout_secs, limits.http_unauthenticated_timeout_secs: must be at least 1".into());
        }
        if self.direct_reply_to.buffer_bytes == 0 {
            return Err("direct_reply_to.buffer_bytes: must be at least 1".into());
        }
        if self.storage.cache_mb == 0 {
            return Err("storage.cache_mb: must be at least 1".into());
        }
        if self.management.collect_statistics_interval < 10 {
            return Err("management.collect_statistics_interval: must be at least 10 (ms)".into());
        }
        if self.vhosts.is_empty() {
            return Err("vhosts: at least one virtual host is needed".into());
        }
        self.vm_memory_high_watermark
            .check("vm_memory_high_watermark")?;
        self.disk_free_limit.check("disk_free_limit")?;
        if self.memory_monitor_interval < 10 {
            return Err("memory_monitor_interval: must be at least 10 (ms)".into());
        }
        if self.auth.default_user.is_empty() {
            return Err("auth.default_user: must not be empty".into());
        }
        if self.auth.auth_mechanisms.is_empty() {
            return Err("auth.auth_mechanisms: at least one mechanism is needed".into());
        }
        if self.listeners.ssl.is_some() {
            self.ssl_options.validate("ssl_options", "listeners.ssl")?;
        }
        if self.management.ssl.listeners.is_some() {
            self.management
                .ssl
                .options()
                .validate("management.ssl", "management.ssl.listeners")?;
        }
        Ok(())
    }

    pub fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.storage.data_dir.clone(),
            cache_bytes: self.storage.cache_mb * 1024 * 1024,
            queue_memory_bytes: self.storage.queue_memory_mb * 1024 * 1024,
            stream_unsynced_bytes: self.storage.stream_unsynced_kb.saturating_mul(1024),
        }
    }

    pub fn amqp_settings(&self) -> AmqpSettings {
        AmqpSettings {
            channel_max: self.amqp.channel_max,
            frame_max: self.amqp.frame_max,
            heartbeat: self.amqp.heartbeat,
            max_message_size: self.amqp.max_message_size,
            max_unfinished_body_bytes: self.limits.max_unfinished_body_bytes,
            handshake_timeout: std::time::Duration::from_secs(self.amqp.handshake_timeout_secs),
            cluster_name: self.amqp.cluster_name.clone(),
            reply_buffer_bytes: self.direct_reply_to.buffer_bytes,
            auth_mechanisms: self.auth.auth_mechanisms.clone(),
            ssl_cert_login_from: self.auth.ssl_cert_login_from,
        }
    }

    pub fn broker_config(&self) -> BrokerConfig {
        let mut users = vec![UserConfig {
            name: self.auth.default_user.clone(),
            password: self.auth.default_pass.clone(),
            tags: vec!["administrator".into()],
        }];
        users.extend(self.auth.users.iter().map(|u| UserConfig {
            name: u.name.clone(),
            password: u.password.clone(),
            tags: u.tags.clone(),
        }));
        BrokerConfig {
            vhosts: self.vhosts.clone(),
            users,
            loopback_users: self.auth.loopback_users.clone(),
            noack_window: self.amqp.noack_window,
            consumer_timeout: self.consumer_timeout,
            alarms: self.alarm_config(),
        }
    }

    pub fn alarm_config(&self) -> AlarmConfig {
        let d = AlarmConfig::default();
        let w = &self.vm_memory_high_watermark;
        let memory = match (w.relative, w.absolute) {
            (Some(r), _) => MemoryWatermark::Relative(r),
            (None, Some(b)) => MemoryWatermark::Absolute(b.0),
            (None, None) => d.memory,
        };
        let l = &self.disk_free_limit;
        let disk = match (l.relative, l.absolute) {
            (Some(r), _) => DiskFreeLimit::MemRelative(r),
            (None, Some(b)) => DiskFreeLimit::Absolute(b.0),
            (None, None) => d.disk,
        };
        AlarmConfig {
            memory,
            disk,
            interval: std::time::Duration::from_millis(self.memory_monitor_interval),
            data_dir: self.storage.data_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rabbit_toml_parses_to_the_defaults() {
        let text = include_str!("../rabbit.toml");
        let c = Config::parse(text, "rabbit.toml").unwrap();
        let d = Config::default();
        assert_eq!(c.listeners.amqp, d.listeners.amqp);
        assert_eq!(c.listeners.http, d.listeners.http);
        assert_eq!(c.listeners.prometheus, d.listeners.prometheus);
        assert_eq!(c.amqp.frame_max, d.amqp.frame_max);
        assert_eq!(c.amqp.heartbeat, d.amqp.heartbeat);
        assert_eq!(c.vhosts, d.vhosts);
        assert_eq!(
            c.direct_reply_to.buffer_bytes,
            d.direct_reply_to.buffer_bytes
        );
        assert_eq!(c.auth.default_user, "guest");
        assert_eq!(
            c.management.collect_statistics_interval,
            d.management.collect_statistics_interval
        );
        assert_eq!(c.limits.connection_max, d.limits.connection_max);
        assert_eq!(
            c.limits.max_unfinished_body_bytes,
            d.limits.max_unfinished_body_bytes
        );
        assert_eq!(c.limits.http_max_connections, d.limits.http_max_connections);
        assert_eq!(
            c.limits.http_idle_timeout_secs,
            d.limits.http_idle_timeout_secs
        );
        assert_eq!(
            c.limits.http_unauthenticated_timeout_secs,
            d.limits.http_unauthenticated_timeout_secs
        );
        assert_eq!(c.limits.fd_reserve, d.limits.fd_reserve);
        let (ca, da) = (c.alarm_config(), d.alarm_config());
        assert_eq!(ca.memory, da.memory);
        assert_eq!(ca.disk, da.disk);
        assert_eq!(ca.interval, da.interval);
    }

    #[test]
    fn resource_limits_take_rabbitmqs_forms() {
        let d = Config::default().alarm_config();
        assert_eq!(d.memory, MemoryWatermark::Relative(0.4));
        assert_eq!(d.disk, DiskFreeLimit::Absolute(50_000_000));
        let c = Config::parse(
            "vm_memory_high_watermark.absolute = \"1GB\"\ndisk_free_limit.relative = 1.5\n",
            "x.toml",
        )
        .unwrap()
        .alarm_config();
        assert_eq!(c.memory, MemoryWatermark::Absolute(1_000_000_000));
        assert_eq!(c.disk, DiskFreeLimit::MemRelative(1.5));
        let c = Config::parse(
            "[vm_memory_high_watermark]\nabsolute = 1024\n[disk_free_limit]\nabsolute = \"2GiB\"\n",
            "x.toml",
        )
        .unwrap()
        .alarm_config();
        assert_eq!(c.memory, MemoryWatermark::Absolute(1024));
        assert_eq!(c.disk, DiskFreeLimit::Absolute(2 << 30));
        for bad in [
            "vm_memory_high_watermark.absolute = \"1TB\"\n",
            "vm_memory_high_watermark.relative = -1.0\n",
            "vm_memory_high_watermark.relative = 0.4\nvm_memory_high_watermark.absolute = 1\n",
            "disk_free_limit.absolute = \"lots\"\n",
        ] {
            let e = Config::parse(bad, "x.toml").unwrap_err();
            let key = bad.split('.').next().unwrap();
            assert!(e.0.contains(key), "{bad}: {}", e.0);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[amqp]\nframe_maxx = 5\n", "x.toml").unwrap_err();
        assert!(e.0.contains("frame_maxx"), "{}", e.0);
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::parse("[amqp]\nframe_max = 100\n", "x.toml").unwrap_err();
        assert!(e.0.contains("amqp.frame_max"), "{}", e.0);
        let e = Config::parse("[listeners]\namqp = \"nope\"\n", "x.toml").unwrap_err();
        assert!(e.0.contains("amqp"), "{}", e.0);
        let e = Config::parse("[listeners]\namqp = []\n", "x.toml").unwrap_err();
        assert!(e.0.contains("amqp"), "{}", e.0);
    }

    #[test]
    fn tls_listeners_need_their_files() {
        let c = Config::parse("", "x.toml").unwrap();
        assert!(c.listeners.ssl.is_none());
        assert!(c.management.ssl.listeners.is_none());
        let e = Config::parse("[listeners]\nssl = \"127.0.0.1:5671\"\n", "x.toml").unwrap_err();
        assert!(e.0.contains("ssl_options.certfile"), "{}", e.0);
        let base = "[listeners]\nssl = \"127.0.0.1:5671\"\n[ssl_options]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\n";
        let c = Config::parse(base, "x.toml").unwrap();
        assert_eq!(c.ssl_options.verify, Verify::VerifyNone);
        let e = Config::parse(&format!("{base}verify = \"verify_peer\"\n"), "x.toml").unwrap_err();
        assert!(e.0.contains("ssl_options.cacertfile"), "{}", e.0);
        let e =
            Config::parse(&format!("{base}fail_if_no_peer_cert = true\n"), "x.toml").unwrap_err();
        assert!(e.0.contains("ssl_options.fail_if_no_peer_cert"), "{}", e.0);
        let e = Config::parse(&format!("{base}verify = \"verify_maybe\"\n"), "x.toml").unwrap_err();
        assert!(e.0.contains("verify_peer"), "{}", e.0);
        let e = Config::parse(
            "[management.ssl]\nlisteners = \"127.0.0.1:15671\"\ncertfile = \"c.pem\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.0.contains("management.ssl.keyfile"), "{}", e.0);
    }

    #[test]
    fn listeners_default_to_both_families() {
        let d = Config::default();
        let want: Vec<SocketAddr> = vec![
            "0.0.0.0:5672".parse().unwrap(),
            "[::]:5672".parse().unwrap(),
        ];
        assert_eq!(d.listeners.amqp.addrs(), &want[..]);
        assert_eq!(d.listeners.http.addrs()[1], "[::]:15672".parse().unwrap());
        assert_eq!(
            d.listeners.prometheus.addrs()[1],
            "[::]:15692".parse().unwrap()
        );
    }

    #[test]
    fn a_listener_takes_one_address_or_several() {
        let c = Config::parse(
            "[listeners]\namqp = \"127.0.0.1:5673\"\nhttp = [\"127.0.0.1:1\", \"[::1]:2\"]\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            c.listeners.amqp.addrs(),
            &["127.0.0.1:5673".parse().unwrap()]
        );
        let want: Vec<SocketAddr> =
            vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        assert_eq!(c.listeners.http.addrs(), &want[..]);
        let parsed: ListenAddrs = "127.0.0.1:1, [::1]:2".parse().unwrap();
        assert_eq!(parsed.addrs(), &want[..]);
    }
}
