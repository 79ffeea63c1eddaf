"""Celery task priorities against a priority queue: tasks sent with
`priority=` to a queue declared with `x-max-priority` (kombu's
`queue_arguments`) run highest priority first, in sending order within a
priority, when a worker with one pool process (acks_late, prefetch
multiplier 1) starts after they were all sent.
"""

from kombu import Queue

RESULT_TIMEOUT = 30
MAX_PRIORITY = 9


def test_tasks_run_highest_priority_first(client, worker_env, task_queue,
                                          start_worker):
    # The client declares the queue as the worker does (same arguments,
    # or the second declare is refused as inequivalent).
    client.conf.task_queues = [Queue(task_queue, queue_arguments={
        "x-max-priority": MAX_PRIORITY})]
    worker_env["WARREN_CELERY_MAX_PRIORITY"] = str(MAX_PRIORITY)
    priorities = [0, 5, 9, 1, 5, 9, 0, 3, 7, 12]  # 12: above the maximum
    results = [client.send_task("tasks.stamp", priority=p, queue=task_queue)
               for p in priorities]
    start_worker("prio", concurrency=1)
    ran_at = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    order = sorted(range(len(priorities)), key=lambda i: ran_at[i])
    expected = sorted(range(len(priorities)),
                      key=lambda i: (-min(priorities[i], MAX_PRIORITY), i))
    assert order == expected, [(priorities[i], ran_at[i]) for i in order]
