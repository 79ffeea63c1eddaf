"""Delivery limits and consumer timeouts with pika.

Delivery limits: validated against RabbitMQ 3.10.8 with quorum queues
(`x-queue-type: quorum`, where RabbitMQ has `x-delivery-limit`); Warren
takes the same declarations (it keeps `x-queue-type` and gives every
queue a delivery limit). Consumer timeouts: validated against RabbitMQ
3.10.8 classic queues with `consumer_timeout` set to 2000 ms and
`channel_tick_interval` to 500 ms (`rabbitmqctl eval`), where the
`x-consumer-timeout` argument the tests declare is ignored; Warren
applies the argument. The `cancel` action is Warren's own
(`ON_RABBIT`-skipped).
"""

import base64
import json
import os
import time
import urllib.request

import pika
import pytest

ON_RABBIT = bool(os.environ.get("WARREN_TEST_AMQP_URL"))
TIMEOUT_MS = 2000
TIMEOUT_TEXT = ("PRECONDITION_FAILED - delivery acknowledgement on channel {n} "
                "timed out. Timeout value used: {t} ms. This timeout value can "
                "be configured, see consumers doc guide to learn more")


def _wait_until(cond, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _limited(ch, names, limit, dlx=True):
    """A queue with a delivery limit, dead-lettering into `dlq` if `dlx`."""
    q = names.queue("dl")
    args = {"x-queue-type": "quorum", "x-delivery-limit": limit}
    dlq = None
    if dlx:
        dlq = names.queue("dlq")
        ch.queue_declare(dlq, durable=True)
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = dlq
    ch.queue_declare(q, durable=True, arguments=args)
    return q, dlq


def _get(ch, q, timeout=5.0):
    got = [None]

    def poll():
        got[0] = ch.basic_get(q, auto_ack=False)
        return got[0][0] is not None

    assert _wait_until(poll, timeout), f"nothing in {q}"
    return got[0]


def _count_header(props):
    return (props.headers or {}).get("x-delivery-count")


def test_consumer_redeliveries_count_up_to_the_limit_then_dead_letter(conn, names):
    ch = conn.channel()
    q, dlq = _limited(ch, names, 2)
    ch.basic_publish("", q, b"job", pika.BasicProperties(headers={"k": "v"}))
    seen = []

    def on_message(c, method, props, body):
        seen.append((method.redelivered, _count_header(props), props.headers.get("k")
                     if props.headers else None))
        c.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(q, on_message)
    assert _wait_until(lambda: (conn.process_data_events(0.05), len(seen) >= 3)[1])
    ch.close()
    ch = conn.channel()
    m, p, body = _get(ch, dlq)
    ch.basic_ack(m.delivery_tag)
    assert seen == [(False, None, "v"), (True, 1, "v"), (True, 2, "v")]
    assert body == b"job"
    death = p.headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == q
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_get_carries_the_count_from_zero_and_no_dlx_drops(conn, names):
    ch = conn.channel()
    q, _ = _limited(ch, names, 1, dlx=False)
    ch.basic_publish("", q, b"x")
    counts = []
    for _ in range(2):
        m, p, _ = _get(ch, q)
        counts.append((m.redelivered, _count_header(p)))
        ch.basic_reject(m.delivery_tag, requeue=True)
    assert counts == [(False, 0), (True, 1)]
    # Its second return passed the limit of 1: dropped without a DLX.
    assert _wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 0)
    m, _, _ = ch.basic_get(q, auto_ack=True)
    assert m is None


def test_closing_the_channel_counts_and_rejecting_does_not(conn, names):
    ch = conn.channel()
    q, dlq = _limited(ch, names, 5)
    ch.basic_publish("", q, b"a")
    m, p, _ = _get(ch, q)
    assert _count_header(p) == 0
    ch.close()  # unacked: back to the queue, counted
    ch = conn.channel()
    m, p, _ = _get(ch, q)
    assert (m.redelivered, _count_header(p)) == (True, 1)
    ch.basic_recover(requeue=True)
    m, p, _ = _get(ch, q)
    assert _count_header(p) == 2
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, _ = _get(ch, dlq)
    ch.basic_ack(m.delivery_tag)
    assert p.headers["x-death"][0]["reason"] == "rejected"


def test_a_consumer_timeout_closes_the_channel_and_requeues(conn, names):
    ch = conn.channel()
    q = names.queue("ct")
    ch.queue_declare(q, arguments={"x-consumer-timeout": TIMEOUT_MS})
    ch.basic_publish("", q, b"slow")
    got = []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    closed = []
    # The blocking channel has no close callback of its own: its impl's.
    ch._impl.add_on_close_callback(lambda c, reason: closed.append(reason))
    # RabbitMQ 3.10 looks on its channel tick: allow a few of them.
    assert _wait_until(lambda: (conn.process_data_events(0.1), bool(closed))[1],
                       timeout=15.0), "the channel was not closed"
    reason = closed[0]
    assert reason.reply_code == 406
    assert reason.reply_text == TIMEOUT_TEXT.format(n=ch.channel_number, t=TIMEOUT_MS)
    assert got, "the message was delivered"
    ch2 = conn.channel()
    m, _, body = _get(ch2, q)
    assert (m.redelivered, body) == (True, b"slow")
    ch2.basic_ack(m.delivery_tag)


def test_acked_in_time_nothing_happens(conn, names):
    ch = conn.channel()
    q = names.queue("ct-ok")
    ch.queue_declare(q, arguments={"x-consumer-timeout": TIMEOUT_MS})
    acked = []

    def on_message(c, m, p, b):
        c.basic_ack(m.delivery_tag)
        acked.append(b)

    ch.basic_consume(q, on_message)
    deadline = time.monotonic() + 2.5 * TIMEOUT_MS / 1000
    i = 0
    while time.monotonic() < deadline:
        ch.basic_publish("", q, str(i).encode())
        i += 1
        conn.process_data_events(0.2)
    assert _wait_until(lambda: (conn.process_data_events(0.05), len(acked) == i)[1])
    assert ch.is_open


@pytest.mark.skipif(ON_RABBIT, reason="x-consumer-timeout-action is Warren's")
def test_the_cancel_action_cancels_only_the_late_consumer(connect, names):
    conn = connect(client_properties={"capabilities": {"consumer_cancel_notify": True}})
    ch = conn.channel()
    slow_q, other_q = names.queue("slow"), names.queue("other")
    ch.queue_declare(slow_q, arguments={"x-consumer-timeout": 500,
                                        "x-consumer-timeout-action": "cancel"})
    ch.queue_declare(other_q)
    ch.basic_publish("", slow_q, b"late")
    slow, other, cancelled = [], [], []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(slow_q, lambda c, m, p, b: slow.append(m.delivery_tag))
    ch.basic_consume(other_q, lambda c, m, p, b: (other.append(b),
                                                 c.basic_ack(m.delivery_tag)))
    assert _wait_until(lambda: (conn.process_data_events(0.1), bool(cancelled))[1],
                       timeout=10.0), "no basic.cancel"
    assert cancelled == [tag]
    assert slow, "it had the message"
    # The late delivery went back; acking it now is ignored, not an error.
    ch.basic_ack(slow[0])
    ch.basic_publish("", other_q, b"still")
    assert _wait_until(lambda: (conn.process_data_events(0.05), other == [b"still"])[1])
    assert ch.is_open
    m, _, body = _get(ch, slow_q)
    assert (m.redelivered, body) == (True, b"late")
    ch.basic_ack(m.delivery_tag)
    conn.close()


@pytest.mark.skipif(ON_RABBIT, reason="Warren's management API, its own vhost")
def test_policies_set_the_delivery_limit_and_timeout_action(broker_info, conn, names):
    ch = conn.channel()
    q = names.queue("pol")
    ch.queue_declare(q)
    name = names.queue("policy")
    body = json.dumps({"pattern": "^" + q + "$", "apply-to": "queues",
                       "definition": {"delivery-limit": 0}}).encode()
    auth = base64.b64encode(b"guest:guest").decode()
    url = f"http://{broker_info.host}:{broker_info.http_port}/api/policies/%2F/{name}"
    req = urllib.request.Request(url, data=body, method="PUT",
                                 headers={"content-type": "application/json",
                                          "authorization": "Basic " + auth})
    urllib.request.urlopen(req, timeout=5).close()
    try:
        ch.basic_publish("", q, b"once")
        m, p, _ = _get(ch, q)
        assert _count_header(p) == 0, "the policy's limit applies"
        ch.basic_nack(m.delivery_tag, requeue=True)
        assert _wait_until(
            lambda: ch.queue_declare(q, passive=True).method.message_count == 0)
    finally:
        req = urllib.request.Request(url, method="DELETE",
                                     headers={"authorization": "Basic " + auth})
        urllib.request.urlopen(req, timeout=5).close()


def test_invalid_delivery_arguments_are_refused(conn, names):
    if ON_RABBIT:
        pytest.skip("RabbitMQ 3.10 does not check x-delivery-limit or x-consumer-timeout")
    for args, text in [
        ({"x-delivery-limit": -1}, "invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-consumer-timeout": "x"}, "invalid arg 'x-consumer-timeout' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-consumer-timeout-action": "later"}, "invalid arg 'x-consumer-timeout-action' for queue '{q}' in vhost '/': invalid_consumer_timeout_action"),
    ]:
        ch = conn.channel()
        q = names.queue()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, arguments=args)
        assert e.value.reply_code == 406
        assert e.value.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)
