"""mandatory / basic.return, publisher confirms, exchanges and routing, tx."""

import pika
import pytest

# Features of later issues: strict, so the mark must go once they work.



# ------------------------------------------------------------ mandatory

def test_mandatory_unroutable_returned_with_312_no_route(conn, ch, names, pump):
    returns = []
    ch.add_on_return_callback(lambda chan, m, p, b: returns.append((m, p, b)))
    rk = names.queue("unroutable")
    props = pika.BasicProperties(message_id="ret-1", headers={"k": "v"})
    ch.basic_publish("amq.direct", rk, b"bounce", props, mandatory=True)
    assert pump(conn, lambda: returns), "no basic.return received"
    method, rprops, body = returns[0]
    assert isinstance(method, pika.spec.Basic.Return)
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == "amq.direct"
    assert method.routing_key == rk
    assert body == b"bounce"
    assert rprops.message_id == "ret-1"
    assert rprops.headers == {"k": "v"}
    assert ch.is_open
    assert len(returns) == 1


def test_mandatory_unroutable_with_confirms_raises_unroutable(ch, names):
    ch.confirm_delivery()
    rk = names.queue("unroutable")
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish("", rk, b"nope", mandatory=True)
    assert len(ei.value.messages) == 1
    ret = ei.value.messages[0]
    assert ret.method.reply_code == 312
    assert ret.method.reply_text == "NO_ROUTE"
    assert ret.method.exchange == ""
    assert ret.method.routing_key == rk
    assert ret.body == b"nope"
    assert ch.is_open


def test_mandatory_routable_is_delivered_not_returned(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    returns = []
    ch.add_on_return_callback(lambda *a: returns.append(a))
    ch.basic_publish("", q, b"ok", mandatory=True)
    assert ch.basic_get(q, auto_ack=True)[2] == b"ok"
    pump(conn, lambda: returns, timeout=0.2)
    assert returns == []


def test_non_mandatory_unroutable_is_silently_dropped(conn, ch, names, pump,
                                                    roundtrip):
    returns = []
    ch.add_on_return_callback(lambda *a: returns.append(a))
    ch.basic_publish("amq.direct", names.queue("unroutable"), b"drop")
    roundtrip(ch)
    pump(conn, lambda: returns, timeout=0.2)
    assert returns == []
    assert ch.is_open


def test_non_mandatory_unroutable_with_confirms_is_acked(ch, names):
    ch.confirm_delivery()
    ch.basic_publish("amq.direct", names.queue("unroutable"), b"drop")  # no raise
    assert ch.is_open


def test_mandatory_to_fanout_with_no_bindings_is_returned(conn, ch, names, pump):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    returns = []
    ch.add_on_return_callback(lambda chan, m, p, b: returns.append(m))
    ch.basic_publish(x, "rk", b"x", mandatory=True)
    assert pump(conn, lambda: returns)
    assert (returns[0].reply_code, returns[0].reply_text) == (312, "NO_ROUTE")
    assert (returns[0].exchange, returns[0].routing_key) == (x, "rk")


# ------------------------------------------------------------ confirms

def test_publisher_confirms(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", q, str(i).encode())  # each waits for basic.ack
    assert ch.queue_declare(q, passive=True).method.message_count == 20


def test_publish_to_missing_exchange_closes_channel_404(conn, ch, names, roundtrip):
    x = names.exchange("missing")
    ch.basic_publish(x, "rk", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        roundtrip(ch)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
    # only the channel is closed
    assert conn.is_open
    roundtrip(conn.channel())


def test_publish_to_missing_exchange_with_confirms(ch, names):
    x = names.exchange("missing")
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_publish(x, "rk", b"x")
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_tx_commit_and_rollback(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"t1")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.basic_publish("", q, b"t2")
    ch.tx_rollback()
    assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_tx_commit_without_select(ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.tx_commit()
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def test_confirm_after_tx_select(ch):
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.confirm_delivery()
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"


# ------------------------------------------------------------ exchanges

def _bound_queue(ch, names, x, *routing_keys, arguments=None):
    q = names.queue()
    ch.queue_declare(q)
    for rk in routing_keys:
        ch.queue_bind(q, x, rk, arguments=arguments)
    return q


def _bodies(ch, q):
    out = []
    while True:
        m, _, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def test_default_exchanges_exist(ch):
    for x in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers",
              "amq.match"):
        ok = ch.exchange_declare(x, passive=True).method
        assert isinstance(ok, pika.spec.Exchange.DeclareOk)
    # redeclaring with the same (durable) attributes is fine
    ch.exchange_declare("amq.direct", "direct", durable=True)


def test_direct_exchange_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b", "a")
    ch.basic_publish(x, "a", b"1")
    ch.basic_publish(x, "b", b"2")
    ch.basic_publish(x, "c", b"3")
    assert _bodies(ch, qa) == [b"1"]
    assert _bodies(ch, qb) == [b"1", b"2"]  # two matching bindings -> one copy


def test_fanout_exchange_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    qs = [_bound_queue(ch, names, x, "ignored") for _ in range(3)]
    ch.basic_publish(x, "whatever", b"f")
    for q in qs:
        assert _bodies(ch, q) == [b"f"]


def test_topic_exchange_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q_star = _bound_queue(ch, names, x, "stock.*.nyse")
    q_hash = _bound_queue(ch, names, x, "stock.#")
    q_all = _bound_queue(ch, names, x, "#")
    q_exact = _bound_queue(ch, names, x, "stock.ibm.nyse")
    q_mid = _bound_queue(ch, names, x, "*.*.lse.#")
    for rk in ("stock.ibm.nyse", "stock.nyse", "stock", "stock.a.b.nyse",
               "fx.gbp.lse", "x.y.lse.z.w", ""):
        ch.basic_publish(x, rk, rk.encode())
    assert _bodies(ch, q_star) == [b"stock.ibm.nyse"]
    assert _bodies(ch, q_hash) == [b"stock.ibm.nyse", b"stock.nyse", b"stock",
                                   b"stock.a.b.nyse"]
    assert _bodies(ch, q_all) == [b"stock.ibm.nyse", b"stock.nyse", b"stock",
                                  b"stock.a.b.nyse", b"fx.gbp.lse",
                                  b"x.y.lse.z.w", b""]
    assert _bodies(ch, q_exact) == [b"stock.ibm.nyse"]
    assert _bodies(ch, q_mid) == [b"fx.gbp.lse", b"x.y.lse.z.w"]


def test_headers_exchange_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q_all = _bound_queue(ch, names, x, "",
                         arguments={"x-match": "all", "a": 1, "b": "two"})
    q_any = _bound_queue(ch, names, x, "",
                         arguments={"x-match": "any", "a": 1, "b": "two"})

    def pub(body, headers):
        ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"a": 1, "b": "two", "c": True})
    pub(b"only-a", {"a": 1})
    pub(b"wrong-b", {"a": 2, "b": "three"})
    pub(b"none", None)
    assert _bodies(ch, q_all) == [b"both"]
    assert _bodies(ch, q_any) == [b"both", b"only-a"]


def test_unbind_stops_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = _bound_queue(ch, names, x, "k")
    ch.basic_publish(x, "k", b"1")
    ch.queue_unbind(q, x, "k")
    ch.basic_publish(x, "k", b"2")
    assert _bodies(ch, q) == [b"1"]


def test_exchange_to_exchange_binding(ch, names):
    src = names.exchange("src")
    dst = names.exchange("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src, "a.*")
    q = _bound_queue(ch, names, dst, "")
    ch.basic_publish(src, "a.b", b"yes")
    ch.basic_publish(src, "b.a", b"no")
    assert _bodies(ch, q) == [b"yes"]


def test_deleted_exchange_stops_routing_and_is_gone(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    q = _bound_queue(ch, names, x, "")
    ch.exchange_delete(x)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
