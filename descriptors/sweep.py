"""Sweep expansion: the cartesian product of parameter axes, substituted where `{axis}` appears."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

MAX_CELLS = 10_000
"""Most jobs one swept task may expand to; past this it is surely a mistake in the axes."""

# `{{name}}` is a literal `{name}`; `${name}` is the shell's, so a `{` right after `$` starts none.
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def cell_count(axes: Mapping[str, Sequence[Any]]) -> int:
    """How many jobs the axes expand to."""
    return math.prod(len(v) for v in axes.values())


def cells(axes: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination, the last axis varying fastest (as the axes were written)."""
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


def render(value: Any) -> str:
    """A sweep value as it appears in a command: strings as is, true/false and numbers as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def placeholders(text: str) -> set[str]:
    """Names written `{name}` in text (shell `${name}` and literal `{{name}}` excluded)."""
    return {m.group(2) for m in _PLACEHOLDER.finditer(text) if m.group(2)}


def substitute(text: str, cell: Mapping[str, Any]) -> str:
    """Replace `{axis}` for the axes of this cell and `{{name}}` by `{name}`; other braces are left
    for the shell. Text of a task without a sweep (an empty cell) is left as it is."""
    if not cell:
        return text

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        return render(cell[m.group(2)]) if m.group(2) in cell else m.group(0)

    return _PLACEHOLDER.sub(one, text)


SWEEP_ENV = "GRID_SWEEP_"
"""Prefix of the variables a sweep cell's job gets (signed into its envelope)."""


def sweep_env(group: str, index: int, size: int, cell: Mapping[str, Any]) -> dict[str, str]:
    """A cell's GRID_SWEEP_* variables: each axis's value by its upper-cased name, then the
    sweep's id, the cell's index and the sweep's size (these three win over same-named axes)."""
    env = {SWEEP_ENV + name.upper(): render(value) for name, value in cell.items()}
    env.update({SWEEP_ENV + "ID": group, SWEEP_ENV + "INDEX": str(index), SWEEP_ENV + "SIZE": str(size)})
    return env
