"""Fixtures for the worker-pool suite: real `celery worker` processes
(prefork pools) against the broker under test over pyamqp://.

The broker comes from the parent conftest (Warren started for the session,
or WARREN_TEST_AMQP_URL). Every worker runs in its own process group and is
killed with it at teardown, whatever the test did; every wait has a
deadline. Each test gets its own task queue, deleted afterwards.
"""

import contextlib
import os
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest

from workerpool import HERE, Worker, wait_for

WORKER_START_TIMEOUT = 60.0


@pytest.fixture
def celery_url(broker_info):
    return (f"pyamqp://{quote(broker_info.username, safe='')}:"
            f"{quote(broker_info.password, safe='')}@{broker_info.host}:"
            f"{broker_info.port}/{quote(broker_info.vhost, safe='')}")


@pytest.fixture
def task_queue(names):
    return names.queue("celery")


@pytest.fixture
def worker_env(celery_url, task_queue):
    env = dict(os.environ)
    env.update(WARREN_CELERY_BROKER=celery_url, WARREN_CELERY_QUEUE=task_queue,
               PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def client(celery_url, task_queue):
    """A Celery app in the test process that sends tasks by name to the
    test's queue and reads results over rpc://."""
    from celery import Celery
    app = Celery("warren-test-client", broker=celery_url, backend="rpc://")
    app.conf.update(task_default_queue=task_queue,
                    broker_connection_retry_on_startup=True,
                    task_serializer="json", result_serializer="json",
                    accept_content=["json"])
    yield app
    with contextlib.suppress(Exception):
        app.close()


@pytest.fixture
def start_worker(worker_env, task_queue, tmp_path, broker_info):
    """Factory: start_worker(name, concurrency=2) -> Worker, once it logs
    that it is ready. All are killed (process group, SIGKILL) at teardown."""
    started = []

    def _start(name, concurrency=2, env=None):
        node = f"{name}-{uuid.uuid4().hex[:6]}@warren-test"
        log_path = tmp_path / f"{name}.log"
        log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker",
               "--pool=prefork", f"--concurrency={concurrency}",
               "-Q", task_queue, "-n", node, "-l", "INFO",
               "--without-gossip", "--without-mingle"]
        proc = subprocess.Popen(cmd, cwd=HERE, env=env or worker_env, stdout=log,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        w = Worker(node, proc, log_path)
        started.append(w)

        def ready():
            broker_info.check_alive()
            if proc.poll() is not None:
                pytest.fail(f"worker {node} exited with {proc.returncode}:\n"
                            f"{w.log()[-4000:]}")
            return f"{node} ready." in w.log()

        wait_for(ready, WORKER_START_TIMEOUT, f"worker {node} to be ready")
        return w

    yield _start
    for w in started:
        w.kill()
