"""Single active consumer (`x-single-active-consumer`) through pika, with
the answers RabbitMQ 3.10.8 gives: one consumer receives, the others wait
in registration order; when the active one cancels or its channel or
connection closes, the next takes over, getting the old one's unacked
messages first; the management API's `active`, `activity_status` and
`single_active_consumer_tag`; RabbitMQ's 406 for a non-bool value.
(Priorities choosing the active consumer follow RabbitMQ 3.12+ quorum
queues, which 3.10.8's classic queues do not do: tested in tests/consumers.rs.)"""

import base64
import json
import time
import urllib.parse
import urllib.request

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker
SAC = {"x-single-active-consumer": True}


def _api(info, path):
    req = urllib.request.Request(
        f"http://{info.host}:{info.http_port}/api{path}")
    auth = base64.b64encode(
        f"{info.username}:{info.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {auth}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def _eventually(f, what, timeout=20.0):
    """Polls f() until truthy (RabbitMQ's management stats lag by seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        got = f()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _quote(s):
    return urllib.parse.quote(s, safe="")


class Taker:
    """A manual-ack consumer that records what it gets."""

    def __init__(self, conn, queue, tag, prefetch):
        self.conn = conn
        self.chan = conn.channel()
        self.chan.basic_qos(prefetch_count=prefetch)
        self.got = []
        self.chan.basic_consume(queue, self._on, consumer_tag=tag)

    def _on(self, chan, method, props, body):
        self.got.append((method.delivery_tag, body, method.redelivered))


def _pump_all(conns, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)
    return cond()


def _settle(conns, seconds=0.3):
    """Lets deliveries that should not happen show up (a negative check)."""
    _pump_all(conns, lambda: False, timeout=seconds)


def test_one_consumer_receives_and_the_next_takes_over_with_unacked_first(
        connect, names, broker_info):
    q = names.queue("sac")
    c1, c2 = connect(), connect()
    ch = c1.channel()
    ch.queue_declare(q, arguments=SAC)
    a = Taker(c1, q, "sac-a", 2)
    b = Taker(c2, q, "sac-b", 2)
    c = Taker(c2, q, "sac-c", 5)
    for i in range(1, 5):
        ch.basic_publish("", q, f"m{i}".encode())
    conns = [c1, c2]
    assert _pump_all(conns, lambda: len(a.got) == 2)
    _settle(conns)
    assert [m[1] for m in a.got] == [b"m1", b"m2"]
    assert b.got == [] and c.got == []

    def statuses():
        cs = [k for k in _api(broker_info, "/consumers")
              if k["queue"]["name"] == q]
        return sorted((k["consumer_tag"], k["active"], k["activity_status"])
                      for k in cs)

    want = [("sac-a", True, "single_active"), ("sac-b", False, "waiting"),
            ("sac-c", False, "waiting")]
    _eventually(lambda: statuses() == want, "a active, b and c waiting")
    path = f"/queues/{_quote(broker_info.vhost)}/{q}"
    _eventually(
        lambda: (_api(broker_info, path).get("single_active_consumer_tag"),
                 len(_api(broker_info, path).get("consumer_details", [])))
        == ("sac-a", 3), "the queue's single_active_consumer_tag")

    # a's channel closes holding m1, m2: b gets them first, redelivered.
    a.chan.close()
    assert _pump_all(conns, lambda: len(b.got) == 2)
    assert [(m[1], m[2]) for m in b.got] == [(b"m1", True), (b"m2", True)]
    for tag, _, _ in b.got:
        b.chan.basic_ack(tag)
    assert _pump_all(conns, lambda: len(b.got) == 4)
    assert [m[1] for m in b.got[2:]] == [b"m3", b"m4"]
    _settle(conns)
    assert c.got == []

    # b cancels: c takes over for what comes next.
    b.chan.basic_cancel("sac-b")
    ch.basic_publish("", q, b"m5")
    assert _pump_all(conns, lambda: len(c.got) == 1)
    assert c.got[0][1] == b"m5"
    _eventually(
        lambda: _api(broker_info, path).get("single_active_consumer_tag")
        == "sac-c", "c active")


def test_a_closed_connection_hands_over(connect, names):
    q = names.queue("sac-conn")
    c1, c2, c3 = connect(), connect(), connect()
    ch = c1.channel()
    ch.queue_declare(q, arguments=SAC)
    a = Taker(c2, q, "a", 1)
    b = Taker(c3, q, "b", 1)
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2")
    assert _pump_all([c2, c3], lambda: len(a.got) == 1)
    _settle([c2, c3])
    assert b.got == []
    c2.close()
    assert _pump_all([c3], lambda: len(b.got) == 1)
    assert b.got[0][1:] == (b"m1", True)
    b.chan.basic_ack(b.got[0][0])
    assert _pump_all([c3], lambda: len(b.got) == 2)
    assert b.got[1][1] == b"m2"


def test_non_bool_value_is_406(connect, names, broker_info):
    q = names.queue("sac-bad")
    for value, kind in [("yes", "longstr"), (1, "signedint")]:
        chan = connect().channel()
        with pytest.raises(CCBB) as e:
            chan.queue_declare(q, arguments={"x-single-active-consumer": value})
        assert (e.value.reply_code, e.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for "
            f"queue '{q}' in vhost '{broker_info.vhost}': "
            f"{{unacceptable_type,{kind}}}")


def test_exclusive_consumer_is_refused_even_on_an_empty_queue(connect, names):
    q = names.queue("sac-x")
    ch = connect().channel()
    ch.queue_declare(q, arguments=SAC)
    with pytest.raises(CCBB) as e:
        ch.basic_consume(q, lambda *a: None, exclusive=True)
    assert e.value.reply_code == 403
    assert e.value.reply_text.endswith("in exclusive use")
    # A plain consumer still works.
    connect().channel().basic_consume(q, lambda *a: None)


def test_cancel_then_close_hands_the_unacked_message_over_first(
        connect, names):
    """As RabbitMQ 3.10.8: a cancel alone does not start the successor; the
    requeue when the channel closes does, with the held message first."""
    q = names.queue("sac-cancel")
    c1, c2 = connect(), connect()
    ch = c1.channel()
    ch.queue_declare(q, arguments=SAC)
    a = Taker(c1, q, "a", 1)
    b = Taker(c2, q, "b", 1)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    assert _pump_all([c1, c2], lambda: len(a.got) == 1)
    a.chan.basic_cancel("a")
    _settle([c1, c2], 0.5)
    assert b.got == []
    a.chan.close()
    assert _pump_all([c1, c2], lambda: len(b.got) == 1)
    assert b.got[0][1:] == (b"m0", True)
