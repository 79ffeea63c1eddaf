"""Shared fixtures for the Warren AMQP 0-9-1 compatibility suite.

The suite encodes RabbitMQ's observable behaviour (reply codes, reply texts,
delivery semantics) and is validated against a real RabbitMQ.

Broker selection:
  * WARREN_TEST_AMQP_URL set (e.g. amqp://guest:guest@127.0.0.1:5672/):
    use that broker as-is (this is how the suite is validated against RabbitMQ).
  * otherwise: start the Warren binary (env WARREN_BIN, default
    <repo>/target/debug/warren) on free loopback ports with a fresh data dir
    and a fresh cwd, and stop it at the end of the session.

Every test runs under a hard deadline (env WARREN_TEST_TIMEOUT, default 20 s
per setup/call/teardown phase) because pika's blocking calls have no timeout
of their own: a broker that never answers must fail a test, not hang the run.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import unquote, urlparse

import pika
import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_WARREN_BIN = os.path.join(REPO_ROOT, "target", "debug", "warren")
STARTUP_TIMEOUT = 15.0
PHASE_TIMEOUT = float(os.environ.get("WARREN_TEST_TIMEOUT", "20"))


# --------------------------------------------------------------------------
# per-phase deadline (no pytest-timeout dependency)
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _deadline(seconds, what):
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def _on_alarm(signum, frame):
        pytest.fail(f"{what} exceeded the {seconds:g}s deadline "
                    "(broker did not answer?)", pytrace=True)

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    # setup may include starting the broker (up to STARTUP_TIMEOUT)
    with _deadline(max(PHASE_TIMEOUT, STARTUP_TIMEOUT + 5), "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _deadline(PHASE_TIMEOUT, "test"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _deadline(PHASE_TIMEOUT, "teardown"):
        return (yield)


# --------------------------------------------------------------------------
# broker
# --------------------------------------------------------------------------

def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path, limit=4000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return "<no log>"
    return data[-limit:].decode("utf-8", "replace")


class _BrokerInfo:
    def __init__(self, host, port, vhost, username, password, process=None,
                 log_path=None, http_port=15672):
        self.host = host
        self.port = port
        self.vhost = vhost
        self.username = username
        self.password = password
        self.process = process
        self.log_path = log_path
        # The management API (users and permissions for permission tests).
        self.http_port = http_port

    def check_alive(self):
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(
                f"warren exited with status {self.process.returncode}; "
                f"log tail:\n{_log_tail(self.log_path)}")


@pytest.fixture(scope="session")
def broker_info(request):
    url = os.environ.get("WARREN_TEST_AMQP_URL")
    if url:
        u = urlparse(url)
        vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
        yield _BrokerInfo(u.hostname or "127.0.0.1", u.port or 5672, vhost,
                          unquote(u.username or "guest"),
                          unquote(u.password or "guest"),
                          http_port=int(os.environ.get(
                              "WARREN_TEST_HTTP_PORT", "15672")))
        return

    binary = os.environ.get("WARREN_BIN", DEFAULT_WARREN_BIN)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"Warren binary not found or not executable: {binary} "
                    "(build it with `cargo build`, set WARREN_BIN, or set "
                    "WARREN_TEST_AMQP_URL to test an external broker)")

    workdir = tempfile.mkdtemp(prefix="warren-pytest-")
    data_dir = os.path.join(workdir, "data")
    os.mkdir(data_dir)
    cwd = os.path.join(workdir, "cwd")
    os.mkdir(cwd)  # empty cwd: no ./rabbit.toml gets picked up
    log_path = os.path.join(workdir, "warren.log")
    amqp_port, http_port, prom_port = _free_port(), _free_port(), _free_port()
    cmd = [binary,
           "--amqp-listen", f"127.0.0.1:{amqp_port}",
           "--http-listen", f"127.0.0.1:{http_port}",
           "--prometheus-listen", f"127.0.0.1:{prom_port}",
           "--data-dir", data_dir]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    info = _BrokerInfo("127.0.0.1", amqp_port, "/", "guest", "guest",
                       process=proc, log_path=log_path, http_port=http_port)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"warren exited during startup with status "
                            f"{proc.returncode}: {' '.join(cmd)}\n"
                            f"log tail:\n{_log_tail(log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", amqp_port),
                                              timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"warren did not accept AMQP connections on port "
                            f"{amqp_port} within {STARTUP_TIMEOUT:g}s: "
                            f"{' '.join(cmd)}\nlog tail:\n{_log_tail(log_path)}")
            time.sleep(0.05)
        yield info
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        if request.session.testsfailed:
            # keep the broker log around for diagnosis
            sys.stderr.write(f"\nwarren log kept at {log_path}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(broker_info):
    """(host, port) of the AMQP listener under test."""
    return (broker_info.host, broker_info.port)


def make_params(info, **overrides):
    kw = dict(
        host=info.host,
        port=info.port,
        virtual_host=info.vhost,
        credentials=pika.PlainCredentials(info.username, info.password),
        connection_attempts=1,
        retry_delay=0,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=10,
    )
    kw.update(overrides)
    return pika.ConnectionParameters(**kw)


@pytest.fixture
def connect(broker_info):
    """Factory: connect(**ConnectionParameters overrides) -> BlockingConnection.

    Every connection opened through it is closed at teardown.
    """
    opened = []

    def _connect(**overrides):
        broker_info.check_alive()
        c = pika.BlockingConnection(make_params(broker_info, **overrides))
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        with contextlib.suppress(Exception):
            if c.is_open:
                c.close()


@pytest.fixture
def conn(connect):
    return connect()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def names(broker_info):
    """Unique queue/exchange names; the ones handed out are deleted after the test."""

    class Names:
        def __init__(self):
            self.queues = []
            self.exchanges = []

        def queue(self, tag="q"):
            n = f"warren-test-{tag}-{uuid.uuid4().hex[:12]}"
            self.queues.append(n)
            return n

        def exchange(self, tag="x"):
            n = f"warren-test-{tag}-{uuid.uuid4().hex[:12]}"
            self.exchanges.append(n)
            return n

    n = Names()
    yield n
    if not (n.queues or n.exchanges):
        return
    with contextlib.suppress(Exception):
        c = pika.BlockingConnection(make_params(broker_info))
        try:
            for q in n.queues:
                with contextlib.suppress(Exception):
                    chan = c.channel()
                    chan.queue_delete(q)
                    chan.close()
            for x in n.exchanges:
                with contextlib.suppress(Exception):
                    chan = c.channel()
                    chan.exchange_delete(x)
                    chan.close()
        finally:
            with contextlib.suppress(Exception):
                c.close()


def _pump(connection, cond, timeout=5.0):
    """Process I/O on `connection` until cond() is true or `timeout` elapses.

    Returns the final value of cond().
    """
    deadline = time.monotonic() + timeout
    while not cond():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection.process_data_events(time_limit=min(0.05, remaining))
    return cond()


@pytest.fixture
def pump():
    return _pump


def _roundtrip(chan):
    """A side-effect-free synchronous request: flushes any asynchronous
    channel error (e.g. after basic_ack / basic_publish) as ChannelClosedByBroker."""
    chan.exchange_declare("amq.direct", passive=True)


@pytest.fixture
def roundtrip():
    return _roundtrip


def _wait_for_count(chan, queue, expected, timeout=5.0):
    """Poll queue.declare(passive) until message_count == expected.

    RabbitMQ answers queue.declare (a prioritised 'stat' call inside the
    queue process) ahead of publishes still in flight, so a count read right
    after basic_publish may lag. Returns the last DeclareOk method."""
    deadline = time.monotonic() + timeout
    while True:
        ok = chan.queue_declare(queue, passive=True).method
        if ok.message_count == expected or time.monotonic() > deadline:
            return ok
        time.sleep(0.01)


@pytest.fixture
def wait_for_count():
    return _wait_for_count


def wait_get(ch, q, timeout=5.0, auto_ack=True):
    """basic.get on `q` until a message comes or `timeout` elapses: the
    last (method, properties, body) triple (method None when empty)."""
    deadline = time.monotonic() + timeout
    while True:
        r = ch.basic_get(q, auto_ack=auto_ack)
        if r[0] is not None or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def dead_letter_setup(ch, names, dl_key=None):
    """A direct dead-letter exchange, a source queue dead-lettering to it
    (with `dl_key` as its dead-letter routing key, if given) and an unbound
    dead-letter queue: (dlx, src, dlq)."""
    dlx = names.exchange("dlx")
    src, dlq = names.queue("src"), names.queue("dlq")
    ch.exchange_declare(dlx, "direct")
    args = {"x-dead-letter-exchange": dlx}
    if dl_key:
        args["x-dead-letter-routing-key"] = dl_key
    ch.queue_declare(src, arguments=args)
    ch.queue_declare(dlq)
    return dlx, src, dlq
