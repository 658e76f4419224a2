"""The names an agent gives its slots, which are their RQ worker names:
`<node>.<agent id>.<slot>`, and `.<deaths>` once a slot was restarted. Node names may hold dots:
whose slot a name is is told by the whole name, never by a prefix (node `a` is not `a.b`)."""

from __future__ import annotations

import re

AGENT_ID = r"[0-9a-f]{12}"
"""An agent incarnation's id (`uuid4().hex[:12]`, agent/daemon.py)."""


def slot_name(node: str, agent_id: str, index: int, deaths: int = 0) -> str:
    """The name of slot `index` of agent `agent_id` on `node`, after `deaths` restarts."""
    return f"{node}.{agent_id}.{index}" + (f".{deaths}" if deaths else "")


def pattern(node: str, agent_id: str = AGENT_ID) -> str:
    """Regex source matching the whole name of any slot of `node` (of one agent, or of any)."""
    return re.escape(node) + r"\." + agent_id + r"\.\d+(?:\.\d+)?"


def of_node(worker: str, node: str) -> bool:
    """Whether `worker` is the name of a slot of `node`."""
    return re.fullmatch(pattern(node), worker) is not None
