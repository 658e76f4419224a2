"""Benchmark: the console's poll tick and table refresh at 100 and 100,000 jobs, and output latency.

    .venv/bin/python bench/console_poll.py [--jobs 100000] [--nodes 200] [--stream-seconds 30]
    .venv/bin/python bench/console_poll.py --stream-seconds 600   # the 10-minute RSS soak

The rq-dashboard comparison needs the bench extra (`pip install -e '.[bench]'`); without it
that part is skipped. `--stream-seconds 0` skips the output/RSS part.

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
from gridcore.jobfilter import JobFilter  # noqa: E402
from console.poller import NODES_EVERY, Poller, Request  # noqa: E402
from gridcore import keys  # noqa: E402
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec, JobState  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.support.brokers import Broker, available_kinds  # noqa: E402

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
        r.sadd(keys.rq_queues(), f"rq:queue:{q}")


class Heartbeats:
    """Nodes beating through the agent's real heartbeat, paused while a tick is measured."""

    def __init__(self, url: str, n: int):
        from agent.daemon import Agent, SlotProcess

        self.agents = []
        for i in range(n):
            s = load_settings(overrides={"redis_url": url, "agent": {
                "node_name": f"node-{i:03d}", "slots": 4, "labels": ["bench"], "heartbeat_interval": 2.0}})
            a = Agent(s)
            a.read_inventory()
            a.slots = [SlotProcess(j, f"{a.node}.{a.agent_id}.{j}") for j in range(4)]
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


def server_stats(r: redis.Redis, per_command: bool = False):
    """(commands served, bytes sent) so far; with per_command, also {command: calls}."""
    stats = r.info("commandstats")
    calls = sum(v["calls"] for v in stats.values())
    out = r.info("stats")["total_net_output_bytes"]
    if per_command:
        return calls, out, {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    return calls, out


_INFO_BYTES: int | None = None


def info_overhead(r: redis.Redis) -> int:
    """Bytes the measuring INFO calls themselves add to a before/after delta (measured once)."""
    global _INFO_BYTES
    if _INFO_BYTES is None:
        deltas = []
        for _ in range(5):
            _, b0 = server_stats(r)
            _, b1 = server_stats(r)
            deltas.append(b1 - b0)
        _INFO_BYTES = int(statistics.median(deltas))
    return _INFO_BYTES


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def measure_tick(r, grid, req: Request, rounds: int = 20, nodes_due: bool = False) -> dict:
    """Median (and p95) wall time, commands and bytes of Poller.read for one request.

    The nodes view reads every node in full each tick; other views reread the node states (for
    the summary line) every NODES_EVERY seconds. Rounds here run faster than that, so a view
    other than nodes is measured without that read unless `nodes_due`.
    """
    poller = Poller(app=None, grid=grid, request=lambda: req)
    poller.read(req)  # warm: connections, node cache
    overhead = info_overhead(r)
    times, cmds, sent = [], [], []
    for _ in range(rounds):
        poller._node_states = None if nodes_due else poller._node_states
        c0, b0 = server_stats(r)
        t0 = time.perf_counter()
        snap = poller.read(req)
        times.append(time.perf_counter() - t0)
        c1, b1 = server_stats(r)
        cmds.append(c1 - c0 - 1)  # minus the first call's INFO stats (INFO commandstats excludes itself)
        sent.append(b1 - b0 - overhead)  # minus the INFO replies themselves
    return {"ms": statistics.median(times) * 1000, "p95_ms": p95(times) * 1000,
            "commands": statistics.median(cmds), "bytes": statistics.median(sent), "snapshot": snap}


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
                app.jobs_screen.filter = JobFilter(state=snap.request.state)  # else the table ignores it as stale
                t0 = time.perf_counter()
                app.apply_snapshot(snap)
                app.screen._compositor.render_update(full=True)  # what the next frame costs
                times.append(time.perf_counter() - t0)
                await pilot.pause()
            out.append(statistics.median(times) * 1000)
    return out[0], out[1]


async def measure_nodes_refresh(settings, grid, snaps, rounds: int = 10) -> float:
    """Median ms to apply a nodes-view snapshot to the nodes table and render it (headless 200x50).

    Two snapshots read some seconds apart take turns, so every row's heartbeat age changes, as it
    does from one nodes-view tick to the next.
    """
    app = make_app(settings, grid, autostart=False)
    async with app.run_test(size=(200, 50)) as pilot:
        app.switch_mode("nodes")
        await pilot.pause()
        app.poller.stop()  # only the snapshots below reach the table
        app.apply_snapshot(snaps[0])
        await pilot.pause()
        times = []
        for i in range(rounds):
            t0 = time.perf_counter()
            app.apply_snapshot(snaps[(i + 1) % len(snaps)])
            app.screen._compositor.render_update(full=True)
            times.append(time.perf_counter() - t0)
            await pilot.pause()
    return statistics.median(times) * 1000


RSS_EVERY = 5.0
"""Seconds between the console's RSS samples while output streams."""


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
            t_start = time.monotonic()
            t_end = t_start + seconds
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
                if not rss or time.monotonic() - t_start - rss[-1][0] >= RSS_EVERY:
                    rss.append((time.monotonic() - t_start, proc.memory_info().rss))
            rss.append((time.monotonic() - t_start, proc.memory_info().rss))  # the end of the run
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

    return {"lines": count, "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "rss": rss}


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


DASHBOARD_ROUNDS = 30


def rq_dashboard_compare(r: redis.Redis, grid: Grid, url: str, refresh_ms: float = 0.0, queue: str = "default",
                         rounds: int = DASHBOARD_ROUNDS) -> dict | None:
    """rq-dashboard's jobs JSON against the console's tick, same data, registry and page size.

    Both in this process, no network: the dashboard through Flask's test client (its route
    opens its own Redis connection per request, as it does when served), the console through
    `Poller.read`. The console's request is the jobs view filtered to the same queue's failed
    registry, newest first, PAGE_SIZE rows; its tick also reads the queue counts and the clock,
    which the dashboard's jobs endpoint does not. Commands and bytes are counted on the server.
    """
    try:
        import rq_dashboard  # noqa: F401
        from rq_dashboard.cli import make_flask_app
        from rq_dashboard.web import setup_rq_connection
    except ImportError:
        print("\nrq-dashboard: skipped (not installed; `pip install -e '.[bench]'` to compare)")
        return None
    from importlib.metadata import version

    from console.poller import PAGE_SIZE

    req = Request(view="jobs", state=JobState.FAILED, queue=queue)
    console = measure_tick(r, grid, req, rounds=rounds)
    console_ids = [j.id for j in console["snapshot"].jobs]

    app = make_flask_app(None, None, None, None)
    app.config["RQ_DASHBOARD_REDIS_URL"] = [url]
    app.config["DEPRECATED_OPTIONS"] = []
    setup_rq_connection(app)  # what `rq-dashboard` does before serving
    client = app.test_client()
    # The dashboard's own page asks for this URL: order "dsc" is its "Descending" (newest first).
    path = f"/0/data/jobs/{queue}/failed/{PAGE_SIZE}/dsc/1.json"
    overhead = info_overhead(r)
    for _ in range(2):  # warm: imports, url map, lazy Flask state
        client.get(path)
    times, cmds, sent = [], [], []
    breakdown: dict[str, int] = {}
    rows: list[dict] = []
    for i in range(rounds):
        c0, b0, per0 = server_stats(r, per_command=True)
        t0 = time.perf_counter()
        resp = client.get(path)
        times.append(time.perf_counter() - t0)
        c1, b1, per1 = server_stats(r, per_command=True)
        if resp.status_code != 200:
            raise RuntimeError(f"rq-dashboard {path} answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
        rows = resp.get_json()["jobs"]
        if not rows:
            raise RuntimeError(f"rq-dashboard {path} returned no jobs: nothing to compare")
        cmds.append(c1 - c0 - 1)
        sent.append(b1 - b0 - overhead)
        if i == rounds // 2:
            breakdown = {k: per1.get(k, 0) - per0.get(k, 0) for k in per1}
            breakdown["info"] = breakdown.get("info", 0) - 1
            breakdown = {k: v for k, v in breakdown.items() if v > 0}
    dash_ids = [row["id"] for row in rows]
    same = len(set(dash_ids) & set(console_ids))
    dash = {"ms": statistics.median(times) * 1000, "p95_ms": p95(times) * 1000,
            "commands": statistics.median(cmds), "bytes": statistics.median(sent)}
    total = r.zcard(keys.rq_registry("failed", queue))
    print(f"\nrq-dashboard {version('rq-dashboard')} (rq {version('rq')}, Flask {version('flask')}) vs the console, "
          f"{queue!r} failed registry ({total:,} jobs), page of {PAGE_SIZE}, newest first, {rounds} requests each:")
    print(f"  dashboard GET {path}: {len(rows)} rows, {dash['ms']:.2f} ms median, {dash['p95_ms']:.2f} ms p95, "
          f"{dash['commands']:.0f} commands, {dash['bytes'] / 1024:.1f} KiB read")
    by_count = sorted(breakdown.items(), key=lambda kv: -kv[1])
    print("    commands in one request: " + ", ".join(f"{k} {v}" for k, v in by_count))
    print(f"  console tick (jobs view, state failed, queue {queue}): {len(console_ids)} rows, "
          f"{console['ms']:.2f} ms median, {console['p95_ms']:.2f} ms p95, {console['commands']:.0f} commands, "
          f"{console['bytes'] / 1024:.1f} KiB read")
    print(f"  same jobs on both pages: {same} of {len(dash_ids)}")
    print(f"  ratio dashboard / console tick: {dash['ms'] / console['ms']:.2f}x median, "
          f"{dash['p95_ms'] / console['p95_ms']:.2f}x p95; commands {dash['commands'] / console['commands']:.2f}x, "
          f"bytes {dash['bytes'] / console['bytes']:.2f}x")
    if refresh_ms:
        print(f"  ratio dashboard / console tick + table refresh ({refresh_ms:.2f} ms; the dashboard's figure has no "
              f"rendering in it): {dash['ms'] / (console['ms'] + refresh_ms):.2f}x median")
    return {"dashboard": dash, "console": console, "rows": len(rows), "same": same, "breakdown": breakdown}


def slope_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS samples (seconds, bytes), in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [b / 2**20 for _, b in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def report_rss(rss: list[tuple[float, int]], seconds: float) -> None:
    """First/last/max, the slope over the run and after warm-up (the pane's line cap filling)."""
    if not rss:
        print("console RSS: no samples")
        return
    mib = [b / 2**20 for _, b in rss]
    warm = min(60.0, seconds / 4)
    after = [(t, b) for t, b in rss if t >= warm]
    print(f"console RSS ({len(rss)} samples every {RSS_EVERY:.0f}s over {rss[-1][0]:.0f}s): "
          f"first {mib[0]:.1f} MiB, last {mib[-1]:.1f} MiB, min {min(mib):.1f}, max {max(mib):.1f}; "
          f"slope {slope_per_min(rss):+.3f} MiB/min overall")
    if len(after) >= 2:
        a = [b / 2**20 for _, b in after]
        grow = slope_per_min(after) * (after[-1][0] - after[0][0]) / 60
        flat = abs(grow) <= max(2.0, 0.02 * a[0])
        print(f"  after {warm:.0f}s warm-up: first {a[0]:.1f} MiB, last {a[-1]:.1f}, max {max(a):.1f}; "
              f"slope {slope_per_min(after):+.3f} MiB/min ({grow:+.1f} MiB over the rest of the run) -> "
              + ("flat" if flat else "GROWS") + " (flat: fitted growth within max(2 MiB, 2%))")
    step = max(1, round(60 / RSS_EVERY))
    print("  per minute (MiB): " + ", ".join(f"{t:.0f}s {b / 2**20:.1f}" for t, b in rss[::step]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--mid", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--stream-seconds", type=float, default=30.0,
                   help="seconds of streaming output (600 for the 10-minute RSS soak; 0 skips it)")
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
        print(f"broker: {kind} {r.info('server').get('redis_version')} on {broker.url}; "
              f"nodes: {args.nodes} via Agent.heartbeat; {os.cpu_count()} CPUs")
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
            for label, req, due in [
                ("jobs page", Request(view="jobs"), False),
                ("failed page", Request(view="jobs", state=JobState.FAILED), False),
                ("queues", Request(view="queues"), False),
                ("nodes", Request(view="nodes"), False),
                ("jobs+nodes", Request(view="jobs"), True),  # one jobs tick in NODES_EVERY s: node states
            ]:
                m = measure_tick(r, grid, req, nodes_due=due)
                res[label] = m
                print(f"  tick {label:12s} {m['ms']:7.2f} ms  {m['commands']:5.0f} commands  {m['bytes'] / 1024:8.1f} KiB")
            snaps = [res["jobs page"]["snapshot"], res["failed page"]["snapshot"]]
            refresh, replaced = asyncio.run(measure_refresh(settings, grid, snaps))
            res["refresh_ms"] = refresh
            print(f"  table refresh (diff + full render, 200x50): {refresh:.2f} ms steady, "
                  f"{replaced:.2f} ms when every row changes")
            print(f"  tick + refresh: {res['jobs page']['ms'] + refresh:.2f} ms (target <= 50); "
                  f"{res['jobs+nodes']['ms'] + refresh:.2f} ms on the tick that also rereads the node states "
                  f"(one every {NODES_EVERY:.0f}s)")
            later = measure_tick(r, grid, Request(view="nodes"), rounds=1)  # ages a few seconds on
            res["nodes_refresh_ms"] = asyncio.run(
                measure_nodes_refresh(settings, grid, [res["nodes"]["snapshot"], later["snapshot"]]))
            print(f"  nodes view: table refresh (200x50) {res['nodes_refresh_ms']:.2f} ms; tick + refresh "
                  f"{res['nodes']['ms'] + res['nodes_refresh_ms']:.2f} ms (every tick of that view)")
            results[n] = res
            hb.resume()
        small, big = results[args.small], results[args.jobs]
        total_small = small["jobs page"]["ms"] + small["refresh_ms"]
        total_big = big["jobs page"]["ms"] + big["refresh_ms"]
        print(f"\nratio {args.jobs:,} / {args.small:,} jobs, tick + refresh: {total_big / total_small:.2f}x (target <= 2)")
        print("commands per tick at " + " / ".join(f"{n:,}" for n in sizes) + " jobs "
              "(pages are short at the smallest size; past a full page the count must not grow):")
        for label in ("jobs page", "failed page", "queues", "nodes", "jobs+nodes"):
            counts = [results[n][label]["commands"] for n in sizes]
            verdict = "flat" if counts[-1] <= counts[-2] + 1 else "GROWS"
            print(f"  {label:12s}: " + " / ".join(f"{c:.0f}" for c in counts) + f"  ({verdict})")

        hb.pause()  # the comparison counts commands server-wide: no heartbeats in between
        rq_dashboard_compare(r, grid, broker.url, refresh_ms=big["refresh_ms"])

        if args.stream_seconds > 0:
            out = asyncio.run(measure_output(settings, grid, r, args.stream_seconds))
            print(f"\noutput: {out['lines']:,} lines seen in {args.stream_seconds:.0f}s from 10 jobs x 1000 lines/s "
                  f"(one open); line-to-pane p50 {out['p50']:.0f} ms, p95 {out['p95']:.0f} ms, p99 {out['p99']:.0f} ms "
                  "(target p95 <= 250)")
            report_rss(out["rss"], args.stream_seconds)
    finally:
        if hb:
            hb.stop.set()
            hb.resume()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
