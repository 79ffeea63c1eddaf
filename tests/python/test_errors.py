"""Channel and connection errors with RabbitMQ's exact reply codes and texts."""

import pika
import pytest


CCBB = pika.exceptions.ChannelClosedByBroker


def _assert_closed(ei, code, text):
    assert ei.value.reply_code == code, ei.value
    assert ei.value.reply_text == text, ei.value


# ------------------------------------------------------------ 404 NOT_FOUND

def test_passive_declare_missing_queue_404(ch, names):
    q = names.queue("missing")
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q, passive=True)
    _assert_closed(ei, 404, f"NOT_FOUND - no queue '{q}' in vhost '/'")
    assert ch.is_closed


def test_passive_declare_missing_exchange_404(ch, names):
    x = names.exchange("missing")
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, passive=True)
    _assert_closed(ei, 404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")


@pytest.mark.parametrize("operation", ["consume", "get", "purge", "bind"])
def test_operations_on_missing_queue_404(ch, names, operation):
    q = names.queue("missing")
    ops = {
        "consume": lambda: ch.basic_consume(q, lambda *a: None),
        "get": lambda: ch.basic_get(q),
        "purge": lambda: ch.queue_purge(q),
        "bind": lambda: ch.queue_bind(q, "amq.direct", "k"),
    }
    with pytest.raises(CCBB) as ei:
        ops[operation]()
    _assert_closed(ei, 404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_bind_to_missing_exchange_404(ch, names):
    q = names.queue()
    x = names.exchange("missing")
    ch.queue_declare(q)
    with pytest.raises(CCBB) as ei:
        ch.queue_bind(q, x, "k")
    _assert_closed(ei, 404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")


def test_channel_error_leaves_connection_usable(conn, names):
    ch = conn.channel()
    with pytest.raises(CCBB):
        ch.queue_declare(names.queue("missing"), passive=True)
    assert conn.is_open
    ch2 = conn.channel()
    q = names.queue()
    ch2.queue_declare(q)
    ch2.basic_publish("", q, b"still-works")
    assert ch2.basic_get(q, auto_ack=True)[2] == b"still-works"


# ------------------------------------------------------------ 406 PRECONDITION_FAILED

def test_redeclare_queue_with_different_durable_406(ch, names):
    q = names.queue()
    ch.queue_declare(q, durable=False)
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q, durable=True)
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue "
                   f"'{q}' in vhost '/': received 'true' but current is 'false'")


def test_redeclare_queue_with_different_auto_delete_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q, auto_delete=True)
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue "
                   f"'{q}' in vhost '/': received 'true' but current is 'false'")


def test_redeclare_queue_with_different_argument_406(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 1000})
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q, arguments={"x-message-ttl": 2000})
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
                   f"'{q}' in vhost '/': received '2000' but current is '1000'")


def test_redeclare_queue_adding_argument_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q, arguments={"x-max-length": 5})
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue "
                   f"'{q}' in vhost '/': received the value '5' of type 'signedint' "
                   f"but current is none")


def test_redeclare_exchange_with_different_type_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, "fanout")
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                   f"'{x}' in vhost '/': received 'fanout' but current is 'direct'")


def test_redeclare_exchange_with_different_durable_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct", durable=False)
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, "direct", durable=True)
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange "
                   f"'{x}' in vhost '/': received 'true' but current is 'false'")


def test_redeclare_exchange_with_different_auto_delete_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, "direct", auto_delete=True)
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange "
                   f"'{x}' in vhost '/': received 'true' but current is 'false'")


def test_redeclare_exchange_with_different_internal_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, "direct", internal=True)
    _assert_closed(ei, 406,
                   f"PRECONDITION_FAILED - inequivalent arg 'internal' for exchange "
                   f"'{x}' in vhost '/': received 'true' but current is 'false'")


def test_queue_delete_if_empty_on_non_empty_queue_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    with pytest.raises(CCBB) as ei:
        ch.queue_delete(q, if_empty=True)
    _assert_closed(ei, 406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")


def test_queue_delete_if_empty_on_empty_queue_ok(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    assert ch.queue_delete(q, if_empty=True).method.message_count == 0


def test_queue_delete_if_unused_with_consumer_406(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    ch2 = conn.channel()
    with pytest.raises(CCBB) as ei:
        ch2.queue_delete(q, if_unused=True)
    _assert_closed(ei, 406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")


def test_exchange_delete_if_unused_with_binding_406(ch, names):
    x = names.exchange()
    q = names.queue()
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    with pytest.raises(CCBB) as ei:
        ch.exchange_delete(x, if_unused=True)
    _assert_closed(ei, 406, f"PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")


def test_user_id_mismatch_406(ch, names, roundtrip):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="bob"))
    with pytest.raises(CCBB) as ei:
        roundtrip(ch)
    _assert_closed(ei, 406, "PRECONDITION_FAILED - user_id property set to 'bob' "
                            "but authenticated user was 'guest'")


# ------------------------------------------------------------ 403 ACCESS_REFUSED

def test_declare_exchange_with_amq_prefix_403(ch, names):
    x = "amq." + names.exchange()
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(x, "direct")
    _assert_closed(ei, 403,
                   f"ACCESS_REFUSED - exchange name '{x}' contains reserved prefix 'amq.*'")


def test_declare_queue_with_amq_prefix_403(ch, names):
    q = "amq." + names.queue()
    with pytest.raises(CCBB) as ei:
        ch.queue_declare(q)
    _assert_closed(ei, 403,
                   f"ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'")


def test_delete_system_exchange_403(ch):
    with pytest.raises(CCBB) as ei:
        ch.exchange_delete("amq.direct")
    _assert_closed(ei, 403,
                   "ACCESS_REFUSED - deletion of system exchange 'amq.direct' "
                   "in vhost '/' not allowed")


def test_passive_declare_default_exchange_403(ch):
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare("", passive=True)
    _assert_closed(ei, 403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_bind_to_default_exchange_403(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(CCBB) as ei:
        ch.queue_bind(q, "", "k")
    _assert_closed(ei, 403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_publish_to_internal_exchange_403(ch, names, roundtrip):
    x = names.exchange()
    ch.exchange_declare(x, "fanout", internal=True)
    ch.basic_publish(x, "", b"x")
    with pytest.raises(CCBB) as ei:
        roundtrip(ch)
    _assert_closed(ei, 403,
                   f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'")


# ------------------------------------------------------------ connection-level

def test_unknown_exchange_type_is_connection_error_503(conn, ch, names):
    x = names.exchange()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(x, "no-such-type")
    # RabbitMQ says "unknown exchange type" for a name that is not an Erlang
    # atom it knows, and "invalid exchange type" for a known atom without an
    # exchange module (e.g. 'foo'); arbitrary names get the former.
    _assert_closed(ei, 503, "COMMAND_INVALID - unknown exchange type 'no-such-type'")
    assert conn.is_closed


def test_unknown_vhost_530(connect):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as ei:
        connect(virtual_host="warren-no-such-vhost")
    # pika wraps the broker's connection.close in the message string
    assert str(ei.value) == ("ConnectionClosedByBroker: (530) "
                             "'NOT_ALLOWED - vhost warren-no-such-vhost not found'")


def test_wrong_password_403(connect):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        connect(credentials=pika.PlainCredentials("guest", "definitely-wrong"))
    assert str(ei.value) == (
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused "
        "using authentication mechanism PLAIN. For details see the broker logfile.'")


def test_unknown_user_403(connect):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        connect(credentials=pika.PlainCredentials("warren-no-such-user", "x"))
    assert str(ei.value) == (
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused "
        "using authentication mechanism PLAIN. For details see the broker logfile.'")


def test_successful_connection_reports_capabilities(conn):
    caps = conn._impl.server_capabilities
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "exchange_exchange_bindings", "authentication_failure_close",
                "per_consumer_qos"):
        assert caps.get(cap) is True, (cap, caps)
