"""Raw-socket checks of the protocol handshake (no pika)."""

import socket
import struct

import pytest

AMQP_0_9_1 = b"AMQP\x00\x00\x09\x01"


def _recv_until_closed(sock, limit=4096):
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x08\x00",          # AMQP 0-8
    b"AMQP\x00\x01\x00\x00",          # AMQP 1.0
    b"AMQP\x01\x01\x00\x0a",          # garbage version
    b"GET / HTTP/1.1\r\n\r\n",        # not AMQP at all
], ids=["amqp-0-8", "amqp-1-0", "bad-version", "http"])
def test_unsupported_protocol_header_gets_0_9_1_header_and_close(broker, header):
    with socket.create_connection(broker, timeout=5) as s:
        s.sendall(header)
        assert _recv_until_closed(s) == AMQP_0_9_1


def test_connection_start_after_valid_header(broker):
    with socket.create_connection(broker, timeout=5) as s:
        s.sendall(AMQP_0_9_1)
        frame_type, channel, size = struct.unpack(">BHI", _recv_exact(s, 7))
        payload = _recv_exact(s, size)
        frame_end = _recv_exact(s, 1)
    assert (frame_type, channel) == (1, 0)  # method frame on channel 0
    assert frame_end == b"\xce"
    class_id, method_id, major, minor = struct.unpack_from(">HHBB", payload)
    assert (class_id, method_id) == (10, 10)  # connection.start
    assert (major, minor) == (0, 9)
    off = 6
    (table_len,) = struct.unpack_from(">I", payload, off)
    off += 4 + table_len
    (mech_len,) = struct.unpack_from(">I", payload, off)
    mechanisms = payload[off + 4:off + 4 + mech_len].split()
    off += 4 + mech_len
    (loc_len,) = struct.unpack_from(">I", payload, off)
    locales = payload[off + 4:off + 4 + loc_len].split()
    off += 4 + loc_len
    assert off == len(payload)
    assert b"PLAIN" in mechanisms
    assert b"AMQPLAIN" in mechanisms
    assert b"en_US" in locales
