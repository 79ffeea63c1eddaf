"""Publishing, consuming (push and pull), queue declare/purge/delete counts."""

import pika
import pytest


def test_basic_consume_callback_receives_messages_in_order(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    bodies = [f"msg-{i}".encode() for i in range(5)]
    for b in bodies:
        ch.basic_publish("", q, b)

    got = []

    def on_message(chan, method, props, body):
        got.append((method, body))
        chan.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_message)
    assert pump(conn, lambda: len(got) >= 5), f"only {len(got)} of 5 delivered"
    assert [b for _, b in got] == bodies
    assert [m.delivery_tag for m, _ in got] == [1, 2, 3, 4, 5]
    for m, _ in got:
        assert isinstance(m, pika.spec.Basic.Deliver)
        assert m.consumer_tag == tag
        assert m.exchange == ""
        assert m.routing_key == q
        assert m.redelivered is False
    ch.basic_cancel(tag)
    ok = ch.queue_declare(q, passive=True).method
    assert ok.message_count == 0
    assert ok.consumer_count == 0


def test_consumer_registered_before_publish(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    publisher = conn.channel()
    for i in range(3):
        publisher.basic_publish("", q, str(i).encode())
    assert pump(conn, lambda: len(got) == 3)
    assert got == [b"0", b"1", b"2"]


def test_start_consuming_with_stop_condition(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())

    got = []
    timed_out = []

    def on_message(chan, method, props, body):
        got.append(body)
        chan.basic_ack(method.delivery_tag)
        if len(got) == 4:
            chan.stop_consuming()

    def on_timeout():
        timed_out.append(True)
        ch.stop_consuming()

    conn.call_later(5, on_timeout)
    ch.basic_consume(q, on_message)
    ch.start_consuming()
    assert not timed_out, f"start_consuming timed out after {len(got)} messages"
    assert got == [b"m0", b"m1", b"m2", b"m3"]
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_consume_generator(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"g{i}".encode())
    got = []
    for method, props, body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "consume() went idle before 3 messages"
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    ch.cancel()
    assert got == [b"g0", b"g1", b"g2"]


def test_basic_get_ok_reports_remaining_message_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"b{i}".encode())

    expected_counts = [2, 1, 0]
    for i, remaining in enumerate(expected_counts):
        method, props, body = ch.basic_get(q)
        assert isinstance(method, pika.spec.Basic.GetOk)
        assert body == f"b{i}".encode()
        assert method.message_count == remaining
        assert method.delivery_tag == i + 1
        assert method.redelivered is False
        assert method.exchange == ""
        assert method.routing_key == q
        ch.basic_ack(method.delivery_tag)

    assert ch.basic_get(q) == (None, None, None)


def test_basic_get_empty_queue(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    assert ch.basic_get(q) == (None, None, None)
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_basic_get_auto_ack_removes_message(connect, names):
    c = connect()
    ch = c.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"once")
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"once"
    assert method.message_count == 0
    c.close()  # nothing unacked -> nothing requeued
    ch2 = connect().channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0
    assert ch2.basic_get(q) == (None, None, None)


def test_unacked_message_requeued_on_channel_close(connect, names):
    c = connect()
    ch = c.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"unacked")
    method, _, _ = ch.basic_get(q)
    assert method.redelivered is False
    ch.close()
    ch2 = c.channel()
    method, _, body = ch2.basic_get(q)
    assert body == b"unacked"
    assert method.redelivered is True
    assert method.delivery_tag == 1  # tags are per channel


def test_unacked_message_requeued_on_connection_close(connect, names, pump):
    q = names.queue()
    c1 = connect()
    ch1 = c1.channel()
    ch1.queue_declare(q)
    ch1.basic_publish("", q, b"a")
    ch1.basic_publish("", q, b"b")
    got = []
    ch1.basic_consume(q, lambda chan, m, p, b: got.append(b))
    assert pump(c1, lambda: len(got) == 2)
    c1.close()

    ch2 = connect().channel()
    m1, _, b1 = ch2.basic_get(q)
    m2, _, b2 = ch2.basic_get(q)
    assert (b1, b2) == (b"a", b"b")
    assert m1.redelivered and m2.redelivered


def test_auto_ack_consumer_leaves_nothing_behind(connect, names, pump):
    q = names.queue()
    c = connect()
    ch = c.channel()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, b"x")
    got = []
    ch.basic_consume(q, lambda chan, m, p, b: got.append(m), auto_ack=True)
    assert pump(c, lambda: len(got) == 3)
    c.close()
    ch2 = connect().channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0


def test_queue_declare_ok_counts(ch, names, wait_for_count):
    q = names.queue()
    ok = ch.queue_declare(q).method
    assert isinstance(ok, pika.spec.Queue.DeclareOk)
    assert ok.queue == q
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    wait_for_count(ch, q, 4)  # see conftest: RabbitMQ's count may lag publishes
    ok = ch.queue_declare(q).method  # non-passive redeclare, same flags
    assert (ok.message_count, ok.consumer_count) == (4, 0)
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (4, 0)


def test_passive_declare_ignores_other_flags(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ok = ch.queue_declare(q, passive=True, durable=True, auto_delete=True).method
    assert ok.queue == q


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    assert len(ok.queue) > len("amq.gen-")
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    ch.basic_publish("", ok.queue, b"hello")
    _, _, body = ch.basic_get(ok.queue, auto_ack=True)
    assert body == b"hello"
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != ok.queue


def test_queue_purge_returns_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for _ in range(7):
        ch.basic_publish("", q, b"p")
    ok = ch.queue_purge(q).method
    assert isinstance(ok, pika.spec.Queue.PurgeOk)
    assert ok.message_count == 7
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_queue_purge_keeps_unacked_messages(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    method, _, _ = ch.basic_get(q)  # one unacked
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_reject(method.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and m.redelivered is True


def test_queue_delete_returns_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for _ in range(5):
        ch.basic_publish("", q, b"d")
    ok = ch.queue_delete(q).method
    assert isinstance(ok, pika.spec.Queue.DeleteOk)
    assert ok.message_count == 5
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_queue_delete_of_missing_queue_is_ok(ch, names):
    # RabbitMQ answers delete-ok with message_count 0 (idempotent delete).
    ok = ch.queue_delete(names.queue()).method
    assert isinstance(ok, pika.spec.Queue.DeleteOk)
    assert ok.message_count == 0


def test_exchange_delete_of_missing_exchange_is_ok(ch, names):
    ok = ch.exchange_delete(names.exchange()).method
    assert isinstance(ok, pika.spec.Exchange.DeleteOk)


def test_publish_to_default_exchange_missing_queue_is_dropped(ch, names):
    # Not mandatory, so an unroutable message is silently dropped;
    # the channel stays usable.
    ch.basic_publish("", names.queue(), b"nowhere")
    ch.exchange_declare("amq.direct", passive=True)
    assert ch.is_open


def test_basic_cancel_stops_deliveries(conn, ch, names, pump, wait_for_count):
    q = names.queue()
    ch.queue_declare(q)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"before")
    assert pump(conn, lambda: got == [b"before"])
    ch.basic_cancel(tag)
    assert ch.consumer_tags == []
    ch.basic_publish("", q, b"after")
    ok = wait_for_count(ch, q, 1)
    assert ok.consumer_count == 0
    assert ok.message_count == 1
    assert got == [b"before"]


def test_delivery_tags_are_per_channel_and_monotonic(conn, names):
    q = names.queue()
    ch1 = conn.channel()
    ch2 = conn.channel()
    ch1.queue_declare(q)
    for _ in range(4):
        ch1.basic_publish("", q, b"t")
    tags1 = [ch1.basic_get(q)[0].delivery_tag for _ in range(2)]
    tags2 = [ch2.basic_get(q)[0].delivery_tag for _ in range(2)]
    assert tags1 == [1, 2]
    assert tags2 == [1, 2]
