"""`grid up` / `grid status` / `grid down`: the embedded local grid as a new user starts it."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from gridcore.historystore import HistoryStore
from tests.support.cli import run_cli
from tests.support.wait import eventually

pytestmark = pytest.mark.agents  # `grid up` starts a broker and an agent of its own


def test_up_submit_down(home):
    up = run_cli("up", "--slots", "1", "--json", timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        st = json.loads(run_cli("status", "--json", check=True).stdout)
        assert st["running"] and st["broker"]["url"].startswith("redis://127.0.0.1:")
        assert st["agents"][0]["pid"] and psutil.pid_exists(st["agents"][0]["pid"])
        # The tools find the local grid by themselves: no URL, no key set-up.
        jid = run_cli("submit", "--", "echo hello", check=True).stdout.strip()
        assert run_cli("wait", jid, "--timeout", "60").returncode == 0
        shown = json.loads(run_cli("show", "--json", jid, check=True).stdout)
        assert shown["exit_code"] == 0 and shown["stdout"] == "hello\n"
        # The local grid's history collector copies the end into the store.
        assert st["history_collector"]["alive"]
        with HistoryStore(home / "data" / "history.sqlite3") as store:
            eventually(lambda: store.job(jid), 30, 0.2, "the job in the history store")
        # A second `up` finds it running and starts nothing.
        again = run_cli("up", "--json", check=True)
        assert json.loads(again.stdout)["broker"]["pid"] == st["broker"]["pid"]
    finally:
        down = run_cli("down", timeout=120)
    assert down.returncode == 0, down.stderr
    st = json.loads(run_cli("status", "--json").stdout)
    assert not st["running"] and not st["history_collector"]["pid"]
    assert run_cli("status").returncode == 1


def _up(env) -> None:
    up = run_cli("up", "--slots", "1", env=env, timeout=120)
    assert up.returncode == 0, up.stderr


def _running(env, command: str) -> str:
    jid = run_cli("submit", "--", command, env=env, check=True).stdout.strip()
    eventually(lambda: json.loads(run_cli("show", "--json", jid, env=env, check=True).stdout)["state"] == "running",
               60, 0.2, "the job to run")
    return jid


def test_down_says_what_it_does_and_the_stop_grace_is_one_number(home):
    env = dict(os.environ, GRID_AGENT_STOP_GRACE="2")
    _up(env)
    try:
        jid = _running(env, "sleep 300")
        started = time.monotonic()
        down = run_cli("down", env=env, timeout=120)
        took = time.monotonic() - started
    finally:
        run_cli("down", "--now", env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "1 job(s) running: they get up to 2s (agent.stop_grace) to finish" in down.stdout
    assert "1 job(s) wait in the queue for the next `grid up`" in down.stdout and "--now" in down.stdout
    assert 2 <= took < 20
    log = (home / "data" / "local" / "agent.log").read_text()
    assert "for up to 2.0s (agent.stop_grace" in log  # the agent said the same number
    # After `grid down`, a command says how to bring the grid back.
    p = run_cli("show", jid, env=env)
    assert p.returncode == 1 and "the local grid is stopped: start it with `grid up`" in p.stderr


def test_down_now_and_down_wait(home):
    _up(os.environ)
    try:
        first = _running(os.environ, "sleep 300")
        started = time.monotonic()
        now = run_cli("down", "--now", timeout=120)
        assert now.returncode == 0, now.stderr
        assert time.monotonic() - started < 15  # not the 30 s stop grace
        assert "stopping 1 running job(s) now" in now.stdout
        _up(os.environ)
        eventually(lambda: json.loads(run_cli("show", "--json", first, check=True).stdout)["state"] == "running",
                   60, 0.2, "the stopped job to run again at `grid up`")
        run_cli("cancel", first, check=True)
        jid = _running(os.environ, "sleep 3; echo done")
        waited = run_cli("down", "--wait", timeout=120)
        assert waited.returncode == 0, waited.stderr
        assert "waiting for 1 running job(s) to finish" in waited.stdout
        _up(os.environ)
        shown = json.loads(run_cli("show", "--json", jid, check=True).stdout)
        assert shown["state"] == "finished" and shown["stdout"] == "done\n"
        st = json.loads(run_cli("nodes", "--json", check=True).stdout)
        assert not st[0]["draining"]  # the node takes jobs again after `grid up`
    finally:
        run_cli("down", "--now", timeout=120)
