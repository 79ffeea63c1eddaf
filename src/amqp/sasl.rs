//! SASL: the mechanisms a connection may log in with, as RabbitMQ's
//! `auth_mechanisms` lists them (PLAIN and AMQPLAIN by default), and how
//! each reads its credentials. EXTERNAL (the user named by the verified TLS
//! client certificate, as RabbitMQ's `rabbitmq_auth_mechanism_ssl`) is
//! offered only when listed, and then on TLS connections only.

use amq_protocol::types::{parsing::parse_field_table, AMQPValue};
use serde::Deserialize;

/// A SASL mechanism Warren implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "AMQPLAIN")]
    Amqplain,
    #[serde(rename = "EXTERNAL")]
    External,
}

impl Mechanism {
    /// RabbitMQ's default `auth_mechanisms`.
    pub const DEFAULT: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Amqplain];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Amqplain => "AMQPLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }

    fn parse(name: &str) -> Option<Mechanism> {
        [Mechanism::Plain, Mechanism::Amqplain, Mechanism::External]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// As RabbitMQ's mechanisms' `should_offer`: EXTERNAL needs a TLS
    /// connection (with or without a client certificate: without one the
    /// login is refused, which tells the client more than a missing
    /// mechanism would).
    fn offered_on(self, tls: bool) -> bool {
        self != Mechanism::External || tls
    }
}

/// The mechanisms connection.start offers: the configured ones, in their
/// order, that this connection can use.
pub fn offered(configured: &[Mechanism], tls: bool) -> String {
    configured
        .iter()
        .filter(|m| m.offered_on(tls))
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The mechanism a connection.start-ok names, if this connection was
/// offered it; else the text RabbitMQ logs before it closes the socket
/// without a word (`unknown` for a mechanism it does not implement,
/// `invalid` for one that is not offered here).
pub fn chosen(configured: &[Mechanism], tls: bool, name: &str) -> Result<Mechanism, String> {
    match Mechanism::parse(name) {
        None => Err(format!("unknown authentication mechanism '{name}'")),
        Some(m) if configured.contains(&m) && m.offered_on(tls) => Ok(m),
        Some(_) => Err(format!("invalid authentication mechanism '{name}'")),
    }
}

/// Who a client says it is.
pub enum Login {
    /// PLAIN or AMQPLAIN: a user and a password to check.
    Password(String, String),
    /// EXTERNAL: the user the TLS client certificate names.
    External(String),
}

/// Extracts (user, password) from a PLAIN or AMQPLAIN start-ok response;
/// `None` if malformed (or for EXTERNAL, which has no password).
pub fn credentials(mechanism: Mechanism, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        Mechanism::Plain => {
            // [authzid] NUL authcid NUL passwd
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        Mechanism::Amqplain => {
            // A field table without its length prefix.
            let mut t = Vec::with_capacity(response.len() + 4);
            t.extend_from_slice(&(response.len() as u32).to_be_bytes());
            t.extend_from_slice(response);
            // The decoder recurses per nesting level: bound it first.
            if !crate::broker::properties::table_nesting_ok(
                &t,
                crate::broker::properties::MAX_TABLE_DEPTH,
            ) {
                return None;
            }
            let (_, table) = parse_field_table(&t[..]).ok()?;
            let get = |k: &str| match table.inner().get(k)? {
                AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).ok()?),
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        Mechanism::External => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        assert_eq!(
            credentials(Mechanism::Plain, b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials(Mechanism::Plain, b"guest"), None);
        assert_eq!(credentials(Mechanism::External, b""), None);
    }

    #[test]
    fn offered_and_chosen_as_configured() {
        use Mechanism::*;
        assert_eq!(offered(&Mechanism::DEFAULT, true), "PLAIN AMQPLAIN");
        assert_eq!(offered(&[External, Plain], true), "EXTERNAL PLAIN");
        assert_eq!(offered(&[External, Plain], false), "PLAIN");
        assert_eq!(chosen(&[Plain], false, "PLAIN"), Ok(Plain));
        assert_eq!(
            chosen(&Mechanism::DEFAULT, true, "EXTERNAL"),
            Err("invalid authentication mechanism 'EXTERNAL'".into())
        );
        assert_eq!(
            chosen(&[External], false, "EXTERNAL"),
            Err("invalid authentication mechanism 'EXTERNAL'".into())
        );
        assert_eq!(
            chosen(&[Plain], true, "FOO"),
            Err("unknown authentication mechanism 'FOO'".into())
        );
    }

    #[test]
    fn amqplain() {
        let mut r = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "pw")] {
            r.push(k.len() as u8);
            r.extend_from_slice(k.as_bytes());
            r.push(b'S');
            r.extend_from_slice(&(v.len() as u32).to_be_bytes());
            r.extend_from_slice(v.as_bytes());
        }
        assert_eq!(
            credentials(Mechanism::Amqplain, &r),
            Some(("guest".into(), "pw".into()))
        );
    }
}
