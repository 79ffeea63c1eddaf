"""Message properties, header tables and large bodies arrive unchanged.

pika can neither encode floats/short ints nor decode floats correctly (it
truncates 'f'/'d' values to int), so the header test:
  * teaches pika's encoder a few extra field types (monkeypatched for the
    test only), and
  * captures the raw content-header property bytes the client received and
    parses them with a small independent decoder that keeps every field's
    type tag, so a broker that re-encodes (say) a short int as a long int,
    or a float as anything else, fails the test.
"""

import datetime
import decimal
import hashlib
import os
import struct

import pika
import pika.data
import pika.spec
import pytest


# ------------------------------------------------------------ typed encoding

class Typed:
    """A header value pika should encode with an explicit AMQP type tag."""

    FORMATS = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "i": ">I",
               "I": ">i", "l": ">q", "f": ">f", "d": ">d"}

    def __init__(self, tag, value):
        assert tag in self.FORMATS
        self.tag = tag
        self.value = value


@pytest.fixture
def typed_encoding(monkeypatch):
    original = pika.data.encode_value

    def encode_value(pieces, value):
        if isinstance(value, Typed):
            packed = value.tag.encode() + struct.pack(Typed.FORMATS[value.tag],
                                                      value.value)
            pieces.append(packed)
            return len(packed)
        if isinstance(value, float):
            pieces.append(b"d" + struct.pack(">d", value))
            return 9
        return original(pieces, value)

    monkeypatch.setattr(pika.data, "encode_value", encode_value)


@pytest.fixture
def raw_properties(monkeypatch):
    """List that collects the raw bytes of every received BasicProperties."""
    captured = []
    original = pika.spec.BasicProperties.decode

    def decode(self, encoded, offset=0):
        captured.append(bytes(encoded[offset:]))
        return original(self, encoded, offset)

    monkeypatch.setattr(pika.spec.BasicProperties, "decode", decode)
    return captured


# ------------------------------------------------------------ raw decoding

class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        chunk = self.data[self.pos:self.pos + n]
        assert len(chunk) == n, "truncated"
        self.pos += n
        return chunk

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def shortstr(self):
        return self.take(self.unpack(">B")).decode("utf-8")

    def table(self):
        end = self.unpack(">I") + self.pos
        out = {}
        while self.pos < end:
            key = self.shortstr()
            assert key not in out, f"duplicate key {key}"
            out[key] = self.value()
        assert self.pos == end
        return out

    def value(self):
        tag = self.take(1).decode()
        if tag in Typed.FORMATS:
            # compare floats bit-exactly via their raw encoding
            fmt = Typed.FORMATS[tag]
            raw = self.take(struct.calcsize(fmt))
            return (tag, raw if tag in "fd" else struct.unpack(fmt, raw)[0])
        if tag == "t":
            return (tag, self.unpack(">B"))
        if tag == "D":
            return (tag, (self.unpack(">B"), self.unpack(">i")))
        if tag in "Sx":
            return (tag, self.take(self.unpack(">I")))
        if tag == "T":
            return (tag, self.unpack(">Q"))
        if tag == "F":
            return (tag, self.table())
        if tag == "V":
            return (tag, None)
        if tag == "A":
            end = self.unpack(">I") + self.pos
            items = []
            while self.pos < end:
                items.append(self.value())
            assert self.pos == end
            return (tag, items)
        raise AssertionError(f"unknown field type {tag!r}")


_PROPERTY_LAYOUT = [  # basic class property order, AMQP 0-9-1
    ("content_type", "shortstr"), ("content_encoding", "shortstr"),
    ("headers", "table"), ("delivery_mode", "octet"), ("priority", "octet"),
    ("correlation_id", "shortstr"), ("reply_to", "shortstr"),
    ("expiration", "shortstr"), ("message_id", "shortstr"),
    ("timestamp", "timestamp"), ("type", "shortstr"), ("user_id", "shortstr"),
    ("app_id", "shortstr"), ("cluster_id", "shortstr"),
]


def parse_basic_properties(raw):
    r = _Reader(raw)
    flags = r.unpack(">H")
    assert not flags & 1, "property flag continuation not expected"
    out = {}
    for i, (name, kind) in enumerate(_PROPERTY_LAYOUT):
        if not flags & (1 << (15 - i)):
            continue
        if kind == "shortstr":
            out[name] = r.shortstr()
        elif kind == "table":
            out[name] = r.table()
        elif kind == "octet":
            out[name] = r.unpack(">B")
        elif kind == "timestamp":
            out[name] = r.unpack(">Q")
    assert r.pos == len(raw), "trailing bytes after properties"
    return out


def _encoded(props):
    return b"".join(props.encode())


# ------------------------------------------------------------ tests

def _get_one(ch, q):
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None, "message not delivered"
    return method, props, body


FULL_HEADERS = {
    "str": "héllo wörld",
    "empty": "",
    "int": 42,
    "negative": -7,
    "long": 2 ** 40,
    "bool_true": True,
    "bool_false": False,
    "bytes": b"\x00\x01\xfe\xff",
    "decimal": decimal.Decimal("3.14"),
    "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5),
    "void": None,
    "double": 2.718281828459045,
    "float32": Typed("f", 1.5),
    "int8": Typed("b", -5),
    "uint8": Typed("B", 200),
    "int16": Typed("s", -1234),
    "uint16": Typed("u", 60000),
    "uint32": Typed("i", 4000000000),
    "array": [1, "two", True, [3, "four"], {"in": "array"}, b"bin", None],
    "empty_array": [],
    "nested": {"level1": {"level2": {"deep": [1, 2, {"x": "y"}]}, "n": 1},
               "empty": {}},
}


def test_all_properties_and_typed_headers_round_trip(
        ch, names, typed_encoding, raw_properties):
    q = names.queue()
    ch.queue_declare(q)
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=FULL_HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-123",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-456",
        timestamp=1700000000,
        type="order.created",
        user_id="guest",
        app_id="warren-tests",
        cluster_id="cluster-x",
    )
    sent_raw = _encoded(props)
    ch.basic_publish("", q, b'{"k": 1}', props)
    _, got, body = _get_one(ch, q)
    assert body == b'{"k": 1}'

    # Semantic check through pika's own decoder (except the fields pika
    # cannot decode faithfully: floats).
    assert got.content_type == "application/json"
    assert got.content_encoding == "gzip"
    assert got.delivery_mode == 2
    assert got.priority == 5
    assert got.correlation_id == "corr-123"
    assert got.reply_to == "reply.queue"
    assert got.expiration == "600000"
    assert got.message_id == "msg-456"
    assert got.timestamp == 1700000000
    assert got.type == "order.created"
    assert got.user_id == "guest"
    assert got.app_id == "warren-tests"
    assert got.cluster_id == "cluster-x"
    h = got.headers
    assert h["str"] == "héllo wörld"
    assert h["empty"] == ""
    assert h["int"] == 42 and h["negative"] == -7 and h["long"] == 2 ** 40
    assert h["bool_true"] is True and h["bool_false"] is False
    assert h["bytes"] == b"\x00\x01\xfe\xff"
    assert h["decimal"] == decimal.Decimal("3.14")
    assert h["timestamp"] == datetime.datetime(2024, 1, 2, 3, 4, 5,
                                               tzinfo=datetime.timezone.utc)
    assert h["void"] is None
    assert h["int8"] == -5 and h["uint8"] == 200
    assert h["int16"] == -1234 and h["uint16"] == 60000
    assert h["uint32"] == 4000000000
    assert h["array"] == [1, "two", True, [3, "four"], {"in": "array"}, b"bin", None]
    assert h["empty_array"] == []
    assert h["nested"] == {"level1": {"level2": {"deep": [1, 2, {"x": "y"}]}, "n": 1},
                           "empty": {}}

    # Type-exact check: every field keeps its AMQP type tag and value.
    assert len(raw_properties) == 1
    received = parse_basic_properties(raw_properties[0])
    sent = parse_basic_properties(sent_raw)
    assert received["headers"]["double"] == ("d", struct.pack(">d", 2.718281828459045))
    assert received["headers"]["float32"] == ("f", struct.pack(">f", 1.5))
    assert received == sent


def test_properties_via_consumer_and_publish_through_exchange(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.topic", "props.#")
    props = pika.BasicProperties(
        content_type="text/plain", correlation_id="c1", reply_to="r1",
        message_id="m1", timestamp=1, priority=0, delivery_mode=1,
        app_id="a", type="t", user_id="guest",
        headers={"x-custom": "yes", "n": {"a": [True, False]}})
    ch.basic_publish("amq.topic", "props.test", b"via-exchange", props)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, p, b)), auto_ack=True)
    assert pump(conn, lambda: got)
    m, p, b = got[0]
    assert b == b"via-exchange"
    assert m.exchange == "amq.topic" and m.routing_key == "props.test"
    for attr in ("content_type", "correlation_id", "reply_to", "message_id",
                 "timestamp", "priority", "delivery_mode", "app_id", "type",
                 "user_id", "headers"):
        assert getattr(p, attr) == getattr(props, attr), attr


def test_no_properties_stay_absent(ch, names, raw_properties):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"bare")
    _, p, body = _get_one(ch, q)
    assert body == b"bare"
    for attr in ("content_type", "headers", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id",
                 "timestamp", "type", "user_id", "app_id"):
        assert getattr(p, attr) is None, attr
    assert parse_basic_properties(raw_properties[0]) == {}


def test_empty_headers_table_is_kept(ch, names, raw_properties):
    # RabbitMQ keeps a present-but-empty headers table (flag set, 0-length).
    q = names.queue()
    ch.queue_declare(q)
    props = pika.BasicProperties(headers={})
    ch.basic_publish("", q, b"x", props)
    _, p, _ = _get_one(ch, q)
    assert p.headers == {}
    assert parse_basic_properties(raw_properties[0]) == {"headers": {}}


@pytest.mark.parametrize("size", [
    0, 1, 131063, 131064, 131065, 262128, 1024 * 1024, 3 * 1024 * 1024 + 7,
])
def test_body_sizes_arrive_intact(ch, names, size):
    # 131064 = frame_max (131072) - 8 bytes of frame overhead: the largest
    # body that fits in one body frame with RabbitMQ's default frame_max.
    q = names.queue()
    ch.queue_declare(q)
    body = os.urandom(size)
    ch.basic_publish("", q, body)
    _, _, got = _get_one(ch, q)
    assert len(got) == size
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


def test_large_bodies_interleaved_with_consumer(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    bodies = [os.urandom(1024 * 1024 + i) for i in range(3)]
    publisher = conn.channel()
    for b in bodies:
        publisher.basic_publish("", q, b)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert pump(conn, lambda: len(got) == 3, timeout=10)
    assert got == bodies


def test_tune_matches_rabbitmq_defaults(conn):
    # pika uses min(client, server) for frame_max/channel_max and the
    # server's heartbeat when the client does not ask for one.
    params = conn._impl.params
    assert params.frame_max == 131072
    assert params.channel_max == 2047
    assert params.heartbeat == 60
