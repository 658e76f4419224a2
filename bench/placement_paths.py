"""Benchmark: jobs that go through placement (a memory request, a label, a throttled sweep) against
plain jobs, on one grid-agent, in the same run; every figure also as a ratio to the plain one.

- Latency, on an idle grid, from the start of the `Grid.submit` call (before the envelope is
  signed) to the job's process start: plain, memory (10MB), label and cpus=2 jobs, interleaved
  so that each kind sees the same machine.
- Throughput: N plain jobs, then N cells of a sweep with a memory request and max_parallel =
  the node's slots, then the same sweep with a label instead of the memory request (a memory
  request also costs the job a memory cgroup of its own: the label sweep is placement alone). Both are submitted while the node is drained and run from its resume, so
  the submission's own cost is not in either figure: jobs/s from the first start to the last end;
  the median of `--rounds` rounds, plain and sweep alternated.

Run by bench/throughput.py (its `--placement-only` runs just this part), or on its own:

    python bench/placement_paths.py [--jobs 300] [--sweep-cells 1000] [--latency-samples 100]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gridcore import keys  # noqa: E402
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec, Resources  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402

KINDS = {
    "plain": Resources(),
    "memory": Resources(memory=10_000_000),
    "label": Resources(labels=("bench",)),
    "cpus2": Resources(cpus=2),
}
"""The latency kinds: a plain job and three that go through placement."""


def _p(lat: list[float], q: float) -> float:
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(len(lat) * q))]


def wait_done(r: redis.Redis, ids: list[str], timeout: float = 900) -> None:
    """Until every job of `ids` is finished or failed (the bench's own poll, pipelined)."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        with r.pipeline(transaction=False) as p:
            for i in pending:
                p.hget(keys.rq_job(i), "status")
            st = p.execute()
        pending = [i for i, s in zip(pending, st, strict=True) if s not in (b"finished", b"failed")]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs did not finish")
        time.sleep(0.02)


def _span(grid: Grid, ids: list[str]) -> float:
    """Seconds from the first process start to the last end (the grid's own timestamps)."""
    jobs = [grid.get(i) for i in ids]
    return max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)


def _drained_run(grid: Grid, r: redis.Redis, node: str, specs: list[JobSpec], groups: dict | None = None) -> float:
    """Jobs/s of `specs` submitted while `node` is drained, run from its resume."""
    grid.drain(node, "bench: queueing a batch")
    ids = grid.submit_many(specs, groups=groups)
    grid.resume(node)
    wait_done(r, ids)
    failed = [i for i in ids if r.hget(keys.rq_job(i), "status") != b"finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} bench jobs failed, e.g. {failed[0]}")
    return len(ids) / _span(grid, ids)


def run(broker_url: str, home: Path, jobs: int, cells: int, samples: int, rounds: int = 3) -> dict:
    r = redis.Redis.from_url(broker_url)
    r.flushdb()
    grid = Grid(r, load_settings(overrides={"redis_url": broker_url}))
    cfg = home / "placement-agent.toml"
    cfg.write_text(f'redis_url = "{broker_url}"\n[agent]\nnode_name = "bench"\nallow_root = true\n'
                   f'labels = ["bench"]\n')
    agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not r.hget("grid:node:bench", "ready"):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench agent did not become ready")
            time.sleep(0.1)
        slots = int(r.hget("grid:node:bench", "slots") or 0)
        time.sleep(1.0)
        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(samples):
            for kind, res in KINDS.items():
                jid = grid.submit(JobSpec(command="true", resources=res))
                wait_done(r, [jid])
                j = grid.get(jid)
                lat[kind].append((j.started_at - j.enqueued_at) * 1000)
        plain_runs, sweep_runs, label_runs = [], [], []
        for _ in range(rounds):  # alternated, so that all see the same machine (it is shared)
            plain_runs.append(_drained_run(grid, r, "bench", [JobSpec(command="true") for _ in range(jobs)]))
            for res, runs in ((KINDS["memory"], sweep_runs), (KINDS["label"], label_runs)):
                gid = uuid.uuid4().hex
                sweep = [JobSpec(command="true", resources=res, group=gid, params={"i": i, "_cell": i})
                         for i in range(cells)]
                runs.append(_drained_run(grid, r, "bench", sweep, {gid: {"name": "bench", "max_parallel": slots}}))
        plain_jobs, sweep_jobs = statistics.median(plain_runs), statistics.median(sweep_runs)
        label_jobs = statistics.median(label_runs)
    finally:
        agent.terminate()
        agent.wait(60)
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    out: dict = {"slots": slots, "latency_samples": samples}
    for k in KINDS:
        out[f"{k}_submit_call_to_process_p50_ms"] = p50[k]
        out[f"{k}_submit_call_to_process_p99_ms"] = _p(lat[k], 0.99)
        if k != "plain":
            out[f"{k}_p50_vs_plain"] = p50[k] / p50["plain"]
    out.update({"plain_jobs": jobs, "plain_jobs_per_s": plain_jobs, "sweep_cells": cells,
                "throttled_memory_sweep_jobs_per_s": sweep_jobs,
                "throttled_sweep_vs_plain": sweep_jobs / plain_jobs, "rounds": rounds,
                "throttled_label_sweep_jobs_per_s": label_jobs, "throttled_label_sweep_vs_plain": label_jobs / plain_jobs,
                "throttled_label_sweep_jobs_per_s_each": label_runs,
                "plain_jobs_per_s_each": plain_runs, "throttled_memory_sweep_jobs_per_s_each": sweep_runs})
    return out


def report(out: dict) -> str:
    """The figures as the table bench/throughput.py prints."""
    lines = [f"placement paths, one grid-agent with {out['slots']} slots:",
             f"  {'job kind':<10}{'p50 ms':>10}{'p99 ms':>10}{'p50 vs plain':>15}"]
    for k in KINDS:
        ratio = out.get(f"{k}_p50_vs_plain")
        lines.append(f"  {k:<10}{out[f'{k}_submit_call_to_process_p50_ms']:>10.2f}"
                     f"{out[f'{k}_submit_call_to_process_p99_ms']:>10.2f}"
                     f"{(f'{ratio:.2f}x' if ratio else '1x'):>15}")
    lines.append(f"  median of {out['rounds']} rounds: {out['plain_jobs']} plain jobs: {out['plain_jobs_per_s']:.0f} jobs/s; "
                 f"{out['sweep_cells']}-cell memory sweep, max_parallel {out['slots']}: "
                 f"{out['throttled_memory_sweep_jobs_per_s']:.0f} jobs/s "
                 f"({out['throttled_sweep_vs_plain']:.0%} of plain); the same with a label instead: "
                 f"{out['throttled_label_sweep_jobs_per_s']:.0f} jobs/s ({out['throttled_label_sweep_vs_plain']:.0%})")
    return "\n".join(lines)


def main() -> None:
    import argparse
    import json
    import os
    import tempfile

    from gridcore.signing import generate_key
    from tests.support.brokers import Broker, available_kinds

    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--sweep-cells", type=int, default=300)
    p.add_argument("--latency-samples", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (plain and sweep alternated)")
    p.add_argument("--broker", choices=sorted(available_kinds()), default="redis" if "redis" in available_kinds() else None)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    broker = Broker(kind=args.broker, binary=available_kinds()[args.broker]).start(appendonly=True)
    try:
        out = run(broker.url, home, args.jobs, args.sweep_cells, args.latency_samples, args.rounds)
    finally:
        broker.stop()
    print(report(out))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
