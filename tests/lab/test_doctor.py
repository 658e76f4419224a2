"""`grid doctor` against a deliberately misconfigured broker, and against the one
`grid broker-config` writes, with ACL users and real agents."""

from __future__ import annotations

import json

import pytest

from gridcore.client import Grid
from gridcore.models import JobSpec, JobState
from gridcore.settings import load_settings
from tests.support.brokers import free_port, redis_binary
from tests.support.agents import AgentProc
from tests.lab.conftest import Server, grid_cli

pytestmark = [pytest.mark.skipif(not redis_binary(), reason="needs redis-server on PATH"), pytest.mark.agents]


@pytest.fixture
def started():
    """Agents and servers a test starts; all stopped at teardown, agents first."""
    things: list = []
    yield things
    for t in reversed(things):
        t.kill() if isinstance(t, AgentProc) else t.stop()


def findings(out) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for f in json.loads(out.stdout)["findings"]:
        by.setdefault(f["check"], []).append(f)
    return by


def levels(by: dict, check: str) -> set[str]:
    return {f["level"] for f in by.get(check, [])}


def test_doctor_names_what_a_misconfigured_lab_gets_wrong(home, tmp_path, started):
    port = free_port()
    bad = Server([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
                  "--appendonly", "no", "--maxmemory-policy", "allkeys-lru"], port).start()
    started.append(bad)
    overs = AgentProc(home, bad, "node-over", 4, {"cpus": 2})
    empty = tmp_path / "no-keys"
    empty.write_text("")
    nokey = AgentProc(home, bad, "node-nokey", 1, {"authorized_keys": str(empty), "queues": ["nokey"]})
    for a in (overs, nokey):
        started.append(a)
        a.start()
    settings = load_settings(overrides={"redis_url": bad.url})
    grid = Grid(bad.client(), settings)
    jid = grid.submit(JobSpec(command="true", queue="nokey"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FAILED

    out = grid_cli("--redis-url", bad.url, "doctor", "--json")
    assert out.returncode == 1, out.stderr
    by = findings(out)
    assert levels(by, "broker.aof") == {"problem"} and "appendonly" in by["broker.aof"][0]["fix"]
    assert levels(by, "broker.eviction") == {"problem"} and "noeviction" in by["broker.eviction"][0]["fix"]
    assert levels(by, "broker.memory") == {"warn"}
    assert levels(by, "broker.aclfile") == {"warn"}
    assert levels(by, "acl.default") == {"problem"}
    assert levels(by, "acl.users") == {"warn"} and "grid-agent-node-over" in by["acl.users"][0]["message"]
    over = [f for f in by["node.node-over"] if f["level"] == "problem"]
    assert over and "4 slots but 2 CPUs" in over[0]["message"] and "agent.slots = 2" in over[0]["fix"]
    pub = (home / "config" / "keys" / "id_ed25519.pub").read_text().split()[1]
    key = by["keys.node-nokey"][0]
    assert key["level"] == "problem" and "grid keys authorize" in key["fix"] and pub in key["fix"]
    assert all(f["fix"] and "\n" not in f["fix"] for fs in by.values() for f in fs if f["level"] != "ok")

    text = grid_cli("--redis-url", bad.url, "doctor", "--quiet")
    assert text.returncode == 1
    assert "PROBLEM broker.eviction: maxmemory-policy is allkeys-lru" in text.stdout
    assert "        fix: CONFIG SET maxmemory-policy noeviction" in text.stdout
    assert " ok " not in text.stdout and text.stdout.rstrip().endswith("warning(s)")


def test_the_broker_config_grid_writes_passes_the_doctor(home, tmp_path, started, monkeypatch):
    port, data = free_port(), tmp_path / "broker"
    data.mkdir()
    conf, aclfile = tmp_path / "grid.conf", tmp_path / "users.acl"
    made = grid_cli("broker-config", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                    "--maxmemory", "256MB", "--aclfile", str(aclfile), "--init-aclfile")
    assert made.returncode == 0, made.stderr
    conf.write_text(made.stdout)
    password = made.stderr.split(" password ", 1)[1].split()[0]
    server = Server([redis_binary(), str(conf)], port, username="grid-admin", password=password).start()
    started.append(server)
    admin = {"GRID_REDIS_USERNAME": "grid-admin", "GRID_REDIS_PASSWORD": password}
    users = grid_cli("--redis-url", server.url, "acl", "--apply", "--node", "node-good", "--json", env=admin)
    assert users.returncode == 0, users.stderr
    creds = {u["role"]: (u["name"], u["password"]) for u in json.loads(users.stdout)}
    monkeypatch.setenv("GRID_REDIS_USERNAME", creds["agent"][0])
    monkeypatch.setenv("GRID_REDIS_PASSWORD", creds["agent"][1])
    agent = AgentProc(home, server, "node-good", 1, {"cpus": 2})
    started.append(agent)
    agent.start()
    monkeypatch.delenv("GRID_REDIS_USERNAME")
    monkeypatch.delenv("GRID_REDIS_PASSWORD")

    out = grid_cli("--redis-url", server.url, "doctor", "--json", env=admin)
    by = findings(out)
    assert out.returncode == 0, out.stdout
    assert [f for fs in by.values() for f in fs if f["level"] != "ok"] == []
    assert {"broker.aof", "broker.eviction", "broker.memory", "acl.grid-operator", "acl.grid-viewer",
            "acl.grid-agent-node-good", "node.node-good", "tls"} <= set(by)
    # A viewer can run it too: what its user may not read is named, not failed.
    viewer = {"GRID_REDIS_USERNAME": creds["viewer"][0], "GRID_REDIS_PASSWORD": creds["viewer"][1]}
    as_viewer = findings(grid_cli("--redis-url", server.url, "doctor", "--json", env=viewer))
    assert levels(as_viewer, "broker.config") == {"warn"} and levels(as_viewer, "acl") == {"warn"}
    # The ACL file keeps the users over a restart.
    server.stop()
    server.start()
    assert grid_cli("--redis-url", server.url, "doctor", "--json", env=admin).returncode == 0
