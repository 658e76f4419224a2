"""End to end: the real console in an 80x24 tmux pane, driven by keys, read from the screen."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """One private tmux server (its own socket) running one console."""

    def __init__(self, tmp: Path, command: list[str], env: dict[str, str], size=(80, 24)):
        self.sock = f"gridtui-test-{os.getpid()}-{time.monotonic_ns()}"
        self.exit_file = tmp / "exit-code"
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.exit_file))}"
        envs = [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
        # Start idle, set options, then run: the pane stays readable after the console exits.
        self.tmux("new-session", "-d", "-s", "t", "-x", str(size[0]), "-y", str(size[1]), *envs, "sleep", "600")
        self.tmux("set-option", "-s", "escape-time", "0")
        self.tmux("set-option", "-g", "remain-on-exit", "on")
        self.tmux("respawn-pane", "-k", "-t", "t", *envs, "sh", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        try:
            return self.tmux("capture-pane", "-p", "-t", "t")
        except subprocess.CalledProcessError:
            return ""

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "t", *(["-l"] if literal else []), *keys)
        time.sleep(0.15)

    def wait_for(self, *needles: str, timeout: float = 20.0) -> str:
        def shown() -> str | None:
            text = self.screen()
            return text if all(n in text for n in needles) else None

        return eventually(shown, timeout, 0.2, lambda: f"{needles} on screen; it shows:\n{self.screen()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        eventually(self.exit_file.exists, timeout, 0.1, lambda: f"the console to exit; it shows:\n{self.screen()}")
        return int(self.exit_file.read_text().strip())

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def console_command(url: str) -> list[str]:
    """The installed `gridtui` when there is one next to this Python, else `python -m console`."""
    installed = Path(sys.executable).parent / "gridtui"
    base = [str(installed)] if installed.exists() else [sys.executable, "-m", "console"]
    return [*base, "--redis-url", url, "--poll-interval", "0.3"]


@pytest.fixture
def tmux_console(tmp_path, broker, settings, r):
    sessions = []

    def start(size=(80, 24), url: str | None = None):
        env = {k: v for k, v in os.environ.items() if k.startswith("GRID_")}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        env["TERM"] = "xterm-256color"
        t = Tmux(tmp_path, console_command(url or broker.url), env, size)
        sessions.append(t)
        return t

    yield start
    for t in sessions:
        t.kill()


def test_operator_session_80x24(tmux_console, agents, grid):
    agents("node-a", slots=2)
    t = tmux_console()
    t.wait_for("jobs", "? keys")

    t.keys("3")  # nodes view: the live agent
    t.wait_for("node-a", "up", "0/2")

    t.keys("1")
    t.keys("s")  # submit from the form
    t.wait_for("Submit a job")
    t.keys("echo hello-from-e2e; sleep 120", literal=True)
    t.keys("Tab")
    t.keys("e2e-job", literal=True)
    t.keys("C-s")
    t.wait_for("submitted")
    t.wait_for("e2e-job", "running")
    jid = grid.list()[0][0].id

    t.keys("Enter")  # job detail: output appears
    t.wait_for(jid, "hello-from-e2e", "following")

    t.keys("c")  # cancel the running job
    t.wait_for("Cancel 1 job?")
    t.keys("y")
    t.wait_for("state canceled", "end of output: canceled")
    from gridcore.models import JobState
    assert grid.state(jid) is JobState.CANCELED

    t.keys("Escape")
    t.wait_for("jobs 1–1 of 1")
    t.keys("/")  # filter: nothing is running any more, one job is canceled
    t.wait_for("enter applies")  # the input is open (a loaded machine can be slow to draw it)
    t.keys("state:running", literal=True)
    t.keys("Enter")
    t.wait_for("filter: state:running", "no jobs on this page")
    t.keys("/")
    t.keys("C-u")
    t.wait_for("enter applies")
    t.keys("state:canceled e2e", literal=True)
    t.keys("Enter")
    screen = t.wait_for("filter: state:canceled e2e", "e2e-job", "canceled")
    assert "Traceback" not in screen

    t.keys("q")
    assert t.wait_exit() == 0


def test_broker_unreachable_is_a_banner_not_a_crash(tmux_console):
    from tests.support.brokers import free_port

    t = tmux_console(url=f"redis://127.0.0.1:{free_port()}/0")
    screen = t.wait_for("broker unreachable", "retrying")
    assert "Traceback" not in screen
    t.keys("C-q")
    assert t.wait_exit() == 0


@pytest.mark.agents  # `gridtui --local` starts the local grid: a broker and an agent
def test_local_console_says_what_it_leaves_running(tmp_path, home):
    from tests.support.cli import run_cli

    env = {k: v for k, v in os.environ.items() if k.startswith("GRID_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["TERM"] = "xterm-256color"
    command = [*console_command("redis://unused")[:-4], "--local", "--poll-interval", "0.3"]
    t = Tmux(tmp_path, command, env)
    try:
        t.wait_for("jobs", "? keys", timeout=60)
        if os.geteuid() == 0:
            t.wait_for("runs jobs as root")
        t.keys("q")
        assert t.wait_exit() == 0
        said = " ".join(t.tmux("capture-pane", "-p", "-S", "-60", "-t", "t").split())  # what scrolled up too
        assert "the local grid is still running" in said and "Stop it with `grid down`" in said
        assert "agent.stop_grace" in said and "--now" in said
    finally:
        t.kill()
        run_cli("down", "--now", timeout=120)
