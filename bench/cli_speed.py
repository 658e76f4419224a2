"""The shell user's costs: one `grid` command, and many jobs at once.

- CLI medians: `grid submit -- true`, `grid ls` and `grid --help` next to `python3 -c pass`
  and `rq --help`, run as a person runs them (bytecode caches written: the first run of each
  is discarded), wall and CPU time.
- Bulk: `Grid.submit_many` of N jobs (one transaction per 500) against a loop of N
  `Grid.submit`, and `grid submit --each` of a 10,000-line file, end to end.

Run by bench/throughput.py, or alone against a broker that may be flushed:

    python bench/cli_speed.py --redis-url redis://127.0.0.1:PORT/0 [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str], runs: int) -> dict:
    """Median wall and CPU (user + system) milliseconds of `cmd`, after one discarded run."""
    walls, cpus = [], []
    for k in range(runs + 1):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        if k:
            walls.append((time.perf_counter() - t) * 1000)
            cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus)}


def cli_medians(url: str, env: dict[str, str], runs: int) -> dict:
    """The medians of the short commands, and of the floor they stand on."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["GRID_REDIS_URL"] = url
    grid = str(BIN / "grid")
    out = {"python3 -c pass": timed([sys.executable, "-c", "pass"], env, runs)}
    if (BIN / "rq").exists() or shutil.which("rq"):
        out["rq --help"] = timed([str(BIN / "rq") if (BIN / "rq").exists() else "rq", "--help"], env, runs)
    out["grid --help"] = timed([grid, "--help"], env, runs)
    out["grid submit -- true"] = timed([grid, "submit", "--", "true"], env, runs)
    out["grid ls"] = timed([grid, "ls"], env, runs)
    return out


def bulk(grid, n: int, each_lines: int, url: str, env: dict[str, str]) -> dict:
    """submit_many against a loop of submit (jobs/s each), and --each of `each_lines` lines."""
    from gridcore.models import JobSpec

    specs = [JobSpec(command=f"echo {i}") for i in range(n)]
    grid.redis.flushdb()
    grid.submit(specs[0])  # the key is loaded, the broker's version known
    t = time.perf_counter()
    for s in specs:
        grid.submit(s)
    loop = time.perf_counter() - t
    grid.redis.flushdb()
    t = time.perf_counter()
    grid.submit_many(specs)
    many = time.perf_counter() - t
    grid.redis.flushdb()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.writelines(f"echo {i}\n" for i in range(each_lines))
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["GRID_REDIS_URL"] = url
    t = time.perf_counter()
    subprocess.run([str(BIN / "grid"), "submit", "--each", f.name], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    each = time.perf_counter() - t
    os.unlink(f.name)
    queued = grid.redis.zcard("grid:jobs")
    grid.redis.flushdb()
    return {"jobs": n, "loop_of_submit_s": loop, "submit_many_s": many, "submit_many_speedup": loop / many,
            "each_lines": each_lines, "each_s": each, "each_jobs_queued": queued}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", required=True)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--each-lines", type=int, default=10000)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from gridcore.client import Grid
    from gridcore.settings import load_settings

    settings = load_settings(overrides={"redis_url": a.redis_url})
    result = {"cli": cli_medians(a.redis_url, dict(os.environ), a.runs),
              "bulk": bulk(Grid.connect(settings), a.jobs, a.each_lines, a.redis_url, dict(os.environ))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
