"""Real `grid-agent` processes for tests, and what puts a test in the `agents` group.

Tests marked `agents` start grid-agent processes, tmux or the local grid; `pytest -m "not
agents"` runs the rest, the fast subset. The mark is given by tests/conftest.py to every test
that uses one of AGENT_FIXTURES, and an AgentProc started by an unmarked test fails it, so
the subset stays free of agents.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gridcore import keys
from tests.support.brokers import Broker
from tests.support.wait import eventually

AGENT_FIXTURES = frozenset({"agents", "tls_agent", "tmux_console"})
"""Fixtures that start grid-agent processes or tmux: a test using one is marked `agents`."""

_marked = {"agents": False}


def set_current_test(marked: bool) -> None:
    """Record whether the test about to run is marked `agents` (conftest's setup hook)."""
    _marked["agents"] = marked


class AgentProc:
    """A grid-agent subprocess with its own config file."""

    def __init__(self, home: Path, broker: Broker, name: str, slots: int, agent_cfg: dict):
        self.home, self.broker, self.name, self.slots = home, broker, name, slots
        self.cfg = {"node_name": name, "slots": slots, "heartbeat_interval": 0.5, "node_timeout": 5.0,
                    "stop_grace": 5.0, "kill_grace": 1.0, "allow_root": True, "log_dir": str(home / f"logs-{name}")}
        self.cfg.update(agent_cfg)
        self.proc: subprocess.Popen | None = None
        self.log = home / f"agent-{name}.log"

    def config_file(self) -> Path:
        lines = [f'redis_url = "{self.broker.url}"', "", "[agent]"]
        for k, v in self.cfg.items():
            if k in ("gpus", "extra_gpus") or isinstance(v, dict):
                continue
            lines.append(f"{k} = {json.dumps(v)}")
        for k in ("gpus", "extra_gpus"):
            if k in self.cfg:
                if not self.cfg[k]:
                    lines.append(f"{k} = []")
                for g in self.cfg[k]:
                    lines.append("")
                    lines.append(f"[[agent.{k}]]")
                    for gk, gv in g.items():
                        lines.append(f"{gk} = {json.dumps(gv)}")
        for k, v in self.cfg.items():
            if isinstance(v, dict):  # e.g. policy={...}: a TOML table
                lines += ["", f"[agent.{k}]"] + [f"{tk} = {json.dumps(tv)}" for tk, tv in v.items()]
        p = self.home / f"agent-{self.name}.toml"
        p.write_text("\n".join(lines) + "\n")
        return p

    def start(self, wait: bool = True) -> None:
        if not _marked["agents"]:
            raise AssertionError("this test starts grid-agent but is not marked `agents`: use the `agents` "
                                 "fixture or mark it, so `pytest -m 'not agents'` leaves it out")
        cfg = self.config_file()
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(cfg)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        r = self.broker.client()
        eventually(lambda: self._ready(r), timeout, message=lambda: f"agent {self.name} to be ready: "
                   f"{self.log.read_text()[-3000:]}")

    def _ready(self, r) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.name} exited: {self.log.read_text()[-3000:]}")
        return r.hget(keys.node(self.name), "ready") == str(self.proc.pid).encode()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.stop(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
