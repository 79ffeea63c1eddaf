"""Consumer cancel notification (basic.cancel from the broker)."""

import pika
import pytest


def test_queue_deleted_by_other_channel_cancels_consumer(conn, names, pump):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame))
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"before-delete")
    assert pump(conn, lambda: got == [b"before-delete"])

    other = conn.channel()
    other.queue_delete(q)
    assert pump(conn, lambda: cancels), "no basic.cancel from the broker"
    method = cancels[0].method
    assert isinstance(method, pika.spec.Basic.Cancel)
    assert method.consumer_tag == tag
    assert tag not in ch.consumer_tags
    assert ch.is_open  # cancel notification does not close the channel
    ch.exchange_declare("amq.direct", passive=True)


def test_queue_deleted_by_other_connection_cancels_all_consumers(connect, names, pump):
    q = names.queue()
    c = connect()
    ch1 = c.channel()
    ch2 = c.channel()
    ch1.queue_declare(q)
    cancels = []
    ch1.add_on_cancel_callback(lambda f: cancels.append(("ch1", f.method.consumer_tag)))
    ch2.add_on_cancel_callback(lambda f: cancels.append(("ch2", f.method.consumer_tag)))
    t1 = ch1.basic_consume(q, lambda *a: None)
    t2 = ch2.basic_consume(q, lambda *a: None)
    t3 = ch2.basic_consume(q, lambda *a: None)

    deleter = connect().channel()
    assert deleter.queue_delete(q).method.message_count == 0
    assert pump(c, lambda: len(cancels) >= 3)
    assert sorted(cancels) == sorted([("ch1", t1), ("ch2", t2), ("ch2", t3)])
    assert ch1.consumer_tags == [] and ch2.consumer_tags == []


def test_cancelled_consumer_unacked_messages_can_still_be_acked(conn, names, pump):
    # After a broker-side cancel due to queue deletion the channel stays open;
    # acking a message delivered before the deletion must not close it.
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda f: cancels.append(f))
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    ch.basic_publish("", q, b"pending")
    assert pump(conn, lambda: got)
    conn.channel().queue_delete(q)
    assert pump(conn, lambda: cancels)
    ch.basic_ack(got[0].delivery_tag)
    ch.exchange_declare("amq.direct", passive=True)
    assert ch.is_open
