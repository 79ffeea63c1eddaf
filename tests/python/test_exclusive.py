"""Exclusive queues and exclusive consumers."""

import time

import pika
import pytest


def locked_text(q):
    return (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            f"'{q}' in vhost '/'. It could be originally declared on another "
            f"connection or the exclusive property value does not match that "
            f"of the original declaration.")


@pytest.fixture
def owned_exclusive_queue(connect, names):
    owner = connect()
    och = owner.channel()
    q = names.queue("excl")
    ok = och.queue_declare(q, exclusive=True).method
    assert ok.queue == q
    return owner, och, q


@pytest.mark.parametrize("operation", [
    "declare", "declare_exclusive", "declare_passive", "consume", "get",
    "purge", "delete", "bind",
])
def test_other_connection_gets_405_resource_locked(connect, owned_exclusive_queue,
                                                   operation):
    _, _, q = owned_exclusive_queue
    ch = connect().channel()
    ops = {
        "declare": lambda: ch.queue_declare(q),
        "declare_exclusive": lambda: ch.queue_declare(q, exclusive=True),
        "declare_passive": lambda: ch.queue_declare(q, passive=True),
        "consume": lambda: ch.basic_consume(q, lambda *a: None),
        "get": lambda: ch.basic_get(q),
        "purge": lambda: ch.queue_purge(q),
        "delete": lambda: ch.queue_delete(q),
        "bind": lambda: ch.queue_bind(q, "amq.direct", "k"),
    }
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ops[operation]()
    assert ei.value.reply_code == 405
    assert ei.value.reply_text == locked_text(q)


def test_other_connection_may_publish_to_exclusive_queue(connect, owned_exclusive_queue,
                                                        wait_for_count):
    owner, och, q = owned_exclusive_queue
    ch = connect().channel()
    ch.basic_publish("", q, b"from-outside")
    ch.exchange_declare("amq.direct", passive=True)  # publisher channel still open
    assert wait_for_count(och, q, 1).message_count == 1
    assert och.basic_get(q, auto_ack=True)[2] == b"from-outside"


def test_owner_connection_other_channel_can_use_exclusive_queue(owned_exclusive_queue):
    owner, och, q = owned_exclusive_queue
    ch2 = owner.channel()
    ch2.queue_declare(q, exclusive=True)
    ch2.queue_declare(q, passive=True)
    ch2.basic_publish("", q, b"same-conn")
    assert ch2.basic_get(q, auto_ack=True)[2] == b"same-conn"


def test_owner_redeclaring_without_exclusive_gets_405(owned_exclusive_queue):
    owner, och, q = owned_exclusive_queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        och.queue_declare(q, exclusive=False)
    assert ei.value.reply_code == 405
    assert ei.value.reply_text == locked_text(q)


def test_exclusive_queue_deleted_when_owner_connection_closes(connect, owned_exclusive_queue):
    owner, och, q = owned_exclusive_queue
    och.basic_publish("", q, b"lost")
    owner.close()
    c = connect()
    deadline = time.monotonic() + 5
    while True:
        ch = c.channel()
        try:
            ch.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            assert e.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
            break
        assert time.monotonic() < deadline, "exclusive queue survived its connection"
        ch.close()
        time.sleep(0.05)
    # and the name is free again for anyone
    ch = c.channel()
    ok = ch.queue_declare(q, exclusive=True).method
    assert ok.message_count == 0


def test_exclusive_queue_survives_owner_channel_close(owned_exclusive_queue,
                                                      wait_for_count):
    owner, och, q = owned_exclusive_queue
    och.basic_publish("", q, b"kept")
    och.close()
    ch = owner.channel()
    assert wait_for_count(ch, q, 1).message_count == 1
    assert ch.basic_get(q, auto_ack=True)[2] == b"kept"


def _in_exclusive_use(q):
    return f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_exclusive_consumer_blocks_other_consumers(conn, names):
    ch1 = conn.channel()
    q = names.queue()
    ch1.queue_declare(q)
    ch1.basic_consume(q, lambda *a: None, exclusive=True)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.basic_consume(q, lambda *a: None)
    assert ei.value.reply_code == 403
    assert ei.value.reply_text == _in_exclusive_use(q)


def test_exclusive_consume_refused_when_queue_has_consumers(conn, names):
    ch1 = conn.channel()
    q = names.queue()
    ch1.queue_declare(q)
    ch1.basic_consume(q, lambda *a: None)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.basic_consume(q, lambda *a: None, exclusive=True)
    assert ei.value.reply_code == 403
    assert ei.value.reply_text == _in_exclusive_use(q)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(conn, names):
    ch = conn.channel()
    q = names.queue("autodel")
    ch.queue_declare(q, auto_delete=True)
    # auto-delete only triggers after having had a consumer
    ch.queue_declare(q, passive=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
