//! SASL: the PLAIN and AMQPLAIN mechanisms RabbitMQ offers by default,
//! and EXTERNAL (the user named by a verified TLS client certificate, as
//! RabbitMQ's `rabbitmq_auth_mechanism_ssl`).

use amq_protocol::types::{parsing::parse_field_table, AMQPValue};

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";
pub const EXTERNAL: &str = "EXTERNAL";

/// The mechanisms connection.start offers: EXTERNAL too on a TLS
/// connection whose client sent a verified certificate.
pub fn mechanisms(external: bool) -> &'static str {
    if external {
        "PLAIN AMQPLAIN EXTERNAL"
    } else {
        MECHANISMS
    }
}

/// Who a client says it is.
pub enum Login {
    /// PLAIN or AMQPLAIN: a user and a password to check.
    Password(String, String),
    /// EXTERNAL: the user the TLS client certificate names.
    External(String),
}

/// Extracts (user, password) from a start-ok response; `None` if malformed
/// or the mechanism is unknown.
pub fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
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
        "AMQPLAIN" => {
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
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        assert_eq!(credentials("EXTERNAL", b""), None);
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
            credentials("AMQPLAIN", &r),
            Some(("guest".into(), "pw".into()))
        );
    }
}
