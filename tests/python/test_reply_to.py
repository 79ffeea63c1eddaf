"""Direct reply-to (amq.rabbitmq.reply-to) through pika, with the answers
RabbitMQ 3.10.8 gives (replies to a requester that is gone: RabbitMQ 4.2's
documented behaviour, counted as routed, never returned)."""

import contextlib

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker
PSEUDO = "amq.rabbitmq.reply-to"


def _get(chan, queue, pump, conn):
    """The next message on `queue` (basic.get, polled with a deadline)."""
    got = []

    def poll():
        m = chan.basic_get(queue, auto_ack=True)
        if m[0] is not None:
            got.append(m)
        return bool(got)

    assert pump(conn, poll, timeout=5.0), f"nothing arrived on {queue}"
    return got[0]


@pytest.fixture
def rpc(connect, names):
    """A requester channel with a reply consumer, a responder channel on
    another connection, and the request queue."""
    req_conn = connect()
    requester = req_conn.channel()
    resp_conn = connect()
    responder = resp_conn.channel()
    q = names.queue("rpc")
    responder.queue_declare(q)
    replies = []
    tag = requester.basic_consume(
        PSEUDO, lambda ch, m, p, b: replies.append((m, p, b)), auto_ack=True)

    class Rpc:
        pass

    r = Rpc()
    r.req_conn, r.requester, r.resp_conn, r.responder = (
        req_conn, requester, resp_conn, responder)
    r.queue, r.replies, r.tag = q, replies, tag
    return r


def _request(r, pump, corr="c1"):
    r.requester.basic_publish(
        "", r.queue, b"request",
        pika.BasicProperties(reply_to=PSEUDO, correlation_id=corr))
    _, props, body = _get(r.responder, r.queue, pump, r.resp_conn)
    assert body == b"request"
    assert props.correlation_id == corr
    return props.reply_to


def _is_rabbitmq_3(conn):
    props = conn._impl.server_properties
    return (props.get("product") == "RabbitMQ"
            and str(props.get("version", "")).startswith("3."))


def test_capability_is_advertised(conn):
    assert conn._impl.server_capabilities.get("direct_reply_to") is True


def test_round_trip(rpc, pump):
    reply_to = _request(rpc, pump)
    assert reply_to.startswith(PSEUDO + ".") and len(reply_to) > len(PSEUDO) + 20
    rpc.responder.basic_publish(
        "", reply_to, b"answer", pika.BasicProperties(correlation_id="c1"))
    assert pump(rpc.req_conn, lambda: rpc.replies)
    method, props, body = rpc.replies[0]
    assert body == b"answer"
    assert props.correlation_id == "c1"
    assert method.consumer_tag == rpc.tag
    assert method.exchange == ""
    assert method.routing_key == reply_to
    assert method.redelivered is False


def test_request_without_reply_consumer_is_406(ch, names, roundtrip):
    q = names.queue("rpc")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to=PSEUDO))
    with pytest.raises(CCBB) as ei:
        roundtrip(ch)
    assert (ei.value.reply_code, ei.value.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_manual_ack_reply_consumer_is_406(ch):
    with pytest.raises(CCBB) as ei:
        ch.basic_consume(PSEUDO, lambda *a: None, auto_ack=False)
    assert (ei.value.reply_code, ei.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_second_reply_consumer_is_406(ch):
    ch.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    with pytest.raises(CCBB) as ei:
        ch.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    assert (ei.value.reply_code, ei.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer already set")


def test_declares(conn, rpc, pump):
    for kw in ({"passive": True}, {}, {"durable": True, "exclusive": True}):
        ok = conn.channel().queue_declare(PSEUDO, **kw).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (PSEUDO, 0, 1)
    reply_to = _request(rpc, pump)
    ok = conn.channel().queue_declare(reply_to, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (reply_to, 0, 1)
    bogus = reply_to[:-1] + ("A" if reply_to[-1] != "A" else "B")
    with pytest.raises(CCBB) as ei:
        conn.channel().queue_declare(bogus, passive=True)
    assert (ei.value.reply_code, ei.value.reply_text) == (
        404, f"NOT_FOUND - no queue '{bogus}' in vhost '/'")


@pytest.mark.parametrize("how", ["cancel", "channel", "connection"])
def test_gone_requester_unregisters_and_drops(conn, rpc, pump, how):
    reply_to = _request(rpc, pump)
    if how == "cancel":
        rpc.requester.basic_cancel(rpc.tag)
    elif how == "channel":
        rpc.requester.close()
    else:
        rpc.req_conn.close()
    with pytest.raises(CCBB) as ei:
        conn.channel().queue_declare(reply_to, passive=True)
    assert ei.value.reply_code == 404
    # A mandatory reply now is dropped, not returned, and confirmed like any
    # routed publish: RabbitMQ 4.2's documented behaviour. RabbitMQ 3.x
    # returns every mandatory reply as NO_ROUTE, even one it delivers.
    resp = rpc.resp_conn.channel()
    resp.confirm_delivery()
    returned = []
    resp.add_on_return_callback(lambda *a: returned.append(a))
    if _is_rabbitmq_3(rpc.resp_conn):
        with pytest.raises(pika.exceptions.UnroutableError):
            resp.basic_publish("", reply_to, b"late", mandatory=True)
    else:
        resp.basic_publish("", reply_to, b"late", mandatory=True)
        rpc.resp_conn.process_data_events(0)
        assert returned == []
    if how == "cancel":
        # The channel can consume again, under a new name.
        rpc.requester.basic_consume(
            PSEUDO, lambda ch, m, p, b: rpc.replies.append((m, p, b)),
            auto_ack=True)
        again = _request(rpc, pump, "c2")
        assert again != reply_to
        resp.basic_publish("", again, b"fresh")
        assert pump(rpc.req_conn, lambda: rpc.replies)
        assert [b for _, _, b in rpc.replies] == [b"fresh"]


def test_not_a_queue(conn, rpc, pump):
    reply_to = _request(rpc, pump)
    for op in (lambda c: c.basic_get(PSEUDO),
               lambda c: c.basic_get(reply_to),
               lambda c: c.basic_consume(reply_to, lambda *a: None, auto_ack=True),
               lambda c: c.queue_bind(PSEUDO, "amq.direct", "k"),
               lambda c: c.queue_purge(reply_to)):
        with pytest.raises(CCBB) as ei:
            op(conn.channel())
        assert ei.value.reply_code == 404, ei.value


def test_many_requests_in_flight(rpc, pump):
    reply_to = _request(rpc, pump, "first")
    for i in range(100):
        rpc.responder.basic_publish(
            "", reply_to, str(i).encode(),
            pika.BasicProperties(correlation_id=str(i)))
    assert pump(rpc.req_conn, lambda: len(rpc.replies) == 100)
    assert [b for _, _, b in rpc.replies] == [str(i).encode() for i in range(100)]
    with contextlib.suppress(Exception):
        rpc.requester.basic_cancel(rpc.tag)
