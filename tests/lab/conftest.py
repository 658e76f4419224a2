"""Helpers for the lab tests: the `grid` command as a lab admin runs it."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

GRID = str(Path(sys.executable).with_name("grid"))
"""The `grid` console script of the environment the suite runs in."""


def grid_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `grid ARGS...` in a wide terminal; the result with text stdout and stderr."""
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([GRID, *args], capture_output=True, text=True, env=full, timeout=timeout, cwd=cwd)


@pytest.fixture
def cli(settings):
    """`grid` against the test broker, with the test user's config and data dirs."""
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        return grid_cli("--redis-url", settings.redis_url, *args, env=env, timeout=timeout, cwd=cwd)
    return run


def runs_as(user: str) -> bool:
    """Whether `user` can run this Python with the grid importable (a venv made from a Python
    under /root is not usable by other users; a real install puts it where they can read it)."""
    probe = subprocess.run(["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", sys.executable, "-c",
                            "import agent.cli"], capture_output=True, timeout=30)
    return probe.returncode == 0


def unit_fields(text: str) -> dict[str, list[str]]:
    """A unit file's `Key=value` lines: key -> every value, in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def unit_command(unit: Path, prefix: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str], str, int]:
    """What systemd would start for `unit`: (argv, environment, working directory, uid the
    job runs as). As the unit's user where it can run this Python, else as ourselves."""
    f = unit_fields(unit.read_text())
    env = {"PATH": os.environ["PATH"], **dict(e.split("=", 1) for e in f["Environment"])}
    argv = shlex.split(f["ExecStart"][0])
    user = f["User"][0]
    if runs_as(user):
        return [*prefix, "setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", *argv], env, \
            f["WorkingDirectory"][0], pwd.getpwnam(user).pw_uid
    env["GRID_AGENT_ALLOW_ROOT"] = "true"  # this venv's Python is unreadable to other users
    return [*prefix, *argv], env, f["WorkingDirectory"][0], os.getuid()


class Server:
    """A broker process a lab test starts from its own arguments (a config file, say)."""

    def __init__(self, args: list[str], port: int, username: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1", ssl: dict | None = None):
        self.args, self.port, self.username, self.password, self.host = args, port, username, password, host
        self.ssl = ssl or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/0"

    def client(self, **kw) -> redis.Redis:
        tls = {"ssl": True, **self.ssl} if self.ssl else {}
        return redis.Redis(host=self.host, port=self.port, username=self.username, password=self.password,
                           **tls, **kw)

    def start(self) -> Server:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.args[0]} exited at start with {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError(f"{self.args[0]} did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
