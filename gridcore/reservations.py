"""What each running or placed job holds on its node, reserved atomically in the broker.

One hash per node (`grid:node:<n>:held`): job id -> {"cpus", "memory", "gpus"}. A Lua script
sums it and adds a job only if the node's declared cpus, memory and GPUs are not exceeded, so
the placement loop and the slots can never overcommit a node between them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import redis

from gridcore import keys
from gridcore.models import Node, NodeState, Resources
from gridcore.placement import Committed
from gridcore.records import HeldEntry, salvage, text

RESERVE_FN = """
local function reserve(held, id, need_cpus, need_mem, gpus, cap_cpus, cap_mem, entry)
  if redis.call('HEXISTS', held, id) == 1 then return 1 end
  local cpus, mem, used = 0, 0, {}
  for _, v in ipairs(redis.call('HVALS', held)) do
    -- Anyone may write this hash: an entry that is not a small JSON object of numbers holds
    -- nothing (the placement pass sets it aside) instead of failing every reserve on the node.
    local ok, h = false, nil
    if #v <= 4096 then ok, h = pcall(cjson.decode, v) end
    if ok and type(h) == 'table' then
      cpus = cpus + (tonumber(h.cpus) or 0)
      mem = mem + (tonumber(h.memory) or 0)
      if type(h.gpus) == 'table' then
        for _, g in ipairs(h.gpus) do used[g] = true end
      end
    end
  end
  need_cpus, need_mem = tonumber(need_cpus), tonumber(need_mem)
  if cpus + need_cpus > tonumber(cap_cpus) + 1e-9 then return 0 end
  if tonumber(cap_mem) > 0 and need_mem > 0 and mem + need_mem > tonumber(cap_mem) then return 0 end
  for _, g in ipairs(cjson.decode(gpus)) do if used[g] then return 0 end end
  redis.call('HSET', held, id, entry)
  return 1
end
"""
"""Lua: hold a job's resources on a node if they fit (1), else 0; shared with the slot's start script."""

_RESERVE = RESERVE_FN + "return reserve(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])\n"


class Corrupt(NamedTuple):
    """A held entry that is not a HeldEntry: its node, field (job id) and value, and what is wrong."""

    node: str
    field: bytes
    raw: bytes
    problem: str


class Reservations:
    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self._reserve = conn.register_script(_RESERVE)

    def reserve(self, node: str, job_id: str, res: Resources, gpus: Sequence[int], cap_cpus: float,
                cap_memory: int) -> bool:
        """Hold `res` (and these GPU indices) on `node` for `job_id` if it fits; idempotent."""
        ok = self._reserve(keys=[keys.node_held(node)], args=reserve_args(job_id, res, gpus, cap_cpus, cap_memory))
        return bool(ok)

    def committed(self, nodes: Sequence[str], problems: list[str] | None = None,
                  corrupt: list[Corrupt] | None = None) -> dict[str, Committed]:
        """node -> the sum of what its running and placed jobs hold (unreadable entries named in
        `problems`, and listed in `corrupt` for the caller to set aside)."""
        out = {}
        for node, jobs in self.held(nodes, problems, corrupt).items():
            c = Committed()
            for e in jobs.values():
                c = c.plus(Resources(cpus=e.cpus, memory=e.memory), e.gpus)
            out[node] = c
        return out

    def committed_live(self, nodes: Sequence[Node], problems: list[str] | None = None,
                       corrupt: list[Corrupt] | None = None) -> dict[str, Committed]:
        """`committed` for these nodes, nothing for a down one: what its keys still hold, other
        agents recovered without writing them (agent/recovery.py), and it drops when back."""
        live = [n.name for n in nodes if n.state is not NodeState.DOWN]
        return {n.name: Committed() for n in nodes} | self.committed(live, problems, corrupt)

    def held(self, nodes: Sequence[str], problems: list[str] | None = None,
             corrupt: list[Corrupt] | None = None) -> dict[str, dict[str, HeldEntry]]:
        """node -> job id -> what it holds; an unreadable entry holds what could be read of it."""
        with self.conn.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.hgetall(keys.node_held(n))
            # A held key of another type (anyone can write one) holds nothing, for that node only.
            rows = [{} if isinstance(x, redis.ResponseError) else x for x in pipe.execute(raise_on_error=False)]
        seen: list[str] = []
        out = {}
        for n, row in zip(nodes, rows, strict=True):
            out[n] = {}
            for k, v in row.items():
                before = len(seen)
                out[n][text(k)] = salvage(HeldEntry, v, f"{keys.node_held(n)} {text(k)}", seen) or HeldEntry()
                if corrupt is not None and len(seen) > before:
                    corrupt.append(Corrupt(n, k, v, "; ".join(seen[before:])))
        if problems is not None:
            problems.extend(seen)
        return out


def reserve_args(job_id: str, res: Resources, gpus: Sequence[int], cap_cpus: float, cap_memory: int) -> list:
    """The arguments of RESERVE_FN's `reserve`, after the held hash's key."""
    entry = HeldEntry(cpus=res.cpus, memory=res.memory, gpus=list(gpus)).encode()
    return [job_id, res.cpus, res.memory, json.dumps(list(gpus)), cap_cpus, cap_memory, entry]


def release(pipe, job_id: str, node: str | None = None, group: str | None = None, *,
            wake_loops: bool = True, requeued: bool = False) -> None:
    """Give back what a job holds while it waits or runs, on the caller's pipeline: its
    reservation on `node`, its sweep's throttle slot (`group`), and its placement-reason and
    priority entries. The one place that does this; the attempt's `grid:active` entry is the
    attempt's own to drop (only while it still owns the job). What was given back may let a
    waiting job in: the placement loops it concerns are woken (`wake`), unless the caller places
    the next jobs itself (`wake_loops=False`) and wakes them only if that finds nothing to place.
    `requeued`: the job itself goes back to `grid.pending` (recovery): every loop is woken, any
    node may take it now (else the other nodes would place it only at their periodic pass)."""
    if node:
        pipe.hdel(keys.node_held(node), job_id)
    if group:
        pipe.srem(keys.group_slots(group), job_id)
    entry = wake_entry(node, group, requeued=requeued) if wake_loops else None
    if entry:
        _add_wake(pipe, entry)
    pipe.hdel(keys.WHY, job_id)
    pipe.hdel(keys.PRIORITY, job_id)


def wake_entry(node: str | None, group: str | None, *, requeued: bool = False) -> dict[str, str] | None:
    """The wake a job's release makes (`release`), or None: what it gave back on `node` concerns
    that node's loop, a sweep's throttle slot (`group`) or a requeued job every loop."""
    if not (node or group or requeued):
        return None
    entry = _wake_fields(node, bool(group) or requeued)
    if requeued:
        # The job went back to the top of the waiting queue: a loop's remembered unfit head
        # (agent/negotiator.py Skip) cannot tell it from the head's jobs that left meanwhile.
        entry[WAKE_FRONT] = "1"
    return entry


def _wake_fields(node: str | None, anywhere: bool) -> dict[str, str]:
    return {WAKE_NODE: node or "", WAKE_ANY: "1" if anywhere else "0"}


def wake(pipe, node: str | None = None, *, anywhere: bool = False, idle: bool = False) -> None:
    """Wake the placement loops concerned, on the caller's pipeline: `node`'s (what it gave
    back fits its waiting jobs), and every agent's if `anywhere` (a sweep's throttle slot came
    free: the sweep's next cell may go to any node). `idle`: `node`'s loop is woken for an idle
    slot of its node only (a slot's pass at its job's end left jobs unread and a slot idle):
    it runs its pass only if a slot of the node is still idle when it reads the wake
    (`IDLE_WAKE`)."""
    # A plain command, not a script: an attempt's end runs its recorded commands inside a script
    # (agent/guarded.py), where a script may not be called.
    fields = _wake_fields(node, anywhere)
    if idle and node and not anywhere:
        fields[IDLE_WAKE] = "1"
    _add_wake(pipe, fields)


WAKE_NODE = "node"
"""The field of a wake naming the node whose loop it wakes ("" for none)."""
WAKE_ANY = "any"
"""The field of a wake for every agent's loop ("1"), else "0"."""
WAKE_FRONT = "front"
"""The field of a wake whose job went back to the top of the waiting queue ("1")."""
IDLE_WAKE = "idle"
"""The field of a wake that is for an idle slot of its node only. On a grid of several nodes
the nodes' slots end cells of a sweep at once; a slot's pass saw the node's other slot idle
while that slot was between its job's end and its own pass, which takes the next cell itself.
Each such wake cost the node's loop a pass that placed nothing (on three agents of two slots,
0.4 wakes per cell and ~1.5 ms of the agents' CPU per cell); the loop reads the node's slots
first (one round trip) and skips the pass when none is idle any more."""


class Wake(NamedTuple):
    """A wake entry as a placement loop reads it (agent/negotiator.py), from its raw fields:
    anyone may write the stream, so a missing or odd field reads as not set."""

    node: bytes  # the node whose loop it wakes (b"" for none)
    anywhere: bool  # every loop
    idle: bool  # `node`'s loop, for an idle slot of it only (IDLE_WAKE)
    front: bool  # its job went back to the top of the waiting queue

    @classmethod
    def read(cls, fields: dict[bytes, bytes]) -> Wake:
        return cls(fields.get(_NODE, b""), fields.get(_ANY) == b"1", fields.get(_IDLE) == b"1",
                   fields.get(_FRONT) == b"1")


_NODE, _ANY, _IDLE, _FRONT = (f.encode() for f in (WAKE_NODE, WAKE_ANY, IDLE_WAKE, WAKE_FRONT))


def _add_wake(pipe, entry: dict[str, str]) -> None:
    pipe.xadd(keys.PLACE_WAKES, entry, maxlen=keys.PLACE_WAKES_CAP, approximate=True)
