"""Idle cost: an idle grid-agent with 2 slots against an idle Celery worker with 2 processes,
each with its own freshly started broker, the broker's CPU included; and what the idle agent
sends the broker (its INFO commandstats over the window).

Each contender runs a few jobs first (so every process is warm and back in its wait), rests
2 s, then the CPU time of its process tree and of the broker (every thread, from the kernel's
schedstat, in nanoseconds) is read before and after `--seconds`. `--rounds` alternates the contenders; the spread is printed.
`--monitor S` instead watches an idle agent's broker with MONITOR for S seconds (which costs the
broker CPU of its own, so no CPU is measured): the commands clients sent, per second, by command
and by sender (the daemon, a slot, the scheduler), and apart from them the commands scripts ran.

    python bench/idle_cost.py [--seconds 60] [--rounds 2] [--only agent|celery] [--monitor 60]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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

import celery_peer  # noqa: E402
from placement_paths import wait_done  # noqa: E402

from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.support.brokers import Broker, available_kinds  # noqa: E402


def _broker() -> Broker:
    kind = "redis" if "redis" in available_kinds() else sorted(available_kinds())[0]
    return Broker(kind=kind, binary=available_kinds()[kind]).start(appendonly=True)


def _cpu_ns(p: psutil.Process) -> int:
    """CPU nanoseconds of every thread of `p` so far (the scheduler's count: psutil's times come
    in 10 ms ticks, too coarse for a process that uses a few ms a minute)."""
    total = 0
    for task in Path(f"/proc/{p.pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _cpu_by_process(pid: int, broker_pid: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Percent of one core used over `seconds` by the tree of `pid` and the broker, in all and by
    process (named by its command line's end)."""
    def read() -> dict[str, int]:
        out = {}
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True), psutil.Process(broker_pid)]:
            with contextlib.suppress(psutil.Error, OSError):
                name = "broker" if p.pid == broker_pid else " ".join(p.cmdline()[1:])[:60]
                out[f"{p.pid} {name}"] = _cpu_ns(p)
        return out

    before = read()
    time.sleep(seconds)
    after = read()
    each = {k: round((after[k] - before.get(k, 0)) / 1e9 / seconds * 100, 4) for k in after}
    return sum(each.values()), each


def _commands(r) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def _idle(r, pid: int, broker_pid: int, seconds: float) -> dict:
    """One contender's idle figures over `seconds`: CPU of its tree and broker, and the broker's
    commands per second (its own INFO calls left out)."""
    r.config_resetstat()
    cpu, each = _cpu_by_process(pid, broker_pid, seconds)
    calls = _commands(r)
    calls.pop("info", None)
    return {"idle_cpu_pct": cpu, "by_process": each,
            "broker_calls_per_s": {k: round(v / seconds, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}}


def agent_idle(seconds: float, home: Path, measure=None) -> dict:
    """The idle agent's figures over `seconds` (`measure(r, agent pid, broker pid, seconds)`: `_idle`'s)."""
    broker = _broker()
    try:
        r = broker.client()
        settings = load_settings(overrides={"redis_url": broker.url})
        grid = Grid(r, settings)
        cfg = home / "agent.toml"
        cfg.write_text(f'redis_url = "{broker.url}"\n[agent]\nnode_name = "idle"\nslots = 2\nallow_root = true\n')
        agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_done(r, grid.submit_many([JobSpec(command="true") for _ in range(20)]))
            time.sleep(2)
            return (measure or _idle)(r, agent.pid, broker.proc.pid, seconds)
        finally:
            agent.terminate()
            agent.wait(60)
    finally:
        broker.stop()


def _senders(pid: int, broker_port: int) -> dict[int, str]:
    """Each local port of a connection to the broker -> what holds it: the agent daemon, a slot,
    the scheduler (a slot's child: it shares the slot's sockets, so the slot's name wins)."""
    root = psutil.Process(pid)
    names = {}
    for p in sorted([root, *root.children(recursive=True)], key=lambda p: p.ppid() != pid):  # slots first
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            who = ("daemon" if p.pid == pid else f"slot {cmd[cmd.index('--slot') + 1]}" if p.ppid() == pid
                   else "scheduler")
            for c in p.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == broker_port:
                    names.setdefault(c.laddr.port, who)
    return names


def _monitor(r, pid: int, broker_pid: int, seconds: float) -> dict:
    """What an idle agent sends its broker over `seconds`, per second, from MONITOR."""
    sent, scripts, by_sender = collections.Counter(), collections.Counter(), collections.Counter()
    seen, deadline = [], time.monotonic() + seconds
    with r.monitor() as m:
        for cmd in m.listen():
            if time.monotonic() >= deadline:
                break
            seen.append(cmd)
    names = _senders(pid, r.connection_pool.connection_kwargs["port"])
    for cmd in seen:
        words = cmd["command"].split()
        name = words[0].upper() + (" " + words[1].upper() if words[0].upper() in ("SCRIPT", "CLIENT") else "")
        if cmd.get("client_type") == "lua":
            scripts[name] += 1
            continue
        sent[name] += 1
        by_sender[f"{names.get(int(cmd.get('client_port') or 0), 'other')} {name}"] += 1
    per_s = lambda c: {k: round(v / seconds, 3) for k, v in c.most_common()}  # noqa: E731
    return {"sent_per_s": round(sum(sent.values()) / seconds, 3), "sent": per_s(sent), "by_sender": per_s(by_sender),
            "scripts_ran_per_s": round(sum(scripts.values()) / seconds, 3), "scripts_ran": per_s(scripts)}


def celery_idle(seconds: float) -> dict:
    broker = _broker()
    try:
        _app, task = celery_peer.make_app(broker.url)
        worker = celery_peer._worker(broker.url, 2)
        try:
            celery_peer._ready(task)
            for _ in range(20):
                task.apply_async(args=("true",)).get(timeout=60)
            time.sleep(2)
            return _idle(broker.client(), worker.pid, broker.proc.pid, seconds)
        finally:
            celery_peer._stop(worker)
    finally:
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=("agent", "celery"))
    p.add_argument("--monitor", type=float, metavar="SECONDS", help="MONITOR an idle agent's broker instead")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="grid-idle-"))
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    if a.monitor:
        print(json.dumps(agent_idle(a.monitor, home, _monitor), indent=2))
        return
    rows: dict[str, list[dict]] = {"agent": [], "celery": []}
    for _ in range(a.rounds):
        if a.only != "celery":
            rows["agent"].append(agent_idle(a.seconds, home))
            print("agent", json.dumps(rows["agent"][-1]), flush=True)
        if a.only != "agent" and celery_peer.available():
            rows["celery"].append(celery_idle(a.seconds))
            print("celery", json.dumps(rows["celery"][-1]), flush=True)
    summary = {name: {"idle_cpu_pct_each": [round(x["idle_cpu_pct"], 3) for x in xs],
                      "median": round(statistics.median(x["idle_cpu_pct"] for x in xs), 3)}
               for name, xs in rows.items() if xs}
    print(json.dumps({"seconds": a.seconds, **summary}, indent=2))


if __name__ == "__main__":
    main()
