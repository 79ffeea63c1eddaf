//! A queue's lifecycle settings from its `x-` arguments, and a message's
//! `expiration` property, validated with RabbitMQ's errors.
//!
//! The one place that turns arguments into [`QueueLimits`]: declares,
//! start-up and (later) policies all go through [`queue_limits`].

use super::error::{BrokerError, ErrorKind};
use warren_exchanges::{Table, Value};
use warren_queues::{Overflow, QueueLimits, TimeoutAction, MAX_SUPPORTED_PRIORITY};

/// RabbitMQ's longest TTL or expiry: ten years, in milliseconds.
pub const MAX_EXPIRY: u64 = 315_360_000_000;

/// Erlang's `~p` of a two-element tuple `{tag,value}` printed at column
/// `col` of a line at most `width` wide: on one line when it fits, else
/// broken after the comma with the value under the tag.
fn erl_tuple(col: usize, width: usize, tag: &str, value: &str) -> String {
    let flat = format!("{{{tag},{value}}}");
    if col + flat.len() <= width {
        flat
    } else {
        format!("{{{tag},\n{}{value}}}", " ".repeat(col + 1))
    }
}

/// The integer of an argument of one of AMQP's integer types (not a
/// timestamp), as RabbitMQ's `check_int_arg`.
fn int_arg(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::ShortShortInt(n) => n as i64,
        Value::ShortShortUInt(n) => n as i64,
        Value::ShortInt(n) => n as i64,
        Value::ShortUInt(n) => n as i64,
        Value::LongInt(n) => n as i64,
        Value::LongUInt(n) => n as i64,
        Value::LongLongInt(n) => n,
        _ => return None,
    })
}

/// Why one argument is refused: RabbitMQ's error term, printed.
enum ArgError {
    /// `{tag,value}`, pretty-printed as Erlang would at its column.
    Tagged(&'static str, String),
    /// Printed as it is (an atom or a quoted string).
    Plain(String),
    /// A whole message of its own.
    Text(String),
}

/// Parses a queue's arguments into its settings, refusing invalid ones
/// with RabbitMQ 3.10's 406 texts (checked in RabbitMQ's order).
pub fn queue_limits(queue: &str, vhost: &str, args: &Table) -> Result<QueueLimits, BrokerError> {
    let mut l = QueueLimits::default();
    let fail = |key: &str, e: ArgError| {
        let head = format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': ");
        let text = match e {
            ArgError::Tagged(tag, v) => head.clone() + &erl_tuple(head.len(), 255, tag, &v),
            ArgError::Plain(s) => head + &s,
            ArgError::Text(t) => t,
        };
        BrokerError::new(ErrorKind::PreconditionFailed, text)
    };
    let int = |key: &str, v: &Value| {
        int_arg(v)
            .ok_or_else(|| ArgError::Plain(format!("\"expected integer, got {}\"", v.type_name())))
            .map_err(|e| fail(key, e))
    };
    let non_neg = |key: &str, v: &Value| -> Result<u64, BrokerError> {
        let n = int(key, v)?;
        if n < 0 {
            return Err(fail(key, ArgError::Tagged("value_negative", n.to_string())));
        }
        Ok(n as u64)
    };
    let expiry = |key: &str, n: u64| -> Result<u64, BrokerError> {
        if n > MAX_EXPIRY {
            return Err(fail(
                key,
                ArgError::Tagged("value_too_large", n.to_string()),
            ));
        }
        Ok(n)
    };
    if let Some(v) = args.get("x-expires") {
        let n = int("x-expires", v)?;
        if n == 0 {
            return Err(fail(
                "x-expires",
                ArgError::Tagged("value_zero", "0".into()),
            ));
        }
        if n < 0 {
            return Err(fail(
                "x-expires",
                ArgError::Tagged("value_negative", n.to_string()),
            ));
        }
        l.expires = Some(expiry("x-expires", n as u64)?);
    }
    if let Some(v) = args.get("x-message-ttl") {
        let n = non_neg("x-message-ttl", v)?;
        l.message_ttl = Some(expiry("x-message-ttl", n)?);
    }
    if let Some(v) = args.get("x-dead-letter-exchange") {
        let Some(name) = string_arg(v) else {
            return Err(fail(
                "x-dead-letter-exchange",
                ArgError::Text(format!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{queue}' in vhost '{vhost}'",
                    v.type_name()
                )),
            ));
        };
        l.dead_letter_exchange = Some(name);
    }
    if let Some(v) = args.get("x-dead-letter-routing-key") {
        let Some(rk) = string_arg(v) else {
            return Err(fail(
                "x-dead-letter-routing-key",
                ArgError::Tagged("unacceptable_type", v.type_name().into()),
            ));
        };
        if l.dead_letter_exchange.is_none() {
            return Err(fail(
                "x-dead-letter-routing-key",
                ArgError::Plain("routing_key_but_no_dlx_defined".into()),
            ));
        }
        l.dead_letter_routing_key = Some(rk);
    }
    if let Some(v) = args.get("x-max-length") {
        l.max_length = Some(non_neg("x-max-length", v)?);
    }
    if let Some(v) = args.get("x-max-length-bytes") {
        l.max_length_bytes = Some(non_neg("x-max-length-bytes", v)?);
    }
    if let Some(v) = args.get("x-max-priority") {
        let n = non_neg("x-max-priority", v)?;
        if n > MAX_SUPPORTED_PRIORITY as u64 {
            return Err(fail(
                "x-max-priority",
                ArgError::Tagged("max_value_exceeded", n.to_string()),
            ));
        }
    }
    if let Some(v) = args.get("x-overflow") {
        let Value::LongString(b) = v else {
            return Err(fail(
                "x-overflow",
                ArgError::Tagged("unacceptable_type", v.type_name().into()),
            ));
        };
        l.overflow = std::str::from_utf8(b)
            .ok()
            .and_then(Overflow::parse)
            .ok_or_else(|| fail("x-overflow", ArgError::Plain("invalid_overflow".into())))?;
    }
    if let Some(v) = args.get("x-delivery-limit") {
        l.delivery_limit = Some(non_neg("x-delivery-limit", v)?);
    }
    if let Some(v) = args.get("x-consumer-timeout") {
        l.consumer_timeout = Some(non_neg("x-consumer-timeout", v)?);
    }
    if let Some(v) = args.get("x-consumer-timeout-action") {
        // Warren's own argument, refused in the shape of x-overflow's.
        let Some(s) = string_arg(v) else {
            return Err(fail(
                "x-consumer-timeout-action",
                ArgError::Tagged("unacceptable_type", v.type_name().into()),
            ));
        };
        l.consumer_timeout_action = TimeoutAction::parse(&s).ok_or_else(|| {
            fail(
                "x-consumer-timeout-action",
                ArgError::Plain("invalid_consumer_timeout_action".into()),
            )
        })?;
    }
    Ok(l)
}

/// The highest priority of a queue declared with `x-max-priority` (valid:
/// see [`queue_limits`]), `None` for a queue without priorities. Only the
/// declare's argument counts: RabbitMQ has no `max-priority` policy key.
/// A maximum of 0 is accepted, as RabbitMQ does, and is a plain queue.
pub fn max_priority(args: &Table) -> Option<u8> {
    let n = int_arg(args.get("x-max-priority")?)?;
    u8::try_from(n.clamp(0, MAX_SUPPORTED_PRIORITY as i64)).ok()
}

fn string_arg(v: &Value) -> Option<String> {
    match v {
        Value::LongString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::ShortString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A message's `expiration` property as milliseconds, or RabbitMQ's
/// 406 text for an invalid one (`rabbit_basic:parse_expiration`: an
/// optionally signed decimal integer, nothing after it, 0 to ten years).
pub fn parse_expiration(s: &str) -> Result<u64, String> {
    let head = format!("invalid expiration '{s}': ");
    let (sign, digits_from) = match s.as_bytes().first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let rest = &s[digits_from..];
    let n_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if n_digits == 0 {
        return Err(head + "no_integer");
    }
    let (digits, leftover) = rest.split_at(n_digits);
    if !leftover.is_empty() {
        return Err(head + &format!("{{leftover_string,{}}}", erl_string(leftover)));
    }
    let trimmed = digits.trim_start_matches('0');
    let shown = if trimmed.is_empty() { "0" } else { trimmed };
    let col = head.len();
    if sign && shown != "0" {
        let v = format!("-{shown}");
        return Err(head + &erl_tuple(col, 80, "value_negative", &v));
    }
    match shown.parse::<u64>() {
        Ok(n) if n <= MAX_EXPIRY => Ok(n),
        _ => Err(head + &erl_tuple(col, 80, "value_too_large", shown)),
    }
}

/// Erlang's `~p` of a string (a list of printable characters).
fn erl_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(k: &str, v: Value) -> Table {
        Table(vec![(k.to_owned(), v)])
    }

    fn err(t: Table) -> String {
        queue_limits("q", "/", &t).unwrap_err().text
    }

    /// Texts as RabbitMQ 3.10.8 answers them.
    #[test]
    fn invalid_arguments_get_rabbitmqs_texts() {
        let p = "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': ";
        assert_eq!(
            err(args("x-message-ttl", Value::LongInt(-1))),
            format!("{p}{{value_negative,-1}}")
        );
        assert_eq!(
            err(args("x-message-ttl", Value::LongString(b"abc".to_vec()))),
            format!("{p}\"expected integer, got longstr\"")
        );
        assert_eq!(
            err(args("x-message-ttl", Value::LongLongInt(1 << 40))),
            format!("{p}{{value_too_large,1099511627776}}")
        );
        assert!(queue_limits(
            "q",
            "/",
            &args("x-message-ttl", Value::LongLongInt(MAX_EXPIRY as i64))
        )
        .is_ok());
        assert_eq!(
            err(args("x-expires", Value::LongInt(0))),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            err(args("x-overflow", Value::LongString(b"bogus".to_vec()))),
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert_eq!(
            err(args("x-overflow", Value::LongInt(5))),
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': {unacceptable_type,signedint}"
        );
        assert_eq!(
            err(args("x-dead-letter-exchange", Value::LongInt(5))),
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
        assert_eq!(
            err(args("x-dead-letter-routing-key", Value::LongString(b"k".to_vec()))),
            "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
        );
        assert_eq!(
            err(args("x-max-length", Value::LongInt(-1))),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        // x-max-priority: RabbitMQ 3.10.8's answers (0 is accepted).
        assert_eq!(
            err(args("x-max-priority", Value::LongInt(256))),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"
        );
        assert_eq!(
            err(args("x-max-priority", Value::ShortShortInt(-1))),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            err(args("x-max-priority", Value::LongString(b"10".to_vec()))),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        for (v, max) in [(0, Some(0)), (10, Some(10)), (255, Some(255))] {
            let a = args("x-max-priority", Value::LongLongInt(v));
            assert!(queue_limits("q", "/", &a).is_ok());
            assert_eq!(max_priority(&a), max);
        }
        assert_eq!(max_priority(&Table::default()), None);
    }

    #[test]
    fn expirations_parse_as_rabbitmq_does() {
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("007"), Ok(7));
        assert_eq!(
            parse_expiration("abc").unwrap_err(),
            "invalid expiration 'abc': no_integer"
        );
        assert_eq!(
            parse_expiration("").unwrap_err(),
            "invalid expiration '': no_integer"
        );
        assert_eq!(
            parse_expiration(" 10").unwrap_err(),
            "invalid expiration ' 10': no_integer"
        );
        assert_eq!(
            parse_expiration("1.5").unwrap_err(),
            "invalid expiration '1.5': {leftover_string,\".5\"}"
        );
        assert_eq!(
            parse_expiration("-1").unwrap_err(),
            "invalid expiration '-1': {value_negative,-1}"
        );
        assert_eq!(
            parse_expiration("99999999999999999999").unwrap_err(),
            "invalid expiration '99999999999999999999': {value_too_large,\n                                            99999999999999999999}"
        );
    }
}
