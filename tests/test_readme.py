"""The README stays true: the files it cites exist, every console key and job variable is in it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from textual.binding import Binding

import console
from agent import proctree

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

SHOWN = {"question_mark": "?", "slash": "/", "right_square_bracket": "]", "left_square_bracket": "[",
         "escape": "esc", "pageup": "pgup", "pagedown": "pgdn", "up": "↑", "down": "↓", "left": "←", "right": "→",
         **{str(n): "`1`–`5`" for n in range(1, 6)}}
"""How the README writes keys textual names otherwise."""


def test_the_files_it_cites_exist():
    cited = set(re.findall(r"(?:descriptors|bench|agent|tests)/[\w/.-]+\.(?:json|py|md)", README))
    assert cited and not [p for p in cited if not (ROOT / p).exists()]


def console_bindings() -> list[tuple[str, Binding]]:
    out = []
    for mod in pkgutil.walk_packages(console.__path__, "console."):
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == mod.name:
                out += [(f"{obj.__name__}", b) for b in obj.__dict__.get("BINDINGS", ()) if isinstance(b, Binding)]
    return out


def documented(shown: str, section: str) -> bool:
    """A letter in backticks (`c`); a named key (ctrl+p, space, pgdn) or an arrow as a word."""
    if "`" in shown or len(shown) == 1 and shown.isalnum() or shown in "/?[]":
        return (shown if "`" in shown else f"`{shown}`") in section
    return re.search(rf"(?<![\w+]){re.escape(shown)}(?![\w+])", section) is not None


def test_every_console_key_is_in_the_keys_table():
    section = README[README.index("## The console"):README.index("## Task descriptors")]
    missing = [f"{owner}: {key}" for owner, b in console_bindings() for key in b.key.split(",")
               if not documented(SHOWN.get(key, key), section)]
    assert not missing, missing


def test_the_job_environment_is_documented():
    for name in ("ENV_JOB", "ENV_NODE", "ENV_GRID", "ENV_AGENT", "ENV_AGENT_PID", "ENV_RUN", "ENV_WORKER"):
        assert f"`{getattr(proctree, name)}`" in README
    assert "CUDA_VISIBLE_DEVICES" in README and "HOME" in README
