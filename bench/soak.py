"""Soak: N short jobs over three agents while one node at a time is killed (the whole machine:
agent, slots and jobs) and restarted every minute, and the broker restarts once (AOF on).

Reports jobs lost (target 0), duplicates recorded (target 0), how many jobs were *executed*
more than once (allowed: delivery is at-least-once), and how long the grid took to declare
each killed node down. Progress goes to stderr; the last line of stdout is one JSON object.

    python bench/soak.py [--jobs 10000] [--kill-every 60] [--node-timeout 5] [--broker kind]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.proctree import ENV_GRID, ENV_NODE, tagged  # noqa: E402
from gridcore import keys  # noqa: E402
from gridcore.client import Grid  # noqa: E402
from gridcore.models import JobSpec  # noqa: E402
from gridcore.settings import load_settings  # noqa: E402
from gridcore.signing import generate_key  # noqa: E402
from tests.support.brokers import Broker, available_kinds  # noqa: E402

NODES = ("soak-1", "soak-2", "soak-3")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Node:
    """One grid-agent process of the soak, restartable."""

    def __init__(self, name: str, home: Path, url: str, slots: int, node_timeout: float):
        self.name = name
        self.cfg = home / f"{name}.toml"
        self.cfg.write_text(
            f'redis_url = "{url}"\n\n[agent]\nnode_name = "{name}"\nslots = {slots}\nheartbeat_interval = 0.5\n'
            f'node_timeout = {node_timeout}\nkill_grace = 1.0\nstop_grace = 10.0\nallow_root = true\n'
            f'log_dir = "{home / "logs" / name}"\n'
        )
        self.log = home / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(self.cfg)], cwd=ROOT,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def crash(self, grid_id: str) -> None:
        """Power-off: the agent, its slots and every job process die at once."""
        victims = [psutil.Process(self.proc.pid)] + tagged({ENV_GRID: grid_id, ENV_NODE: self.name})
        for p in victims:
            try:
                p.send_signal(signal.SIGSTOP)  # freeze first: nothing reacts to the others dying
            except psutil.Error:
                pass
        for p in victims:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def node_down_seen(grid: Grid, node: str, since: float) -> float | None:
    """Broker time of the first node_down event for `node` after `since`, if any."""
    for e in grid.events(count=500):
        if e.kind == "node_down" and e.node == node and e.time >= since:
            return e.time
    return None


def count_states(grid: Grid, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    r = grid.redis
    for i in range(0, len(ids), 1000):
        with r.pipeline(transaction=False) as p:
            for jid in ids[i:i + 1000]:
                p.hget(keys.rq_job(jid), "status")
            for s in p.execute():
                k = s.decode() if s else "missing"
                out[k] = out.get(k, 0) + 1
    return out


def audit(grid: Grid, ids: list[str], runs_file: Path) -> dict:
    """Count outcomes, recorded duplicates and repeated executions."""
    r = grid.redis
    queues = grid.queue_names()
    registries = [keys.rq_registry(s, q) for q in queues for s in ("finished", "failed", "canceled")]
    members: dict[str, int] = {}
    for reg in registries:
        for m in r.zrange(reg, 0, -1):
            jid = m.decode().split(":")[0]
            members[jid] = members.get(jid, 0) + 1
    executions: dict[str, int] = {}
    for line in runs_file.read_text().split():
        executions[line] = executions.get(line, 0) + 1
    lost, dup_recorded, failed_kinds = [], [], {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        with r.pipeline(transaction=False) as p:
            for jid in chunk:
                p.hget(keys.rq_job(jid), "status")
                p.get(keys.result(jid))
                p.lrange(keys.attempts(jid), 0, -1)
                p.xlen(f"rq:results:{jid}")
            rows = p.execute()
        for k, jid in enumerate(chunk):
            status, result, attempts, rq_results = rows[4 * k: 4 * k + 4]
            status = status.decode() if status else "missing"
            if status != "finished":
                lost.append(jid)
                rec = json.loads(result) if result else {}
                kind = rec.get("reason_kind") or status
                failed_kinds[kind] = failed_kinds.get(kind, 0) + 1
            recorded = [a for a in map(json.loads, attempts)
                        if a.get("reason_kind") != "lost" and a.get("reason") != "agent shutdown"]
            if len(recorded) > 1 or rq_results > 1 or members.get(jid, 0) > 1:
                dup_recorded.append(jid)
    return {
        "jobs_lost": len(lost),
        "not_finished_by_kind": failed_kinds,
        "duplicates_recorded": len(dup_recorded),
        "executed_more_than_once": sum(1 for jid in ids if executions.get(jid, 0) > 1),
        "never_executed_but_finished": sum(1 for jid in ids if not executions.get(jid) and jid not in lost),
        "examples": {"lost": lost[:5], "duplicates": dup_recorded[:5]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--slots", type=int, default=2, help="slots per agent")
    ap.add_argument("--kill-every", type=float, default=60.0, help="seconds between node crashes")
    ap.add_argument("--node-timeout", type=float, default=5.0)
    ap.add_argument("--broker-down", type=float, default=3.0, help="seconds the broker stays down")
    ap.add_argument("--broker", choices=sorted(available_kinds()), default=None)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)

    home = Path(tempfile.mkdtemp(prefix="grid-soak-"))
    for k in [k for k in os.environ if k.startswith("GRID_")]:
        del os.environ[k]
    os.environ["GRID_CONFIG_DIR"] = str(home / "config")
    os.environ["GRID_DATA_DIR"] = str(home / "data")
    generate_key(home / "config" / "keys" / "id_ed25519", "soak@bench")
    (home / "config" / "authorized_keys").write_text((home / "config" / "keys" / "id_ed25519.pub").read_text())
    kinds = available_kinds()
    kind = args.broker or ("redis" if "redis" in kinds else sorted(kinds)[0])
    broker = Broker(kind=kind, binary=kinds[kind]).start()
    nodes = [Node(n, home, broker.url, args.slots, args.node_timeout) for n in NODES]
    runs = home / "runs.log"
    runs.touch()
    report: dict = {"jobs": args.jobs, "broker": kind, "agents": len(nodes), "slots_per_agent": args.slots,
                    "node_timeout": args.node_timeout, "node_crashes": 0, "broker_restarts": 0,
                    "node_loss_detect_s": []}
    try:
        settings = load_settings(overrides={"redis_url": broker.url, "submitter": "soak@bench"})
        grid = Grid(broker.client(), settings)
        for n in nodes:
            n.start()
        deadline = time.monotonic() + 60
        while not all(grid.redis.hget(keys.node(n.name), "ready") == str(n.proc.pid).encode() for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not start; see " + str(home))
            time.sleep(0.1)
        grid_id = grid.redis.get(keys.GRID_ID).decode()
        cmd = f'echo "$GRID_JOB_ID" >> {runs}; echo ok'
        ids: list[str] = []
        submitted = threading.Event()

        def submit() -> None:
            # Its own client: the bench's main loop and the broker restart must not share one.
            g = Grid(broker.client(), settings)
            for i in range(0, args.jobs, 200):
                batch = [JobSpec(command=cmd, name=f"soak-{j}") for j in range(i, min(args.jobs, i + 200))]
                while True:
                    try:
                        ids.extend(g.submit_many(batch))
                        break
                    except Exception as e:  # noqa: BLE001 - the broker is restarting: submit again
                        say(f"submit failed ({e}); again")
                        time.sleep(1)
            submitted.set()
            say(f"submitted {len(ids)} jobs")

        say(f"broker {kind} at {broker.url}; logs in {home}")
        t0 = time.monotonic()
        threading.Thread(target=submit, daemon=True).start()
        next_kill = t0 + args.kill_every
        down: tuple[Node, float, float] | None = None  # node, monotonic kill time, broker kill time
        restarted_broker = False
        last_report = 0.0
        while True:
            now = time.monotonic()
            if now - t0 > args.timeout:
                say("timeout: stopping the soak")
                break
            try:
                states = count_states(grid, list(ids))
            except Exception as e:  # noqa: BLE001 - the broker may be restarting
                say(f"broker unreachable from the bench: {e}")
                time.sleep(1)
                continue
            done = states.get("finished", 0) + states.get("failed", 0) + states.get("canceled", 0)
            if now - last_report > 10:
                last_report = now
                say(f"{done}/{len(ids)} done {states}")
            if submitted.is_set() and done == len(ids) and down is None:
                break
            if down is not None:
                node, killed_at, killed_bt = down
                seen = node_down_seen(grid, node.name, killed_bt)
                if seen is not None and not any(x[0] == node.name for x in report.get("_detected", [])):
                    report.setdefault("_detected", []).append((node.name, seen - killed_bt))
                    report["node_loss_detect_s"].append(round(seen - killed_bt, 2))
                    say(f"{node.name} declared down {seen - killed_bt:.1f}s after it died")
                if now - killed_at > args.node_timeout + 4:
                    node.start()
                    say(f"{node.name} restarted")
                    down = None
                    report.pop("_detected", None)
            elif now >= next_kill and not (submitted.is_set() and done == len(ids)):
                node = nodes[report["node_crashes"] % len(nodes)]
                sec, usec = grid.redis.time()
                node.crash(grid_id)
                down = (node, time.monotonic(), sec + usec / 1e6)
                report["node_crashes"] += 1
                next_kill = time.monotonic() + args.kill_every
                say(f"crashed {node.name} (agent, slots and jobs)")
            if not restarted_broker and done >= args.jobs // 2:
                restarted_broker = True
                say("restarting the broker")
                broker.stop()
                time.sleep(args.broker_down)
                broker.start()
                report["broker_restarts"] += 1
                say("broker back")
            time.sleep(1.0 + rnd.random() * 0.1)
        report["seconds"] = round(time.monotonic() - t0, 1)
        report["states"] = count_states(grid, ids)
        report.update(audit(grid, ids, runs))
    finally:
        for n in nodes:
            try:
                n.stop()
            except Exception:  # noqa: BLE001 - tear down what can be torn down
                pass
        broker.stop()
    report.pop("_detected", None)
    d = report["node_loss_detect_s"]
    report["node_loss_detect_max_s"] = max(d) if d else None
    report["jobs_per_s"] = round(args.jobs / report["seconds"], 1) if report.get("seconds") else None
    print(json.dumps(report))
    return 0 if report.get("jobs_lost") == 0 and report.get("duplicates_recorded") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
