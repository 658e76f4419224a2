"""Helpers for the lab tests: the `grid` command as a lab admin runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
