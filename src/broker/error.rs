//! Broker errors, typed by what they mean to a client.
//!
//! The broker does not speak AMQP: the AMQP layer maps each kind to RabbitMQ's
//! reply code and to whether it closes a channel or the whole connection.
//! The text is RabbitMQ's, without the `NOT_FOUND - ` style prefix.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404: a queue or exchange that does not exist.
    NotFound,
    /// 403: the operation is refused (reserved names, the default exchange, exclusive consumers).
    AccessRefused,
    /// 405: an exclusive queue of another connection.
    ResourceLocked,
    /// 406: a redeclare that does not match, a queue in use or not empty, an unknown tag.
    PreconditionFailed,
    /// 530 (connection): e.g. an unknown vhost or a reused consumer tag.
    NotAllowed,
    /// 503 (connection): a command the broker cannot carry out as sent.
    CommandInvalid,
    /// 540 (connection): a feature Warren (like RabbitMQ) does not implement.
    NotImplemented,
    /// 541 (connection): a bug or a failed store.
    InternalError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    pub kind: ErrorKind,
    pub text: String,
}

impl BrokerError {
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        BrokerError {
            kind,
            text: text.into(),
        }
    }

    pub fn no_queue(name: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no queue '{name}' in vhost '{vhost}'"),
        )
    }

    pub fn no_exchange(name: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no exchange '{name}' in vhost '{vhost}'"),
        )
    }

    /// A declare or bind through a vhost that was deleted meanwhile (a
    /// connection or request that still held it).
    pub fn vhost_deleted(vhost: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("vhost '{vhost}' is deleted"))
    }

    pub fn locked(name: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration."
            ),
        )
    }

    pub fn default_exchange() -> Self {
        Self::new(
            ErrorKind::AccessRefused,
            "operation not permitted on the default exchange",
        )
    }

    /// RabbitMQ's text for a redeclare whose flag differs.
    pub fn inequivalent(
        arg: &str,
        what: &str,
        name: &str,
        vhost: &str,
        got: &str,
        cur: &str,
    ) -> Self {
        Self::new(
            ErrorKind::PreconditionFailed,
            format!(
                "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': \
                 received '{got}' but current is '{cur}'"
            ),
        )
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

impl std::error::Error for BrokerError {}

pub type Result<T> = std::result::Result<T, BrokerError>;
