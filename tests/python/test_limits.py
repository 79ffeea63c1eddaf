"""Vhost and user limits as pika sees them: RabbitMQ's codes and texts for
max-connections, max-queues and max-channels, set through the management
API (WARREN_TEST_HTTP_PORT for an external broker). Each test makes its own
vhost or user and deletes it afterwards."""

import base64
import json
import urllib.error
import urllib.request
import uuid

import pika
import pytest


def _api(info, method, path, body=None):
    req = urllib.request.Request(
        f"http://{info.host}:{info.http_port}/api{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None)
    auth = base64.b64encode(
        f"{info.username}:{info.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {auth}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _open(info, vhost, user=None, password=None):
    return pika.BlockingConnection(pika.ConnectionParameters(
        info.host, info.port, vhost,
        pika.PlainCredentials(user or info.username, password or info.password),
        connection_attempts=1))


@pytest.fixture
def vhost(broker_info):
    name = f"warren-lim-{uuid.uuid4().hex[:10]}"
    assert _api(broker_info, "PUT", f"/vhosts/{name}") in (201, 204)
    assert _api(broker_info, "PUT", f"/permissions/{name}/{broker_info.username}",
                {"configure": ".*", "write": ".*", "read": ".*"}) in (201, 204)
    yield name
    _api(broker_info, "DELETE", f"/vhosts/{name}")


def test_vhost_connection_limit_is_530(broker_info, vhost):
    assert _api(broker_info, "PUT", f"/vhost-limits/{vhost}/max-connections",
                {"value": 1}) == 204
    first = _open(broker_info, vhost)
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
            _open(broker_info, vhost)
        assert (f"NOT_ALLOWED - access to vhost '{vhost}' refused for user "
                f"'{broker_info.username}': connection limit (1) is reached") in str(e.value)
        assert "(530)" in str(e.value)
    finally:
        first.close()


def test_vhost_queue_limit_is_406(broker_info, vhost):
    assert _api(broker_info, "PUT", f"/vhost-limits/{vhost}/max-queues",
                {"value": 1}) == 204
    conn = _open(broker_info, vhost)
    try:
        ch = conn.channel()
        ch.queue_declare("q1")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("q2")
        assert e.value.reply_code == 406
        assert e.value.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in "
            f"vhost '{vhost}' (1) is reached")
    finally:
        conn.close()


def test_user_channel_limit_closes_the_connection_with_530(broker_info, vhost):
    user = f"warren-lim-{uuid.uuid4().hex[:10]}"
    assert _api(broker_info, "PUT", f"/users/{user}",
                {"password": "pw", "tags": ""}) in (201, 204)
    try:
        assert _api(broker_info, "PUT", f"/permissions/{vhost}/{user}",
                    {"configure": ".*", "write": ".*", "read": ".*"}) in (201, 204)
        assert _api(broker_info, "PUT", f"/user-limits/{user}/max-channels",
                    {"value": 1}) == 204
        conn = _open(broker_info, vhost, user, "pw")
        conn.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            conn.channel()
        assert e.value.reply_code == 530
        assert e.value.reply_text == (
            f"NOT_ALLOWED - number of channels opened for user '{user}' has "
            f"reached the maximum allowed user limit of (1)")
    finally:
        _api(broker_info, "DELETE", f"/users/{user}")
