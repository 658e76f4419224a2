"""Benchmark: the console's poll tick and table refresh at 100 and 100,000 jobs, and output latency.

    .venv/bin/python bench/console_poll.py [--jobs 100000] [--nodes 200] [--stream-seconds 30]

Starts its own broker (never the machine's 6379). Jobs are written in bulk as copies of a
real submitted job (same hash fields, same signed envelope size) spread over the registries;
nodes heartbeat through the agent's own `Agent.heartbeat` with no workers. Redis work per
tick is measured on the server (`INFO commandstats` and `total_net_output_bytes` deltas,
other clients paused), so pipelined commands count one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import redis  # noqa: E402

from console.app import make_app  # noqa: E402
from console.filters import JobFilter  # noqa: E402
from console.poller import Poller, Request  # noqa: E402
from gridcore import keys  # noqa: E402
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec, JobState  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.brokers import Broker, available_kinds  # noqa: E402

STATES = [("queued", 0.05), ("started", 0.01), ("finished", 0.7), ("failed", 0.2), ("canceled", 0.04)]
REGISTRY = {"started": "running", "finished": "finished", "failed": "failed", "canceled": "canceled"}


def setup_home() -> None:
    home = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    for k in list(os.environ):
        if k.startswith("GRID_"):
            del os.environ[k]
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    cfg = home / "config"
    generate_key(cfg / "keys" / "id_ed25519", "bench@grid")
    (cfg / "authorized_keys").write_text((cfg / "keys" / "id_ed25519.pub").read_text())


def populate(r: redis.Redis, grid: Grid, n: int, queues=("default", "gpu")) -> None:
    """n jobs as copies of one real job, spread over queues and states, newest last."""
    template_id = grid.submit(JobSpec(command="python train.py --epochs 10", name="template"))
    template = r.hgetall(keys.rq_job(template_id))
    r.delete(keys.rq_job(template_id), keys.rq_queue("default"))
    r.zrem(keys.JOBS, template_id)
    meta = json.loads(template[b"meta"])
    now = grid.broker_time() - n
    weights = [w for _, w in STATES]
    cum = [sum(weights[: i + 1]) for i in range(len(weights))]
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        jid = uuid.uuid4().hex
        q = queues[i % len(queues)]
        frac = (i * 0.6180339887) % 1.0
        status = next(s for (s, _), c in zip(STATES, cum, strict=True) if frac <= c)
        t = now + i
        meta.update(name=f"job {i}", submitted=t)
        fields = dict(template)
        fields.update({b"status": status, b"origin": q, b"meta": json.dumps(meta), b"description": f"job {i}"})
        pipe.hset(keys.rq_job(jid), mapping=fields)
        pipe.zadd(keys.JOBS, {jid: t})
        if status == "queued":
            pipe.rpush(keys.rq_queue(q), jid)
        else:
            member = f"{jid}:{uuid.uuid4().hex[:8]}" if status == "started" else jid
            pipe.zadd(keys.rq_registry(REGISTRY[status], q), {member: t})
            if status in ("finished", "failed"):
                code = 0 if status == "finished" else 1
                pipe.set(keys.result(jid), json.dumps({"exit_code": code, "node": "node-000", "duration": 12.5,
                                                       "start": t, "end": t + 12.5}))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    for q in queues:
        r.sadd(keys.QUEUES, q)
        r.sadd(keys.RQ_QUEUES, f"rq:queue:{q}")


class Heartbeats:
    """Nodes beating through the agent's real heartbeat, paused while a tick is measured."""

    def __init__(self, url: str, n: int):
        from agent.daemon import Agent, Slot
        from agent.inventory import static_inventory

        self.agents = []
        for i in range(n):
            s = load_settings(overrides={"redis_url": url, "agent": {
                "node_name": f"node-{i:03d}", "slots": 4, "labels": ["bench"], "heartbeat_interval": 2.0}})
            a = Agent(s)
            a.inventory = static_inventory(a.cfg, a.nvml)
            a.slots = [Slot(j, f"{a.node}.{a.agent_id}.{j}") for j in range(4)]
            a.heartbeat(first=True)
            self.agents.append(a)
        self.go = threading.Event()
        self.go.set()
        self.stop = threading.Event()
        self.idle = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for a in self.agents:
                if not self.go.is_set():
                    self.idle.set()
                    self.go.wait()
                self.idle.clear()
                try:
                    a.heartbeat()
                except Exception:  # noqa: BLE001 - a bench helper: keep beating
                    pass
            self.stop.wait(2.0)

    def pause(self) -> None:
        self.go.clear()
        self.idle.wait(5)

    def resume(self) -> None:
        self.go.set()


def server_stats(r: redis.Redis) -> tuple[int, int]:
    calls = sum(v["calls"] for k, v in r.info("commandstats").items())
    out = r.info("stats")["total_net_output_bytes"]
    return calls, out


def measure_tick(r, grid, req: Request, rounds: int = 20) -> dict:
    """Median wall time, commands and bytes of Poller.read for one request."""
    poller = Poller(app=None, grid=grid, request=lambda: req)
    poller.read(req)  # warm: connections, node cache
    times, cmds, sent = [], [], []
    for _ in range(rounds):
        poller._nodes = None if req.view == "nodes" else poller._nodes
        c0, b0 = server_stats(r)
        t0 = time.perf_counter()
        snap = poller.read(req)
        times.append(time.perf_counter() - t0)
        c1, b1 = server_stats(r)
        cmds.append(c1 - c0 - 1)  # minus the second INFO commandstats
        sent.append(b1 - b0)
    return {"ms": statistics.median(times) * 1000, "commands": statistics.median(cmds),
            "bytes": statistics.median(sent), "snapshot": snap}


async def measure_refresh(settings, grid, snaps, rounds: int = 10) -> tuple[float, float]:
    """Median ms to apply a jobs snapshot to the table and render the screen (headless 200x50).

    Two cases: the same page again (a steady tick: cells diffed, nothing replaced) and a
    different page every time (every row replaced: paging or a filter change).
    """
    app = make_app(settings, grid, autostart=False)
    out = []
    async with app.run_test(size=(200, 50)) as pilot:
        for pick in (lambda i: snaps[0], lambda i: snaps[i % len(snaps)]):
            times = []
            for i in range(rounds):
                snap = pick(i)
                app.filter = JobFilter(state=snap.request.state)  # else the table ignores it as stale
                t0 = time.perf_counter()
                app.apply_snapshot(snap)
                app.screen._compositor.render_update(full=True)  # what the next frame costs
                times.append(time.perf_counter() - t0)
                await pilot.pause()
            out.append(statistics.median(times) * 1000)
    return out[0], out[1]


async def measure_output(settings, grid, r, seconds: float, jobs: int = 10, rate: int = 1000) -> dict:
    """Latency from a line's XADD to the open pane, with `jobs` streams at `rate` lines/s each."""
    ids = [uuid.uuid4().hex for _ in range(jobs)]
    grid.submit(JobSpec(command="sleep 1", name="streamer"), job_id=ids[0])
    # Writers are separate small processes, as agents are: they must not share the console's GIL.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, settings.redis_url, keys.output(jid), str(rate), str(seconds + 30)])
             for jid in ids]
    while not all(r.exists(keys.output(j)) for j in ids):
        time.sleep(0.05)
    app = make_app(settings, grid, poll_interval=1.0)
    # A histogram of 1 ms buckets: the measurement must not grow the RSS it is measuring.
    buckets = array("I", bytes(4 * 10_001))
    proc = psutil.Process()
    rss: list[tuple[float, int]] = []
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.open_job(ids[0])
            await pilot.pause()
            detail = app.screen
            while detail.fresh:
                await asyncio.sleep(0.01)
            live_from = time.time_ns()  # lines written before the pane was open are backlog, not latency
            seen = 0
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                await asyncio.sleep(0.02)
                lines = detail.buffer.lines
                total = len(lines) + detail.buffer.trimmed
                now_ns = time.time_ns()
                for _, text in lines[max(0, len(lines) - (total - seen)) :]:
                    if text.startswith("t="):
                        t = int(text[2:].split(" ", 1)[0])
                        if t >= live_from:
                            buckets[min(10_000, max(0, (now_ns - t) // 1_000_000))] += 1
                seen = total
                if not rss or time.monotonic() - rss[-1][0] > 5:
                    rss.append((time.monotonic(), proc.memory_info().rss))
    finally:
        for w in procs:
            w.terminate()
            w.wait(10)
    count = sum(buckets)

    def pct(q: float) -> float:
        acc = 0
        for ms, n in enumerate(buckets):
            acc += n
            if count and acc >= q * count:
                return float(ms)
        return float("nan")

    return {"lines": count, "p50": pct(0.5), "p95": pct(0.95), "rss_start": rss[0][1] if rss else 0, "rss_end": rss[-1][1] if rss else 0,
            "rss_samples": [b for _, b in rss]}


WRITER = """
import sys, time, redis
url, key, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
conn = redis.Redis.from_url(url)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    t_batch = time.monotonic()
    lines = b"".join(b"t=%d line %d of a chatty job\\n" % (time.time_ns(), n + k) for k in range(rate // 10))
    n += rate // 10
    conn.xadd(key, {"s": "o", "d": lines}, maxlen=100_000, approximate=True)
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t_batch)))
"""
"""One job's output in the agent's format: a raw-bytes chunk every ~100 ms, MAXLEN-capped."""


def rq_dashboard_compare(url: str, tick_ms: float) -> None:
    try:
        import rq_dashboard  # noqa: F401
        from flask import Flask
    except ImportError:
        print("rq-dashboard: skipped (not installed here; `pip install rq-dashboard` to compare)")
        return
    from rq_dashboard.cli import make_flask_app  # type: ignore[attr-defined]

    app: Flask = make_flask_app(None, None, None, None)
    app.config["RQ_DASHBOARD_REDIS_URL"] = [url]
    client = app.test_client()
    rules = [str(rule) for rule in app.url_map.iter_rules() if "jobs" in str(rule) and "json" in str(rule)]
    print(f"rq-dashboard JSON routes: {rules}")
    path = "/0/data/jobs/default/failed/50/desc/1.json"
    client.get(path)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        resp = client.get(path)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    print(f"rq-dashboard {path}: {resp.status_code}, {ms:.1f} ms (ratio console tick / dashboard: "
          f"{tick_ms / ms:.2f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--mid", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--stream-seconds", type=float, default=30.0, help="600 for the 10-minute RSS soak")
    args = p.parse_args()

    setup_home()
    kinds = available_kinds()
    kind = "redis" if "redis" in kinds else next(iter(kinds))
    broker = Broker(kind=kind, binary=kinds[kind]).start(appendonly=False)
    hb = None
    try:
        settings = load_settings(overrides={"redis_url": broker.url, "submitter": "bench@grid"})
        r = broker.client()
        grid = Grid(redis.Redis.from_url(broker.url), settings)
        print(f"broker: {kind} on {broker.url}; nodes: {args.nodes} via Agent.heartbeat")
        hb = Heartbeats(broker.url, args.nodes)
        results = {}
        sizes = (args.small, args.mid, args.jobs)
        for n in sizes:
            hb.pause()
            r.delete(keys.JOBS, *r.keys("rq:*"), *r.keys("grid:result:*"))
            t0 = time.perf_counter()
            populate(r, grid, n)
            print(f"\n{n:,} jobs written in {time.perf_counter() - t0:.1f}s")
            res = {}
            for label, req in [
                ("jobs page", Request(view="jobs")),
                ("failed page", Request(view="jobs", state=JobState.FAILED)),
                ("queues", Request(view="queues")),
                ("nodes", Request(view="nodes")),
            ]:
                m = measure_tick(r, grid, req)
                res[label] = m
                print(f"  tick {label:12s} {m['ms']:7.2f} ms  {m['commands']:5.0f} commands  {m['bytes'] / 1024:8.1f} KiB")
            snaps = [res["jobs page"]["snapshot"], res["failed page"]["snapshot"]]
            refresh, replaced = asyncio.run(measure_refresh(settings, grid, snaps))
            res["refresh_ms"] = refresh
            print(f"  table refresh (diff + full render, 200x50): {refresh:.2f} ms steady, "
                  f"{replaced:.2f} ms when every row changes")
            print(f"  tick + refresh: {res['jobs page']['ms'] + refresh:.2f} ms (target <= 50)")
            results[n] = res
            hb.resume()
        small, big = results[args.small], results[args.jobs]
        total_small = small["jobs page"]["ms"] + small["refresh_ms"]
        total_big = big["jobs page"]["ms"] + big["refresh_ms"]
        print(f"\nratio {args.jobs:,} / {args.small:,} jobs, tick + refresh: {total_big / total_small:.2f}x (target <= 2)")
        print("commands per tick at " + " / ".join(f"{n:,}" for n in sizes) + " jobs "
              "(pages are short at the smallest size; past a full page the count must not grow):")
        for label in ("jobs page", "failed page", "queues", "nodes"):
            counts = [results[n][label]["commands"] for n in sizes]
            verdict = "flat" if counts[-1] <= counts[-2] + 1 else "GROWS"
            print(f"  {label:12s}: " + " / ".join(f"{c:.0f}" for c in counts) + f"  ({verdict})")

        hb.pause()
        out = asyncio.run(measure_output(settings, grid, r, args.stream_seconds))
        print(f"\noutput: {out['lines']:,} lines seen in {args.stream_seconds:.0f}s from 10 jobs x 1000 lines/s "
              f"(one open); line-to-pane p50 {out['p50']:.0f} ms, p95 {out['p95']:.0f} ms (target <= 250)")
        print(f"console RSS: {out['rss_start'] / 2**20:.1f} MiB -> {out['rss_end'] / 2**20:.1f} MiB "
              f"(samples: {', '.join(f'{b / 2**20:.0f}' for b in out['rss_samples'])})")
        rq_dashboard_compare(broker.url, big["failed page"]["ms"])
    finally:
        if hb:
            hb.stop.set()
            hb.resume()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
