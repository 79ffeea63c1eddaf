//! AMQP 0-9-1 over TCP: the codec, the frame assembler, SASL, the
//! connection task (which owns its channels) and the writer task (which
//! owns the socket's write half).
//!
//! This layer turns frames into calls on the broker and broker results
//! back into frames; it holds no broker state of its own beyond what a
//! connection and its channels own (delivery tags, unacked messages,
//! consumers).

pub mod assembler;
mod channel;
pub mod codec;
pub mod connection;
mod counting;
pub mod error;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
mod reply;
pub mod sasl;
pub mod writer;

/// Protocol limits and timers, from the configuration.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub channel_max: u16,
    pub frame_max: u32,
    /// Seconds; 0 disables heartbeats.
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// Bytes of unfinished message bodies one connection's channels may
    /// hold together (a body alone may always reach `max_message_size`).
    pub max_unfinished_body_bytes: u64,
    /// How long a client has to complete the handshake.
    pub handshake_timeout: std::time::Duration,
    pub cluster_name: String,
    /// Bytes of direct replies that may wait for one requester's channel
    /// before further replies to it are dropped.
    pub reply_buffer_bytes: u64,
    /// The SASL mechanisms offered, in this order (RabbitMQ's
    /// `auth_mechanisms`).
    pub auth_mechanisms: Vec<sasl::Mechanism>,
    /// What of a client certificate names an EXTERNAL login's user.
    pub ssl_cert_login_from: crate::tls::LoginFrom,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            max_unfinished_body_bytes: 128 * 1024 * 1024,
            handshake_timeout: std::time::Duration::from_secs(10),
            cluster_name: "warren@localhost".into(),
            reply_buffer_bytes: 8 * 1024 * 1024,
            auth_mechanisms: sasl::Mechanism::DEFAULT.to_vec(),
            ssl_cert_login_from: crate::tls::LoginFrom::default(),
        }
    }
}
