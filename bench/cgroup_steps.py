"""Benchmark: where a memory job's extra time goes, step by step, in this machine's job cgroups.

A job with a memory request runs in a memory cgroup (agent/cgroup.py): the runner makes or
reuses a group and sets its limit, starts the job through an `sh` shim that moves itself into
the group and execs the job, reads the group's OOM count and peak at the end, then keeps or
removes the group. Each step is timed alone, `--n` times, with a pause between jobs as in a
busy slot (moving a process through `cgroup.procs` waits for an RCU grace period unless
another move happened within about one grace period). Milliseconds, median and p90.

    python bench/cgroup_steps.py [--n 50] [--gap-ms 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import cgroup  # noqa: E402
from agent.runner import CGROUP_SHIM  # noqa: E402

OLD_SHIM = 'echo $$ > "$0" 2>/dev/null; exec "$@"'
"""The shim before 2026-12: its pid into `cgroup.procs` (the kernel's global threadgroup lock)."""


def _spawn(argv: list[str]) -> None:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, close_fds=True)
    p.communicate()


def run(n: int, gap: float) -> dict[str, list[float]]:
    cgs = cgroup.JobCgroups.probe()
    if cgs is None:
        raise SystemExit("no job memory cgroups here (a writable v1 memory hierarchy or a delegated v2 subtree)")
    times: dict[str, list[float]] = {}

    def timed(step: str, f):
        t = time.perf_counter()
        out = f()
        times.setdefault(step, []).append((time.perf_counter() - t) * 1000)
        return out

    kept = cgs.acquire("bench", "bench.kept", 10_000_000)
    for i in range(n):
        time.sleep(gap)
        cg = timed("fresh: mkdir + limit", lambda: cgs.create(f"bench.{i}", 10_000_000))
        time.sleep(gap)
        timed("spawn `true`, no shim", lambda: _spawn(["true"]))
        time.sleep(gap)
        timed("spawn through the shim, no move", lambda: _spawn(["/bin/sh", "-c", CGROUP_SHIM, "/dev/null", "true"]))
        time.sleep(gap)
        timed("spawn + move: pid -> cgroup.procs", lambda: _spawn(["/bin/sh", "-c", OLD_SHIM, str(cg.procs_file), "true"]))
        time.sleep(gap)
        timed("spawn + move: 0 -> enter_file", lambda: _spawn(["/bin/sh", "-c", CGROUP_SHIM, str(cg.enter_file), "true"]))
        timed("read OOM count + peak", lambda: (cg.oom_kills(), cg.peak()))
        timed("fresh: rmdir", cg.remove)
        timed("reused: recycle (empty? residue, peak, OOM base)", kept.recycle)
        timed("reused: set limit", lambda: kept.set_limit(10_000_000))
    cgs.release(kept)
    cgs.close()
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--gap-ms", type=float, default=20.0, help="pause between steps (a slot's job rate)")
    args = p.parse_args()
    times = run(args.n, args.gap_ms / 1000)
    v2 = cgroup.JobCgroups.probe().v2
    print(f"job cgroup steps (cgroup {'v2' if v2 else 'v1'}), {args.n} each, {args.gap_ms:g} ms apart:")
    for step, ms in times.items():
        print(f"  {step:<50}{statistics.median(ms):8.3f} ms p50{sorted(ms)[int(len(ms) * 0.9)]:8.3f} ms p90")


if __name__ == "__main__":
    main()
