"""Permissions: connection.open needs a permission in the vhost; every
method checks the configure / write / read regexes as RabbitMQ's
access-control table, with its codes and texts; user_id and impersonator;
deleting a user closes its connections. Each test makes its own user
through the management API (WARREN_TEST_HTTP_PORT for an external broker)
and deletes it afterwards."""

import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid

import pika
import pytest

CCBB = pika.exceptions.ChannelClosedByBroker
# Run against RabbitMQ (an outside broker) rather than a Warren the suite
# started: where Warren extends RabbitMQ, the tests expect RabbitMQ's answer.
ON_RABBIT = bool(os.environ.get("WARREN_TEST_AMQP_URL"))

# As tests/permissions.rs: names starting `c` are configurable, with `w`
# in their prefix writable, with `r` readable; server-named queues may be
# declared and read.
C = r"^([a-z]*c[a-z]*-|amq\.gen)"
W = r"^[a-z]*w[a-z]*-"
R = r"^([a-z]*r[a-z]*-|amq\.gen)"


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


@pytest.fixture
def user(broker_info):
    """Factory: user(perm=(c, w, r) or None, tags="") -> name (password "pw")."""
    made = []
    vh = urllib.request.quote(broker_info.vhost, safe="")

    def _user(perm=(C, W, R), tags=""):
        name = f"warren-perm-{uuid.uuid4().hex[:10]}"
        assert _api(broker_info, "PUT", f"/users/{name}",
                    {"password": "pw", "tags": tags}) in (201, 204)
        made.append(name)
        if perm is not None:
            set_perm(name, *perm)
        return name

    def set_perm(name, c, w, r):
        assert _api(broker_info, "PUT", f"/permissions/{vh}/{name}",
                    {"configure": c, "write": w, "read": r}) in (201, 204)

    _user.set_perm = set_perm
    _user.clear = lambda name: _api(
        broker_info, "DELETE", f"/permissions/{vh}/{name}")
    _user.delete = lambda name: _api(broker_info, "DELETE", f"/users/{name}")
    yield _user
    for name in made:
        _api(broker_info, "DELETE", f"/users/{name}")


@pytest.fixture
def fixtures(ch):
    """Queues and exchanges made by the admin user, deleted afterwards:
    {"c-q": name, ...} with names keeping the permission prefixes."""
    tag = uuid.uuid4().hex[:10]
    made = {}
    for p in ["c", "w", "r", "cwr"]:
        made[f"{p}-q"] = f"{p}-{tag}-q"
        ch.queue_declare(made[f"{p}-q"])
        made[f"{p}-e"] = f"{p}-{tag}-e"
        ch.exchange_declare(made[f"{p}-e"], "topic")
    made["tag"] = tag
    yield made
    for k, n in made.items():
        if k.endswith("-q"):
            ch.queue_delete(n)
        elif k.endswith("-e"):
            ch.exchange_delete(n)


def _as(connect, name):
    return connect(credentials=pika.PlainCredentials(name, "pw"))


def _refused(ei, kind, name, user, vhost="/"):
    assert ei.value.reply_code == 403, ei.value
    assert ei.value.reply_text == (
        f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' "
        f"refused for user '{user}'"), ei.value


def test_open_without_permission_is_530(connect, user, broker_info):
    u = user(perm=None)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as ei:
        _as(connect, u)
    assert (f"(530) \"NOT_ALLOWED - access to vhost '{broker_info.vhost}' "
            f"refused for user '{u}'\"") in str(ei.value)


def test_declare_needs_configure_passive_needs_none(connect, user, fixtures,
                                                    broker_info):
    u = user()
    c = _as(connect, u)
    name = f"w-{fixtures['tag']}-new"
    with pytest.raises(CCBB) as ei:
        c.channel().queue_declare(name)
    _refused(ei, "queue", name, u, broker_info.vhost)
    ch = c.channel()
    ch.queue_declare(fixtures["w-q"], passive=True)
    ch.exchange_declare(fixtures["w-e"], passive=True)
    with pytest.raises(CCBB) as ei:
        ch.exchange_declare(name, "direct")
    _refused(ei, "exchange", name, u, broker_info.vhost)


def test_server_named_queue_needs_configure(connect, user, broker_info):
    u = user(perm=("^c-", ".*", ".*"))
    with pytest.raises(CCBB) as ei:
        _as(connect, u).channel().queue_declare("")
    assert ei.value.reply_code == 403
    assert ei.value.reply_text.startswith(
        "ACCESS_REFUSED - access to queue 'amq.gen-")


def test_delete_needs_configure(connect, user, fixtures, broker_info):
    u = user()
    c = _as(connect, u)
    with pytest.raises(CCBB) as ei:
        c.channel().queue_delete(fixtures["w-q"])
    _refused(ei, "queue", fixtures["w-q"], u, broker_info.vhost)
    with pytest.raises(CCBB) as ei:
        c.channel().exchange_delete(fixtures["r-e"])
    _refused(ei, "exchange", fixtures["r-e"], u, broker_info.vhost)


def test_bind_needs_write_on_destination_read_on_source(connect, user,
                                                        fixtures, broker_info):
    u = user()
    c = _as(connect, u)
    f = fixtures
    with pytest.raises(CCBB) as ei:
        c.channel().queue_bind(f["r-q"], f["r-e"], "k")
    _refused(ei, "queue", f["r-q"], u, broker_info.vhost)
    with pytest.raises(CCBB) as ei:
        c.channel().queue_bind(f["w-q"], f["w-e"], "k")
    _refused(ei, "exchange", f["w-e"], u, broker_info.vhost)
    ch = c.channel()
    ch.queue_bind(f["w-q"], f["r-e"], "k")
    ch.queue_unbind(f["w-q"], f["r-e"], "k")
    with pytest.raises(CCBB) as ei:
        c.channel().exchange_bind(f["w-e"], f["c-e"], "k")
    _refused(ei, "exchange", f["c-e"], u, broker_info.vhost)
    c.channel().exchange_bind(f["w-e"], f["r-e"], "k")


def test_publish_needs_write_default_exchange_is_amq_default(
        connect, user, fixtures, broker_info):
    u = user()
    c = _as(connect, u)
    ch = c.channel()
    ch.confirm_delivery()
    with pytest.raises(CCBB) as ei:
        ch.basic_publish(fixtures["r-e"], "k", b"x")
    _refused(ei, "exchange", fixtures["r-e"], u, broker_info.vhost)
    ch = c.channel()
    ch.confirm_delivery()
    with pytest.raises(CCBB) as ei:
        ch.basic_publish("", fixtures["w-q"], b"x")
    _refused(ei, "exchange", "amq.default", u, broker_info.vhost)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish(fixtures["w-e"], "k", b"x")


@pytest.mark.parametrize("op", ["get", "consume", "purge"])
def test_reading_needs_read(connect, user, fixtures, broker_info, op):
    u = user()
    c = _as(connect, u)
    ch = c.channel()
    run = {
        "get": lambda q: ch.basic_get(q),
        "consume": lambda q: ch.basic_consume(q, lambda *a: None),
        "purge": lambda q: ch.queue_purge(q),
    }[op]
    run(fixtures["r-q"])
    with pytest.raises(CCBB) as ei:
        run(fixtures["w-q"])
    _refused(ei, "queue", fixtures["w-q"], u, broker_info.vhost)


def test_user_id_must_match_unless_impersonator(connect, user):
    plain = user(perm=(".*", ".*", ".*"))
    ch = _as(connect, plain).channel()
    ch.confirm_delivery()
    with pytest.raises(CCBB) as ei:
        ch.basic_publish("amq.topic", "k", b"x",
                         pika.BasicProperties(user_id="other"))
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'other' but "
        f"authenticated user was '{plain}'")
    imp = user(perm=(".*", ".*", ".*"), tags="impersonator")
    ch = _as(connect, imp).channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "k", b"x",
                     pika.BasicProperties(user_id="other"))


def test_permission_changes_apply_to_open_connections(connect, user, fixtures,
                                                      broker_info):
    u = user(perm=(".*", ".*", ".*"))
    c = _as(connect, u)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish(fixtures["w-e"], "k", b"x")
    user.set_perm(u, ".*", "^nothing$", ".*")
    # A new channel: RabbitMQ keeps a channel's granted checks cached for
    # the channel's life (Warren re-checks on the same channel too, see
    # tests/permissions.rs).
    ch = c.channel()
    ch.confirm_delivery()
    with pytest.raises(CCBB) as ei:
        ch.basic_publish(fixtures["w-e"], "k", b"x")
    _refused(ei, "exchange", fixtures["w-e"], u, broker_info.vhost)
    user.clear(u)
    name = f"c-{fixtures['tag']}-late"
    with pytest.raises(CCBB) as ei:
        c.channel().queue_declare(name)
    _refused(ei, "queue", name, u, broker_info.vhost)
    assert c.is_open


def test_deleting_a_user_closes_its_connections_320(connect, user):
    u = user(perm=(".*", ".*", ".*"))
    c = _as(connect, u)
    assert user.delete(u) == 204
    deadline = time.monotonic() + 5
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        while time.monotonic() < deadline:
            c.process_data_events(0.2)
    assert ei.value.reply_code == 320
    assert ei.value.reply_text == f"CONNECTION_FORCED - user '{u}' is deleted"


def test_topic_permissions(connect, user, broker_info, names):
    u = user(perm=(".*", ".*", ".*"))
    vh = urllib.request.quote(broker_info.vhost, safe="")
    assert _api(broker_info, "PUT", f"/topic-permissions/{vh}/{u}",
                {"exchange": "amq.topic", "write": r"^a\.{username}",
                 "read": r"^r\.{vhost}"}) == 201
    c = _as(connect, u)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", f"a.{u}.x", b"x")
    ch.basic_publish("amq.direct", "b.x", b"x")
    with pytest.raises(CCBB) as ei:
        ch.basic_publish("amq.topic", "b.x", b"x")
    assert ei.value.reply_code == 403
    assert ei.value.reply_text == (
        "ACCESS_REFUSED - access to topic 'b.x' in exchange 'amq.topic' in "
        f"vhost '{broker_info.vhost}' refused for user '{u}'")
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", f"r.{broker_info.vhost}.x")
    with pytest.raises(CCBB) as ei:
        ch.queue_bind(q, "amq.topic", "x")
    assert ei.value.reply_text == (
        "ACCESS_REFUSED - access to topic 'x' in exchange 'amq.topic' in "
        f"vhost '{broker_info.vhost}' refused for user '{u}'")
    assert _api(broker_info, "DELETE", f"/topic-permissions/{vh}/{u}") == 204
    assert _api(broker_info, "GET", f"/topic-permissions/{vh}/{u}") == 404


def test_client_id_in_topic_permissions(connect, user, broker_info):
    """RabbitMQ expands `{client_id}` only for MQTT and STOMP (their
    direct connections carry it). Warren's extension takes it, for AMQP
    0-9-1, from the `client_id` client property; without one it stays
    literal on both."""
    u = user(perm=(".*", ".*", ".*"))
    vh = urllib.request.quote(broker_info.vhost, safe="")
    assert _api(broker_info, "PUT", f"/topic-permissions/{vh}/{u}",
                {"exchange": "amq.topic", "write": r"^{client_id}\.",
                 "read": r"^{client_id}\."}) == 201
    refused = lambda key: (
        f"ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' "
        f"in vhost '{broker_info.vhost}' refused for user '{u}'")
    with_id = connect(credentials=pika.PlainCredentials(u, "pw"),
                      client_properties={"client_id": "app-7"})
    without = connect(credentials=pika.PlainCredentials(u, "pw"))
    expanded = not ON_RABBIT
    for conn, key_ok, key_refused in [
            (with_id, "app-7", "{client_id}") if expanded
            else (with_id, "{client_id}", "app-7"),
            (without, "{client_id}", "app-7")]:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", f"{key_ok}.x", b"x")
        with pytest.raises(CCBB) as ei:
            ch.basic_publish("amq.topic", f"{key_refused}.x", b"x")
        assert (ei.value.reply_code, ei.value.reply_text) == \
            (403, refused(f"{key_refused}.x"))
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", f"{key_ok}.#")
        with pytest.raises(CCBB) as ei:
            ch.queue_bind(q, "amq.topic", f"{key_refused}.#")
        assert (ei.value.reply_code, ei.value.reply_text) == \
            (403, refused(f"{key_refused}.#"))