"""Dead-lettering and sender-selected distribution (CC/BCC headers), as
RabbitMQ 3.13's dead_lettering_SUITE checks it: without a dead-letter
routing key the dead letter is routed with its CC keys too; `routing-keys`
in `x-death` include CC but never BCC; BCC never reaches a consumer; the
CC header stays (3.13 no longer drops it with a dead-letter routing key,
3.10 did: that check is Warren/3.13-only).

Routing a dead letter by its BCC keys: test_dead_letter_bcc.py.
"""

import os

import pika

from conftest import dead_letter_setup, wait_get

ON_RABBIT_3_10 = bool(os.environ.get("WARREN_TEST_AMQP_URL"))


def test_dead_letter_is_routed_with_its_cc_keys(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    ch.queue_bind(dlq, dlx, routing_key=dlq)
    ch.basic_publish("", src, b"plain")
    ch.basic_publish("", src, b"cc", pika.BasicProperties(headers={"CC": [dlq]}))
    # The CC copy went to dlq through the default exchange as well.
    m, _, body = wait_get(ch, dlq)
    assert body == b"cc"
    for _ in range(2):
        m, _, _ = wait_get(ch, src, auto_ack=False)
        ch.basic_nack(m.delivery_tag, requeue=False)
    # Only the CC'd one reaches dlq again, through the DLX and its CC key.
    m, p, body = wait_get(ch, dlq)
    assert body == b"cc"
    assert m.exchange == dlx and m.routing_key == src
    assert p.headers["CC"] == [dlq]
    (death,) = p.headers["x-death"]
    assert death["routing-keys"] == [src, dlq]
    assert ch.basic_get(dlq, auto_ack=True)[0] is None


def test_bcc_is_never_delivered_nor_recorded_in_x_death(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    ch.queue_bind(dlq, dlx, routing_key="cc 1")
    other = names.queue("bcc")
    ch.queue_declare(other)
    props = pika.BasicProperties(headers={"CC": ["cc 1", "cc 2"],
                                          "BCC": [other, "bcc 2"]})
    ch.basic_publish("", src, b"m", props)
    _, p, body = wait_get(ch, other)
    assert body == b"m" and "BCC" not in p.headers
    m, p, _ = wait_get(ch, src, auto_ack=False)
    assert "BCC" not in p.headers
    ch.basic_nack(m.delivery_tag, requeue=False)
    _, p, body = wait_get(ch, dlq)
    assert body == b"m"
    assert "BCC" not in p.headers
    assert p.headers["CC"] == ["cc 1", "cc 2"]
    (death,) = p.headers["x-death"]
    assert sorted(death["routing-keys"]) == sorted([src, "cc 1", "cc 2"])
    assert death["queue"] == src and death["reason"] == "rejected"


def test_cc_header_stays_with_a_dead_letter_routing_key(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names, dl_key="to-dlq")
    ch.queue_bind(dlq, dlx, routing_key="to-dlq")
    ch.queue_bind(dlq, dlx, routing_key="cc")
    ch.basic_publish("", src, b"m", pika.BasicProperties(headers={"CC": ["cc"]}))
    m, _, _ = wait_get(ch, src, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, _ = wait_get(ch, dlq)
    assert m.routing_key == "to-dlq"
    (death,) = p.headers["x-death"]
    # The dead-letter routing key alone routes it: one copy.
    assert death["routing-keys"] == [src, "cc"]
    assert ch.basic_get(dlq, auto_ack=True)[0] is None
    if not ON_RABBIT_3_10:
        assert p.headers["CC"] == ["cc"]
