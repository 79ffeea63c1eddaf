"""Resource alarms with pika: a memory high watermark set in rabbit.toml,
crossed by a real backlog, blocks the publishing connection
(connection.blocked "low on memory", nothing more read from it) while
another connection keeps consuming; once the backlog is consumed the
broker's memory falls back under the watermark and the publisher gets
connection.unblocked, its held publishes going through.

Each test starts its own Warren with its own rabbit.toml (the session
broker must not be alarmed), so it is skipped against an external broker.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pika
import pytest

from conftest import (DEFAULT_WARREN_BIN, STARTUP_TIMEOUT, _BrokerInfo,
                      _free_port, _log_tail, _pump, make_params)

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("WARREN_TEST_AMQP_URL")),
    reason="configures its own broker: runs only against a Warren it starts")

# Small enough that the few publishes pika writes between the broker's
# block and its noticing connection.blocked fit in the socket buffers:
# pika's BlockingConnection waits in basic_publish until its output is
# written, so a large body would leave it stuck there.
BODY = b"x" * 4096
ROOM = 48 * 1024 * 1024


class Node:
    """A Warren process started with a rabbit.toml of the test's."""

    def __init__(self, workdir, extra_toml):
        self.workdir = workdir
        self.port = _free_port()
        self.http_port = _free_port()
        data = os.path.join(workdir, "data")
        config = os.path.join(workdir, "rabbit.toml")
        with open(config, "w") as f:
            f.write(extra_toml + f"""
[listeners]
amqp = "127.0.0.1:{self.port}"
http = "127.0.0.1:{self.http_port}"
prometheus = "127.0.0.1:{_free_port()}"

[storage]
data_dir = "{data}"
# The backlog that sets the memory alarm off must stay in memory: past
# this budget a queue pages its bodies to disk.
queue_memory_mb = 1024

[management]
collect_statistics_interval = 200
""")
        self.log_path = os.path.join(workdir, "warren.log")
        self._log = open(self.log_path, "ab")
        binary = os.environ.get("WARREN_BIN", DEFAULT_WARREN_BIN)
        self.proc = subprocess.Popen([binary, "--config", config], cwd=workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"warren exited with {self.proc.returncode}\n"
                            f"{_log_tail(self.log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port),
                                              timeout=0.5):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, _log_tail(self.log_path)
            time.sleep(0.02)

    def node(self):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/nodes",
            headers={"Authorization": "Basic "
                     + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())[0]

    def connect(self, **kw):
        info = _BrokerInfo("127.0.0.1", self.port, "/", "guest", "guest")
        return pika.BlockingConnection(make_params(info, **kw))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def start_node(request):
    nodes = []
    failed_before = request.session.testsfailed

    def _start(extra_toml):
        workdir = tempfile.mkdtemp(prefix="warren-alarms-")
        n = Node(workdir, extra_toml)
        nodes.append(n)
        return n

    yield _start
    for n in nodes:
        n.stop()
        if request.session.testsfailed > failed_before:
            print(f"\nwarren alarms log kept at {n.log_path}")
        else:
            shutil.rmtree(n.workdir, ignore_errors=True)


def test_memory_watermark_blocks_publisher_until_backlog_is_consumed(
        start_node):
    # How much an idle broker takes, to put the watermark ROOM above it.
    probe = start_node("")
    idle = probe.node()["mem_used"]
    probe.stop()
    watermark = idle + ROOM
    node = start_node(f"vm_memory_high_watermark.absolute = {watermark}\n"
                      "memory_monitor_interval = 50\n")
    assert node.node()["mem_alarm"] is False

    events = []
    publisher = node.connect(blocked_connection_timeout=None)
    publisher.add_on_connection_blocked_callback(
        lambda conn, frame: events.append(("blocked", frame.method.reason)))
    publisher.add_on_connection_unblocked_callback(
        lambda conn, frame: events.append(("unblocked", None)))
    pch = publisher.channel()
    q = "alarm-backlog"
    pch.queue_declare(q)

    # Publish a backlog until the broker blocks us (bounded: four times
    # the room under the watermark).
    published = 0
    while not events and published < 4 * ROOM // len(BODY):
        pch.basic_publish("", q, BODY)
        published += 1
        publisher.process_data_events(time_limit=0)
    _pump(publisher, lambda: events, timeout=5)
    assert events == [("blocked", "low on memory")], (published, events)
    n = node.node()
    assert n["mem_alarm"] is True and n["mem_used"] > n["mem_limit"]

    # Another connection consumes what got in, though the alarm is still
    # in effect (it is only "blocking", never blocked). What the blocked
    # publisher sent after the block was not read.
    consumer = node.connect()
    cch = consumer.channel()
    backlog = cch.queue_declare(q, passive=True).method.message_count
    assert 0 < backlog < published
    got = 0
    for method, _, body in cch.consume(q, auto_ack=True, inactivity_timeout=5):
        assert method is not None, ("consumer stalled", got, backlog)
        assert body == BODY
        got += 1
        if got == backlog:
            break

    # Memory comes back under the watermark: the publisher is unblocked
    # and the rest of its publishes arrive.
    assert _pump(publisher, lambda: len(events) == 2, timeout=15), (
        events, node.node())
    assert events[1] == ("unblocked", None)
    for method, _, body in cch.consume(q, auto_ack=True, inactivity_timeout=5):
        assert method is not None, ("held publishes missing", got, published)
        got += 1
        if got == published:
            break
    cch.cancel()
    assert cch.queue_declare(q, passive=True).method.message_count == 0
    assert node.node()["mem_alarm"] is False
    publisher.close()
    consumer.close()
