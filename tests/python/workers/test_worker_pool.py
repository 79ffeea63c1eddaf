"""A real Celery worker pool (prefork, pyamqp://) against the broker: tasks
spread over workers, acks_late tasks survive SIGKILL (of a pool process,
and of a whole worker), retries with a countdown, ETA/countdown tasks,
results over rpc://, remote control (inspect ping, rate_limit) and a
canvas (chain, group).

Celery's rpc:// backend does not use direct reply-to: it declares one
queue per client (named by the app's thread oid, with x-expires) and
names it in reply_to. It cannot run chords (Celery refuses them:
"The "rpc" result backend does not support chords!"), so the canvas test
runs a chain and a group.
"""

import datetime
import os
import signal
import time

import pytest
from celery import chain, group

from workerpool import celery_cli, wait_for

RESULT_TIMEOUT = 30


def test_tasks_spread_over_workers(client, start_worker):
    a = start_worker("a")
    b = start_worker("b")
    results = [client.send_task("tasks.whoami", args=(0.3,)) for _ in range(12)]
    ran = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    hosts = {r["hostname"] for r in ran}
    pids = {r["pid"] for r in ran}
    assert hosts == {a.name, b.name}, ran
    assert len(pids) >= 3, ran


def _started(workdir):
    path = os.path.join(workdir, "started")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        host, pid = f.read().split()
    return host, int(pid)


def test_acks_late_task_survives_its_pool_process_being_killed(
        client, start_worker, tmp_path):
    w = start_worker("a", concurrency=2)
    r = client.send_task("tasks.until_killed", args=(str(tmp_path),))
    host, pid = wait_for(lambda: _started(str(tmp_path)), RESULT_TIMEOUT,
                         "the task to start")
    assert host == w.name
    os.kill(pid, signal.SIGKILL)
    # task_reject_on_worker_lost: rejected with requeue, redelivered, and
    # run to completion by another pool process.
    out = r.get(timeout=RESULT_TIMEOUT)
    assert out["pid"] != pid, out
    assert out["redelivered"] is True, out


def test_acks_late_task_of_a_killed_worker_goes_to_another(
        client, start_worker, tmp_path):
    a = start_worker("a")
    b = start_worker("b")
    r = client.send_task("tasks.until_killed", args=(str(tmp_path),))
    host, _ = wait_for(lambda: _started(str(tmp_path)), RESULT_TIMEOUT,
                       "the task to start")
    victim, survivor = (a, b) if host == a.name else (b, a)
    victim.kill()
    # Its connection is gone: the unacked task goes back to the queue and
    # the other worker completes it.
    out = r.get(timeout=RESULT_TIMEOUT)
    assert out["hostname"] == survivor.name, out
    assert out["redelivered"] is True, out


def test_retries_with_countdown(client, start_worker, tmp_path):
    start_worker("a")
    sent = time.time()
    r = client.send_task("tasks.flaky", args=(str(tmp_path), 2))
    out = r.get(timeout=RESULT_TIMEOUT)
    assert out["attempts"] == 3 and out["retries"] == 2, out
    # Two retries, each after a countdown of one second.
    assert out["at"] - sent >= 2.0, out


def test_countdown_and_eta(client, start_worker):
    start_worker("a")
    sent = time.time()
    early = client.send_task("tasks.stamp", countdown=2)
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    later = client.send_task("tasks.stamp", eta=eta)
    now = client.send_task("tasks.stamp")
    ran_now = now.get(timeout=RESULT_TIMEOUT)
    ran_eta = later.get(timeout=RESULT_TIMEOUT)
    ran_countdown = early.get(timeout=RESULT_TIMEOUT)
    # Held by the worker (unacked, under a raised prefetch) until due,
    # while a task sent after them ran at once.
    assert ran_now < sent + 2, (sent, ran_now)
    assert ran_countdown >= sent + 2, (sent, ran_countdown)
    assert ran_eta >= eta.timestamp(), (eta, ran_eta)


def test_rpc_results_many_in_flight(client, start_worker):
    start_worker("a", concurrency=3)
    results = [client.send_task("tasks.add", args=(i, i)) for i in range(50)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [
        2 * i for i in range(50)]


def test_inspect_ping(worker_env, start_worker):
    w = start_worker("a")
    code, out = celery_cli(worker_env, "inspect", "ping", "-d", w.name,
                           "--timeout", "10")
    assert code == 0, out
    assert "pong" in out, out


def test_control_rate_limit(client, worker_env, start_worker):
    w = start_worker("a", concurrency=2)
    code, out = celery_cli(worker_env, "control", "rate_limit", "tasks.stamp",
                           "1/s", "-d", w.name, "--timeout", "10")
    assert code == 0, out
    assert "new rate limit set successfully" in out, out
    stamps = sorted(r.get(timeout=RESULT_TIMEOUT) for r in
                    [client.send_task("tasks.stamp") for _ in range(3)])
    # One a second, though two pool processes were free.
    assert stamps[2] - stamps[0] >= 1.5, stamps


def test_canvas_chain_and_group(client, start_worker):
    start_worker("a", concurrency=2)
    add = client.signature("tasks.add")
    c = chain(add.clone(args=(1, 2)), add.clone(args=(3,)),
              add.clone(args=(4,)))
    assert c.apply_async().get(timeout=RESULT_TIMEOUT) == 10
    g = group(add.clone(args=(i, 10)) for i in range(6))
    assert g.apply_async().get(timeout=RESULT_TIMEOUT) == [
        i + 10 for i in range(6)]
