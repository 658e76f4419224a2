"""A stand-in for attacker code: if anything ever calls it, it leaves a marker file.

Attacks name `tests.security.gadget.touch` as a job function or RQ callback; the agent runs
from the repository root, so the name is importable there and a call would be visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def touch(*args: Any, **kwargs: Any) -> None:
    """Create the marker named by a str argument or by a job's meta["marker"]."""
    for a in args:
        if isinstance(a, str):
            Path(a).write_text("pwned\n")
            return
        meta = getattr(a, "meta", None)
        if isinstance(meta, dict) and meta.get("marker"):
            Path(meta["marker"]).write_text("pwned\n")
            return
