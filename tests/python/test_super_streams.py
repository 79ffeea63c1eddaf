"""Super streams through pika: the layout RabbitMQ's add_super_stream
makes (a direct exchange with x-super-stream, stream queues NAME-0..N-1
bound with x-stream-partition-order), declared over AMQP; publishing by
routing key; and a consumer group (x-stream-group, with x-super-stream
naming the super stream) whose two members share three partitions 2 + 1.
Warren's extension: RabbitMQ has no consumer groups over AMQP 0-9-1."""

import time

import pika

STREAM = {"x-queue-type": "stream"}


def _layout(ch, names, n):
    ss = names.exchange("super")
    ch.exchange_declare(ss, "direct", durable=True,
                        arguments={"x-super-stream": True})
    parts = []
    for i in range(n):
        q = f"{ss}-{i}"
        names.queues.append(q)
        ch.queue_declare(q, durable=True, arguments=STREAM)
        ch.queue_bind(q, ss, routing_key=str(i),
                      arguments={"x-stream-partition-order": i})
        parts.append(q)
    return ss, parts


def _member(conn, ss, parts, got, who):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=50)
    for q in parts:
        def cb(c, m, p, b, q=q):
            got.append((who, q, p.headers["x-stream-offset"], b))
            c.basic_ack(m.delivery_tag)
        ch.basic_consume(q, cb, consumer_tag=f"{who}-{q}",
                         arguments={"x-stream-group": "workers",
                                    "x-super-stream": ss})
    return ch


def test_partitions_by_key_and_a_group_spread_2_plus_1(connect, names):
    conn = connect()
    ch = conn.channel()
    ss, parts = _layout(ch, names, 3)
    a_conn, b_conn = connect(), connect()
    got = []
    _member(a_conn, ss, parts, got, "A")
    _member(b_conn, ss, parts, got, "B")
    ch.confirm_delivery()
    for i in range(12):
        ch.basic_publish(ss, str(i % 3), b"m%d" % i,
                         pika.BasicProperties(delivery_mode=2))
    deadline = time.monotonic() + 10
    while len(got) < 12 and time.monotonic() < deadline:
        a_conn.process_data_events(time_limit=0.05)
        b_conn.process_data_events(time_limit=0.05)
    assert len(got) == 12, got
    by_partition = {q: sorted((o, b) for _, pq, o, b in got if pq == q)
                    for q in parts}
    for i, q in enumerate(parts):
        assert by_partition[q] == [(k, b"m%d" % (3 * k + i))
                                   for k in range(4)], q
    # Members rank by connection: A (first) reads partitions 0 and 2.
    readers = {q: {w for w, pq, _, _ in got if pq == q} for q in parts}
    assert readers == {parts[0]: {"A"}, parts[1]: {"B"}, parts[2]: {"A"}}
    for c in (a_conn, b_conn, conn):
        c.close()
