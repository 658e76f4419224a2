"""Celery as a measured peer of the grid: the system a Python lab would otherwise pick.

Celery (prefork pool, Redis broker and result backend) runs the seed's task (bench/seed_task.py:
`subprocess.run` of a shell command, returning its exit code and output), plus the two
timestamps the bench needs. Run by bench/throughput.py; needs the optional `bench` extra
(`pip install -e .[bench]`), and says so when it is missing.

    python bench/celery_peer.py --broker-url redis://127.0.0.1:PORT/0 [--jobs 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
MISSING = "Celery is not installed: the peer comparison needs the bench extra (pip install -e '.[bench]')"


def available() -> bool:
    """Is Celery importable here?"""
    import importlib.util

    return importlib.util.find_spec("celery") is not None


COMMAND_CLOCK = "date +%s.%N"
"""A job that prints when its command ran (its own clock, the submitter's machine): the submit
call -> command measure, which counts the spawn of the command on every side."""


def make_app(url: str):
    """The Celery app of this bench: broker and results on `url`."""
    from celery import Celery

    app = Celery("celery_peer", broker=url, backend=url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)

    @app.task(name="celery_peer.run_shell_task")
    def run_shell_task(cmd: str) -> dict:
        started = time.time()
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        return {"exit_code": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "started": started,
                "ended": time.time()}

    return app, run_shell_task


app = None
if os.environ.get("CELERY_PEER_URL"):  # the worker process imports this module by name
    app, _task = make_app(os.environ["CELERY_PEER_URL"])


def _worker(url: str, workers: int) -> subprocess.Popen:
    env = dict(os.environ, CELERY_PEER_URL=url, PYTHONPATH=str(BENCH))
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "--pool", "prefork",
                             "--concurrency", str(workers), "--loglevel", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)


def _ready(task, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            task.apply_async(args=("true",)).get(timeout=5)
            return
        except Exception:  # noqa: BLE001 - the worker is still starting
            if time.monotonic() > deadline:
                raise


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


def run(url: str, jobs: int, workers: int, samples: int, commands: list[str], idle_s: float,
        broker_pid: int | None = None) -> dict:
    """Jobs/s with `workers` processes, submit->process and submit->result-visible p50/p99 on an
    idle worker, and the idle CPU of the worker (and broker) over `idle_s` seconds."""
    import redis

    redis.Redis.from_url(url).flushdb()
    _app, task = make_app(url)
    results = [task.apply_async(args=(commands[i % len(commands)],)) for i in range(jobs)]
    worker = _worker(url, workers)
    try:
        rows = [r.get(timeout=600) for r in results]
        span = max(r["ended"] for r in rows) - min(r["started"] for r in rows)
        _ready(task)
        time.sleep(1.5)
        to_process, to_result, to_command = [], [], []
        for _ in range(samples):
            t0 = time.time()
            row = task.apply_async(args=("true",)).get(timeout=60)
            to_result.append((time.time() - t0) * 1000)
            to_process.append((row["started"] - t0) * 1000)
        for _ in range(samples):  # the command's own clock: when it really ran (bench/throughput.py)
            t0 = time.time()
            row = task.apply_async(args=(COMMAND_CLOCK,)).get(timeout=60)
            to_command.append((float(row["stdout"]) - t0) * 1000)
        time.sleep(2)
        idle = idle_cpu(worker.pid, broker_pid, idle_s)
    finally:
        _stop(worker)
    return {"jobs_per_s": jobs / span, "span_s": span, "workers": workers,
            **_pcts("submit_call_to_process", to_process), **_pcts("submit_to_result_visible", to_result),
            **_pcts("submit_call_to_command", to_command),
            "idle_cpu_pct": idle}


def idle_cpu(pid: int, broker_pid: int | None, seconds: float) -> float:
    """Percent of one core used by a process tree (and the broker) while nothing is submitted."""
    before = tree_cpu(pid) + (tree_cpu(broker_pid) if broker_pid else 0.0)
    time.sleep(seconds)
    after = tree_cpu(pid) + (tree_cpu(broker_pid) if broker_pid else 0.0)
    return (after - before) / seconds * 100


def _pcts(name: str, values: list[float]) -> dict:
    values = sorted(values)
    return {f"{name}_p50_ms": statistics.median(values), f"{name}_p90_ms": values[max(0, int(len(values) * 0.9) - 1)],
            f"{name}_p99_ms": values[max(0, int(len(values) * 0.99) - 1)]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker-url", required=True)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--idle-seconds", type=float, default=20)
    a = p.parse_args()
    if not available():
        print(MISSING)
        sys.exit(1)
    print(json.dumps(run(a.broker_url, a.jobs, a.workers, a.latency_samples, ["true"], a.idle_seconds)))


if __name__ == "__main__":
    main()
