"""Jobs/s and submit->start latency: the seed scaffold (plain `rq worker`) vs one grid-agent.

One invocation, one freshly started broker, the same N trivial jobs (`true` and `echo`) for
each contender. Prints a table and, last, one JSON object with every figure.

Submit->start latency is measured for every contender the same way, from RQ's `enqueued_at`
to RQ's `started_at` on an idle grid, one job at a time; for the agent also from the start of
the `Grid.submit` call (before the envelope is signed) to the job's process start (the slot's
stamp, just before it spawns the command or releases its shell held at the gate: agent/runner.py
`hold`), and to the command itself running (`date +%s.%N`, its own clock:
the spawn counted, for Celery as well).

Then the placement paths (bench/placement_paths.py): jobs with a memory request, a label or
2 CPUs, and throttled sweeps, against plain jobs on the same agent, as ratios.

    python bench/throughput.py [--jobs 1000] [--latency-samples 200] [--broker redis|valkey]
                               [--sweep-cells 1000] [--placement-only] [--vs-celery]

`--vs-celery`: the agent and Celery only, the same jobs and samples (no seed, CLI, bulk or
placement figures), for a quick A/B of the engine.
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
from datetime import datetime
from pathlib import Path

import psutil
import redis
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gridcore import keys  # noqa: E402
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.support.brokers import Broker, available_kinds  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import celery_peer  # noqa: E402
from celery_peer import idle_cpu  # noqa: E402
from cli_speed import bulk, cli_medians  # noqa: E402
import placement_paths  # noqa: E402
from placement_paths import wait_done  # noqa: E402

COMMANDS = ["true", "echo 'a line of output from a trivial job'"]


def _ts(v: bytes | None) -> float:
    return datetime.fromisoformat(v.decode().replace("Z", "+00:00")).timestamp() if v else 0.0


def drain_span(r: redis.Redis, ids: list[str]) -> float:
    """Seconds from the first job's start to the last job's end (RQ's own timestamps)."""
    with r.pipeline(transaction=False) as p:
        for i in ids:
            p.hmget(keys.rq_job(i), "started_at", "ended_at")
        rows = p.execute()
    starts = [_ts(s) for s, _ in rows if s]
    ends = [_ts(e) for _, e in rows if e]
    return max(ends) - min(starts)


def seed_run(broker: Broker, n: int, workers: int) -> dict:
    r = broker.client()
    r.flushdb()
    q = Queue("default", connection=r)
    ids = [q.enqueue("seed_task.run_shell_task", COMMANDS[i % 2]).id for i in range(n)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    procs = [subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", broker.url, "-q",
                               "default"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    wait_done(r, ids)
    for p in procs:
        p.wait(60)
    span = drain_span(r, ids)
    lat = seed_latency(broker, env)
    return {"jobs_per_s": n / span, "span_s": span, **lat}


def seed_latency(broker: Broker, env: dict, samples: int = 0) -> dict:
    r = broker.client()
    r.flushdb()
    q = Queue("default", connection=r)
    worker = subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "-u", broker.url, "-q", "default"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        lat = []
        for _ in range(samples or ARGS.latency_samples):
            job = q.enqueue("seed_task.run_shell_task", "true")
            wait_done(r, [job.id])
            enq, start = r.hmget(job.key, "enqueued_at", "started_at")
            lat.append((_ts(start) - _ts(enq)) * 1000)
        return _pcts(lat)
    finally:
        worker.terminate()
        worker.wait(30)


def _pcts(lat: list[float]) -> dict:
    lat.sort()
    return {"latency_p50_ms": statistics.median(lat), "latency_p90_ms": lat[int(len(lat) * 0.9) - 1],
            "latency_p99_ms": lat[int(len(lat) * 0.99) - 1]}


def agent_run(broker: Broker, n: int, home: Path) -> dict:
    r = broker.client()
    r.flushdb()
    settings = load_settings(overrides={"redis_url": broker.url})
    grid = Grid(r, settings)
    specs = [JobSpec(command=COMMANDS[i % 2]) for i in range(n)]
    ids = grid.submit_many(specs)
    cfg = home / "agent.toml"
    cfg.write_text(f'redis_url = "{broker.url}"\n[agent]\nnode_name = "bench"\nallow_root = true\n')
    agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_done(r, ids)
        span = drain_span(r, ids)
        slots = int(r.hget("grid:node:bench", "slots") or 0)
        time.sleep(1.5)  # idle: the slots are back in their wait, as the seed's worker is
        lat, strict = [], []
        for _ in range(ARGS.latency_samples):
            jid = grid.submit(JobSpec(command="true"))
            wait_done(r, [jid])
            # The seed's measure: RQ's enqueued_at -> started_at (both stamped by RQ's code).
            enq, start = r.hmget(keys.rq_job(jid), "enqueued_at", "started_at")
            lat.append((_ts(start) - _ts(enq)) * 1000)
            # Stricter: from the start of the submit call (before signing) to the process start.
            j = grid.get(jid)
            strict.append((j.started_at - j.enqueued_at) * 1000)
        s = _pcts(strict)
        visible = []
        for _ in range(ARGS.latency_samples):
            # Submit -> the result seen by a waiter (`Grid.wait`, woken by the job's end event).
            t0 = time.perf_counter()
            grid.wait([grid.submit(JobSpec(command="true"))], timeout=60)
            visible.append((time.perf_counter() - t0) * 1000)
        v = _pcts(visible)
        command = []
        for _ in range(ARGS.latency_samples):
            # Submit call -> the command itself running (its own clock): the spawn counted, on
            # every side, wherever a contender stamps its start.
            t0 = time.time()
            jid = grid.submit(JobSpec(command=celery_peer.COMMAND_CLOCK))
            grid.wait([jid], timeout=60)
            command.append((float(grid.get(jid).stdout) - t0) * 1000)
        c = _pcts(command)
        time.sleep(2)
        idle = idle_cpu(agent.pid, broker.proc.pid, ARGS.idle_seconds)
        # The agent is up: no "no node" note.
        cli = cli_medians(broker.url, dict(os.environ), ARGS.cli_runs) if not ARGS.vs_celery else {}
        return {"jobs_per_s": n / span, "span_s": span, "slots": slots, **_pcts(lat),
                "submit_call_to_process_p50_ms": s["latency_p50_ms"],
                "submit_call_to_process_p90_ms": s["latency_p90_ms"],
                "submit_call_to_process_p99_ms": s["latency_p99_ms"],
                "submit_to_result_visible_p50_ms": v["latency_p50_ms"],
                "submit_to_result_visible_p90_ms": v["latency_p90_ms"],
                "submit_to_result_visible_p99_ms": v["latency_p99_ms"],
                "submit_call_to_command_p50_ms": c["latency_p50_ms"], "submit_call_to_command_p90_ms": c["latency_p90_ms"],
                "submit_call_to_command_p99_ms": c["latency_p99_ms"], "idle_cpu_pct": idle, "cli": cli}
    finally:
        agent.terminate()
        agent.wait(60)


def peer_table(agent: dict, peer: dict | None) -> str:
    """The agent against Celery: jobs/s, the two latencies and idle CPU, and the ratios."""
    lines = [f"{'':<34}{'jobs/s':>9}{'submit->process p50/p90':>26}{'->result visible p50/p90':>27}{'idle CPU':>10}"
             f"{'->command ran p50/p90':>25}"]
    rows = [(f"grid-agent, {agent['slots']} slots", agent)] + ([(f"Celery prefork, {peer['workers']} procs", peer)]
                                                            if peer else [])
    for name, row in rows:
        lines.append(f"{name:<34}{row['jobs_per_s']:>9.1f}{row['submit_call_to_process_p50_ms']:>14.2f} /"
                     f"{row['submit_call_to_process_p90_ms']:>6.2f} ms{row['submit_to_result_visible_p50_ms']:>15.2f} /"
                     f"{row['submit_to_result_visible_p90_ms']:>6.2f} ms{row['idle_cpu_pct']:>9.2f}%"
                     f"{row['submit_call_to_command_p50_ms']:>13.2f} /{row['submit_call_to_command_p90_ms']:>6.2f} ms")
    if peer:
        lines.append(f"agent / Celery = {agent['jobs_per_s'] / peer['jobs_per_s']:.2f}x jobs/s (idle CPU includes "
                     f"the broker's)")
    else:
        lines.append(celery_peer.MISSING)
    return "\n".join(lines)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--broker", choices=sorted(available_kinds()), default="redis" if "redis" in available_kinds() else None)
    p.add_argument("--idle-seconds", type=float, default=20, help="Idle CPU measured over this long.")
    p.add_argument("--cli-runs", type=int, default=15, help="Runs of each command for the CLI medians.")
    p.add_argument("--each-lines", type=int, default=10000, help="Lines of the `grid submit --each` file.")
    p.add_argument("--sweep-cells", type=int, default=300, help="cells of the placement paths' sweeps (1000: the target)")
    p.add_argument("--placement-only", action="store_true", help="only the placement paths (bench/placement_paths.py)")
    p.add_argument("--vs-celery", action="store_true", help="only the agent and Celery (bench/celery_peer.py)")
    ARGS = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    broker = Broker(kind=ARGS.broker, binary=available_kinds()[ARGS.broker]).start(appendonly=True)
    if ARGS.placement_only:
        try:
            placement = placement_paths.run(broker.url, home, ARGS.jobs, ARGS.sweep_cells, ARGS.latency_samples)
        finally:
            broker.stop()
        print(placement_paths.report(placement))
        print(json.dumps({"jobs": ARGS.jobs, "broker": ARGS.broker, "placement": placement}))
        return
    if ARGS.vs_celery:
        try:
            agent = agent_run(broker, ARGS.jobs, home)
            peer = (celery_peer.run(broker.url, ARGS.jobs, agent["slots"], ARGS.latency_samples, COMMANDS,
                                    ARGS.idle_seconds, broker.proc.pid) if celery_peer.available() else None)
        finally:
            broker.stop()
        print(peer_table(agent, peer))
        print(json.dumps({"jobs": ARGS.jobs, "broker": ARGS.broker, "agent": agent, "celery": peer,
                          "ratio_vs_celery": agent["jobs_per_s"] / peer["jobs_per_s"] if peer else None}))
        return
    try:
        cores = psutil.cpu_count(logical=True)
        seed1 = seed_run(broker, ARGS.jobs, 1)
        seed_n = seed_run(broker, ARGS.jobs, cores)
        agent = agent_run(broker, ARGS.jobs, home)
        peer = (celery_peer.run(broker.url, ARGS.jobs, agent["slots"], ARGS.latency_samples, COMMANDS,
                                ARGS.idle_seconds, broker.proc.pid) if celery_peer.available() else None)
        settings = load_settings(overrides={"redis_url": broker.url})
        bulk_figures = bulk(Grid(broker.client(), settings), ARGS.jobs, ARGS.each_lines, broker.url, dict(os.environ))
        placement = placement_paths.run(broker.url, home, ARGS.jobs, ARGS.sweep_cells, ARGS.latency_samples)
    finally:
        broker.stop()
    result = {
        "jobs": ARGS.jobs, "broker": ARGS.broker, "cores": cores,
        "seed_1_worker": seed1, f"seed_{cores}_workers": seed_n, "agent": agent,
        "ratio_vs_seed_1_worker": agent["jobs_per_s"] / seed1["jobs_per_s"],
        "ratio_vs_seed_equal_workers": agent["jobs_per_s"] / seed_n["jobs_per_s"],
        "celery": peer, "ratio_vs_celery": agent["jobs_per_s"] / peer["jobs_per_s"] if peer else None,
        "bulk": bulk_figures,
        "placement": placement,
    }
    print(f"{'contender':<22}{'jobs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in (("seed, 1 rq worker", seed1), (f"seed, {cores} rq workers", seed_n),
                      (f"grid-agent, {agent['slots']} slots", agent)):
        print(f"{name:<22}{row['jobs_per_s']:>10.1f}{row['latency_p50_ms']:>10.2f}{row['latency_p99_ms']:>10.2f}")
    print(f"grid-agent, submit call (before signing) -> process start: p50 "
          f"{agent['submit_call_to_process_p50_ms']:.2f} ms, p99 {agent['submit_call_to_process_p99_ms']:.2f} ms")
    print(f"agent / seed(1 worker) = {result['ratio_vs_seed_1_worker']:.2f}x; "
          f"agent / seed({cores} workers) = {result['ratio_vs_seed_equal_workers']:.2f}x")
    print(peer_table(agent, peer))
    for name, t in agent["cli"].items():
        print(f"{name:<24} median {t['wall_ms']:7.1f} ms wall, {t['cpu_ms']:7.1f} ms CPU")
    b = bulk_figures
    print(f"{b['jobs']} jobs: loop of Grid.submit {b['loop_of_submit_s']:.2f} s, Grid.submit_many "
          f"{b['submit_many_s']:.2f} s ({b['submit_many_speedup']:.1f}x); grid submit --each of {b['each_lines']} "
          f"lines {b['each_s']:.2f} s")
    print(placement_paths.report(placement))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
