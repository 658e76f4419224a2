"""`grid up` / `grid status` / `grid down`: the embedded local grid as a new user starts it."""

from __future__ import annotations

import json

import psutil
import pytest

from tests.support.cli import run_cli

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
        # A second `up` finds it running and starts nothing.
        again = run_cli("up", "--json", check=True)
        assert json.loads(again.stdout)["broker"]["pid"] == st["broker"]["pid"]
    finally:
        down = run_cli("down", timeout=120)
    assert down.returncode == 0, down.stderr
    st = json.loads(run_cli("status", "--json").stdout)
    assert not st["running"]
    assert run_cli("status").returncode == 1
