//! A certificate subject written as RabbitMQ writes it (rabbit_cert_info's
//! `format_rdn_sequence`), because that string is the user name of an
//! EXTERNAL login with `ssl_cert_login_from = distinguished_name`: RDNs in
//! reverse order (RFC 4514) joined with ",", multi-valued RDNs with "+",
//! RabbitMQ's attribute names, and its escaping of values, byte by byte.

use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::ObjectIdentifier as Oid;
use x509_cert::der::{Encode, Tag, Tagged};
use x509_cert::name::Name;

/// The attribute names RabbitMQ writes. Not STREET: RabbitMQ's table keys
/// it by a constant that never equals the street OID, so a street comes
/// out as `2.5.4.9=...`, and so it does here.
const NAMES: &[(&str, &str)] = &[
    ("2.5.4.4", "SN"),
    ("2.5.4.42", "GIVENNAME"),
    ("2.5.4.43", "INITIALS"),
    ("2.5.4.44", "GENERATIONQUALIFIER"),
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "TITLE"),
    ("2.5.4.6", "C"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("2.5.4.65", "PSEUDONYM"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// Attributes Erlang's certificate decoder knows to be IA5 strings; an
/// IA5 string under any other OID stays undecoded there.
const IA5_ATTRIBUTES: &[&str] = &["0.9.2342.19200300.100.1.25", "1.2.840.113549.1.9.1"];

const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");

/// The subject as RabbitMQ writes it: `CN=client,O=Test,C=GB`.
pub fn distinguished_name(subject: &Name) -> String {
    let rdns: Vec<String> = subject
        .0
        .iter()
        .rev()
        .map(|rdn| rdn.0.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.join(",")
}

/// Every CN of the subject, in certificate order, unescaped and joined
/// with "," (RabbitMQ's `ssl_cert_login_from = common_name`); `None`
/// without one.
pub fn common_names(subject: &Name) -> Option<String> {
    let cns: Vec<String> = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == COMMON_NAME)
        .map(value_text)
        .collect();
    (!cns.is_empty()).then(|| cns.join(","))
}

/// `NAME=value`, or `dotted.oid=value` for an attribute RabbitMQ has no
/// name for.
fn attribute(atv: &AttributeTypeAndValue) -> String {
    let oid = atv.oid.to_string();
    let name = NAMES
        .iter()
        .find(|(o, _)| *o == oid)
        .map_or(oid.as_str(), |(_, n)| n);
    format!("{name}={}", escape(value_text(atv).as_bytes()))
}

/// An attribute value as text: the string types decoded to UTF-8 (the
/// DER decoder refuses a UniversalString, so none reaches here); any
/// other value as Erlang prints the undecoded DER binary (`<<1,2,3>>`).
fn value_text(atv: &AttributeTypeAndValue) -> String {
    let bytes = atv.value.value();
    match atv.value.tag() {
        Tag::Utf8String | Tag::PrintableString => String::from_utf8_lossy(bytes).into_owned(),
        Tag::Ia5String if IA5_ATTRIBUTES.contains(&atv.oid.to_string().as_str()) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        // Erlang reads T.61 bytes as Latin-1 code points.
        Tag::TeletexString => bytes.iter().map(|&b| char::from(b)).collect(),
        Tag::BmpString => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => erlang_binary(&atv.value.to_der().unwrap_or_default()),
    }
}

/// How Erlang's `~p` prints a binary: `<<"text">>` when every byte is
/// printable ASCII, else `<<1,2,3>>`.
fn erlang_binary(der: &[u8]) -> String {
    if der.iter().all(|b| (0x20..0x7f).contains(b)) {
        let text: String = der
            .iter()
            .flat_map(|&b| match b {
                b'"' | b'\\' => vec!['\\', char::from(b)],
                _ => vec![char::from(b)],
            })
            .collect();
        format!("<<\"{text}\">>")
    } else {
        let nums: Vec<String> = der.iter().map(u8::to_string).collect();
        format!("<<{}>>", nums.join(","))
    }
}

/// RabbitMQ's `escape_rdn_value`: RFC 4514's escapes (a leading space or
/// "#", a trailing space, `"+,;<>\`), and every byte below 32 or from 126
/// up as `\XX` (so a UTF-8 character becomes one escape per byte).
fn escape(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, &b) in value.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == value.len();
        match b {
            b' ' | b'#' if first => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' ' if last => out.push_str("\\ "),
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0..=31 | 126..=255 => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(char::from(b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn rfc4514_order_names_and_escapes() {
        let name = Name::from_str("CN=client,O=Test,C=GB").unwrap();
        assert_eq!(distinguished_name(&name), "CN=client,O=Test,C=GB");
        assert_eq!(common_names(&name).as_deref(), Some("client"));
        let name = Name::from_str("CN=a\\,b+UID=x,OU=o1,DC=example").unwrap();
        assert_eq!(distinguished_name(&name), "CN=a\\,b+UID=x,OU=o1,DC=example");
    }

    #[test]
    fn escaping_as_rabbit_cert_info() {
        assert_eq!(escape(b" a b "), "\\ a b\\ ");
        assert_eq!(escape(b"#x#"), "\\#x#");
        assert_eq!(escape(b"a;b<c>d\"e"), "a\\;b\\<c\\>d\\\"e");
        assert_eq!(escape("é~".as_bytes()), "\\C3\\A9\\7E");
        assert_eq!(escape(b"\x01"), "\\01");
    }

    #[test]
    fn undecoded_values_print_as_erlang_binaries() {
        assert_eq!(erlang_binary(&[22, 1, 97]), "<<22,1,97>>");
        assert_eq!(erlang_binary(b"a\"b"), "<<\"a\\\"b\">>");
    }

    #[test]
    fn several_common_names_join_with_commas() {
        let name = Name::from_str("CN=b,CN=a,O=x").unwrap();
        // Certificate order: the string's last RDN comes first.
        assert_eq!(common_names(&name).as_deref(), Some("a,b"));
        assert_eq!(common_names(&Name::from_str("O=x").unwrap()), None);
    }
}
