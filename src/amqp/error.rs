//! Protocol errors, typed by what they close.
//!
//! A [`ChannelError`] closes one channel (channel.close); a
//! [`ConnectionError`] closes the connection (connection.close). Both carry
//! RabbitMQ's reply code and text, and the class/method that caused them.

use crate::broker::{BrokerError, ErrorKind};

pub const REPLY_SUCCESS: u16 = 200;
pub const CONTENT_TOO_LARGE: u16 = 311;
pub const NO_ROUTE: u16 = 312;
pub const CONNECTION_FORCED: u16 = 320;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const RESOURCE_ERROR: u16 = 506;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

/// RabbitMQ's name for a reply code, used as the prefix of reply texts.
pub fn code_name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "OK",
        CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        NO_ROUTE => "NO_ROUTE",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// A reply text cut to a short string's 255 bytes (on a character
/// boundary): names in error texts can make them longer, and the codec
/// refuses longer short strings.
pub fn short_text(mut text: String) -> amq_protocol::types::ShortString {
    if text.len() > 255 {
        let mut end = 255;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    amq_protocol::types::ShortString::from(text)
}

/// Closes one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// Closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// Either, as returned by a command handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    Channel(ChannelError),
    Connection(ConnectionError),
}

impl AmqpError {
    /// A channel error with RabbitMQ's `NAME - text` reply text.
    pub fn channel(code: u16, text: impl AsRef<str>) -> Self {
        AmqpError::Channel(ChannelError {
            code,
            text: format!("{} - {}", code_name(code), text.as_ref()),
            class_id: 0,
            method_id: 0,
        })
    }

    /// A connection error with RabbitMQ's `NAME - text` reply text.
    pub fn connection(code: u16, text: impl AsRef<str>) -> Self {
        AmqpError::Connection(ConnectionError {
            code,
            text: format!("{} - {}", code_name(code), text.as_ref()),
            class_id: 0,
            method_id: 0,
        })
    }

    /// Records which method failed.
    pub fn at(mut self, (class, method): (u16, u16)) -> Self {
        match &mut self {
            AmqpError::Channel(e) => {
                e.class_id = class;
                e.method_id = method;
            }
            AmqpError::Connection(e) => {
                e.class_id = class;
                e.method_id = method;
            }
        }
        self
    }
}

impl From<BrokerError> for AmqpError {
    fn from(e: BrokerError) -> Self {
        match e.kind {
            ErrorKind::NotFound => AmqpError::channel(NOT_FOUND, e.text),
            ErrorKind::AccessRefused => AmqpError::channel(ACCESS_REFUSED, e.text),
            ErrorKind::ResourceLocked => AmqpError::channel(RESOURCE_LOCKED, e.text),
            ErrorKind::PreconditionFailed => AmqpError::channel(PRECONDITION_FAILED, e.text),
            ErrorKind::NotAllowed => AmqpError::connection(NOT_ALLOWED, e.text),
            ErrorKind::CommandInvalid => AmqpError::connection(COMMAND_INVALID, e.text),
            ErrorKind::NotImplemented => AmqpError::connection(NOT_IMPLEMENTED, e.text),
            ErrorKind::InternalError => AmqpError::connection(INTERNAL_ERROR, e.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reply_texts_are_cut_on_a_character_boundary() {
        let t = short_text(format!(
            "NOT_FOUND - no queue '{}' in vhost '/'",
            "é".repeat(200)
        ));
        assert!(t.as_str().len() <= 255);
        assert!(t.as_str().starts_with("NOT_FOUND - no queue 'é"));
        assert_eq!(short_text("short".into()).as_str(), "short");
    }

    #[test]
    fn broker_errors_map_to_rabbitmq_codes_and_scopes() {
        let e: AmqpError = BrokerError::no_queue("x", "/").into();
        assert_eq!(
            e,
            AmqpError::Channel(ChannelError {
                code: 404,
                text: "NOT_FOUND - no queue 'x' in vhost '/'".into(),
                class_id: 0,
                method_id: 0
            })
        );
        let e: AmqpError = BrokerError::new(ErrorKind::NotAllowed, "vhost x not found").into();
        assert!(matches!(
            e,
            AmqpError::Connection(ConnectionError { code: 530, .. })
        ));
    }
}
