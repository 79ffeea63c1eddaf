"""Durability across broker restarts: definitions, persistent messages,
redelivery, exclusive queues, transactions.

Each test starts its OWN Warren process on a fixed (per-test) temporary data
directory and stops it gracefully (SIGTERM), or kills it (SIGKILL), and
starts it again on the same data directory. These tests cannot run against an
external broker, so they are skipped when WARREN_TEST_AMQP_URL is set; they
always run against Warren (which is how CI runs them). The expectations are
RabbitMQ's: durable definitions and confirmed / committed persistent messages
in durable queues survive, everything else is gone.
"""

import contextlib
import decimal
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone

import pika
import pytest

from conftest import (DEFAULT_WARREN_BIN, STARTUP_TIMEOUT, _BrokerInfo,
                      _free_port, _log_tail, make_params)

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("WARREN_TEST_AMQP_URL")),
    reason="restarts the broker: runs only against a Warren it starts itself")

Closed = pika.exceptions.ChannelClosedByBroker
STOP_TIMEOUT = 10.0


# ------------------------------------------------------------ the node

class WarrenNode:
    """One Warren process on a data directory that outlives restarts."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.cwd = os.path.join(workdir, "cwd")
        os.mkdir(self.data_dir)
        os.mkdir(self.cwd)  # empty cwd: no ./rabbit.toml gets picked up
        self.log_path = os.path.join(workdir, "warren.log")
        self.proc = None
        self.port = None
        self.starts = 0
        self._log = None
        self._conns = []

    # -- process control

    def start(self):
        assert self.proc is None, "already running"
        self.port = _free_port()
        cmd = [self.binary,
               "--amqp-listen", f"127.0.0.1:{self.port}",
               "--http-listen", f"127.0.0.1:{_free_port()}",
               "--prometheus-listen", f"127.0.0.1:{_free_port()}",
               "--data-dir", self.data_dir]
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== start #{self.starts + 1}: {' '.join(cmd)}\n"
                        .encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                pytest.fail(f"warren exited during startup with status {rc}\n"
                            f"log tail:\n{_log_tail(self.log_path)}")
            try:
                with socket.create_connection(
                        ("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"warren did not listen on {self.port} within "
                            f"{STARTUP_TIMEOUT:g}s\nlog tail:\n"
                            f"{_log_tail(self.log_path)}")
            time.sleep(0.02)

    def _forget_connections(self):
        # the broker end is gone; the client objects are dead
        for c in self._conns:
            with contextlib.suppress(Exception):
                if c.is_open:
                    c.close()
        self._conns = []

    def stop(self):
        """Graceful stop (SIGTERM); the process must exit 0 in time."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGTERM)
        # Open clients keep servicing their sockets, as live clients would:
        # the broker's connection.close (320 CONNECTION_FORCED) gets its
        # close-ok instead of the broker waiting it out.
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            live = [c for c in self._conns if c.is_open]
            for c in live:
                with contextlib.suppress(Exception):
                    c.process_data_events(time_limit=0.01)
            if not live:
                time.sleep(0.01)
        try:
            rc = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None
            pytest.fail(f"warren did not stop within {STOP_TIMEOUT:g}s of "
                        f"SIGTERM\nlog tail:\n{_log_tail(self.log_path)}")
        self.proc = None
        self._log.close()
        self._forget_connections()
        assert rc == 0, (f"warren exited with {rc} on SIGTERM\nlog tail:\n"
                         f"{_log_tail(self.log_path)}")

    def kill(self):
        """SIGKILL: no chance to flush or close anything."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.proc = None
        self._log.close()
        self._forget_connections()

    def restart(self, kill=False):
        self.kill() if kill else self.stop()
        self.start()

    # -- clients

    def connect(self):
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"warren exited with status {self.proc.returncode}\n"
                        f"log tail:\n{_log_tail(self.log_path)}")
        info = _BrokerInfo("127.0.0.1", self.port, "/", "guest", "guest")
        c = pika.BlockingConnection(make_params(info))
        self._conns.append(c)
        return c

    def channel(self):
        return self.connect().channel()


@pytest.fixture
def node(request):
    binary = os.environ.get("WARREN_BIN", DEFAULT_WARREN_BIN)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"Warren binary not found or not executable: {binary} "
                    "(build it with `cargo build`, or set WARREN_BIN)")
    failed_before = request.session.testsfailed
    workdir = tempfile.mkdtemp(prefix="warren-durability-")
    n = WarrenNode(binary, workdir)
    try:
        n.start()
        yield n
    finally:
        n._forget_connections()
        if n.proc is not None:
            n.proc.terminate()
            try:
                n.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(timeout=5)
            n._log.close()
        if request.session.testsfailed > failed_before:
            print(f"\nwarren durability log kept at {n.log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------ helpers

def _name(tag):
    return f"warren-dur-{tag}-{uuid.uuid4().hex[:10]}"


def _persistent(**kw):
    return pika.BasicProperties(delivery_mode=2, **kw)


def _get_all(ch, q, ack=True, limit=10000):
    out = []
    while len(out) < limit:
        m, p, b = ch.basic_get(q, auto_ack=ack)
        if m is None:
            return out
        out.append((m, p, b))
    return out


def _bodies(ch, q):
    return [b for _, _, b in _get_all(ch, q)]


def _absent_queue(ch_factory, q):
    ch = ch_factory()
    with pytest.raises(Closed) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


def _absent_exchange(ch_factory, x):
    ch = ch_factory()
    with pytest.raises(Closed) as ei:
        ch.exchange_declare(x, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def _props_tuple(p):
    return (p.content_type, p.content_encoding, p.headers, p.delivery_mode,
            p.priority, p.correlation_id, p.reply_to, p.expiration,
            p.message_id, p.timestamp, p.type, p.user_id, p.app_id)


# ------------------------------------------------------------ definitions

def test_durable_definitions_survive_restart_transient_ones_do_not(node):
    ch = node.channel()
    dx, dq = _name("dx"), _name("dq")
    hx, hq = _name("hx"), _name("hq")
    ae, aeq = _name("ae"), _name("aeq")
    e2e = _name("e2e")
    tx, tq = _name("tx"), _name("tq")
    ch.exchange_declare(ae, "fanout", durable=True)
    ch.exchange_declare(dx, "topic", durable=True,
                        arguments={"alternate-exchange": ae})
    ch.queue_declare(dq, durable=True, arguments={"x-custom": "kept"})
    ch.queue_bind(dq, dx, "a.*")
    ch.queue_declare(aeq, durable=True)
    ch.queue_bind(aeq, ae, "")
    ch.exchange_declare(hx, "headers", durable=True)
    ch.queue_declare(hq, durable=True)
    ch.queue_bind(hq, hx, "", arguments={"x-match": "any", "k": "v", "n": 1})
    ch.exchange_declare(e2e, "direct", durable=True)
    ch.exchange_bind(dx, e2e, "via")            # durable e2e binding
    # transient definitions
    ch.exchange_declare(tx, "fanout", durable=False)
    ch.queue_declare(tq, durable=False)
    ch.queue_bind(tq, tx, "")
    ch.queue_bind(dq, tx, "")                   # durable queue, transient exchange

    node.restart()
    ch = node.channel()
    ch.exchange_declare(dx, passive=True)
    ch.exchange_declare(hx, passive=True)
    ch.exchange_declare(e2e, passive=True)
    ok = ch.queue_declare(dq, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    # redeclaring with the same attributes and arguments is accepted
    ch.exchange_declare(dx, "topic", durable=True,
                        arguments={"alternate-exchange": ae})
    ch.queue_declare(dq, durable=True, arguments={"x-custom": "kept"})
    # bindings (queue, headers arguments, e2e) and the AE route as before
    ch.basic_publish(dx, "a.b", b"topic")
    ch.basic_publish(dx, "x.y", b"to-ae")
    ch.basic_publish(hx, "", b"headers",
                     pika.BasicProperties(headers={"n": 1}))
    ch.basic_publish(hx, "", b"no-match",
                     pika.BasicProperties(headers={"n": "1"}))
    ch.basic_publish(e2e, "via", b"e2e")       # e2e -> dx, "via" -> AE
    assert _bodies(ch, dq) == [b"topic"]
    assert _bodies(ch, aeq) == [b"to-ae", b"e2e"]
    assert _bodies(ch, hq) == [b"headers"]
    ch.basic_publish(e2e, "a.z", b"not-bound")  # e2e binds only "via"
    assert _bodies(ch, dq) == []
    # the transient ones are gone
    _absent_exchange(node.channel, tx)
    _absent_queue(node.channel, tq)
    # a durable redeclare of what is now gone works (no leftovers)
    ch = node.channel()
    ch.queue_declare(tq, durable=False)
    ch.exchange_declare(tx, "direct", durable=False)
    for q in (dq, aeq, hq, tq):
        ch.queue_delete(q)
    for x in (dx, hx, ae, e2e, tx):
        ch.exchange_delete(x)


def test_deleted_durable_definitions_stay_deleted(node):
    ch = node.channel()
    x, q = _name("x"), _name("q")
    ch.exchange_declare(x, "direct", durable=True)
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, x, "k")
    ch.queue_unbind(q, x, "k")
    q2 = _name("q2")
    ch.queue_declare(q2, durable=True)
    ch.basic_publish("", q2, b"m", _persistent())
    ch.queue_delete(q2)
    node.restart(kill=True)
    ch = node.channel()
    ch.exchange_declare(x, passive=True)
    ch.basic_publish(x, "k", b"unbound")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    _absent_queue(node.channel, q2)


# ------------------------------------------------------------ messages

RICH_PROPS = [
    _persistent(content_type="application/json", content_encoding="utf-8",
                headers={"str": "v", "int": -7, "big": 2 ** 40, "bool": True,
                         "none": None, "list": ["a", 1, False],
                         "nested": {"k": "v", "n": {"deep": 1}},
                         "dec": decimal.Decimal("1.25"),
                         "ts": datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                         "bytes": b"\x00\x01\xff"},
                priority=5, correlation_id="corr-1", reply_to="reply-q",
                expiration="3600000", message_id="msg-1", timestamp=1600000000,
                type="kind", user_id="guest", app_id="app"),
    _persistent(),
    _persistent(headers={}),
    _persistent(message_id="msg-3", headers={"x-death-like": [{"count": 1}]}),
]
RICH_BODIES = [b'{"a": 1}', b"", b"\x00\x01binary\xff" * 3,
               bytes(range(256)) * 1200]  # > frame_max: several body frames


def _publish_rich(ch, q):
    for props, body in zip(RICH_PROPS, RICH_BODIES):
        ch.basic_publish("", q, body, props)


def _assert_rich(got, redelivered=False):
    assert [b for _, _, b in got] == RICH_BODIES
    for (m, p, _), expected in zip(got, RICH_PROPS):
        assert _props_tuple(p) == _props_tuple(expected)
        assert m.redelivered is redelivered


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_confirmed_persistent_messages_survive_restart(node, kill):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    _publish_rich(ch, q)
    for i in range(40):
        ch.basic_publish("", q, f"seq-{i}".encode(),
                         _persistent(headers={"i": i}))
    node.restart(kill=kill)
    ch = node.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 44
    got = _get_all(ch, q)
    _assert_rich(got[:4])
    assert [b for _, _, b in got[4:]] == [f"seq-{i}".encode()
                                          for i in range(40)]
    assert [p.headers for _, p, _ in got[4:]] == [{"i": i} for i in range(40)]
    assert all(p.delivery_mode == 2 for _, p, _ in got)


def test_recovered_and_new_messages_survive_a_second_kill(node):
    """Writes after a recovery must not collide with what was recovered."""
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, f"a{i}".encode(), _persistent())
    node.restart(kill=True)
    ch = node.channel()
    ch.confirm_delivery()
    m, _, b = ch.basic_get(q, auto_ack=True)    # consume a0 after recovery
    assert b == b"a0"
    for i in range(5):
        ch.basic_publish("", q, f"b{i}".encode(), _persistent())
    ch.queue_declare(q, passive=True)
    node.restart(kill=True)
    ch = node.channel()
    assert _bodies(ch, q) == ([f"a{i}".encode() for i in range(1, 5)]
                              + [f"b{i}".encode() for i in range(5)])


def test_persistent_via_exchange_to_several_durable_queues_survives_kill(node):
    ch = node.channel()
    x = _name("fan")
    qs = [_name("q") for _ in range(3)]
    ch.exchange_declare(x, "fanout", durable=True)
    for q in qs:
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, x, "")
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish(x, "rk", f"m{i}".encode(), _persistent())
    node.restart(kill=True)
    ch = node.channel()
    for q in qs:
        got = _get_all(ch, q)
        assert [b for _, _, b in got] == [f"m{i}".encode() for i in range(10)]
        assert all((m.exchange, m.routing_key) == (x, "rk") for m, _, _ in got)


def test_transient_messages_are_gone_after_restart(node):
    ch = node.channel()
    q = _name("q")
    nd = _name("nondurable")
    ch.queue_declare(q, durable=True)
    ch.queue_declare(nd, durable=False)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"t1", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", q, b"p1", _persistent())
    ch.basic_publish("", q, b"t2")  # no delivery_mode: transient
    ch.basic_publish("", q, b"p2", _persistent())
    ch.basic_publish("", nd, b"p-in-transient-queue", _persistent())
    assert ch.queue_declare(q, passive=True).method.message_count == 4
    node.restart()
    ch = node.channel()
    assert _bodies(ch, q) == [b"p1", b"p2"]
    _absent_queue(node.channel, nd)


def test_unacked_message_comes_back_redelivered_after_restart(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode(), _persistent())
    m, _, b = ch.basic_get(q, auto_ack=False)  # delivered, never acked
    assert (b, m.redelivered) == (b"m0", False)
    # the broker goes down while the delivery is outstanding
    node.restart()
    ch = node.channel()
    got = _get_all(ch, q)
    assert [(b, m.redelivered) for m, _, b in got] == [
        (b"m0", True), (b"m1", False), (b"m2", False)]


def test_unacked_message_survives_kill(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode(), _persistent())
    ch.basic_qos(prefetch_count=2)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append(b))
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert seen == [b"m0", b"m1"]
    node.restart(kill=True)
    ch = node.channel()
    assert _bodies(ch, q) == [b"m0", b"m1", b"m2"]


def test_acked_message_never_comes_back(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, f"m{i}".encode(), _persistent())
    m0 = ch.basic_get(q)[0]
    ch.basic_get(q)                               # m1: never acked
    ch.basic_ack(m0.delivery_tag)                 # ack one of two
    ch.basic_get(q, auto_ack=True)                # m2: auto-acked
    m3 = ch.basic_get(q)[0]
    ch.basic_reject(m3.delivery_tag, requeue=False)  # m3: dropped
    m4 = ch.basic_get(q)[0]
    ch.basic_nack(m4.delivery_tag, requeue=False)    # m4: dropped
    ch.queue_declare(q, passive=True)             # the acks are processed
    node.restart()
    ch = node.channel()
    got = _get_all(ch, q)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"m1", True),
                                                     (b"m5", False)]
    # and again: what is acked now stays acked
    node.restart()
    ch = node.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_purged_messages_do_not_come_back(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, f"p{i}".encode(), _persistent())
    assert ch.queue_purge(q).method.message_count == 5
    ch.basic_publish("", q, b"after-purge", _persistent())
    node.restart()
    ch = node.channel()
    assert _bodies(ch, q) == [b"after-purge"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_durable_exclusive_queue_does_not_survive(node, kill):
    ch = node.channel()
    q = _name("excl")
    ch.queue_declare(q, durable=True, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"p", _persistent())
    node.restart(kill=kill)
    _absent_queue(node.channel, q)
    # the name is free for anyone
    ch = node.channel()
    ok = ch.queue_declare(q, durable=True).method
    assert ok.message_count == 0
    ch.queue_delete(q)


# ------------------------------------------------------------ transactions

def test_tx_commit_survives_kill_rollback_never_appears(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.tx_select()
    for i in range(5):
        ch.basic_publish("", q, f"c{i}".encode(),
                         _persistent(headers={"i": i}))
    ch.tx_commit()                                   # commit-ok received
    ch.basic_publish("", q, b"rolled-back", _persistent())
    ch.tx_rollback()
    ch.basic_publish("", q, b"c5", _persistent(headers={"i": 5}))
    ch.tx_commit()
    ch.basic_publish("", q, b"uncommitted", _persistent())  # no commit
    node.restart(kill=True)
    ch = node.channel()
    got = _get_all(ch, q)
    assert [b for _, _, b in got] == [f"c{i}".encode() for i in range(6)]
    assert [p.headers for _, p, _ in got] == [{"i": i} for i in range(6)]
    assert all(p.delivery_mode == 2 for _, p, _ in got)


def test_tx_rollback_publishes_never_appear_after_restart(node):
    ch = node.channel()
    q = _name("q")
    ch.queue_declare(q, durable=True)
    ch.tx_select()
    for i in range(3):
        ch.basic_publish("", q, f"r{i}".encode(), _persistent())
    ch.tx_rollback()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    node.restart()
    ch = node.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert _bodies(ch, q) == []
