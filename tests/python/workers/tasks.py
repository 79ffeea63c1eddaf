"""The Celery app the worker-pool suite's worker processes run
(`celery -A tasks worker`). The broker URL and the task queue come from the
environment the suite sets (WARREN_CELERY_BROKER, WARREN_CELERY_QUEUE);
tasks coordinate with the test through files in the directory each is
given, so a test can see which process ran what, and kill it."""

import os
import time

from celery import Celery

app = Celery("tasks", broker=os.environ.get("WARREN_CELERY_BROKER"),
             backend="rpc://")
app.conf.update(
    task_default_queue=os.environ.get("WARREN_CELERY_QUEUE", "celery"),
    # One task at a time per pool process: the spread and redelivery
    # tests depend on no process hoarding tasks.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)

# The task priority test: the task queue is a priority queue (kombu's
# `queue_arguments`), and each pool process holds one unacknowledged task
# at a time (acks_late with the prefetch multiplier of 1), so tasks run in
# the order the queue hands them out: highest priority first.
if os.environ.get("WARREN_CELERY_MAX_PRIORITY"):
    from kombu import Queue
    app.conf.update(
        task_queues=[Queue(app.conf.task_default_queue, queue_arguments={
            "x-max-priority": int(os.environ["WARREN_CELERY_MAX_PRIORITY"])})],
        task_acks_late=True,
    )

if os.environ.get("WARREN_CELERY_CONTROL_EXPIRES"):
    app.conf.control_queue_expires = float(
        os.environ["WARREN_CELERY_CONTROL_EXPIRES"])

# A test's dead-letter queue: the task queue is declared with it (the
# client declares it the same way).
if os.environ.get("WARREN_CELERY_DLQ"):
    from kombu import Exchange, Queue
    _q = app.conf.task_default_queue
    app.conf.task_queues = [Queue(
        _q, Exchange(_q), routing_key=_q,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": os.environ["WARREN_CELERY_DLQ"]})]


def _who():
    return {"hostname": current_hostname(), "pid": os.getpid()}


def current_hostname():
    from celery import current_task
    return current_task.request.hostname if current_task else None


@app.task
def add(x, y):
    return x + y


@app.task
def stamp():
    """When it ran (the clock of this machine, shared with the test)."""
    return time.time()


@app.task
def whoami(delay=0.0):
    time.sleep(delay)
    return _who()


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def until_killed(self, workdir):
    """First run: records where it runs and waits to be killed. A run that
    finds that record (the redelivery) completes at once."""
    started = os.path.join(workdir, "started")
    if not os.path.exists(started):
        tmp = started + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{self.request.hostname} {os.getpid()}")
        os.rename(tmp, started)
        time.sleep(120)
        return {"outcome": "not killed"}
    return dict(_who(), redelivered=bool(
        (self.request.delivery_info or {}).get("redelivered")))


@app.task(bind=True, max_retries=5)
def flaky(self, workdir, failures):
    """Fails `failures` times (retried with a countdown), then succeeds."""
    path = os.path.join(workdir, "attempts")
    n = 1
    if os.path.exists(path):
        with open(path) as f:
            n = int(f.read()) + 1
    with open(path, "w") as f:
        f.write(str(n))
    if n <= failures:
        raise self.retry(countdown=1, exc=RuntimeError(f"attempt {n}"))
    return {"attempts": n, "retries": self.request.retries,
            "at": time.time()}


@app.task(bind=True, acks_late=True)
def poison(self, x):
    """Refuses its message for good: rejected without requeue, so it goes
    to the task queue's dead-letter queue if it has one."""
    from celery.exceptions import Reject
    raise Reject(f"poison {x}", requeue=False)
