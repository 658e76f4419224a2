"""Plain lines for the shell: ids on stdout, messages on stderr, each through the one sanitizer.

No Rich here: a `grid submit` that only prints an id (and perhaps a note) imports none of it.
"""

from __future__ import annotations

import sys

from gridcore.sanitize import clean


def echo(msg: str) -> None:
    """One line on stdout; it may hold an id or name from the broker, so it is cleaned whole."""
    sys.stdout.write(clean(msg, 100_000) + "\n")


def err(msg: str) -> None:
    """A one-line message on stderr; it may quote broker data, so it is cleaned whole."""
    sys.stderr.write(f"grid: {clean(msg, 4096)}\n")


def err_lines(text: object) -> None:
    """An error on stderr, each of its lines cleaned (messages quote broker data)."""
    lines = str(text).split("\n")
    sys.stderr.write("grid: " + "\n".join(clean(line, 4096) for line in lines) + "\n")
