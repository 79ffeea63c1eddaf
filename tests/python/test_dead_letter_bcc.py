"""Dead-lettering by BCC keys, as RabbitMQ does it: the BCC header is
removed at publish and never delivered, but its keys stay with the queued
message; without a dead-letter routing key the dead letter is routed with
its routing key, CC keys and BCC keys (rabbit_dead_letter routes with the
message's `routing_keys`), and keeps them for a further dead-lettering;
with a dead-letter routing key that key alone routes it. `routing-keys`
in `x-death` lists the routing key and CC keys, never BCC (3.10.8 and
3.13 alike). Checked against RabbitMQ 3.10.8.
"""


import pika

from conftest import dead_letter_setup, wait_get


def _reject_one(ch, q):
    m, p, body = wait_get(ch, q, auto_ack=False)
    assert m is not None, f"nothing in {q}"
    assert "BCC" not in (p.headers or {})
    ch.basic_reject(m.delivery_tag, requeue=False)
    return body


def test_dead_letter_is_routed_by_its_bcc_keys(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    # Bound by the BCC key only: neither the routing key nor a CC key
    # reaches it through the dead-letter exchange.
    ch.queue_bind(dlq, dlx, routing_key="bcc-key")
    ch.basic_publish("", src, b"bcc", pika.BasicProperties(
        headers={"BCC": ["bcc-key"], "x": 1}))
    ch.basic_publish("", src, b"plain", pika.BasicProperties(headers={"x": 2}))
    assert _reject_one(ch, src) == b"bcc"
    assert _reject_one(ch, src) == b"plain"
    m, p, body = wait_get(ch, dlq)
    assert body == b"bcc"
    assert m.exchange == dlx and m.routing_key == src
    assert "BCC" not in p.headers and p.headers["x"] == 1
    (death,) = p.headers["x-death"]
    assert death["queue"] == src and death["reason"] == "rejected"
    assert death["routing-keys"] == [src]
    # The plain one had no key bound there.
    assert ch.basic_get(dlq, auto_ack=True)[0] is None


def test_x_death_routing_keys_list_cc_but_not_bcc(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    ch.queue_bind(dlq, dlx, routing_key="b1")
    ch.queue_bind(dlq, dlx, routing_key="c1")
    props = pika.BasicProperties(headers={"CC": ["c1"], "BCC": ["b1", "b2"]})
    ch.basic_publish("", src, b"m", props)
    _reject_one(ch, src)
    _, p, body = wait_get(ch, dlq)
    assert body == b"m"
    assert "BCC" not in p.headers and p.headers["CC"] == ["c1"]
    (death,) = p.headers["x-death"]
    assert death["routing-keys"] == [src, "c1"]
    # Reached by two keys, delivered once.
    assert ch.basic_get(dlq, auto_ack=True)[0] is None


def test_a_dead_letter_routing_key_replaces_the_bcc_keys(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names, dl_key="to-dl")
    by_bcc = names.queue("by-bcc")
    ch.queue_declare(by_bcc)
    ch.queue_bind(by_bcc, dlx, routing_key="bcc-key")
    ch.queue_bind(dlq, dlx, routing_key="to-dl")
    ch.basic_publish("", src, b"m", pika.BasicProperties(
        headers={"BCC": ["bcc-key"]}))
    _reject_one(ch, src)
    m, p, body = wait_get(ch, dlq)
    assert body == b"m" and m.routing_key == "to-dl"
    assert "BCC" not in p.headers
    (death,) = p.headers["x-death"]
    assert death["routing-keys"] == [src]
    assert ch.basic_get(by_bcc, auto_ack=True)[0] is None


def test_bcc_keys_route_a_second_dead_lettering_too(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    dlx2 = names.exchange("dlx2")
    ch.exchange_declare(dlx2, "direct")
    mid = names.queue("mid")
    ch.queue_declare(mid, arguments={"x-dead-letter-exchange": dlx2})
    ch.queue_bind(mid, dlx, routing_key="bcc-key")
    ch.queue_bind(dlq, dlx2, routing_key="bcc-key")
    ch.basic_publish("", src, b"m", pika.BasicProperties(
        headers={"BCC": ["bcc-key"]}))
    _reject_one(ch, src)
    _reject_one(ch, mid)
    _, p, body = wait_get(ch, dlq)
    assert body == b"m" and "BCC" not in p.headers
    assert [d["queue"] for d in p.headers["x-death"]] == [mid, src]


def test_bcc_keys_route_an_expired_dead_letter(ch, names):
    dlx, src, dlq = dead_letter_setup(ch, names)
    ch.queue_bind(dlq, dlx, routing_key="bcc-key")
    ch.basic_publish("", src, b"m", pika.BasicProperties(
        expiration="0", headers={"BCC": ["bcc-key"]}))
    _, p, body = wait_get(ch, dlq)
    assert body == b"m" and "BCC" not in p.headers
    (death,) = p.headers["x-death"]
    assert death["reason"] == "expired"
