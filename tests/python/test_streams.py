"""Stream queues (x-queue-type: stream) through pika, with the answers
RabbitMQ 3.10.8 gives over AMQP 0-9-1 (run against it with
WARREN_TEST_AMQP_URL): declare refusals, offsets and the x-stream-offset
header, consumers at their own positions, acks that only return credit,
the operations a stream refuses (540 NOT_IMPLEMENTED), and filtering
(RabbitMQ 3.13's x-stream-filter-value / x-stream-filter /
x-stream-match-unfiltered; Warren filters exactly, RabbitMQ per chunk with
a Bloom filter, so against RabbitMQ only the "at least" half holds)."""

import datetime

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker
CONN_CLOSED = pika.exceptions.ConnectionClosedByBroker
STREAM = {"x-queue-type": "stream"}


def _args(**extra):
    a = dict(STREAM)
    a.update({k.replace("_", "-"): v for k, v in extra.items()})
    return a


def _stream(ch, names, n=0, **extra):
    q = names.queue("stream")
    ch.queue_declare(q, durable=True, arguments=_args(**extra))
    if n:
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish("", q, b"m%d" % i,
                             pika.BasicProperties(headers={"i": i}))
    return q


def _consume(conn, ch, q, pump, want, offset=None, prefetch=100, ack=True):
    """Consumes `want` deliveries from `offset`: [(offset header, body)]."""
    ch.basic_qos(prefetch_count=prefetch)
    got = []

    def cb(c, m, p, b):
        got.append((p.headers["x-stream-offset"], b, p.headers))
        if ack:
            c.basic_ack(m.delivery_tag)

    args = {} if offset is None else {"x-stream-offset": offset}
    tag = ch.basic_consume(q, cb, arguments=args)
    pump(conn, lambda: len(got) >= want, timeout=5.0)
    return tag, got


def test_declare_refusals(connect, names):
    q = names.queue("stream")
    for kw, prop in [(dict(durable=False), "non-durable"),
                     (dict(durable=True, exclusive=True), "exclusive-owner"),
                     (dict(durable=True, auto_delete=True), "auto-delete")]:
        ch = connect().channel()
        with pytest.raises(CCBB) as e:
            ch.queue_declare(q, arguments=STREAM, **kw)
        assert e.value.args == (
            406, f"PRECONDITION_FAILED - invalid property '{prop}' "
                 f"for queue '{q}' in vhost '/'")
    for key in ["x-max-length", "x-message-ttl", "x-overflow"]:
        ch = connect().channel()
        with pytest.raises(CCBB) as e:
            ch.queue_declare(q, durable=True, arguments=dict(STREAM, **{key: 1}))
        assert e.value.args == (
            406, f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' "
                 f"in vhost '/' of queue type rabbit_stream_queue")
    for age, why in [("10", "invalid_max_age"), ("0s", "invalid_max_age"),
                     (5, "{unacceptable_type,signedint}")]:
        ch = connect().channel()
        with pytest.raises(CCBB) as e:
            ch.queue_declare(q, durable=True, arguments=_args(x_max_age=age))
        assert e.value.args == (
            406, f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue "
                 f"'{q}' in vhost '/': {why}")
    ch = connect().channel()
    with pytest.raises(CCBB) as e:
        ch.queue_declare(q, durable=True, arguments=_args(x_max_length_bytes=-1))
    assert e.value.args[1].endswith(": {value_negative,-1}")


def test_redeclare_equivalence(ch, connect, names):
    q = _stream(ch, names, x_max_age="7D")
    ok = ch.queue_declare(q, durable=True, arguments=_args(x_max_age="7D"))
    assert ok.method.message_count == 0
    ch2 = connect().channel()
    with pytest.raises(CCBB) as e:
        ch2.queue_declare(q, durable=True, arguments=_args(x_max_age="8D"))
    assert e.value.args == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue "
             f"'{q}' in vhost '/': received '8D' but current is '7D'")


def test_offsets_and_header(conn, ch, names, pump):
    q = _stream(ch, names, n=10)
    _, got = _consume(conn, ch, q, pump, 10, offset="first")
    assert [(o, b) for o, b, _ in got] == [(i, b"m%d" % i) for i in range(10)]
    # the publisher's headers are kept, the offset (a long) is added last
    assert list(got[3][2].items()) == [("i", 3), ("x-stream-offset", 3)]
    for offset, first in [(7, 7), (-1, 0), ("last", 9), ("1D", 0),
                          (datetime.datetime(2000, 1, 1), 0)]:
        c2 = conn.channel()
        _, got = _consume(conn, c2, q, pump, 10 - first, offset=offset)
        assert [o for o, _, _ in got] == list(range(first, 10)), offset
        c2.close()


def test_next_and_independent_consumers(conn, ch, names, pump, connect):
    q = _stream(ch, names, n=5)
    c_next = conn.channel()
    _, got_next = _consume(conn, c_next, q, pump, 1, offset="next")
    assert got_next == []
    c_first = conn.channel()
    _, got_first = _consume(conn, c_first, q, pump, 5, offset="first")
    assert len(got_first) == 5
    ch.basic_publish("", q, b"late")
    pump(conn, lambda: len(got_next) == 1 and len(got_first) == 6)
    assert got_next[0][:2] == (5, b"late")
    assert got_first[-1][:2] == (5, b"late")


def test_acks_only_return_credit(conn, ch, names, pump):
    q = _stream(ch, names, n=10)
    c = conn.channel()
    c.basic_qos(prefetch_count=3)
    got = []
    c.basic_consume(q, lambda ch_, m, p, b: got.append(m.delivery_tag),
                    arguments={"x-stream-offset": "first"})
    pump(conn, lambda: len(got) >= 4, timeout=0.5)
    assert len(got) == 3
    c.basic_ack(got[-1], multiple=True)
    pump(conn, lambda: len(got) >= 7, timeout=0.5)
    assert len(got) == 6


def test_consume_needs_prefetch_and_manual_acks(connect, ch, names):
    q = _stream(ch, names)
    c = connect().channel()
    with pytest.raises(CCBB) as e:
        c.basic_consume(q, lambda *a: None)
    assert e.value.args == (
        406, f"PRECONDITION_FAILED - consumer prefetch count is not set for "
             f"'queue '{q}' in vhost '/''")
    c = connect().channel()
    c.basic_qos(prefetch_count=10)
    with pytest.raises(CONN_CLOSED) as e:
        c.basic_consume(q, lambda *a: None, auto_ack=True)
    assert e.value.args == (
        540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by "
             f"stream queues queue '{q}' in vhost '/'")


@pytest.mark.parametrize("op,what", [
    (lambda c, q: c.basic_get(q), "basic.get"),
    (lambda c, q: c.queue_purge(q), "queue.purge"),
])
def test_unsupported_operations(connect, ch, names, op, what):
    q = _stream(ch, names, n=1)
    c = connect().channel()
    with pytest.raises(CONN_CLOSED) as e:
        op(c, q)
    assert e.value.args == (
        540, f"NOT_IMPLEMENTED - {what} not supported by stream queues "
             f"queue '{q}' in vhost '/'")


def test_nack_is_refused(connect, ch, names, pump):
    q = _stream(ch, names, n=1)
    conn = connect()
    c = conn.channel()
    c.basic_qos(prefetch_count=10)
    got = []
    c.basic_consume(q, lambda ch_, m, p, b: got.append(m.delivery_tag),
                    arguments={"x-stream-offset": "first"})
    pump(conn, lambda: got)
    c.basic_nack(got[0], requeue=False)
    with pytest.raises(CONN_CLOSED) as e:
        pump(conn, lambda: False, timeout=2.0)
    assert e.value.args == (
        540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by "
             f"stream queues queue '{q}' in vhost '/'")


def _publish_valued(ch, q, n):
    """m0..m(n-1): filter value "a", "b" or none by i % 3."""
    ch.confirm_delivery()
    for i in range(n):
        v = {0: "a", 1: "b"}.get(i % 3)
        headers = {} if v is None else {"x-stream-filter-value": v}
        ch.basic_publish("", q, b"m%d" % i,
                         pika.BasicProperties(headers=headers))


def _filtered(conn, q, pump, want, prefetch=100, **args):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []

    def cb(c, m, p, b):
        got.append(p.headers["x-stream-offset"])
        c.basic_ack(m.delivery_tag)

    a = {"x-stream-offset": "first"}
    a.update({k.replace("_", "-"): v for k, v in args.items()})
    ch.basic_consume(q, cb, arguments=a)
    # Waits past `want` for anything extra to show up.
    pump(conn, lambda: len(got) > want, timeout=0.5)
    return got


def test_filtering(conn, ch, names, pump):
    q = _stream(ch, names)
    _publish_valued(ch, q, 30)
    assert _filtered(conn, q, pump, 10, x_stream_filter="a") == \
        list(range(0, 30, 3))
    # prefetch 1: the skipped ones take no credit
    assert _filtered(conn, q, pump, 10, prefetch=1,
                     x_stream_filter=["b"]) == list(range(1, 30, 3))
    assert _filtered(conn, q, pump, 20, x_stream_filter=["b", "zz"],
                     x_stream_match_unfiltered=True) == \
        [i for i in range(30) if i % 3 != 0]
    assert _filtered(conn, q, pump, 0, x_stream_filter="zz") == []
    # a filter of another type is no filter (RabbitMQ 3.13 ignores it)
    assert _filtered(conn, q, pump, 30, x_stream_filter=5) == list(range(30))
