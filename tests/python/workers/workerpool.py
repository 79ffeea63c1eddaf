"""Helpers of the worker-pool suite (a module of its own: test modules
cannot import from a conftest reliably when conftests are nested)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(cond, timeout, what):
    """Polls cond() until it returns something truthy; fails naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class Worker:
    def __init__(self, name, proc, log_path):
        self.name = name
        self.proc = proc
        self.log_path = log_path

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        """SIGKILL to the whole process group: the main process and its
        pool processes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)


def celery_cli(env, *args, timeout=60):
    """Runs the `celery` command line against the broker; returns
    (exit code, output)."""
    p = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", *args],
                       cwd=HERE, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       timeout=timeout, start_new_session=True)
    return p.returncode, p.stdout.decode("utf-8", "replace")
