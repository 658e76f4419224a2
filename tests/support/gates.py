"""Blockers that end when the test says so, not after a sleep guessed to outlive start-ups."""

from __future__ import annotations

import shlex
from pathlib import Path


class Gate:
    """A file the test creates to let jobs blocked on it go on."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def wait(self) -> str:
        """Shell that blocks until the gate is open."""
        return f"while [ ! -e {shlex.quote(str(self.path))} ]; do sleep 0.05; done"

    def command(self, then: str = "") -> str:
        """A job's shell command: block until the gate opens, then run `then`."""
        return f"{self.wait}; {then}" if then else self.wait

    def open(self) -> None:
        """Let every job blocked on this gate go on."""
        self.path.touch()
