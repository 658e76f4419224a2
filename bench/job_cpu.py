"""Benchmark: the CPU one trivial job costs each process of the grid, while one agent drains them.

    .venv/bin/python bench/job_cpu.py [--jobs 2000] [--slots 2]

One agent with `--slots` slots is started on a fresh private broker (Redis with AOF); once its
slots wait for work, N trivial jobs (`true` and `echo`, half each) are queued while the node is
drained, and each process's CPU time (psutil: user + system) is read before the node is resumed
and after the last job ended: the broker, the agent daemon, each slot, and the jobs' own
processes (what each slot reaped). CPU figures move less with
other load on the machine than jobs/s does, so they are what to compare between two versions
on a shared machine. Also the median duration of each script the broker ran (SLOWLOG; the
slot's pop, start and end). The last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gridcore import keys  # noqa: E402 - after the path is set
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from placement_paths import wait_done  # noqa: E402
from tests.support.brokers import Broker, available_kinds  # noqa: E402


def cpu(p: psutil.Process, children: bool = False) -> float:
    t = p.cpu_times()
    return t.children_user + t.children_system if children else t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-job-cpu-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    kind = "redis" if "redis" in available_kinds() else "valkey"
    broker = Broker(kind=kind, binary=available_kinds()[kind]).start(appendonly=True)
    agent = None
    try:
        r = broker.client()
        grid = Grid(r, load_settings(overrides={"redis_url": broker.url}))
        cfg = home / "agent.toml"
        cfg.write_text(f'redis_url = "{broker.url}"\n[agent]\nnode_name = "bench"\nslots = {args.slots}\n'
                       'allow_root = true\n')
        agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ap_ = psutil.Process(agent.pid)
        deadline = time.monotonic() + 30
        while len(ap_.children()) < args.slots or not r.exists(keys.node("bench")):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent and its slots did not start")
            time.sleep(0.05)
        time.sleep(2.0)  # the slots' own start (imports) is over: they wait for jobs
        # Queued while the node is drained, so that every job of the count runs in the window.
        grid.drain("bench", "bench: queueing the jobs")
        ids = grid.submit_many([JobSpec(command=["true", "echo 'a line of output'"][i % 2]) for i in range(args.jobs)])
        slots = ap_.children()
        procs = {"broker": psutil.Process(broker.proc.pid), "agent": ap_}
        before = {k: cpu(p) for k, p in procs.items()}
        before.update({f"slot{i}": cpu(p) for i, p in enumerate(slots)})
        before.update({f"slot{i}_jobs": cpu(p, True) for i, p in enumerate(slots)})
        grid.resume("bench")
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 1_000_000)
        t0 = time.monotonic()
        wait_done(r, ids)
        wall = time.monotonic() - t0
        after = {k: cpu(p) for k, p in procs.items()}
        after.update({f"slot{i}": cpu(p) for i, p in enumerate(slots)})
        after.update({f"slot{i}_jobs": cpu(p, True) for i, p in enumerate(slots)})
        per_job = {k: round((after[k] - before[k]) / args.jobs * 1000, 3) for k in after}
        per_job["slots"] = round(sum(v for k, v in per_job.items() if k.startswith("slot") and "_" not in k), 3)
        per_job["jobs"] = round(sum(v for k, v in per_job.items() if k.endswith("_jobs")), 3)
        scripts: dict[str, list[int]] = {}
        for e in r.slowlog_get(1_000_000):
            cmd = e["command"].split(b" ")
            if cmd[0] == b"EVALSHA":
                scripts.setdefault(cmd[1][:12].decode(), []).append(e["duration"])
        busiest = sorted(scripts.items(), key=lambda kv: -len(kv[1]))[:3]
        out = {"jobs": args.jobs, "slots": args.slots, "jobs_per_s": round(args.jobs / wall, 1),
               "ms_cpu_per_job": per_job,
               "script_median_us": {sha: statistics.median(d) for sha, d in busiest}}
        print(f"{args.jobs} jobs on {args.slots} slots: {out['jobs_per_s']} jobs/s (wall, from the resume)")
        print("ms CPU per job: " + ", ".join(f"{k} {per_job[k]}" for k in ("slots", "broker", "agent", "jobs")))
        print(json.dumps(out))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(60)
        broker.stop()


if __name__ == "__main__":
    main()
