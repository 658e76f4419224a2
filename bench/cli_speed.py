"""The shell user's costs: one `grid` command, and many jobs at once.

- CLI medians: `grid submit -- true`, `grid ls` (piped, and on a terminal: a pseudo-terminal,
  where it prints Rich's fitted table) and `grid --help`, next to `python3 -c pass`,
  `rq --help` and the floor under them all (importing typer, redis-py, pydantic and
  cryptography as the CLI does, nothing of the grid's), wall and CPU (user + system) time,
  median of `--runs`, the commands interleaved.
  Measured as a user runs them, with bytecode: a `pip install .` compiles every module, but a
  development venv is an editable install, and a session that sets PYTHONDONTWRITEBYTECODE
  (these machines do) would compile every grid module it imports, at every call (~50 ms of CPU
  more for a `grid submit` here).
  So the bench compiles the grid's packages first (`compileall`), runs the commands with
  PYTHONDONTWRITEBYTECODE removed from their environment, and discards a first round. Every
  command runs with this venv's interpreter, `python3 -c pass` too (so the floor includes the
  venv's site and its editable-install finder, which an installed wheel would not have).
- Bulk: `Grid.submit_many` of N jobs (one transaction per 500) against a loop of N
  `Grid.submit`, `--bulk-rounds` times alternating (each round's ratio, and the median), and
  `grid submit --each` of a 10,000-line file, end to end (the process included).

Run by bench/throughput.py, or alone against a broker that may be flushed:

    python bench/cli_speed.py --redis-url redis://127.0.0.1:PORT/0 [--runs 15] [--bulk-rounds 3]
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
PACKAGES = ("gridcore", "cli", "descriptors", "agent", "console")
"""The grid's import packages (compiled before the CLI is timed)."""


DEPENDENCY_FLOOR = ("import gc; gc.disable(); import cli, typer, redis; from pydantic import BaseModel; "
                    "import cryptography.hazmat.primitives.serialization, cryptography.hazmat.primitives.asymmetric.ed25519")
"""What a short command imports of its libraries (`cli` defers redis.asyncio, as for a command)."""


def _on_terminal(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`cmd` started with a pseudo-terminal as its stdout (what a user at a shell gives it),
    read to its end by a thread so that it never blocks on a full terminal."""
    import pty
    import threading

    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, env={**env, "COLUMNS": "160"}, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:  # EIO: the command ended and closed the terminal
            pass
        os.close(master)

    threading.Thread(target=drain, daemon=True).start()
    return p


def timed(cmds: dict[str, list[str]], env: dict[str, str], runs: int, terminal: frozenset[str] = frozenset()) -> dict:
    """Median wall and CPU (user + system) milliseconds of each command, interleaved, after one
    discarded round; those named in `terminal` run on a pseudo-terminal."""
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    cpus: dict[str, list[float]] = {k: [] for k in cmds}
    for k in range(runs + 1):
        for name, cmd in cmds.items():
            t = time.perf_counter()
            p = (_on_terminal(cmd, env) if name in terminal else
                 subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _, status, usage = os.wait4(p.pid, 0)
            if k:
                walls[name].append((time.perf_counter() - t) * 1000)
                cpus[name].append((usage.ru_utime + usage.ru_stime) * 1000)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
    return {name: {"wall_ms": statistics.median(walls[name]), "cpu_ms": statistics.median(cpus[name])}
            for name in cmds}


def compile_grid() -> None:
    """Bytecode for the grid's packages, as `pip install .` writes it (see the docstring)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / pkg) for pkg in PACKAGES)], check=True,
                   stdout=subprocess.DEVNULL)


def cli_medians(url: str, env: dict[str, str], runs: int) -> dict:
    """The medians of the short commands, and of the floor they stand on."""
    compile_grid()
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["GRID_REDIS_URL"] = url
    grid = str(BIN / "grid")
    cmds = {"python3 -c pass": [sys.executable, "-c", "pass"]}
    if (BIN / "rq").exists() or shutil.which("rq"):
        cmds["rq --help"] = [str(BIN / "rq") if (BIN / "rq").exists() else "rq", "--help"]
    # The floor under any `grid` command: the imports of the libraries a submit uses, as the CLI
    # imports them (collection off, redis-py's asyncio client deferred), nothing of the grid's.
    cmds["imports of typer, redis, pydantic, cryptography"] = [sys.executable, "-c", DEPENDENCY_FLOOR]
    cmds |= {"grid --help": [grid, "--help"], "grid submit -- true": [grid, "submit", "--", "true"],
             "grid ls": [grid, "ls"], "grid ls (terminal)": [grid, "ls"]}
    return timed(cmds, env, runs, terminal=frozenset({"grid ls (terminal)"}))


def bulk(grid, n: int, each_lines: int, url: str, env: dict[str, str], rounds: int = 3) -> dict:
    """submit_many against a loop of submit, `rounds` times alternating, and --each of
    `each_lines` lines."""
    from gridcore.models import JobSpec

    specs = [JobSpec(command=f"echo {i}") for i in range(n)]
    grid.redis.flushdb()
    grid.submit(specs[0])  # the key is loaded, the broker's version known
    loops, manys = [], []
    for _ in range(rounds):
        grid.redis.flushdb()
        t = time.perf_counter()
        for s in specs:
            grid.submit(s)
        loops.append(time.perf_counter() - t)
        grid.redis.flushdb()
        t = time.perf_counter()
        grid.submit_many(specs)
        manys.append(time.perf_counter() - t)
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
    ratios = [loop / many for loop, many in zip(loops, manys)]
    return {"jobs": n, "loop_of_submit_s": statistics.median(loops), "submit_many_s": statistics.median(manys),
            "submit_many_speedup": statistics.median(ratios), "speedup_each_round": ratios,
            "each_lines": each_lines, "each_s": each, "each_jobs_queued": queued}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", required=True)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--each-lines", type=int, default=10000)
    p.add_argument("--bulk-rounds", type=int, default=3)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from gridcore.client import Grid
    from gridcore.settings import load_settings

    settings = load_settings(overrides={"redis_url": a.redis_url})
    result = {"cli": cli_medians(a.redis_url, dict(os.environ), a.runs),
              "bulk": bulk(Grid.connect(settings), a.jobs, a.each_lines, a.redis_url, dict(os.environ), a.bulk_rounds)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
