"""Dead-lettering and expiry under a real Celery worker pool: a task that
rejects itself (`Reject(requeue=False)` with acks_late) lands in the
dead-letter queue its task queue was declared with (Celery's
`task_queues` with `queue_arguments`), carrying RabbitMQ's `x-death`;
and kombu's pidbox queues (`x-message-ttl`, `x-expires`) live on while
their worker consumes them, past their x-expires, and answer.
"""

import base64
import json
import time
import urllib.request

import pika
import pytest

from workerpool import celery_cli, wait_for

RESULT_TIMEOUT = 30


@pytest.fixture
def dead_letter_queue(names):
    return names.queue("celery-dlq")


@pytest.fixture
def worker_env(worker_env, dead_letter_queue):
    # tasks.py declares the task queue with this dead-letter queue.
    return dict(worker_env, WARREN_CELERY_DLQ=dead_letter_queue)


def _task_queues(task_queue, dlq):
    from kombu import Exchange, Queue
    return [Queue(task_queue, Exchange(task_queue), routing_key=task_queue,
                  queue_arguments={"x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": dlq})]


@pytest.fixture
def dlx_client(client, task_queue, dead_letter_queue):
    # The same declaration as the worker's, or one of them gets a 406.
    client.conf.task_queues = _task_queues(task_queue, dead_letter_queue)
    return client


def make_params(info):
    return pika.ConnectionParameters(
        host=info.host, port=info.port, virtual_host=info.vhost,
        credentials=pika.PlainCredentials(info.username, info.password))


def _get(broker_info, queue):
    c = pika.BlockingConnection(make_params(broker_info))
    try:
        chan = c.channel()
        method, props, body = chan.basic_get(queue, auto_ack=True)
        return (props, body) if method else None
    finally:
        c.close()


def test_rejected_task_lands_in_its_dead_letter_queue_with_x_death(
        dlx_client, start_worker, broker_info, task_queue, dead_letter_queue):
    c = pika.BlockingConnection(make_params(broker_info))
    c.channel().queue_declare(dead_letter_queue)
    c.close()
    start_worker("a")
    r = dlx_client.send_task("tasks.poison", args=(7,))
    props, body = wait_for(lambda: _get(broker_info, dead_letter_queue),
                           RESULT_TIMEOUT, "the rejected task's dead letter")
    h = props.headers
    assert h["task"] == "tasks.poison"
    assert h["id"] == r.id
    assert json.loads(body)[0] == [7]
    deaths = h["x-death"]
    assert len(deaths) == 1, deaths
    d = deaths[0]
    assert d["queue"] == task_queue
    assert d["reason"] == "rejected"
    assert d["count"] == 1
    # Celery publishes through the default exchange or the queue's own.
    assert d["exchange"] in ("", task_queue), d
    assert d["routing-keys"] == [task_queue]
    assert h["x-first-death-reason"] == "rejected"
    assert h["x-first-death-queue"] == task_queue


def _api(broker_info, path):
    req = urllib.request.Request(
        f"http://{broker_info.host}:{broker_info.http_port}{path}")
    cred = f"{broker_info.username}:{broker_info.password}".encode()
    req.add_header("Authorization",
                   "Basic " + base64.b64encode(cred).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _pidbox_queues(broker_info):
    return {q["name"]: q for q in _api(broker_info, "/api/queues")
            if q["name"].endswith(".celery.pidbox")}


@pytest.fixture
def short_control_expiry(worker_env):
    # kombu's pidbox queues get x-expires = control_queue_expires (10 s by
    # default); 1 s here, so the test can outlast it.
    return dict(worker_env, WARREN_CELERY_CONTROL_EXPIRES="1.0")


def test_pidbox_queues_with_x_expires_live_while_consumed(
        short_control_expiry, start_worker, broker_info):
    env = short_control_expiry
    w = start_worker("a", env=env)
    mine = {n: q for n, q in _pidbox_queues(broker_info).items()
            if n.startswith(w.name)}
    assert len(mine) == 1, mine
    (q,) = mine.values()
    assert q["arguments"]["x-expires"] == 1000, q["arguments"]
    assert q["arguments"]["x-message-ttl"] == 300000, q["arguments"]
    # Three times its x-expires: consumed, so never unused.
    time.sleep(3)
    assert any(n.startswith(w.name) for n in _pidbox_queues(broker_info))
    code, out = celery_cli(env, "inspect", "ping", "-d", w.name,
                           "--timeout", "10")
    assert code == 0 and "pong" in out, out
    # Gone with its worker (auto-delete, or x-expires at the latest).
    w.kill()
    wait_for(lambda: not any(n.startswith(w.name)
                             for n in _pidbox_queues(broker_info)),
             30, "the dead worker's pidbox queue to go")
