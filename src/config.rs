//! Configuration: `rabbit.toml`, overridden by command-line flags.
//!
//! Every key has a built-in default, so a missing file is fine. Unknown
//! keys and bad values are errors that name the key. The parsed
//! [`Config`] is passed down to the server; nothing reads it globally.

use crate::amqp::AmqpSettings;
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
    /// Virtual hosts created at start-up.
    pub vhosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub amqp: ListenAddrs,
    pub http: ListenAddrs,
    pub prometheus: ListenAddrs,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub default_user: String,
    pub default_pass: String,
    pub loopback_users: Vec<String>,
    pub users: Vec<User>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Management {
    /// Milliseconds between message-rate samples (RabbitMQ's
    /// `collect_statistics_interval`, default 5000).
    pub collect_statistics_interval: u64,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            collect_statistics_interval: 5000,
        }
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
            vhosts: vec!["/".into()],
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            amqp: ListenAddrs::any(5672),
            http: ListenAddrs::any(15672),
            prometheus: ListenAddrs::any(15692),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./data"),
            cache_mb: 8,
            queue_memory_mb: 16,
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

    fn validate(&self) -> Result<(), String> {
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
        if self.storage.cache_mb == 0 {
            return Err("storage.cache_mb: must be at least 1".into());
        }
        if self.management.collect_statistics_interval < 10 {
            return Err("management.collect_statistics_interval: must be at least 10 (ms)".into());
        }
        if self.vhosts.is_empty() {
            return Err("vhosts: at least one virtual host is needed".into());
        }
        if self.auth.default_user.is_empty() {
            return Err("auth.default_user: must not be empty".into());
        }
        Ok(())
    }

    pub fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.storage.data_dir.clone(),
            cache_bytes: self.storage.cache_mb * 1024 * 1024,
            queue_memory_bytes: self.storage.queue_memory_mb * 1024 * 1024,
        }
    }

    pub fn amqp_settings(&self) -> AmqpSettings {
        AmqpSettings {
            channel_max: self.amqp.channel_max,
            frame_max: self.amqp.frame_max,
            heartbeat: self.amqp.heartbeat,
            max_message_size: self.amqp.max_message_size,
            handshake_timeout: std::time::Duration::from_secs(self.amqp.handshake_timeout_secs),
            cluster_name: self.amqp.cluster_name.clone(),
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
        assert_eq!(c.auth.default_user, "guest");
        assert_eq!(
            c.management.collect_statistics_interval,
            d.management.collect_statistics_interval
        );
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
