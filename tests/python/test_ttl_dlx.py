"""Queue lifecycle: message TTLs, queue expiry, length limits, dead-lettering.

Validated against RabbitMQ 3.10.8. Where Warren follows RabbitMQ 3.13
instead (x-last-death-* headers, which 3.10 does not set), the check is
Warren-only (`ON_RABBIT`).
"""

import os
import time

import pika
import pytest

ON_RABBIT = bool(os.environ.get("WARREN_TEST_AMQP_URL"))


def _wait_get(ch, q, timeout=5.0):
    """basic.get until a message arrives (dead-lettering is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is not None or time.monotonic() > deadline:
            return m, p, b
        time.sleep(0.02)


def _wait_until(cond, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def _dlx_pair(ch, names, **args):
    """A source queue dead-lettering to a fanout exchange bound to `dlq`."""
    q, dlq, dlx = names.queue("src"), names.queue("dlq"), names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    arguments = {"x-dead-letter-exchange": dlx}
    arguments.update(args)
    ch.queue_declare(q, arguments=arguments)
    return q, dlq, dlx


@pytest.mark.parametrize(
    "args,text",
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-message-ttl": "abc"}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-message-ttl": 2**40}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_too_large,1099511627776}}"),
        ({"x-expires": 0}, "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
        ({"x-max-length": -1}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-max-length-bytes": "x"}, "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-overflow": "bogus"}, "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow"),
        ({"x-overflow": 5}, "invalid arg 'x-overflow' for queue '{q}' in vhost '/': {{unacceptable_type,signedint}}"),
        ({"x-dead-letter-exchange": 5}, "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"),
        ({"x-dead-letter-routing-key": "k"}, "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': routing_key_but_no_dlx_defined"),
    ],
)
def test_invalid_lifecycle_arguments_are_refused(conn, names, args, text):
    ch = conn.channel()
    q = names.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments=args)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)


@pytest.mark.parametrize(
    "expiration,term",
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
    ],
)
def test_invalid_expiration_is_refused(conn, names, roundtrip, expiration, term):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        roundtrip(ch)
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {term}"
    assert _count(conn.channel(), q) == 0


def test_queue_ttl_expires_and_dead_letters_with_x_death(ch, names):
    q, dlq, dlx = _dlx_pair(ch, names, **{"x-message-ttl": 100})
    props = pika.BasicProperties(expiration="60000", headers={"h": "v"}, delivery_mode=2)
    ch.basic_publish("", q, b"body", props)
    m, p, body = _wait_get(ch, dlq)
    assert body == b"body"
    assert m.exchange == dlx and m.routing_key == q
    assert p.expiration is None
    assert p.delivery_mode == 2
    h = p.headers
    assert h["h"] == "v"
    (death,) = h["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "expired"
    assert death["queue"] == q
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert death["original-expiration"] == "60000"
    assert "time" in death
    assert h["x-first-death-queue"] == q
    assert h["x-first-death-reason"] == "expired"
    assert h["x-first-death-exchange"] == ""
    if not ON_RABBIT:
        assert h["x-last-death-queue"] == q
        assert h["x-last-death-reason"] == "expired"
    assert _count(ch, q) == 0


def test_per_message_expiration_lower_than_queue_ttl_wins(ch, names):
    q, dlq, _ = _dlx_pair(ch, names, **{"x-message-ttl": 60000})
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50"))
    m, p, body = _wait_get(ch, dlq)
    assert body == b"short"
    assert p.headers["x-death"][0]["original-expiration"] == "50"


def test_expired_messages_are_never_delivered_or_got(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 50})
    ch.confirm_delivery()  # the publishes reached the queue before we count
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    assert _wait_until(lambda: _count(ch, q) == 0)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_ttl_zero_expires_without_a_waiting_consumer(ch, names, pump):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"lost")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"caught")
    assert pump(ch.connection, lambda: got == [b"caught"])


def test_rejected_messages_dead_letter_with_the_routing_key(ch, names):
    dlq = names.queue("dlq")
    q = names.queue("src")
    ch.queue_declare(dlq)
    ch.queue_declare(
        q,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    )
    ch.basic_publish("", q, b"no", pika.BasicProperties(headers={"CC": ["elsewhere"]}))
    m, _, _ = _wait_get_manual(ch, q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m2, p, body = _wait_get(ch, dlq)
    assert body == b"no"
    assert m2.routing_key == dlq and m2.exchange == ""
    # RabbitMQ 3.13 keeps CC with a dead-letter routing key (3.10 drops it).
    assert p.headers["CC"] == ["elsewhere"]
    (death,) = p.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["routing-keys"] == [q, "elsewhere"]
    # nack without requeue dead-letters too; a requeue does not.
    ch.basic_publish("", q, b"again")
    m, _, _ = _wait_get_manual(ch, q)
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, _ = _wait_get_manual(ch, q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    assert _wait_get(ch, dlq)[2] == b"again"


def _wait_get_manual(ch, q, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        r = ch.basic_get(q, auto_ack=False)
        if r[0] is not None or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def test_x_death_counts_per_queue_and_reason(ch, names):
    q1, q2 = names.queue("one"), names.queue("two")
    ch.queue_declare(q1, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q2})
    ch.queue_declare(q2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q1})
    ch.basic_publish("", q1, b"loop")
    m, _, _ = _wait_get_manual(ch, q2)
    ch.basic_reject(m.delivery_tag, requeue=False)  # back to q1, expires again
    m, p, _ = _wait_get_manual(ch, q2)
    assert m is not None, "a rejection breaks the cycle"
    deaths = [(d["queue"], d["reason"], d["count"]) for d in p.headers["x-death"]]
    assert deaths == [(q1, "expired", 2), (q2, "rejected", 1)]
    assert p.headers["x-first-death-reason"] == "expired"
    if not ON_RABBIT:
        assert p.headers["x-last-death-reason"] == "expired"
    ch.basic_ack(m.delivery_tag)


def test_an_automatic_dead_letter_cycle_is_dropped(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 30, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"cycle")
    assert _wait_until(lambda: _count(ch, q) == 0)
    time.sleep(0.2)  # it must not come back
    assert _count(ch, q) == 0


def test_missing_dead_letter_exchange_drops_silently(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 30, "x-dead-letter-exchange": names.exchange("absent")})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"gone")
    assert _wait_until(lambda: _count(ch, q) == 0)
    ch.queue_declare(q, passive=True)  # the channel is fine


def test_max_length_drops_the_oldest_as_maxlen(ch, names):
    q, dlq, _ = _dlx_pair(ch, names, **{"x-max-length": 2})
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    m, p, body = _wait_get(ch, dlq)
    assert body == b"m0"
    assert p.headers["x-death"][0]["reason"] == "maxlen"
    assert _count(ch, q) == 2
    assert ch.basic_get(q, auto_ack=True)[2] == b"m1"


def test_max_length_bytes_counts_bodies(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for b in [b"aaaa", b"bbbb", b"cccc"]:
        ch.basic_publish("", q, b)
    assert _wait_until(lambda: _count(ch, q) == 2)
    assert ch.basic_get(q, auto_ack=True)[2] == b"bbbb"


def test_reject_publish_nacks_a_confirming_publisher(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    assert _count(ch, q) == 1
    assert ch.basic_get(q, auto_ack=True)[2] == b"first"
    ch.basic_publish("", q, b"third")  # room again


def test_reject_publish_dlx_dead_letters_the_refused(conn, names):
    ch = conn.channel()
    q, dlq, _ = _dlx_pair(ch, names, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    m, p, body = _wait_get(ch, dlq)
    assert body == b"refused"
    assert p.headers["x-death"][0]["reason"] == "maxlen"


def test_x_expires_deletes_an_unused_queue(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q, arguments={"x-expires": 100})

    def gone():
        c = conn.channel()
        try:
            c.queue_declare(q, passive=True)
            c.close()
            return False
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            return True

    assert not gone()
    # Polled more slowly than it expires: a declare, passive too, is a use.
    assert _wait_until(gone, timeout=5.0, interval=0.3)


def test_x_expires_waits_while_consumed(conn, names, pump):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q, arguments={"x-expires": 100})
    tag = ch.basic_consume(q, lambda *a: None)
    pump(conn, lambda: False, timeout=0.5)
    ch.queue_declare(q, passive=True)  # still there
    ch.basic_cancel(tag)
    assert _wait_until(lambda: _passive_404(conn, q), timeout=5.0, interval=0.3)


def _passive_404(conn, q):
    c = conn.channel()
    try:
        c.queue_declare(q, passive=True)
        c.close()
        return False
    except pika.exceptions.ChannelClosedByBroker:
        return True
