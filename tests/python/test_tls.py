"""AMQPS and HTTPS with pika and Python's ssl module: TLS with the broker's
certificate, SASL EXTERNAL with a client certificate (offered only when
auth_mechanisms lists it; the user is the certificate's subject DN, or its CN
with ssl_cert_login_from = "common_name"), fail_if_no_peer_cert, and the
management API over HTTPS.

The certificates are made by tests/pika_suite.rs (rcgen) and passed in
WARREN_TEST_TLS_DIR: ca.pem, server.pem/.key, client.pem/.key (CN
tls-user), dn.pem/.key (C=GB, O=Test, CN=tls-user), stranger.pem/.key
(CN no-such-user, same CA), rogue.pem/.key
(CN tls-user, another CA). These tests start Warren brokers of their own
(with a rabbit.toml naming those files); they are skipped when the suite
runs against an outside broker (WARREN_TEST_AMQP_URL).
"""

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pika
import pytest

from conftest import DEFAULT_WARREN_BIN, STARTUP_TIMEOUT, _free_port, _log_tail

TLS_DIR = os.environ.get("WARREN_TEST_TLS_DIR")
TLS_USER = "tls-user"
# The subject of dn.pem as RabbitMQ writes it (RFC 4514 order).
DN_USER = "CN=tls-user,O=Test,C=GB"
# EXTERNAL listed after RabbitMQ's defaults, the user taken from the CN.
EXTERNAL_BY_CN = """auth_mechanisms = ["PLAIN", "AMQPLAIN", "EXTERNAL"]
ssl_cert_login_from = "common_name"
"""

pytestmark = pytest.mark.skipif(
    not TLS_DIR or bool(os.environ.get("WARREN_TEST_AMQP_URL")),
    reason="needs WARREN_TEST_TLS_DIR (set by tests/pika_suite.rs) and a "
           "Warren started by the suite")


def cert(name):
    return os.path.join(TLS_DIR, name)


class TlsBroker:
    """A Warren binary with AMQPS and HTTPS listeners, on its own ports and
    data directory; stopped (and its directory removed) by stop()."""

    def __init__(self, fail_if_no_peer_cert, auth=EXTERNAL_BY_CN, user=TLS_USER):
        self.workdir = tempfile.mkdtemp(prefix="warren-pytest-tls-")
        self.amqps_port, self.https_port = _free_port(), _free_port()
        amqp, http, prom = _free_port(), _free_port(), _free_port()
        fail = "true" if fail_if_no_peer_cert else "false"
        config = f"""
[listeners]
amqp = "127.0.0.1:{amqp}"
http = "127.0.0.1:{http}"
prometheus = "127.0.0.1:{prom}"
ssl = "127.0.0.1:{self.amqps_port}"

[storage]
data_dir = "{os.path.join(self.workdir, 'data')}"

[ssl_options]
cacertfile = "{cert('ca.pem')}"
certfile = "{cert('server.pem')}"
keyfile = "{cert('server.key')}"
verify = "verify_peer"
fail_if_no_peer_cert = {fail}

[management.ssl]
listeners = "127.0.0.1:{self.https_port}"
certfile = "{cert('server.pem')}"
keyfile = "{cert('server.key')}"

[auth]
{auth}
[[auth.users]]
name = "{user}"
password = "{uuid.uuid4().hex}"
"""
        path = os.path.join(self.workdir, "rabbit.toml")
        with open(path, "w") as f:
            f.write(config)
        self.log_path = os.path.join(self.workdir, "warren.log")
        self.log = open(self.log_path, "wb")
        binary = os.environ.get("WARREN_BIN", DEFAULT_WARREN_BIN)
        self.proc = subprocess.Popen([binary, "--config", path], cwd=self.workdir,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for port in (self.amqps_port, self.https_port):
            while True:
                if self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"warren exited during startup: "
                                f"{_log_tail(self.log_path)}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("warren's TLS listeners did not come up")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker():
    b = TlsBroker(fail_if_no_peer_cert=False)
    yield b
    b.stop()


def context(client=None):
    """Trusts the test CA; presents the client certificate `client`."""
    ctx = ssl.create_default_context(cafile=cert("ca.pem"))
    if client:
        ctx.load_cert_chain(cert(f"{client}.pem"), cert(f"{client}.key"))
    return ctx


def amqps(broker, client=None, credentials=None):
    params = pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqps_port,
        ssl_options=pika.SSLOptions(context(client), "localhost"),
        credentials=credentials or pika.PlainCredentials("guest", "guest"),
        connection_attempts=1, retry_delay=0, socket_timeout=5,
        stack_timeout=10, blocked_connection_timeout=10)
    return pika.BlockingConnection(params)


def https_get(broker, path, user="guest", password="guest"):
    req = urllib.request.Request(f"https://localhost:{broker.https_port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, context=context(), timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def roundtrip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"over tls")
    for _ in range(100):
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method:
            return body
        time.sleep(0.01)
    return None


def test_plain_login_over_tls(tls_broker):
    conn = amqps(tls_broker)
    try:
        assert roundtrip(conn) == b"over tls"
    finally:
        conn.close()


def test_external_login_takes_the_certificate_cn(tls_broker):
    conn = amqps(tls_broker, client="client",
                 credentials=pika.credentials.ExternalCredentials())
    try:
        assert roundtrip(conn) == b"over tls"
        status, conns = https_get(tls_broker, "/api/connections")
        assert status == 200
        mine = [c for c in conns if c["auth_mechanism"] == "EXTERNAL"]
        assert [c["user"] for c in mine] == [TLS_USER], conns
        assert mine[0]["ssl"] is True
    finally:
        conn.close()


def test_external_for_an_unknown_cn_is_refused_403(tls_broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        amqps(tls_broker, client="stranger",
              credentials=pika.credentials.ExternalCredentials())
    assert str(ei.value) == (
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused "
        "using authentication mechanism EXTERNAL. For details see the broker logfile.'")


def test_external_without_a_client_certificate_is_refused_403(tls_broker):
    # Offered on every TLS connection, as RabbitMQ: the login is refused.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        amqps(tls_broker, credentials=pika.credentials.ExternalCredentials())
    assert "(403)" in str(ei.value)


def test_external_login_takes_the_subject_dn_by_default():
    broker = TlsBroker(fail_if_no_peer_cert=False,
                       auth='auth_mechanisms = ["PLAIN", "AMQPLAIN", "EXTERNAL"]\n',
                       user=DN_USER)
    try:
        conn = amqps(broker, client="dn",
                     credentials=pika.credentials.ExternalCredentials())
        try:
            assert roundtrip(conn) == b"over tls"
            _, conns = https_get(broker, "/api/connections")
            assert [c["user"] for c in conns] == [DN_USER], conns
        finally:
            conn.close()
        # The CN alone is nobody's name in this mode.
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            amqps(broker, client="client",
                  credentials=pika.credentials.ExternalCredentials())
    finally:
        broker.stop()


def test_external_is_not_offered_unless_listed():
    broker = TlsBroker(fail_if_no_peer_cert=False, auth="")
    try:
        # pika refuses on its side when the broker does not offer EXTERNAL.
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            amqps(broker, client="client",
                  credentials=pika.credentials.ExternalCredentials())
        conn = amqps(broker, client="client")
        conn.close()
    finally:
        broker.stop()


def test_a_certificate_from_another_ca_is_refused(tls_broker):
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(tls_broker, client="rogue",
              credentials=pika.credentials.ExternalCredentials())


def test_management_api_over_https(tls_broker):
    status, overview = https_get(tls_broker, "/api/overview")
    assert status == 200
    protocols = {(l["protocol"], l["port"]) for l in overview["listeners"]}
    assert ("https", tls_broker.https_port) in protocols, protocols
    assert ("amqp/ssl", tls_broker.amqps_port) in protocols, protocols
    with pytest.raises(urllib.error.HTTPError) as ei:
        https_get(tls_broker, "/api/overview", password="wrong")
    assert ei.value.code == 401


def test_fail_if_no_peer_cert_refuses_a_client_without_one():
    broker = TlsBroker(fail_if_no_peer_cert=True)
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            amqps(broker)
        conn = amqps(broker, client="client")
        try:
            assert roundtrip(conn) == b"over tls"
        finally:
            conn.close()
    finally:
        broker.stop()
