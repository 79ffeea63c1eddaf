//! Who receives from a queue: the `x-single-active-consumer` queue argument
//! and the `x-priority` consumer argument, validated with RabbitMQ's 406
//! texts (checked on RabbitMQ 3.10.8).

use super::error::{BrokerError, ErrorKind};
use warren_exchanges::{Table, Value};

fn invalid(key: &str, queue: &str, vhost: &str, what: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::PreconditionFailed,
        format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {what}"),
    )
}

/// `x-single-active-consumer` of a queue declare: a bool, or absent (off).
pub fn single_active_consumer(queue: &str, vhost: &str, args: &Table) -> Result<bool, BrokerError> {
    match args.get("x-single-active-consumer") {
        None => Ok(false),
        Some(Value::Bool(on)) => Ok(*on),
        Some(v) => Err(invalid(
            "x-single-active-consumer",
            queue,
            vhost,
            &format!("{{unacceptable_type,{}}}", v.type_name()),
        )),
    }
}

/// `x-priority` of a basic.consume: any AMQP integer (RabbitMQ's
/// `check_int_arg`), 0 when absent.
pub fn consumer_priority(queue: &str, vhost: &str, args: &Table) -> Result<i64, BrokerError> {
    let Some(v) = args.get("x-priority") else {
        return Ok(0);
    };
    Ok(match *v {
        Value::ShortShortInt(n) => n as i64,
        Value::ShortShortUInt(n) => n as i64,
        Value::ShortInt(n) => n as i64,
        Value::ShortUInt(n) => n as i64,
        Value::LongInt(n) => n as i64,
        Value::LongUInt(n) => n as i64,
        Value::LongLongInt(n) => n,
        _ => {
            return Err(invalid(
                "x-priority",
                queue,
                vhost,
                &format!("\"expected integer, got {}\"", v.type_name()),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(k: &str, v: Value) -> Table {
        Table(vec![(k.to_owned(), v)])
    }

    #[test]
    fn wrong_types_get_rabbitmqs_texts() {
        let e = single_active_consumer(
            "q",
            "/",
            &args("x-single-active-consumer", Value::LongInt(1)),
        )
        .unwrap_err();
        assert_eq!(
            e.text,
            "invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,signedint}"
        );
        let e = consumer_priority("q", "/", &args("x-priority", Value::Bool(true))).unwrap_err();
        assert_eq!(
            e.text,
            "invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got bool\""
        );
        assert_eq!(
            consumer_priority("q", "/", &args("x-priority", Value::ShortInt(-3))).unwrap(),
            -3
        );
        assert!(!single_active_consumer("q", "/", &Table::default()).unwrap());
    }
}
