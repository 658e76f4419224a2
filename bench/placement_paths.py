"""Benchmark: jobs that go through placement (a memory request, a label, a throttled sweep) against
plain jobs, on one grid-agent or on `--agents N` (distinct nodes on this machine, each with its
own data dir), in the same run; every figure also as a ratio to the plain one.

- Latency, on an idle grid, from the start of the `Grid.submit` call (before the envelope is
  signed) to the job's process start: plain, memory (10MB), label and cpus=2 jobs, interleaved
  so that each kind sees the same machine.
- Throughput: N plain jobs, then N cells of a sweep with a memory request and max_parallel =
  the node's slots, then the same sweep with a label instead of the memory request (a memory
  request also costs the job a memory cgroup of its own: the label sweep is placement alone). Both are submitted while the node is drained and run from its resume, so
  the submission's own cost is not in either figure: jobs/s from the first start to the last end;
  the median of `--rounds` rounds, plain and sweep alternated. With several agents every node is
  drained and resumed together; the sweep's max_parallel is the grid's slots.
- A chain of dependents (a->b->c..., each with a memory request, so each goes through placement
  when its parent ends): the median gap from a parent's end to its child's start.
- Full, then freed: every slot of the grid runs a job that waits for a gate file while as many
  jobs with a memory request are submitted; the gate opens; the gap from the first blocker's end
  to the last waiting job's start, and where the waiting jobs ran (no node may be starved).
- CPU per job (psutil, user + system) of the broker, the agents, their slots and the jobs the
  slots reaped, over the throughput rounds: less disturbed by other load than the rates.
- The broker's commands per job (INFO commandstats) over the throughput rounds: scripts, blocking
  moves and wake-stream reads per job show a nudge ping-pong or a wake storm where there is one.

Run by bench/throughput.py (its `--placement-only` runs just this part), or on its own:

    python bench/placement_paths.py [--agents 3] [--slots 2] [--jobs 300] [--sweep-cells 1000]
                                    [--latency-samples 100]
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


WINDOW = 64
"""Jobs read per poll by wait_done."""
DONE = (b"finished", b"failed")


def wait_done(r: redis.Redis, ids: list[str], timeout: float = 900) -> None:
    """Until every job of `ids` is finished or failed (the bench's own poll).

    As Celery's bench reads its results one by one in order: the oldest job not yet seen done is
    read alone until it is done, then the WINDOW oldest in one pipeline. A poll of every pending
    job every 20 ms loaded the broker with more commands than the jobs themselves (144 HGETs per
    job), and a window read every 10 ms still ~35: both slowed down what they measured."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        if r.hget(keys.rq_job(pending[0]), "status") not in DONE:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} jobs did not finish")
            time.sleep(0.005)
            continue
        window = pending[:WINDOW]
        with r.pipeline(transaction=False) as p:
            for i in window:
                p.hget(keys.rq_job(i), "status")
            st = p.execute()
        pending = [i for i, s in zip(window, st, strict=True) if s not in DONE] + pending[WINDOW:]


def _span(grid: Grid, ids: list[str]) -> float:
    """Seconds from the first process start to the last end (the grid's own timestamps)."""
    jobs = [grid.get(i) for i in ids]
    return max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)


def _check(r: redis.Redis, ids: list[str]) -> None:
    failed = [i for i in ids if r.hget(keys.rq_job(i), "status") != b"finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} bench jobs failed, e.g. {failed[0]}")


def _drained_run(grid: Grid, r: redis.Redis, nodes: list[str], specs: list[JobSpec],
                 groups: dict | None = None) -> float:
    """Jobs/s of `specs` submitted while `nodes` are drained, run from their resume."""
    for node in nodes:
        grid.drain(node, "bench: queueing a batch")
    ids = grid.submit_many(specs, groups=groups)
    for node in nodes:
        grid.resume(node)
    wait_done(r, ids)
    _check(r, ids)
    return len(ids) / _span(grid, ids)


COUNTED = ("evalsha", "eval", "blmove", "xread", "xadd", "lpop", "lpush")
"""The broker commands counted per job (INFO commandstats); `wakes` is the placement wakes added."""
CALLS = (*COUNTED, "wakes")


def _calls(r: redis.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    out = {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in COUNTED}
    # The placement wakes added (each wakes every agent's loop to read it): XINFO's entries-added
    # (Redis/Valkey 7), 0 before the first.
    try:
        out["wakes"] = int(r.xinfo_stream(keys.PLACE_WAKES).get("entries-added", 0))
    except redis.ResponseError:
        out["wakes"] = 0
    return out


def _cpu(procs: list[subprocess.Popen], broker_pid: int | None, names: list[str] = ()) -> dict[str, float]:
    """CPU seconds (user + system) so far of the broker, the agents' main processes, their slot
    processes, and the jobs those slots ran and reaped: figures that other load on the machine
    disturbs less than wall-clock rates. With `names` (the agents' nodes, in `procs` order), also
    each agent's and its slots' own (`agent <node>`, `slots <node>`): where a node's work goes."""
    import psutil

    def used(p: psutil.Process, children: bool = False) -> float:
        try:
            t = p.cpu_times()
        except psutil.Error:
            return 0.0
        return t.children_user + t.children_system if children else t.user + t.system

    out = {"broker": 0.0, "agent": 0.0, "slots": 0.0, "jobs": 0.0}
    if broker_pid:
        out["broker"] = used(psutil.Process(broker_pid))
    for i, proc in enumerate(procs):
        try:
            agent = psutil.Process(proc.pid)
            kids = agent.children()
        except psutil.Error:
            continue
        own = used(agent)
        slots = sum(used(kid) for kid in kids)
        out["agent"] += own
        out["slots"] += slots
        out["jobs"] += sum(used(kid, children=True) for kid in kids)
        if len(names) > 1:
            out[f"agent {names[i]}"] = own
            out[f"slots {names[i]}"] = slots
    return out


CPU_PARTS = ("broker", "agent", "slots", "jobs")
"""The CPU figures of every run (several agents add each agent's and its slots' own)."""


def _chain(grid: Grid, r: redis.Redis, length: int) -> list[float]:
    """Gaps (ms) from each parent's end to its child's start, in a chain of `length` jobs with a
    memory request (each child goes through placement when its parent ends)."""
    ids = [uuid.uuid4().hex for _ in range(length)]
    specs = [JobSpec(command="true", resources=KINDS["memory"], after=(ids[i - 1],) if i else ())
             for i in range(length)]
    grid.submit_many(specs, job_ids=ids)
    wait_done(r, ids, timeout=60 + length * 10)
    _check(r, ids)
    jobs = [grid.get(i) for i in ids]
    return [(c.started_at - p.ended_at) * 1000 for p, c in zip(jobs, jobs[1:])]


def _full_then_freed(grid: Grid, r: redis.Redis, home: Path, total: int) -> dict:
    """Every slot busy on a gate file; `total` memory jobs submitted meanwhile; the gate opens."""
    gate = home / f"gate-{uuid.uuid4().hex[:8]}"
    blockers = grid.submit_many([JobSpec(command=f"while [ ! -e {gate} ]; do sleep 0.005; done")
                                 for _ in range(total)])
    deadline = time.monotonic() + 60
    while sum(r.hget(keys.rq_job(i), "status") == b"started" for i in blockers) < total:
        if time.monotonic() > deadline:
            raise RuntimeError("the blockers did not all start")
        time.sleep(0.02)
    waiting = grid.submit_many([JobSpec(command="true", resources=KINDS["memory"]) for _ in range(total)])
    time.sleep(0.5)
    gate.touch()
    wait_done(r, blockers + waiting)
    _check(r, blockers + waiting)
    freed = min(grid.get(i).ended_at for i in blockers)
    jobs = [grid.get(i) for i in waiting]
    where: dict[str, int] = {}
    for j in jobs:
        where[j.node] = where.get(j.node, 0) + 1
    return {"freed_to_last_start_ms": (max(j.started_at for j in jobs) - freed) * 1000,
            "freed_to_first_start_ms": (min(j.started_at for j in jobs) - freed) * 1000, "ran_on": where}


def _start_agents(broker_url: str, home: Path, count: int, slots: int) -> tuple[list[str], list[subprocess.Popen]]:
    """`count` agents on this machine, nodes bench1..benchN (one: `bench`), each with its own data dir."""
    import os

    names = ["bench"] if count == 1 else [f"bench{i + 1}" for i in range(count)]
    procs = []
    for i, name in enumerate(names):
        labels = '["bench", "bench-one"]' if i == 0 else '["bench"]'  # `bench-one`: the first node only
        cfg = home / f"placement-agent-{name}.toml"
        cfg.write_text(f'redis_url = "{broker_url}"\n[agent]\nnode_name = "{name}"\nallow_root = true\n'
                       f'labels = {labels}\nslots = {slots}\nlog_dir = "{home / ("logs-" + name)}"\n')
        env = dict(os.environ, GRID_DATA_DIR=str(home / f"data-{name}"))
        procs.append(subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    return names, procs


def run(broker_url: str, home: Path, jobs: int, cells: int, samples: int, rounds: int = 3, agents: int = 1,
        slots: int = 2, chain: int = 30, broker_pid: int | None = None) -> dict:
    r = redis.Redis.from_url(broker_url)
    r.flushdb()
    grid = Grid(r, load_settings(overrides={"redis_url": broker_url}))
    names, procs = _start_agents(broker_url, home, agents, slots)
    try:
        deadline = time.monotonic() + 90
        while not all(r.hget(keys.node(n), "ready") for n in names):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench agents did not become ready")
            time.sleep(0.1)
        slots = sum(int(r.hget(keys.node(n), "slots") or 0) for n in names)
        time.sleep(1.0)
        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(samples):
            for kind, res in KINDS.items():
                jid = grid.submit(JobSpec(command="true", resources=res))
                wait_done(r, [jid])
                j = grid.get(jid)
                lat[kind].append((j.started_at - j.enqueued_at) * 1000)
        plain_runs, sweep_runs, label_runs = [], [], []
        calls = {"plain": dict.fromkeys(CALLS, 0), "memory": dict.fromkeys(CALLS, 0),
                 "label": dict.fromkeys(CALLS, 0)}
        parts = list(_cpu(procs, broker_pid, names))
        cpu = {k: dict.fromkeys(parts, 0.0) for k in calls}
        for _ in range(rounds):  # alternated, so that all see the same machine (it is shared)
            before, cpu0 = _calls(r), _cpu(procs, broker_pid, names)
            plain_runs.append(_drained_run(grid, r, names, [JobSpec(command="true") for _ in range(jobs)]))
            after, cpu1 = _calls(r), _cpu(procs, broker_pid, names)
            calls["plain"] = {c: calls["plain"][c] + after[c] - before[c] for c in CALLS}
            cpu["plain"] = {c: cpu["plain"][c] + cpu1.get(c, 0.0) - cpu0.get(c, 0.0) for c in parts}
            for kind, runs in (("memory", sweep_runs), ("label", label_runs)):
                gid = uuid.uuid4().hex
                sweep = [JobSpec(command="true", resources=KINDS[kind], group=gid, params={"i": i, "_cell": i})
                         for i in range(cells)]
                before, cpu0 = _calls(r), _cpu(procs, broker_pid, names)
                runs.append(_drained_run(grid, r, names, sweep, {gid: {"name": "bench", "max_parallel": slots}}))
                after, cpu1 = _calls(r), _cpu(procs, broker_pid, names)
                calls[kind] = {c: calls[kind][c] + after[c] - before[c] for c in CALLS}
                cpu[kind] = {c: cpu[kind][c] + cpu1.get(c, 0.0) - cpu0.get(c, 0.0) for c in parts}
        plain_jobs, sweep_jobs = statistics.median(plain_runs), statistics.median(sweep_runs)
        label_jobs = statistics.median(label_runs)
        # A sweep only the first node can run (a label), its other nodes idle: what their idle
        # slots cost it (nudges passed on, wakes read).
        gid = uuid.uuid4().hex
        one = [JobSpec(command="true", resources=Resources(labels=("bench-one",)), group=gid,
                       params={"i": i, "_cell": i}) for i in range(cells)]
        before = _calls(r)
        one_node = _drained_run(grid, r, names, one, {gid: {"name": "bench", "max_parallel": slots // agents}})
        after = _calls(r)
        calls["one_node_label"] = {c: after[c] - before[c] for c in CALLS}
        gaps = _chain(grid, r, chain) if chain > 1 else []
        freed = _full_then_freed(grid, r, home, slots)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    runs_of = {"plain": rounds * jobs, "memory": rounds * cells, "label": rounds * cells, "one_node_label": cells}
    per_job = {kind: {c: n / runs_of[kind] for c, n in counted.items()} for kind, counted in calls.items()}
    cpu_ms = {kind: {c: s * 1000 / runs_of[kind] for c, s in used.items()} for kind, used in cpu.items()}
    out: dict = {"agents": agents, "slots": slots, "latency_samples": samples, "calls_per_job": per_job,
                 "cpu_ms_per_job": cpu_ms,
                 "chain_links": len(gaps), "chain_gap_p50_ms": statistics.median(gaps) if gaps else None,
                 "chain_gap_max_ms": max(gaps) if gaps else None, "one_node_label_sweep_jobs_per_s": one_node,
                 "one_node_label_sweep_vs_plain": one_node / plain_jobs, **freed}
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
    lines = [f"placement paths, {out.get('agents', 1)} grid-agent(s) with {out['slots']} slots in all:",
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
    if "one_node_label_sweep_jobs_per_s" in out:
        lines.append(f"  {out['sweep_cells']}-cell sweep only the first node can run (a label), max_parallel its "
                     f"slots: {out['one_node_label_sweep_jobs_per_s']:.0f} jobs/s "
                     f"({out['one_node_label_sweep_vs_plain']:.0%} of plain)")
    if out.get("chain_links"):
        lines.append(f"  chain of {out['chain_links'] + 1} dependents (memory request): parent end -> child start "
                     f"p50 {out['chain_gap_p50_ms']:.1f} ms, max {out['chain_gap_max_ms']:.1f} ms")
    if "freed_to_last_start_ms" in out:
        lines.append(f"  full grid freed: first blocker end -> first / last of {out['slots']} waiting memory jobs "
                     f"started {out['freed_to_first_start_ms']:.1f} / {out['freed_to_last_start_ms']:.1f} ms; "
                     f"ran on {out['ran_on']}")
    for kind, per in out.get("cpu_ms_per_job", {}).items():
        lines.append(f"  CPU ms per job, {kind}: " + ", ".join(f"{c} {n:.2f}" for c, n in per.items())
                     + f" (all but jobs {sum(n for c, n in per.items() if c in CPU_PARTS and c != 'jobs'):.2f})")
    for kind, per in out.get("calls_per_job", {}).items():
        lines.append(f"  broker calls per job, {kind}: " + ", ".join(f"{c} {n:.2f}" for c, n in per.items()))
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
    p.add_argument("--agents", type=int, default=1, help="agents (distinct nodes) on this machine")
    p.add_argument("--slots", type=int, default=2, help="slots of each agent")
    p.add_argument("--chain", type=int, default=30, help="jobs in the chain of dependents (0: none)")
    p.add_argument("--broker", choices=sorted(available_kinds()), default="redis" if "redis" in available_kinds() else None)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    broker = Broker(kind=args.broker, binary=available_kinds()[args.broker]).start(appendonly=True)
    try:
        out = run(broker.url, home, args.jobs, args.sweep_cells, args.latency_samples, args.rounds, args.agents,
                  args.slots, args.chain, broker_pid=broker.proc.pid if broker.proc else None)
    finally:
        broker.stop()
    print(report(out))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
