"""The `grid` CLI as tests run it: a real subprocess, or in-process as the console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def run_cli(*args: str, url: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `grid ARGS` in a subprocess with the test's environment (`env`, else os.environ),
    GRID_REDIS_URL set to `url` when given; `check` fails the test on a non-zero exit."""
    full = dict(os.environ if env is None else env)
    if url:
        full["GRID_REDIS_URL"] = url
    p = subprocess.run([sys.executable, "-c", "from cli.app import run; run()", *args], capture_output=True,
                       text=True, env=full, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"grid {args} exited {p.returncode}: {p.stderr}")
    return p


def call_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `grid ARGS` in this process as the console script does; (exit code, stdout, stderr)."""
    from cli.app import app
    from cli.errors import handle_errors

    capsys.readouterr()
    code = handle_errors(lambda: app(list(args), prog_name="grid", standalone_mode=False))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_tty(*args: str, url: str | None = None, columns: int = 80, timeout: float = 60,
                keep_escapes: bool = False) -> tuple[int, str]:
    """Run `grid ARGS` with stdout and stderr on a pseudo-terminal `columns` wide, as a person at a
    terminal runs it; (exit code, what the terminal got, escape sequences removed unless `keep_escapes`)."""
    import pty
    import re
    import select
    import time

    full = dict(os.environ, COLUMNS=str(columns), LINES="50", TERM="xterm-256color")
    full.pop("NO_COLOR", None)
    if url:
        full["GRID_REDIS_URL"] = url
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", "from cli.app import run; run()", *args], stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave, env=full)
    os.close(slave)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            data += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    code = p.wait(timeout=5)
    if keep_escapes:
        return code, data.decode("utf-8", "replace").replace("\r\n", "\n")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", data.decode("utf-8", "replace"))
    return code, text.replace("\r\n", "\n")
