"""One job's latency on an idle grid, two agents' code side by side, samples interleaved.

On a shared machine a run's latencies move with the load more than with the code: separate
runs of bench/throughput.py a minute apart disagree by more than what is being measured. Here
each contender (an agent started from each given source tree, and Celery with `--celery`) has
its own fresh broker (AOF), and one sample of each is taken in turn, so the load falls on all
of them alike. Three measures per contender, p50 / p90 (ms):

    process   the `Grid.submit` call -> the slot's start stamp (Celery: its task's first line)
    command   the `Grid.submit` call -> the command itself running (`date +%s.%N`, own clock)
    visible   the `Grid.submit` call -> `Grid.wait` returns the ended `true` (Celery: `.get()`)

    python bench/interleaved_latency.py --tree /work/wt/base --tree . [--samples 200] [--celery]

The client is this tree's; each agent runs from its tree (`python -m agent`, its PYTHONPATH).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.support.brokers import Broker, available_kinds, default_kind  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import celery_peer  # noqa: E402
from placement_paths import wait_done  # noqa: E402

CLOCK = celery_peer.COMMAND_CLOCK


class AgentSide:
    """One agent from `tree`, its own broker, and this tree's client."""

    def __init__(self, tree: Path, home: Path, name: str):
        self.name = name
        kind = default_kind()
        self.broker = Broker(kind=kind, binary=available_kinds()[kind]).start(appendonly=True)
        self.r = self.broker.client()
        self.grid = Grid(self.r, load_settings(overrides={"redis_url": self.broker.url}))
        cfg = home / f"agent-{name}.toml"
        cfg.write_text(f'redis_url = "{self.broker.url}"\n[agent]\nnode_name = "bench"\nallow_root = true\n')
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], cwd=tree, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ids = self.grid.submit_many([JobSpec(command="true") for _ in range(50)])  # warm: slots up, scripts loaded
        wait_done(self.r, ids)

    def process(self) -> float:
        jid = self.grid.submit(JobSpec(command="true"))
        wait_done(self.r, [jid])
        j = self.grid.get(jid)
        return (j.started_at - j.enqueued_at) * 1000

    def command(self) -> float:
        t0 = time.time()
        jid = self.grid.submit(JobSpec(command=CLOCK))
        self.grid.wait([jid], timeout=60)
        return (float(self.grid.get(jid).stdout) - t0) * 1000

    def visible(self) -> float:
        t0 = time.perf_counter()
        self.grid.wait([self.grid.submit(JobSpec(command="true"))], timeout=60)
        return (time.perf_counter() - t0) * 1000

    def stop(self) -> None:
        self.agent.terminate()
        self.agent.wait(60)
        self.broker.stop()


class CelerySide:
    """Celery prefork with 2 processes on its own broker (bench/celery_peer.py)."""

    name = "celery"

    def __init__(self):
        kind = default_kind()
        self.broker = Broker(kind=kind, binary=available_kinds()[kind]).start(appendonly=True)
        _app, self.task = celery_peer.make_app(self.broker.url)
        self.worker = celery_peer._worker(self.broker.url, 2)
        celery_peer._ready(self.task)

    def process(self) -> float:
        t0 = time.time()
        return (self.task.apply_async(args=("true",)).get(timeout=60)["started"] - t0) * 1000

    def command(self) -> float:
        t0 = time.time()
        return (float(self.task.apply_async(args=(CLOCK,)).get(timeout=60)["stdout"]) - t0) * 1000

    def visible(self) -> float:
        t0 = time.perf_counter()
        self.task.apply_async(args=("true",)).get(timeout=60)
        return (time.perf_counter() - t0) * 1000

    def stop(self) -> None:
        celery_peer._stop(self.worker)
        self.broker.stop()


def _p(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[max(0, int(len(values) * 0.9) - 1)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tree", action="append", required=True, help="a source tree whose agent is measured")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--celery", action="store_true", help="Celery too, when installed (the `bench` extra)")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    sides: list = []
    try:
        for i, tree in enumerate(a.tree):
            sides.append(AgentSide(Path(tree).resolve(), home, f"{i}:{Path(tree).resolve().name}"))
        if a.celery and celery_peer.available():
            sides.append(CelerySide())
        time.sleep(1.5)  # idle: every slot back in its wait
        got = {s.name: {"process": [], "command": [], "visible": []} for s in sides}
        for _ in range(a.samples):
            for measure in ("process", "command", "visible"):
                for s in sides:
                    got[s.name][measure].append(getattr(s, measure)())
    finally:
        for s in sides:
            s.stop()
    print(f"{'':<28}{'process p50/p90':>20}{'command p50/p90':>20}{'visible p50/p90':>20}")
    out = {}
    for name, m in got.items():
        row = {k: _p(v) for k, v in m.items()}
        out[name] = row
        print(f"{name:<28}" + "".join(f"{row[k][0]:>12.2f} /{row[k][1]:>6.2f}" for k in ("process", "command", "visible")))
    print(json.dumps({"samples": a.samples, "load": os.getloadavg(), "p50_p90_ms": out}))


if __name__ == "__main__":
    main()
