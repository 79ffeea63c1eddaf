"""Acknowledgements: ack / nack / reject, requeue ordering, delivery-tag errors."""

import pika
import pytest


def _fill(ch, q, n, prefix="m"):
    ch.queue_declare(q)
    bodies = [f"{prefix}{i}".encode() for i in range(n)]
    for b in bodies:
        ch.basic_publish("", q, b)
    return bodies


def _count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def _drain(ch, q):
    out = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append((b, m.redelivered))


def test_ack_single(ch, names):
    q = names.queue()
    _fill(ch, q, 2)
    ch.basic_get(q)                   # m0, left unacked
    second, _, body = ch.basic_get(q)  # m1
    assert body == b"m1"
    ch.basic_ack(second.delivery_tag)
    ch.close()
    ch = ch.connection.channel()
    # only m0 (unacked when the channel closed) is back
    assert _drain(ch, q) == [(b"m0", True)]


def test_ack_multiple(conn, names):
    ch = conn.channel()
    q = names.queue()
    _fill(ch, q, 5)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    ch.basic_ack(3, multiple=True)  # acks 1..3
    ch.close()
    ch = conn.channel()
    assert _drain(ch, q) == [(b"m3", True), (b"m4", True)]


def test_ack_zero_multiple_acks_everything_outstanding(conn, names):
    # delivery-tag 0 with multiple=true means "all outstanding" (RabbitMQ
    # accepts it; with multiple=false tag 0 is an unknown tag).
    ch = conn.channel()
    q = names.queue()
    _fill(ch, q, 3)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.exchange_declare("amq.direct", passive=True)  # channel still open
    ch.close()
    ch = conn.channel()
    assert _count(ch, q) == 0


def test_nack_multiple_requeue_true_keeps_order_and_sets_redelivered(ch, names):
    q = names.queue()
    _fill(ch, q, 4)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    # requeued messages go back to the head in their original order
    assert _drain(ch, q) == [(b"m0", True), (b"m1", True), (b"m2", True),
                             (b"m3", False)]


def test_nack_multiple_requeue_false_discards(ch, names):
    q = names.queue()
    _fill(ch, q, 4)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    assert _count(ch, q) == 1
    assert _drain(ch, q) == [(b"m3", False)]


def test_nack_single_requeue_false_discards_only_that_message(conn, names):
    ch = conn.channel()
    q = names.queue()
    _fill(ch, q, 3)
    t = [ch.basic_get(q)[0].delivery_tag for _ in range(2)]
    ch.basic_nack(t[1], multiple=False, requeue=False)  # drop m1
    ch.close()  # m0 still unacked -> requeued
    ch = conn.channel()
    assert _drain(ch, q) == [(b"m0", True), (b"m2", False)]


def test_nack_single_requeue_true(ch, names):
    q = names.queue()
    _fill(ch, q, 2)
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=True)
    assert _drain(ch, q) == [(b"m0", True), (b"m1", False)]


def test_reject_requeue_true_returns_to_head(ch, names):
    q = names.queue()
    _fill(ch, q, 3)
    m, _, body = ch.basic_get(q)
    assert body == b"m0" and m.redelivered is False
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    assert body == b"m0"
    assert m.redelivered is True
    assert m.message_count == 2
    assert m.delivery_tag == 2  # a new tag for the redelivery
    ch.basic_ack(m.delivery_tag)
    m, _, body = ch.basic_get(q)
    assert body == b"m1" and m.redelivered is False


def test_reject_requeue_false_discards(ch, names):
    q = names.queue()
    _fill(ch, q, 2)
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert _count(ch, q) == 1
    assert _drain(ch, q) == [(b"m1", False)]


def test_requeued_message_redelivered_to_consumer_before_later_messages(
        conn, ch, names, pump):
    q = names.queue()
    _fill(ch, q, 3)
    ch.basic_qos(prefetch_count=1)
    seen = []
    state = {"rejected": False}

    def on_message(chan, method, props, body):
        seen.append((body, method.redelivered))
        if not state["rejected"]:
            state["rejected"] = True
            chan.basic_reject(method.delivery_tag, requeue=True)
        else:
            chan.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_message)
    assert pump(conn, lambda: len(seen) >= 4)
    assert seen == [(b"m0", False), (b"m0", True), (b"m1", False),
                    (b"m2", False)]


def test_nacked_messages_requeue_ahead_of_newer_ones(ch, names):
    # Middle message requeued while later ones are still unacked: it is put
    # back by its original position, before never-delivered messages.
    q = names.queue()
    _fill(ch, q, 4)
    tags = {}
    for _ in range(3):
        m, _, b = ch.basic_get(q)
        tags[b] = m.delivery_tag
    ch.basic_reject(tags[b"m1"], requeue=True)
    m, _, b = ch.basic_get(q)
    assert (b, m.redelivered) == (b"m1", True)
    m, _, b = ch.basic_get(q)
    assert (b, m.redelivered) == (b"m3", False)


# ---------------------------------------------------------------- errors

def _expect_channel_error(exc_info, code, text):
    assert exc_info.value.reply_code == code, exc_info.value
    assert exc_info.value.reply_text == text, exc_info.value


def test_ack_unknown_delivery_tag(ch, roundtrip):
    ch.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 99")
    assert ch.is_closed


def test_ack_zero_single_is_unknown_tag(ch, roundtrip):
    ch.basic_ack(0, multiple=False)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 0")


def test_ack_multiple_unknown_tag(ch, roundtrip):
    ch.basic_ack(3, multiple=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 3")


def test_double_ack(ch, names, roundtrip):
    q = names.queue()
    _fill(ch, q, 1)
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_ack_after_auto_ack_get_is_unknown(ch, names, roundtrip):
    q = names.queue()
    _fill(ch, q, 1)
    m, _, _ = ch.basic_get(q, auto_ack=True)
    ch.basic_ack(m.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_nack_unknown_delivery_tag(ch, roundtrip):
    ch.basic_nack(7)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 7")


def test_reject_unknown_delivery_tag(ch, roundtrip):
    ch.basic_reject(5)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 5")


def test_ack_tag_from_other_channel_is_unknown(conn, names, roundtrip):
    ch1 = conn.channel()
    ch2 = conn.channel()
    q = names.queue()
    _fill(ch1, q, 2)
    ch1.basic_get(q)
    ch1.basic_get(q)  # ch1 holds tags 1 and 2; ch2 holds none
    ch2.basic_ack(2)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch2)
    _expect_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 2")
    # the channel error is confined to ch2
    assert ch1.is_open and conn.is_open
    roundtrip(ch1)


def test_channel_error_requeues_that_channels_unacked(conn, names, roundtrip):
    ch = conn.channel()
    q = names.queue()
    _fill(ch, q, 1)
    ch.basic_get(q)
    ch.basic_ack(42)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        roundtrip(ch)
    ch2 = conn.channel()
    m, _, b = ch2.basic_get(q)
    assert (b, m.redelivered) == (b"m0", True)
