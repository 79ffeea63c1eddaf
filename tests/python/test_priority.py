"""Priority queues (`x-max-priority`) through pika.

Validated against RabbitMQ 3.10.8 (WARREN_TEST_AMQP_URL): its argument
checks (0 is accepted and is a plain queue; 256 and up, negative and
non-integer values are 406), delivery order (highest priority first, FIFO
within a priority, above the maximum counts as the maximum, absent as 0),
requeue (back at the head of its priority), max-length drop-head (drops
the head of the highest priority, as rabbit_priority_queue's `drop`), the
management API's get, and the `max-priority` policy key (not one).
"""

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker
ON_RABBIT = bool(os.environ.get("WARREN_TEST_AMQP_URL"))


def _count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def _wait_count(ch, q, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while _count(ch, q) != n:
        assert time.monotonic() < deadline, f"{q} never held {n}"
        time.sleep(0.02)


def _publish(ch, q, items):
    """Publishes (body, priority) pairs, priority None for none, confirmed."""
    for body, p in items:
        props = pika.BasicProperties(priority=p) if p is not None else None
        ch.basic_publish("", q, body.encode(), props)


def _drain(ch, q):
    out = []
    while True:
        m, _, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(body.decode())


def _api(info, method, path, body=None):
    req = urllib.request.Request(
        f"http://{info.host}:{info.http_port}/api{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    token = base64.b64encode(f"{info.username}:{info.password}".encode())
    req.add_header("authorization", "Basic " + token.decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


MIXED = [("a", None), ("b", 3), ("c", 9), ("d", 0), ("e", 3), ("f", 5), ("g", 200)]
# Max 5: c (9), f (5), g (200) count as 5, in arrival order.
MIXED_ORDER = ["c", "f", "g", "b", "e", "a", "d"]


@pytest.mark.parametrize(
    "value,term",
    [
        (256, "{max_value_exceeded,256}"),
        (300000, "{max_value_exceeded,300000}"),
        (-1, "{value_negative,-1}"),
        ("10", '"expected integer, got longstr"'),
        (True, '"expected integer, got bool"'),
    ],
)
def test_invalid_max_priority_is_refused(conn, names, value, term):
    ch = conn.channel()
    q = names.queue()
    with pytest.raises(CCBB) as e:
        ch.queue_declare(q, arguments={"x-max-priority": value})
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' "
        f"in vhost '/': {term}")


def test_max_priority_zero_is_accepted_and_plain(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 0})
    ch.confirm_delivery()
    _publish(ch, q, [("x", 0), ("y", 5), ("z", 3)])
    assert _drain(ch, q) == ["x", "y", "z"]


def test_highest_priority_first_fifo_within_capped_and_absent_as_zero(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    _publish(ch, q, MIXED)
    _wait_count(ch, q, len(MIXED))
    assert _drain(ch, q) == MIXED_ORDER
    assert _count(ch, q) == 0


def test_a_consumer_gets_a_backlog_in_priority_order(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    _publish(ch, q, [(f"p{p}-{i}", p) for i in range(3) for p in (1, 7, 4)])
    got = []
    c = conn.channel()
    c.basic_qos(prefetch_count=1)

    def on(chan, m, p, body):
        got.append(body.decode())
        chan.basic_ack(m.delivery_tag)

    c.basic_consume(q, on)
    assert pump(conn, lambda: len(got) == 9)
    assert got == [f"p{p}-{i}" for p in (7, 4, 1) for i in range(3)]


def test_a_requeued_message_returns_to_the_head_of_its_priority(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 9})
    ch.confirm_delivery()
    _publish(ch, q, [("low1", 1), ("high1", 8), ("high2", 8), ("low2", 1)])
    tags = {}
    for _ in range(3):
        m, _, body = ch.basic_get(q, auto_ack=False)
        tags[body.decode()] = m.delivery_tag
    assert sorted(tags) == ["high1", "high2", "low1"]
    _publish(ch, q, [("high3", 8)])
    ch.basic_nack(tags["low1"], requeue=True)
    ch.basic_nack(tags["high2"], requeue=True)
    ch.basic_ack(tags["high1"])
    _wait_count(ch, q, 4)
    got = []
    while True:
        m, _, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append((body.decode(), m.redelivered))
    assert got == [("high2", True), ("high3", False), ("low1", True), ("low2", False)]


def test_max_length_drop_head_drops_the_highest_priority_head(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 3, "x-max-length": 2})
    ch.confirm_delivery()
    _publish(ch, q, [("l", 0), ("h", 3), ("m", 1)])
    _wait_count(ch, q, 2)
    assert _drain(ch, q) == ["m", "l"]


def test_a_low_priority_expiry_waits_behind_a_head_without_ttl(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 3})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"low", pika.BasicProperties(priority=0, expiration="50"))
    _publish(ch, q, [("high", 3)])
    time.sleep(0.2)  # past the low one's TTL, which only the head checks
    assert _count(ch, q) == 2
    assert ch.basic_get(q, auto_ack=True)[2] == b"high"
    _wait_count(ch, q, 0)


def test_management_get_and_arguments_show_priority_order(ch, names, broker_info):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    _publish(ch, q, MIXED)
    _wait_count(ch, q, len(MIXED))
    path = f"/queues/{urllib.parse.quote(broker_info.vhost, safe='')}/{q}"
    if not ON_RABBIT:
        # Warren's peek (RabbitMQ has none): the same order, from an offset.
        status, peeked = _api(broker_info, "GET", path + "/peek?offset=2&count=3")
        assert status == 200
        assert [m["payload"] for m in peeked] == MIXED_ORDER[2:5]
        assert [m["position"] for m in peeked] == [2, 3, 4]
    status, got = _api(broker_info, "POST", path + "/get", {
        "count": 3, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 200
    assert [m["payload"] for m in got] == MIXED_ORDER[:3]
    assert [m["properties"].get("priority") for m in got] == [9, 5, 200]
    deadline = time.monotonic() + 10
    while True:
        status, info = _api(broker_info, "GET", path)
        if info.get("messages") == len(MIXED) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["arguments"]["x-max-priority"] == 5
    assert info["messages"] == len(MIXED)
    # Requeued by the API: the same order, now redelivered at the head.
    assert _drain(ch, q) == MIXED_ORDER


def test_max_priority_is_not_a_policy_key(broker_info):
    vhost = urllib.parse.quote(broker_info.vhost, safe="")
    status, body = _api(broker_info, "PUT", f"/policies/{vhost}/warren-test-prio", {
        "pattern": "^warren-test-prio-nothing$",
        "definition": {"max-priority": 5},
    })
    assert status == 400
    assert body["reason"] == (
        "Validation failed\n\n[{&lt;&lt;\"max-priority\"&gt;&gt;,5}] "
        "are not recognised policy settings\n")
