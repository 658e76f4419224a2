"""Suite fixtures: real brokers (Redis and Valkey), settings in a temp dir, real agents.

Helpers shared by tests live in tests/support/ (see its __init__)."""

from __future__ import annotations

import os

import pytest

from gridcore.client import Grid
from gridcore.settings import load_settings
from gridcore.signing import generate_key
from tests.support import agents as agent_support
from tests.support.agents import AGENT_FIXTURES, AgentProc
from tests.support.brokers import kinds_for, start_broker
from tests.support.cli import run_cli
from tests.support.gates import Gate


def pytest_generate_tests(metafunc):
    """Tests marked `both_brokers` run on Redis and on Valkey; the rest on one of them
    (tests/support/brokers.py chooses)."""
    if "broker" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_brokers") is not None
    metafunc.parametrize("broker", kinds_for(both), indirect=True, scope="session")


def pytest_collection_modifyitems(items):
    """Mark `agents` every test that starts grid-agent processes or tmux (through a fixture)."""
    for item in items:
        if AGENT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.agents)


def pytest_runtest_setup(item):
    agent_support.set_current_test(item.get_closest_marker("agents") is not None)


@pytest.fixture(scope="session")
def broker(request, tmp_path_factory):
    """One real broker per kind for the session; tests get it flushed."""
    b = start_broker(request.param)
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
    generate_key(cfg / "keys" / "id_ed25519", "tester@suite")
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


@pytest.fixture
def cli(broker, settings):
    """`grid ARGS` as a subprocess against the suite's broker (tests/support/cli.py's run_cli)."""
    return lambda *a, **kw: run_cli(*a, url=broker.url, **kw)


@pytest.fixture
def gate(tmp_path):
    """A Gate for blocker jobs; opened at teardown so nothing stays blocked (request it after
    `agents`, so it opens before the agents stop)."""
    g = Gate(tmp_path / "gate")
    yield g
    g.open()
