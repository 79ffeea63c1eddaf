"""Routing through every exchange type, the exchange graph and its features.

Direct, fanout, topic (wildcard edge cases), headers (x-match modes, void
and type-sensitive matching), exchange-to-exchange bindings (cycles, one
copy per queue), alternate exchanges, sender-selected distribution (CC and
BCC), the x-consistent-hash exchange (RabbitMQ's
rabbitmq_consistent_hash_exchange plugin must be enabled when the suite runs
against RabbitMQ), unknown exchange types, internal and auto-delete
exchanges.

Every expectation here was checked against RabbitMQ 3.10.
"""

import collections
import time

import pika
import pytest

Closed = pika.exceptions.ChannelClosedByBroker


# ------------------------------------------------------------ helpers

def _queue(ch, names, tag="q"):
    q = names.queue(tag)
    ch.queue_declare(q)
    return q


def _bound_queue(ch, names, x, *routing_keys, arguments=None):
    q = _queue(ch, names)
    for rk in routing_keys:
        ch.queue_bind(q, x, rk, arguments=arguments)
    return q


def _drain(ch, q, limit=10000):
    """All messages of `q` as (method, properties, body), acked."""
    out = []
    while len(out) < limit:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append((m, p, b))
    return out


def _bodies(ch, q):
    return [b for _, _, b in _drain(ch, q)]


def _pub(ch, x, rk, body, headers=None, **kw):
    props = pika.BasicProperties(headers=headers) if headers is not None else None
    ch.basic_publish(x, rk, body, props, **kw)


def _exchange_exists(connect, x):
    """Passive exchange.declare on a fresh channel: True, or the reply code."""
    c = connect()
    chan = c.channel()
    try:
        chan.exchange_declare(x, passive=True)
        return True
    except Closed as e:
        return e.reply_code
    finally:
        if c.is_open:
            c.close()


def _counts(ch, queues, total, timeout=5.0):
    """message_count of each queue, once they add up to `total` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [ch.queue_declare(q, passive=True).method.message_count
                  for q in queues]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def _collect_returns(ch):
    returns = []
    ch.add_on_return_callback(
        lambda chan, m, p, b: returns.append((m.reply_code, m.reply_text,
                                              m.exchange, m.routing_key, b)))
    return returns


# ------------------------------------------------------------ direct

def test_direct_exact_key_match_and_copies(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q1 = _bound_queue(ch, names, x, "key")
    q2 = _bound_queue(ch, names, x, "key")
    q_other = _bound_queue(ch, names, x, "Key")  # case-sensitive
    q_empty = _bound_queue(ch, names, x, "")
    _pub(ch, x, "key", b"k")
    _pub(ch, x, "Key", b"K")
    _pub(ch, x, "", b"empty")
    _pub(ch, x, "key.sub", b"no")
    _pub(ch, x, "*", b"star")  # no wildcards on direct exchanges
    assert _bodies(ch, q1) == [b"k"]
    assert _bodies(ch, q2) == [b"k"]
    assert _bodies(ch, q_other) == [b"K"]
    assert _bodies(ch, q_empty) == [b"empty"]


def test_direct_same_binding_twice_is_one_binding(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = _bound_queue(ch, names, x, "k", "k")
    _pub(ch, x, "k", b"once")
    assert _bodies(ch, q) == [b"once"]
    # one unbind removes the (single) binding
    ch.queue_unbind(q, x, "k")
    _pub(ch, x, "k", b"gone")
    assert _bodies(ch, q) == []


def test_default_exchange_routes_by_queue_name(ch, names):
    q = _queue(ch, names)
    _pub(ch, "", q, b"direct-to-queue")
    _pub(ch, "", q + "-nope", b"lost")
    assert _bodies(ch, q) == [b"direct-to-queue"]


# ------------------------------------------------------------ fanout

def test_fanout_ignores_routing_key_one_copy_per_queue(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    q1 = _bound_queue(ch, names, x, "")
    q2 = _bound_queue(ch, names, x, "a", "b", "c")  # three bindings
    for rk in ("", "a", "zzz", "#"):
        _pub(ch, x, rk, rk.encode() or b"-")
    assert _bodies(ch, q1) == [b"-", b"a", b"zzz", b"#"]
    assert _bodies(ch, q2) == [b"-", b"a", b"zzz", b"#"]


# ------------------------------------------------------------ topic

TOPIC_KEYS = ["", "a", "a.b", "a.x.b", "a.x.y.b", "a..b", "b", "a.a", ".",
              "a.", ".a", "x.a", "b.a.b", "..", "a.b.c"]

# binding pattern -> routing keys (of TOPIC_KEYS, in publish order) it matches
TOPIC_MATRIX = {
    "#": TOPIC_KEYS,
    "#.#": TOPIC_KEYS,
    "*": ["a", "b"],
    "*.#": [k for k in TOPIC_KEYS if k != ""],
    "#.*": [k for k in TOPIC_KEYS if k != ""],
    "a.#": ["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.a", "a.", "a.b.c"],
    "a.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b"],
    "a.#.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b"],
    "#.a": ["a", "a.a", ".a", "x.a"],
    "#.b.#": ["a.b", "a.x.b", "a.x.y.b", "a..b", "b", "b.a.b", "a.b.c"],
    "a.*": ["a.b", "a.a", "a."],
    "*.a": ["a.a", ".a", "x.a"],
    "*.*": ["a.b", "a.a", ".", "a.", ".a", "x.a"],
    "a.*.b": ["a.x.b", "a..b"],
    "a.*.#": ["a.b", "a.x.b", "a.x.y.b", "a..b", "a.a", "a.", "a.b.c"],
    "a..b": ["a..b"],
    "": [""],
    "a": ["a"],
    ".": ["."],
    "a.": ["a."],
    ".a": [".a"],
}


def test_topic_wildcard_edge_cases(ch, names):
    """`#` matches zero or more words, `*` exactly one (possibly empty) word;
    the empty routing key has no words, "a..b" has an empty middle word."""
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    queues = {p: _bound_queue(ch, names, x, p) for p in TOPIC_MATRIX}
    for k in TOPIC_KEYS:
        _pub(ch, x, k, k.encode())
    got = {p: [b.decode() for b in _bodies(ch, q)] for p, q in queues.items()}
    assert got == TOPIC_MATRIX


def test_topic_queue_bound_by_two_matching_patterns_gets_one_copy(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = _bound_queue(ch, names, x, "a.*", "#.b", "a.b", "#")
    _pub(ch, x, "a.b", b"one")
    _pub(ch, x, "a.c", b"two")
    assert _bodies(ch, q) == [b"one", b"two"]
    # removing some of the matching bindings keeps the others routing
    ch.queue_unbind(q, x, "#")
    ch.queue_unbind(q, x, "a.*")
    _pub(ch, x, "a.b", b"three")
    _pub(ch, x, "a.c", b"four")
    assert _bodies(ch, q) == [b"three"]


def test_topic_unbind_pattern_keeps_shared_prefix_patterns(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q1 = _bound_queue(ch, names, x, "a.#")
    q2 = _bound_queue(ch, names, x, "a.*")
    q3 = _bound_queue(ch, names, x, "a.b")
    ch.queue_unbind(q2, x, "a.*")
    _pub(ch, x, "a.b", b"m")
    assert _bodies(ch, q1) == [b"m"]
    assert _bodies(ch, q2) == []
    assert _bodies(ch, q3) == [b"m"]


# ------------------------------------------------------------ headers

HEADER_MESSAGES = [
    ("int1", {"a": 1}),
    ("str1", {"a": "1"}),
    ("bytes1", {"a": b"1"}),
    ("true", {"a": True}),
    ("none", None),
    ("void", {"a": None}),
    ("xa1b2", {"x-a": 1, "b": 2}),
    ("b2", {"b": 2}),
    ("xa1", {"x-a": 1}),
    ("big", {"a": 2 ** 40}),
]


def _headers_case(ch, names, bindings):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    queues = {k: _bound_queue(ch, names, x, "", arguments=args)
              for k, args in bindings.items()}
    for body, h in HEADER_MESSAGES:
        _pub(ch, x, "ignored", body.encode(), h)
    return {k: [b.decode() for b in _bodies(ch, q)] for k, q in queues.items()}


def test_headers_x_match_modes(ch, names):
    got = _headers_case(ch, names, {
        "all": {"x-match": "all", "x-a": 1, "b": 2},   # x- args ignored
        "any": {"x-match": "any", "x-a": 1, "b": 2},
        "any-only-x": {"x-match": "any", "x-a": 1},    # nothing to match
        "all-with-x": {"x-match": "all-with-x", "x-a": 1, "b": 2},
        "any-with-x": {"x-match": "any-with-x", "x-a": 1},
        "default-all": {"a": 1},                       # no x-match: all
        "empty-all": {"x-match": "all"},               # matches everything
        "empty-any": {"x-match": "any"},               # matches nothing
    })
    every = [b for b, _ in HEADER_MESSAGES]
    assert got == {
        "all": ["xa1b2", "b2"],
        "any": ["xa1b2", "b2"],
        "any-only-x": [],
        "all-with-x": ["xa1b2"],
        "any-with-x": ["xa1b2", "xa1"],
        "default-all": ["int1"],
        "empty-all": every,
        "empty-any": [],
    }


def test_headers_any_matches_one_of_several(ch, names):
    got = _headers_case(ch, names, {
        "any": {"x-match": "any", "a": 1, "b": 2},
        "all": {"x-match": "all", "a": 1, "b": 2},
    })
    assert got == {"any": ["int1", "xa1b2", "b2"], "all": []}


def test_headers_void_binding_value_matches_on_presence(ch, names):
    got = _headers_case(ch, names, {
        "void": {"x-match": "all", "a": None},
        "void-any": {"x-match": "any", "a": None, "zzz": 5},
    })
    present = ["int1", "str1", "bytes1", "true", "void", "big"]
    assert got == {"void": present, "void-any": present}


def test_headers_comparison_is_type_sensitive(ch, names):
    got = _headers_case(ch, names, {
        "str": {"x-match": "all", "a": "1"},
        "int": {"x-match": "all", "a": 1},
        "bool": {"x-match": "all", "a": True},
    })
    # a string "1" binding does not match integer 1 (nor the reverse);
    # true is not 1. (A longstr and a byte array with the same bytes are
    # both binaries to RabbitMQ, and compare equal.)
    assert got == {"str": ["str1", "bytes1"], "int": ["int1"],
                   "bool": ["true"]}


def test_headers_bad_x_match_value_is_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q = _queue(ch, names)
    with pytest.raises(Closed) as ei:
        ch.queue_bind(q, x, "", arguments={"x-match": "bogus"})
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        'PRECONDITION_FAILED - Invalid x-match field value <<"bogus">>; '
        'expected all, any, all-with-x, or any-with-x')


def test_headers_bad_x_match_type_is_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q = _queue(ch, names)
    with pytest.raises(Closed) as ei:
        ch.queue_bind(q, x, "", arguments={"x-match": 1})
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - Invalid x-match field type signedint "
        "(value 1); expected longstr")


# ------------------------------------------------------------ exchange-to-exchange

def test_e2e_chain_applies_each_exchanges_routing(ch, names):
    top = names.exchange("top")
    mid = names.exchange("mid")
    ch.exchange_declare(top, "topic")
    ch.exchange_declare(mid, "direct")
    ch.exchange_bind(mid, top, "stock.#")
    q_ibm = _bound_queue(ch, names, mid, "stock.ibm")
    q_any = _bound_queue(ch, names, top, "#")
    _pub(ch, top, "stock.ibm", b"1")
    _pub(ch, top, "stock.sun", b"2")  # reaches mid, no direct match there
    _pub(ch, top, "fx.ibm", b"3")
    assert _bodies(ch, q_ibm) == [b"1"]
    assert _bodies(ch, q_any) == [b"1", b"2", b"3"]
    ch.exchange_unbind(mid, top, "stock.#")
    _pub(ch, top, "stock.ibm", b"4")
    assert _bodies(ch, q_ibm) == []
    assert _bodies(ch, q_any) == [b"4"]


def test_e2e_cycle_terminates_one_copy_per_queue(ch, names):
    x1 = names.exchange("c1")
    x2 = names.exchange("c2")
    x3 = names.exchange("c3")
    for x in (x1, x2, x3):
        ch.exchange_declare(x, "fanout")
    ch.exchange_bind(x2, x1, "")
    ch.exchange_bind(x3, x2, "")
    ch.exchange_bind(x1, x3, "")  # x1 -> x2 -> x3 -> x1
    ch.exchange_bind(x1, x1, "")  # and a self loop
    q = _bound_queue(ch, names, x1, "")
    ch.queue_bind(q, x3, "")
    q2 = _bound_queue(ch, names, x2, "")
    _pub(ch, x2, "k", b"round")
    assert _bodies(ch, q) == [b"round"]
    assert _bodies(ch, q2) == [b"round"]
    assert ch.is_open


def test_e2e_queue_reachable_by_two_paths_gets_one_copy(ch, names):
    src = names.exchange("src")
    left = names.exchange("left")
    right = names.exchange("right")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(left, "direct")
    ch.exchange_declare(right, "topic")
    ch.exchange_bind(left, src, "")
    ch.exchange_bind(right, src, "")
    q = _bound_queue(ch, names, src, "")
    ch.queue_bind(q, left, "k")
    ch.queue_bind(q, right, "#")
    _pub(ch, src, "k", b"diamond")
    assert _bodies(ch, q) == [b"diamond"]


def test_e2e_mandatory_routed_through_binding_is_not_returned(conn, ch, names,
                                                              pump):
    src = names.exchange("src")
    dst = names.exchange("dst")
    ch.exchange_declare(src, "direct")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src, "k")
    q = _bound_queue(ch, names, dst, "")
    returns = _collect_returns(ch)
    _pub(ch, src, "k", b"through", mandatory=True)
    _pub(ch, src, "other", b"bounced", mandatory=True)
    assert pump(conn, lambda: returns)
    assert returns == [(312, "NO_ROUTE", src, "other", b"bounced")]
    m, _, b = ch.basic_get(q, auto_ack=True)
    assert b == b"through"
    assert (m.exchange, m.routing_key) == (src, "k")


# ------------------------------------------------------------ alternate exchanges

def test_alternate_exchange_gets_unroutable_messages(ch, names):
    ae = names.exchange("ae")
    x = names.exchange()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q_main = _bound_queue(ch, names, x, "k")
    q_ae = _bound_queue(ch, names, ae, "")
    _pub(ch, x, "k", b"routed")
    _pub(ch, x, "nope", b"unroutable")
    assert _bodies(ch, q_main) == [b"routed"]
    got = _drain(ch, q_ae)
    assert [b for _, _, b in got] == [b"unroutable"]
    # the original exchange and routing key are kept
    assert (got[0][0].exchange, got[0][0].routing_key) == (x, "nope")


def test_alternate_exchange_chain(ch, names):
    ae2 = names.exchange("ae2")
    ae1 = names.exchange("ae1")
    x = names.exchange()
    ch.exchange_declare(ae2, "fanout")
    ch.exchange_declare(ae1, "direct", arguments={"alternate-exchange": ae2})
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae1})
    q_x = _bound_queue(ch, names, x, "x")
    q_ae1 = _bound_queue(ch, names, ae1, "one")
    q_ae2 = _bound_queue(ch, names, ae2, "")
    _pub(ch, x, "x", b"to-x")
    _pub(ch, x, "one", b"to-ae1")
    _pub(ch, x, "two", b"to-ae2")
    assert _bodies(ch, q_x) == [b"to-x"]
    assert _bodies(ch, q_ae1) == [b"to-ae1"]
    assert _bodies(ch, q_ae2) == [b"to-ae2"]


def test_mandatory_routed_via_alternate_exchange_is_not_returned(conn, ch, names,
                                                                 pump):
    ae = names.exchange("ae")
    x = names.exchange()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q_ae = _bound_queue(ch, names, ae, "")
    returns = _collect_returns(ch)
    _pub(ch, x, "nope", b"via-ae", mandatory=True)
    assert _bodies(ch, q_ae) == [b"via-ae"]
    pump(conn, lambda: returns, timeout=0.3)
    assert returns == []


def test_mandatory_via_alternate_exchange_with_confirms_does_not_raise(ch, names):
    ae = names.exchange("ae")
    x = names.exchange()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "topic", arguments={"alternate-exchange": ae})
    q_ae = _bound_queue(ch, names, ae, "")
    ch.confirm_delivery()
    ch.basic_publish(x, "a.b", b"confirmed", mandatory=True)  # no UnroutableError
    assert _bodies(ch, q_ae) == [b"confirmed"]


def test_mandatory_unroutable_by_alternate_exchange_too_is_returned(conn, ch,
                                                                    names, pump):
    ae = names.exchange("ae")
    x = names.exchange()
    missing = names.exchange("missing")
    y = names.exchange()
    ch.exchange_declare(ae, "direct")  # no bindings
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.exchange_declare(y, "direct", arguments={"alternate-exchange": missing})
    returns = _collect_returns(ch)
    _pub(ch, x, "k", b"nowhere", mandatory=True)
    _pub(ch, y, "k", b"missing-ae", mandatory=True)
    assert pump(conn, lambda: len(returns) >= 2)
    # the return names the exchange the message was published to
    assert returns == [(312, "NO_ROUTE", x, "k", b"nowhere"),
                       (312, "NO_ROUTE", y, "k", b"missing-ae")]
    assert ch.is_open


def test_alternate_exchange_cycle_terminates(conn, ch, names, pump):
    x1 = names.exchange("ae-cycle1")
    x2 = names.exchange("ae-cycle2")
    ch.exchange_declare(x1, "direct", arguments={"alternate-exchange": x2})
    ch.exchange_declare(x2, "direct", arguments={"alternate-exchange": x1})
    q = _bound_queue(ch, names, x2, "hit")
    returns = _collect_returns(ch)
    _pub(ch, x1, "hit", b"hit", mandatory=True)
    _pub(ch, x1, "miss", b"miss1", mandatory=True)
    _pub(ch, x2, "miss", b"miss2", mandatory=True)
    assert pump(conn, lambda: len(returns) >= 2)
    assert returns == [(312, "NO_ROUTE", x1, "miss", b"miss1"),
                       (312, "NO_ROUTE", x2, "miss", b"miss2")]
    assert _bodies(ch, q) == [b"hit"]


def test_internal_exchange_can_be_an_alternate_exchange(ch, names):
    ae = names.exchange("ae")
    x = names.exchange()
    ch.exchange_declare(ae, "fanout", internal=True)
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q = _bound_queue(ch, names, ae, "")
    _pub(ch, x, "nope", b"via-internal-ae")
    assert _bodies(ch, q) == [b"via-internal-ae"]


# ------------------------------------------------------------ CC / BCC

def test_cc_and_bcc_route_to_extra_keys_bcc_is_stripped(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b")
    qc = _bound_queue(ch, names, x, "c")
    _pub(ch, x, "a", b"1", {"CC": ["b"], "BCC": ["c"], "z": 1})
    expect_headers = {"CC": ["b"], "z": 1}
    for q in (qa, qb, qc):
        got = _drain(ch, q)
        assert [b for _, _, b in got] == [b"1"]
        m, p, _ = got[0]
        assert p.headers == expect_headers  # BCC removed, CC kept
        assert m.routing_key == "a"          # the published routing key


def test_bcc_only_headers_become_empty_table(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qc = _bound_queue(ch, names, x, "c")
    _pub(ch, x, "unbound", b"2", {"BCC": ["c"]})
    got = _drain(ch, qc)
    assert [b for _, _, b in got] == [b"2"]
    assert got[0][1].headers == {}
    assert got[0][0].routing_key == "unbound"


def test_cc_duplicates_and_main_key_give_one_copy(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b")
    _pub(ch, x, "a", b"3", {"CC": ["a", "a", "b"], "BCC": ["b", "a"]})
    assert _bodies(ch, qa) == [b"3"]
    assert _bodies(ch, qb) == [b"3"]


def test_cc_header_names_are_case_sensitive(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b")
    _pub(ch, x, "a", b"4", {"cc": ["b"], "bcc": ["b"]})
    got = _drain(ch, qa)
    assert [b for _, _, b in got] == [b"4"]
    assert got[0][1].headers == {"cc": ["b"], "bcc": ["b"]}
    assert _bodies(ch, qb) == []


def test_cc_keys_use_the_exchange_type_matching(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q_stock = _bound_queue(ch, names, x, "stock.#")
    q_fx = _bound_queue(ch, names, x, "fx.*")
    _pub(ch, x, "nothing", b"5", {"CC": ["stock.ibm.nyse"], "BCC": ["fx.gbp"]})
    assert _bodies(ch, q_stock) == [b"5"]
    assert _bodies(ch, q_fx) == [b"5"]


def test_cc_non_string_elements_are_ignored(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b")
    _pub(ch, x, "a", b"6", {"CC": [1, "b"]})
    assert _bodies(ch, qa) == [b"6"]
    assert _bodies(ch, qb) == [b"6"]


def test_mandatory_routed_only_by_cc_or_bcc_is_not_returned(conn, ch, names,
                                                            pump):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qb = _bound_queue(ch, names, x, "b")
    returns = _collect_returns(ch)
    _pub(ch, x, "none", b"cc", {"CC": ["b"]}, mandatory=True)
    _pub(ch, x, "none", b"bcc", {"BCC": ["b"]}, mandatory=True)
    _pub(ch, x, "none", b"neither", {"CC": ["zz"]}, mandatory=True)
    assert pump(conn, lambda: returns)
    assert _bodies(ch, qb) == [b"cc", b"bcc"]
    pump(conn, lambda: len(returns) > 1, timeout=0.2)
    assert returns == [(312, "NO_ROUTE", x, "none", b"neither")]


@pytest.mark.parametrize("header,value,type_name", [
    ("CC", "b", "longstr"),
    ("BCC", "b", "longstr"),
    ("CC", 5, "signedint"),
    ("CC", {"a": 1}, "table"),
], ids=["cc-longstr", "bcc-longstr", "cc-signedint", "cc-table"])
def test_cc_bcc_header_that_is_not_an_array_is_406(conn, ch, names, roundtrip,
                                                   header, value, type_name):
    q = _queue(ch, names)
    _pub(ch, "", q, b"bad", {header: value})
    with pytest.raises(Closed) as ei:
        roundtrip(ch)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - invalid message: "
        f'{{unacceptable_type_in_header,"{header}",{type_name}}}')
    # the message was refused, not routed
    chan = conn.channel()
    assert chan.queue_declare(q, passive=True).method.message_count == 0


# ------------------------------------------------------------ x-consistent-hash

def test_consistent_hash_same_key_same_queue_one_copy(ch, names):
    x = names.exchange("chx")
    ch.exchange_declare(x, "x-consistent-hash")
    queues = [_bound_queue(ch, names, x, "1") for _ in range(4)]
    keys = [f"key-{i}" for i in range(40)]
    for _ in range(3):
        for k in keys:
            _pub(ch, x, k, k.encode())
    where = collections.defaultdict(list)
    total = 0
    for i, q in enumerate(queues):
        for m, _, b in _drain(ch, q):
            assert m.routing_key == b.decode()
            where[b.decode()].append(i)
            total += 1
    assert total == 3 * len(keys)  # exactly one queue per message
    for k in keys:
        assert len(where[k]) == 3 and len(set(where[k])) == 1, (k, where[k])
    # 40 keys over 4 equally weighted queues: more than one queue used
    assert len({v[0] for v in where.values()}) > 1


def test_consistent_hash_spreads_in_proportion_to_weights(ch, names):
    x = names.exchange("chx")
    ch.exchange_declare(x, "x-consistent-hash")
    q1 = _bound_queue(ch, names, x, "1")
    q3 = _bound_queue(ch, names, x, "3")
    n = 2000
    for i in range(n):
        ch.basic_publish(x, f"k{i}", b"")
    c1, c3 = _counts(ch, [q1, q3], n)
    assert c1 + c3 == n
    # expected 500 / 1500
    assert 300 <= c1 <= 700, (c1, c3)
    assert c3 >= 2 * c1, (c1, c3)


def test_consistent_hash_equal_weights_spread_evenly(ch, names):
    x = names.exchange("chx")
    ch.exchange_declare(x, "x-consistent-hash")
    qs = [_bound_queue(ch, names, x, "5") for _ in range(3)]
    n = 1500
    for i in range(n):
        ch.basic_publish(x, f"even-{i}", b"")
    counts = _counts(ch, qs, n)
    assert sum(counts) == n
    for c in counts:
        assert 300 <= c <= 700, counts


def test_consistent_hash_hash_header(ch, names):
    x = names.exchange("chx")
    ch.exchange_declare(x, "x-consistent-hash",
                        arguments={"hash-header": "hash-on"})
    qs = [_bound_queue(ch, names, x, "1") for _ in range(3)]

    # different header values, same routing key: spread over all queues
    n = 300
    for i in range(n):
        _pub(ch, x, "same-key", b"", {"hash-on": f"v{i}"})
    spread = _counts(ch, qs, n)
    assert sum(spread) == n
    assert all(c >= 40 for c in spread), spread

    # same header value, different routing keys: one queue
    for i in range(30):
        _pub(ch, x, f"rk{i}", b"", {"hash-on": "fixed"})
    after = _counts(ch, qs, n + 30)
    delta = [a - b for a, b in zip(after, spread)]
    assert sorted(delta) == [0, 0, 30], delta

    # without the header: all such messages reach one (arbitrary) queue
    for i in range(30):
        _pub(ch, x, f"rk{i}", b"", {"other": f"v{i}"})
    for i in range(10):
        _pub(ch, x, f"no-headers{i}", b"")
    final = _counts(ch, qs, n + 70)
    delta = [a - b for a, b in zip(final, after)]
    assert sorted(delta) == [0, 0, 40], delta


def test_consistent_hash_non_integer_binding_key_is_406(ch, names):
    x = names.exchange("chx")
    ch.exchange_declare(x, "x-consistent-hash")
    q = _queue(ch, names)
    with pytest.raises(Closed) as ei:
        ch.queue_bind(q, x, "abc")
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        'PRECONDITION_FAILED - The binding key must be an integer: <<"abc">>')


# ------------------------------------------------------------ exchange types and flags

def test_unknown_exchange_type_closes_connection_503(connect, names):
    c = connect()
    chan = c.channel()
    x = names.exchange()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        chan.exchange_declare(x, "no-such-type")
    assert ei.value.reply_code == 503
    assert ei.value.reply_text == (
        "COMMAND_INVALID - unknown exchange type 'no-such-type'")
    assert not c.is_open
    # and it was not created
    assert _exchange_exists(connect, x) == 404


def test_internal_exchange_refuses_direct_publish_403(conn, ch, names,
                                                      roundtrip):
    x = names.exchange("internal")
    ch.exchange_declare(x, "fanout", internal=True)
    _pub(ch, x, "", b"nope")
    with pytest.raises(Closed) as ei:
        roundtrip(ch)
    assert ei.value.reply_code == 403
    assert ei.value.reply_text == (
        f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' "
        "in vhost '/'")
    assert conn.is_open


def test_internal_exchange_routes_via_exchange_binding(ch, names):
    front = names.exchange("front")
    inner = names.exchange("internal")
    ch.exchange_declare(front, "direct")
    ch.exchange_declare(inner, "fanout", internal=True)
    ch.exchange_bind(inner, front, "k")
    q = _bound_queue(ch, names, inner, "")
    _pub(ch, front, "k", b"through-internal")
    _pub(ch, front, "other", b"not-bound")
    assert _bodies(ch, q) == [b"through-internal"]


def test_auto_delete_exchange_goes_with_last_queue_binding(connect, ch, names):
    x = names.exchange("ad")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    # never bound: stays
    assert _exchange_exists(connect, x) is True
    q1 = _bound_queue(ch, names, x, "")
    q2 = _bound_queue(ch, names, x, "")
    ch.queue_unbind(q1, x, "")
    assert _exchange_exists(connect, x) is True  # one binding left
    ch.queue_unbind(q2, x, "")
    assert _exchange_exists(connect, x) == 404


def test_auto_delete_exchange_goes_when_bound_queue_is_deleted(connect, ch,
                                                               names):
    x = names.exchange("ad")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = _bound_queue(ch, names, x, "")
    ch.queue_delete(q)
    assert _exchange_exists(connect, x) == 404


def test_auto_delete_exchange_as_e2e_source(connect, ch, names):
    src = names.exchange("ad-src")
    dst = names.exchange("ad-dst")
    ch.exchange_declare(src, "fanout", auto_delete=True)
    ch.exchange_declare(dst, "fanout", auto_delete=True)
    ch.exchange_bind(dst, src, "")
    ch.exchange_unbind(dst, src, "")
    # only the source loses its last binding
    assert _exchange_exists(connect, src) == 404
    assert _exchange_exists(connect, dst) is True


def test_auto_delete_cascades_through_exchange_bindings(connect, ch, names):
    src = names.exchange("ad-src")
    dst = names.exchange("ad-dst")
    ch.exchange_declare(src, "fanout", auto_delete=True)
    ch.exchange_declare(dst, "fanout", auto_delete=True)
    ch.exchange_bind(dst, src, "")
    q = _bound_queue(ch, names, dst, "")
    ch.queue_delete(q)  # dst loses its last binding, then src does
    assert _exchange_exists(connect, dst) == 404
    assert _exchange_exists(connect, src) == 404
