"""Consumer priorities (`x-priority`) through pika, with the answers
RabbitMQ 3.10.8 gives: higher-priority consumers receive while they have
prefetch credit, lower ones only when every higher one is blocked,
round-robin within one priority; the consumer list's `arguments`; the
`consumer_priorities` capability; RabbitMQ's 406 for a non-integer."""

import base64
import json
import time
import urllib.request

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker


def _api(info, path):
    req = urllib.request.Request(
        f"http://{info.host}:{info.http_port}/api{path}")
    auth = base64.b64encode(
        f"{info.username}:{info.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {auth}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


class Taker:
    def __init__(self, conn, queue, tag, prefetch, priority=None):
        self.chan = conn.channel()
        self.chan.basic_qos(prefetch_count=prefetch)
        self.got = []
        args = None if priority is None else {"x-priority": priority}
        self.chan.basic_consume(queue, self._on, consumer_tag=tag,
                                arguments=args)

    def _on(self, chan, method, props, body):
        self.got.append((method.delivery_tag, body))

    def bodies(self):
        return [b for _, b in self.got]


def _pump(conn, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    return cond()


def test_capability_is_advertised(conn):
    caps = conn._impl.server_properties["capabilities"]
    assert caps.get("consumer_priorities") is True


def test_higher_priority_first_while_it_has_credit(connect, names):
    q = names.queue("prio")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q)
    lo = Taker(conn, q, "lo", 10, -1)
    mid = Taker(conn, q, "mid", 1)  # no argument: priority 0
    hi = Taker(conn, q, "hi", 2, 10)
    for i in range(1, 7):
        ch.basic_publish("", q, f"m{i}".encode())
    assert _pump(conn, lambda: len(lo.got) + len(mid.got) + len(hi.got) == 6)
    assert hi.bodies() == [b"m1", b"m2"]
    assert mid.bodies() == [b"m3"]
    assert lo.bodies() == [b"m4", b"m5", b"m6"]
    # Credit freed at the top goes to the top.
    hi.chan.basic_ack(hi.got[0][0])
    ch.basic_publish("", q, b"m7")
    assert _pump(conn, lambda: len(hi.got) == 3)
    assert hi.bodies()[2] == b"m7"
    _pump(conn, lambda: False, timeout=0.3)
    assert len(lo.got) == 3 and len(mid.got) == 1


def test_round_robin_within_one_priority(connect, names):
    q = names.queue("prio-rr")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q)
    a = Taker(conn, q, "a", 0, 5)
    b = Taker(conn, q, "b", 0, 5)
    low = Taker(conn, q, "low", 0, 1)
    for i in range(6):
        ch.basic_publish("", q, f"m{i}".encode())
    assert _pump(conn, lambda: len(a.got) + len(b.got) == 6)
    assert a.bodies() == [b"m0", b"m2", b"m4"]
    assert b.bodies() == [b"m1", b"m3", b"m5"]
    assert low.got == []


def test_arguments_are_listed(connect, names, broker_info):
    q = names.queue("prio-list")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q)
    Taker(conn, q, "listed", 1, 7)
    deadline = time.monotonic() + 20
    while True:
        mine = [k for k in _api(broker_info, "/consumers")
                if k["queue"]["name"] == q]
        if mine or time.monotonic() > deadline:
            break
        conn.process_data_events(time_limit=0.2)
    assert len(mine) == 1
    k = mine[0]
    assert k["arguments"] == {"x-priority": 7}
    assert (k["active"], k["activity_status"]) == (True, "up")


@pytest.mark.parametrize("value,kind", [("high", "longstr"), (True, "bool")])
def test_non_integer_priority_is_406(connect, names, broker_info, value, kind):
    q = names.queue("prio-bad")
    ch = connect().channel()
    ch.queue_declare(q)
    with pytest.raises(CCBB) as e:
        ch.basic_consume(q, lambda *a: None, arguments={"x-priority": value})
    assert (e.value.reply_code, e.value.reply_text) == (
        406,
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in "
        f"vhost '{broker_info.vhost}': \"expected integer, got {kind}\"")


def test_exclusive_consumer_with_a_priority_keeps_the_queue(connect, names):
    q = names.queue("prio-x")
    ch = connect().channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True,
                     arguments={"x-priority": 3})
    with pytest.raises(CCBB) as e:
        connect().channel().basic_consume(q, lambda *a: None,
                                          arguments={"x-priority": 9})
    assert e.value.reply_code == 403
