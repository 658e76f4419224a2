"""Placing waiting jobs on nodes: one atomic script per job, run by submitters and agents alike.

A job that needs resources, labels, GPUs, a node or a throttle waits in `grid.pending`. It is
placed when something changes: by its submitter right after it is enqueued, by an agent's
placement loop as soon as a job gives back what it held (`reservations.release` wakes it), and
by that loop's periodic pass, a safety net. Placers are not serialized: any number of clients
and agents may place at once. What keeps them honest is `PLACE`, one Lua script per job that,
atomically, checks the job still waits with the very meta the placer decided on, checks its
sweep is under `max_parallel`, reserves its cpus/memory/GPUs on the node (never above what the
node declared) and moves it to the node's queue. A placer that lost a race is told so and the
job stays for the next placement: nothing is overcommitted, nothing is placed twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import redis

from gridcore import keys
from gridcore.models import Node, NodeState, Resources
from gridcore.placement import Committed, Fit, choose_node, explain
from gridcore.quarantine import heal
from gridcore.reads import Reads
from gridcore.records import NODE_DRAINING, NODE_FIELDS, NODE_SLOTS, CorruptRecord, HeldEntry, JobMeta, Placement, salvage, text
from gridcore.reservations import RESERVE_FN, Corrupt, Reservations, reserve_args, wake
from gridcore.views import node_view

log = logging.getLogger("grid.placing")

WINDOW = 500
"""Waiting jobs looked at per pass (bounded work however long the queue is)."""

PLACE = RESERVE_FN + """
-- KEYS: the pending queue, the node's RQ queue, the job's RQ hash, RQ's set of queues, grid:why,
--       the node's held hash, the sweep's slots set (any key when the job is in no sweep), the
--       node's hash, the node's running hash, then the RQ hashes of the alternates
-- ARGV: job id, node queue name, the new meta, sha1 of the meta the placer read,
--       max_parallel (0: none), '1' if the job is in a sweep, then reserve's cpus, memory,
--       GPUs (JSON), node cpus, node memory, held entry; the node's pool queue to nudge ('' none)
--       and the nudge; the head check ('' none, see below); then per alternate its id, new meta
--       and sha1 (ARGV[16..])
-- Alternates: the jobs right behind it in the placer's order, of its shape (resources, queue,
-- sweep), no GPUs: tried in turn while the one before is no longer waiting (another placer took
-- it), as the placer would try them one script each.
-- Returns {code, n}: n alternates were gone before the one the code is for; code 1 placed, 0 no
-- room on the node, -1 no longer waiting, -2 throttled, -3 meta changed, -4 the node takes no
-- jobs now (draining, or its heartbeat older than its node_timeout: down).
-- The head check (a slot's next cell without a fresh read: `Placer.head_command`): "<window>\\n"
-- then the ids the placer has read, each followed by "\\n". Only the job (or alternate) at the
-- head of the queue is placed, and only if a slot of the node is idle that no job in its queue
-- is there for (-5: its idle slots have jobs to take, as a slot's pass would find) and every job in the first <window> of the queue is one the
-- placer has read (-6: one is not, or no candidate is at the head): then its decision is the
-- one a pass reading the queue now would make. Returns {code, n, the node's slots, its running
-- jobs and those in its queue (before this one), the sweep's placed or running jobs, the jobs
-- waiting}.
-- The placer decided on a view read before this script: the node may have been drained since (by
-- an operator, or by itself on a fault), or gone down. Checked here, in the step that places, a
-- job never lands in the queue of a node that takes nothing until resumed.
local function closed(node)
  local f = redis.call('HMGET', node, '""" + NODE_DRAINING + """', 'beat', 'node_timeout')
  if f[1] == '1' then return true end
  local beat, timeout = tonumber(f[2]), tonumber(f[3])
  if beat == nil or timeout == nil then return false end  -- an agent of an earlier version: no beat
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6 - beat > timeout
end
if closed(KEYS[8]) then return {-4, 0} end
local function place(id, job, meta, digest)
  if not redis.call('LPOS', KEYS[1], id) then return -1 end
  if redis.sha1hex(redis.call('HGET', job, 'meta') or '') ~= digest then return -3 end
  local mp = tonumber(ARGV[5])
  if mp > 0 and redis.call('SISMEMBER', KEYS[7], id) == 0 and redis.call('SCARD', KEYS[7]) >= mp then
    return -2
  end
  if reserve(KEYS[6], id, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]) == 0 then return 0 end
  redis.call('LREM', KEYS[1], 1, id)
  redis.call('HSET', job, 'origin', ARGV[2], 'meta', meta)
  redis.call('RPUSH', KEYS[2], id)
  redis.call('SADD', KEYS[4], KEYS[2])
  redis.call('HDEL', KEYS[5], id)
  if ARGV[6] == '1' then redis.call('SADD', KEYS[7], id) end
  if ARGV[13] ~= '' and redis.call('LLEN', ARGV[13]) == 0 then redis.call('RPUSH', ARGV[13], ARGV[14]) end
  return 1
end
local head = ARGV[15]
if head ~= '' then
  local slots, busy = tonumber(redis.call('HGET', KEYS[8], '""" + NODE_SLOTS + """')) or 0, redis.call('HLEN', KEYS[9])
  -- As a slot's pass: for an idle slot of the node only (its slots unknown: one) that no job in
  -- its queue is there for (each is for one of its idle slots).
  local queued = redis.call('LLEN', KEYS[2])
  if queued >= (slots > 0 and slots - busy or 1) then return {-5, 0, 0, 0, 0, 0} end
  local window = tonumber(string.match(head, '^(%d+)\\n')) or 0
  local ids = redis.call('LRANGE', KEYS[1], 0, window - 1)
  for _, id in ipairs(ids) do
    -- An id with a newline could span two read ones in the list's text: never one it read.
    if string.find(id, '\\n', 1, true) or not string.find(head, '\\n' .. id .. '\\n', 1, true) then
      return {-6, 0, 0, 0, 0, 0}
    end
  end
  -- The candidates before the one at the head were ahead of it: gone (a job that joins mid-queue,
  -- at its priority's place, is in the window and unread: the check above).
  local n, id, job, meta, digest = 0, ARGV[1], KEYS[3], ARGV[3], ARGV[4]
  while id ~= ids[1] do
    if not KEYS[10 + n] then return {-6, 0, 0, 0, 0, 0} end
    local a = 16 + 3 * n
    id, job, meta, digest = ARGV[a], KEYS[10 + n], ARGV[a + 1], ARGV[a + 2]
    n = n + 1
  end
  local code = place(id, job, meta, digest)
  return {code, n, slots, busy + queued, redis.call('SCARD', KEYS[7]), redis.call('LLEN', KEYS[1])}
end
local code = place(ARGV[1], KEYS[3], ARGV[3], ARGV[4])
local n = 0
while code == -1 and KEYS[10 + n] do
  local a = 16 + 3 * n
  n = n + 1
  code = place(ARGV[a], KEYS[9 + n], ARGV[a + 1], ARGV[a + 2])
end
return {code, n}
"""

READ_METAS = """
-- KEYS: the RQ hashes of waiting jobs; ARGV[1]: the most bytes a meta may have.
-- Returns two values per key: 1 and the meta; 0 and its size when over the bound (never
-- fetched); 2 and '' when it has none; -1 and the error when the key holds no hash (anyone can
-- write one).
local out, bound = {}, tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local n = redis.pcall('HSTRLEN', key, 'meta')
  if type(n) == 'table' then
    out[#out + 1] = -1
    out[#out + 1] = tostring(n.err)
  elseif n > bound then
    out[#out + 1] = 0
    out[#out + 1] = n
  else
    local meta = redis.call('HGET', key, 'meta')
    if meta then
      out[#out + 1] = 1
      out[#out + 1] = meta
    else
      out[#out + 1] = 2
      out[#out + 1] = ''
    end
  end
end
return out
"""
"""Lua: the metas of waiting jobs, each within its bound, in one call. Read as two pipelines of
a command per job (the size, then the meta), a placement pass's read of 64 new records cost
~2.3 ms, most of it redis-py's per-command work: every agent loop and every slot reads each
cell of a sweep once, ~13 records per cell on three nodes."""

META_NO_HASH, META_OVERSIZED, META_FOUND, META_MISSING = -1, 0, 1, 2

ALTERNATES = 2
"""Jobs of the same shape tried by one PLACE after the first, each only if the one before was
gone: on a grid of several nodes, the nodes' ending slots race for the head of a sweep, and a
slot that lost found the next cell gone too, one script each. Sent only where other nodes may
race (a one-node grid's slots seldom do, and each alternate costs its meta's encoding)."""

PLACED, NO_ROOM, GONE, THROTTLED, CHANGED, CLOSED, BUSY, UNSEEN = 1, 0, -1, -2, -3, -4, -5, -6

NUDGE = "grid-placed-nudge"
"""What PLACE pushes onto an empty pool queue of the node it placed a job on, if the node
has an idle slot (a slot's job end frees it in the same step that wakes placement). An idle
slot blocks on its pool queue only (agent/claim.py) and looks at its node's queue when it
wakes, so without this a placed job would wait for the slot's next wake (seconds). The nudge is
no job; it names its node and queue (`nudge`). The pool queue is shared by the slots of every
node listening on it and a push wakes the one waiting longest, which may be another node's:
that slot passes the nudge on (back onto the queue, where the next waiting slot gets it), at most
as many times as the other nodes have idle slots (those that may wait ahead of the node's own in
line), never more than `NUDGE_HOPS`; the node's own slot drops it and takes the placed job from
its node queue. No nudge goes out for a job the placer takes itself (a slot's pass at its job's
end) or for more jobs than the node has idle slots: nobody would drop it, and the other nodes'
idle slots would pass it around."""

NUDGE_HOPS = 4096
"""How often a nudge is passed on at most before it is dropped. A nudge starts at this less
the idle slots of the other nodes (`_nudge`): with none of its node's own slots waiting (a slot
finishing its job looks at its node queue first anyway), the rest is a ping-pong. Far above any
lab's count of idle slots: a nudge that starts at 0 (more idle slots elsewhere than this) may be
dropped before it reaches its node, whose placed job then waits for a slot's periodic look (at
32, a grid of six 8-slot nodes, idle, did that; a nudge passed on costs the slot it woke one pop)."""

NUDGE_PATTERN = "^grid%-placed%-nudge:(%d+):([^:]+):(.+)$"
"""Lua pattern of a nudge: hops so far, node, pool queue name (the name, never a key: a forged
nudge can make a slot push only onto some RQ queue)."""


def nudge(node: str, queue: str, hops: int = 0) -> str:
    """The nudge for an idle slot of `node` waiting on pool queue `queue` (a name)."""
    return f"{NUDGE}:{hops}:{node}:{queue}"


@dataclass(frozen=True)
class Waiting:
    """A job waiting for placement, as read: its meta typed, as the raw dict it is written back
    as (fields this code does not know stay), and the digest of the bytes read."""

    id: str
    meta: JobMeta
    raw: dict
    digest: str

    @cached_property
    def shape(self) -> Shape:
        """What decides whether it can be placed now (computed once: a pass asks for every job)."""
        return Shape.of(self.meta)


def waiting(job_id: str, raw: bytes | Exception | None) -> Waiting | str:
    """A waiting job's record, or what is wrong with it (a corrupt one is not placed)."""
    if isinstance(raw, Exception):  # its key changed type since its size was asked
        return str(CorruptRecord(f"{keys.rq_job(job_id)} meta", "", _unfit(raw)))
    data = raw or b""
    try:
        meta = JobMeta.decode(data or b"{}", f"{keys.rq_job(job_id)} meta")
        parsed = json.loads(data or b"{}")
    except (CorruptRecord, ValueError) as e:
        return str(e)
    return Waiting(job_id, meta, parsed, hashlib.sha1(data).hexdigest())


@dataclass
class View:
    """What placement decides on: the nodes, what each has committed, and how many jobs of
    each throttled sweep are placed or running."""

    nodes: list[Node]
    committed: dict[str, Committed]
    running: dict[str, int]


@dataclass
class Outcome:
    """What one placement round did: jobs placed (id -> node) and why the others were not."""

    placed: dict[str, str] = field(default_factory=dict)
    whys: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # read stale: read again before placing
    unplaced: list[str] = field(default_factory=list)  # `place_ids`: waiting jobs it placed nowhere
    raced: int = 0  # placements another placer beat (job gone, room or sweep slot taken, record changed)
    full: set[str] = field(default_factory=set)  # sweeps found at their max_parallel (as read, or by PLACE)


class Placer:
    """Places waiting jobs, priority first, each by one `PLACE` script."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self.reads = Reads(conn)
        self.reservations = Reservations(conn)
        self._place = conn.register_script(PLACE)
        self._read_metas = conn.register_script(READ_METAS)

    def read(self, ids: Sequence[str]) -> list[Waiting | str]:
        """The records of these waiting jobs (or what is wrong with each), in one script call:
        each meta's size is asked first, so an oversized one is never fetched; a job key of
        another type (anyone can write one) fails its own record, not the read."""
        if not ids:
            return []
        got = self._read_metas(keys=[keys.rq_job(jid) for jid in ids], args=[JobMeta.MAX_BYTES])
        # Two values per job (READ_METAS); a reply of another length is no reply of this script.
        if not isinstance(got, list) or len(got) != 2 * len(ids):
            raise redis.ResponseError(f"meta read: a reply of {len(got) if isinstance(got, list) else '?'} values")
        out: list[Waiting | str] = []
        for jid, code, value in zip(ids, got[::2], got[1::2], strict=True):
            if code == META_FOUND and isinstance(value, bytes):
                out.append(waiting(jid, value))
            elif code == META_MISSING:
                out.append(waiting(jid, None))
            elif code == META_OVERSIZED and isinstance(value, int):
                out.append(str(CorruptRecord(f"{keys.rq_job(jid)} meta", "", _unfit(value))))
            else:  # META_NO_HASH, or a reply this script does not give
                out.append(str(CorruptRecord(f"{keys.rq_job(jid)} meta", "",
                                             _unfit(redis.ResponseError(text(value)[:200])))))
        return out

    def place_ids(self, ids: Sequence[str], *, own: bool = True, onto: str | None = None) -> Outcome:
        """Place these jobs where they fit now (those no longer waiting are skipped), reading
        them and the grid in two round trips. `own`: the submitter's own jobs, whose records
        are as it just wrote them; else (jobs a parent's end released) each record is read
        within its bound first (one more round trip). `onto`: the one node they may be placed on
        (an agent's own), as in `place`."""
        with self.conn.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hmget(keys.rq_job(jid), "status", "meta" if own else "origin")
            pipe.zrange(keys.NODES, 0, -1)
            *rows, names = pipe.execute(raise_on_error=False)
        if isinstance(names, Exception):
            raise names
        # Only jobs queued for placement (a child of a running parent is deferred: not yet).
        queued = [(jid, row[1]) for jid, row in zip(ids, rows, strict=True)
                  if isinstance(row, list) and row[0] == b"queued"]
        if own:
            found = [waiting(jid, m) for jid, m in queued]
        else:
            found = self.read([jid for jid, origin in queued if origin == keys.PENDING_QUEUE.encode()])
        jobs = [w for w in found if isinstance(w, Waiting) and w.raw]
        if not jobs:
            return Outcome()
        names = [text(n) for n in names]
        groups = sorted({w.meta.group for w in jobs if w.meta.group and w.meta.max_parallel})
        with self.conn.pipeline(transaction=False) as pipe:
            ask_view(pipe, names, groups)
            view = take_view(pipe.execute(raise_on_error=False), names, groups)
        # No reasons: they are not written here (the agents' periodic pass does), and naming every
        # node's reason for each cell of a big sweep would cost the submitter more than placing.
        out = self.place(jobs, view=view, explain_rest=(), onto=onto)  # view None (a node joined): read again
        out.unplaced = [w.id for w in jobs if w.id not in out.placed]
        return out

    def place(self, jobs: Iterable[Waiting], *, explain_rest: Iterable[str] | None = None,
              view: View | None = None, onto: str | None = None, taking: int = 0,
              at_most: int | None = None) -> Outcome:
        """Place what fits now, highest priority then oldest first, throttles respected.

        A job that does not fit gets its reason in `Outcome.whys` when its id is in
        `explain_rest` (None: every job): naming each node's reason costs a pass more than
        placing does, so the submitter and a woken pass name none. `view`:
        what the caller read of the grid for this (None: read now). `onto`: the one node jobs
        may be placed on (an agent places onto itself only: no agent writes another node's
        reservations); a job that fits another node now gets no reason, that node places it.
        `taking`: how many of the jobs placed onto `onto` the caller's own slot takes itself (a
        slot placing as its job ends): no nudge is pushed for those. `at_most`: place that many
        jobs at most (a slot's pass: its node's idle slots)."""
        order = sorted(jobs, key=lambda w: (-w.meta.priority, w.meta.submitted or 0))
        out = Outcome()
        if not order:
            return out
        view = view or self.view()
        nodes, committed, running = view.nodes, dict(view.committed), dict(view.running)
        missing = {w.meta.group for w in order if w.meta.group and w.meta.max_parallel} - set(running)
        running.update(self.throttles(missing))
        want = None if explain_rest is None else set(explain_rest)
        by_name = {n.name: n for n in nodes}
        candidates = nodes if onto is None else [n for n in nodes if n.name == onto]
        placed_on: dict[str, int] = {}  # node -> jobs this call placed there (each wants a slot)
        # (resources, queue) that fit no candidate, and the reason if one was asked: what is
        # committed only grows in this call, so the other jobs of that shape (a sweep's cells
        # behind a full node) are not matched against every node again, one by one.
        unfit: dict[tuple[Resources, str], str | None] = {}
        racing = sum(n.state is not NodeState.DOWN for n in nodes) > 1  # other nodes' placers: alternates
        skip = 0  # alternates the last PLACE tried: already decided
        again: list[Waiting] = []  # refused by a node found closed (CLOSED): placed again below
        for i, w in enumerate(order):
            if at_most is not None and len(out.placed) >= at_most:
                break
            if skip:
                skip -= 1
                continue
            meta = w.meta
            group, limit = meta.group, meta.max_parallel or 0
            if _throttled(meta, running):
                out.full.add(group or "")
                if want is None or w.id in want:
                    out.whys[w.id] = f"throttled: {running[group]} of this sweep running (max_parallel {limit})"
                continue
            res = meta.resources.resources()
            queue = meta.queue or "default"
            if (res, queue) in unfit:
                if (why := unfit[(res, queue)]) is not None and (want is None or w.id in want):
                    out.whys[w.id] = why
                continue
            choice = choose_node(res, candidates, committed, queue=queue)
            if choice is not None and onto is not None and not res.gpus and by_name[onto].gpus:
                best = choose_node(res, nodes, committed, queue=queue)
                if best is not None and not by_name[best.node].gpus:
                    choice = None  # a node without GPUs takes it (its own pass): GPU nodes are kept for GPU jobs
            if choice is None:
                why = None
                if (want is None or w.id in want) and (onto is None or choose_node(res, nodes, committed, queue=queue)
                                                       is None):
                    why = out.whys[w.id] = _why_not(res, nodes, committed, queue)
                if want is not None and want:
                    continue  # reasons asked for some jobs only: each is worked out for its own
                unfit[(res, queue)] = why
                continue
            node = by_name[choice.node]
            before = placed_on.get(node.name, 0)
            nudged = before >= (taking if node.name == onto else 0) and idle_slots(node) > before
            alternates = _alternates(order, i, running) if racing and not choice.gpus else []
            result, gone = self._one(w, node, choice.gpus, _idle_elsewhere(node, nodes) if nudged else None, alternates)
            if gone:  # the job and the alternates before the one the result is for: taken by other placers
                out.raced += gone
                if group and limit:
                    running[group] = running.get(group, 0) + gone
                w = alternates[gone - 1]
            skip = gone
            out.raced += result not in (PLACED, CLOSED)
            if result == PLACED:
                placed_on[node.name] = before + 1
                out.placed[w.id] = node.name
                committed[node.name] = committed.get(node.name, Committed()).plus(res, choice.gpus)
                if group:
                    running[group] = running.get(group, 0) + 1
            elif result == NO_ROOM:
                out.whys[w.id] = f"{node.name}: resources taken meanwhile"
            elif result == GONE:
                if group and limit:
                    # Another placer took it (or it was canceled): the sweep most likely holds one
                    # more slot than read. Counting it keeps this pass from trying the next cells
                    # against a full sweep (a script each, at every race of ending slots); if that
                    # is one too many, the next release or the periodic pass places the cell.
                    running[group] = running.get(group, 0) + 1
            elif result == THROTTLED:
                running[group or ""] = limit  # another placer took the sweep's last slot
                out.full.add(group or "")
                out.whys[w.id] = f"throttled: {limit} of this sweep running (max_parallel {limit})"
            elif result == CHANGED:
                out.changed.append(w.id)
            elif result == CLOSED:  # drained (or down) since the view was read: no more jobs there
                shut = replace(node, state=NodeState.DRAINING, draining=True, drain_reason="drained meanwhile")
                nodes = [shut if n.name == node.name else n for n in nodes]
                candidates = [shut if n.name == node.name else n for n in candidates]
                by_name[node.name] = shut
                again.append(w)
        if again:  # the jobs a closed node refused: on the nodes left (each round closes one more)
            more = self.place(again, explain_rest=explain_rest, view=View(nodes, committed, running), onto=onto,
                              taking=taking)
            out.placed |= more.placed
            out.whys |= more.whys
            out.changed += more.changed
            out.raced += more.raced
            out.full |= more.full
        return out

    def any_fits(self, shapes: Iterable[Shape], view: View) -> bool:
        """Whether a job of any of these shapes would be placed now, on `view` (the sweeps of
        throttled shapes counted where `view` has not)."""
        shapes = list(shapes)
        running = dict(view.running)
        running.update(self.throttles({s.group for s in shapes if s.group} - set(running)))
        return any(not _throttled(s, running)
                   and choose_node(s.res, view.nodes, view.committed, queue=s.queue) is not None
                   for s in shapes)

    def view(self, groups: Iterable[str] = (), corrupt: list[Corrupt] | None = None) -> View:
        """The grid as placement sees it now (the nodes named by the broker's own list); held
        entries that are no HeldEntry count as nothing and are listed in `corrupt`."""
        nodes = self.reads.nodes()
        return View(nodes, self.reservations.committed_live(nodes, corrupt=corrupt), self.throttles(groups))

    def throttles(self, groups: Iterable[str]) -> dict[str, int]:
        """Sweep id -> how many of its jobs are placed or running."""
        groups = sorted(groups)
        if not groups:
            return {}
        with self.conn.pipeline(transaction=False) as pipe:
            for g in groups:
                pipe.scard(keys.group_slots(g))
            counts = pipe.execute(raise_on_error=False)
        # A sweep's slots set is every agent's to write: one of another type would fail every pass
        # of every agent. It holds nothing the grid wrote: removed (quarantined), counted empty.
        spoiled = {keys.group_slots(g): "set" for g, n in zip(groups, counts, strict=True)
                   if isinstance(n, redis.ResponseError) and "WRONGTYPE" in str(n)}
        if spoiled:
            heal(self.conn, types=spoiled)
        for n in counts:
            if isinstance(n, Exception) and not (isinstance(n, redis.ResponseError) and "WRONGTYPE" in str(n)):
                raise n
        return {g: n if isinstance(n, int) else 0 for g, n in zip(groups, counts, strict=True)}

    def _one(self, w: Waiting, node: Node, gpus: Sequence[int], idle_elsewhere: int | None,
             alternates: Sequence[Waiting] = ()) -> tuple[int, int]:
        """Run `PLACE` for one job on one node, and its `alternates` in turn while the one
        before is gone; its result code, and how many of the alternates were gone before the job
        the code is for. `idle_elsewhere`: the idle slots of the other nodes, where a nudge is
        pushed (None: no nudge)."""
        nq = keys.node_queue(node.name)
        group = w.meta.group or ""
        res = w.meta.resources.resources()
        more_keys, more_args = [], []
        for a in alternates:
            more_keys.append(keys.rq_job(a.id))
            more_args += [a.id, placed_meta(a, node, gpus), a.digest]
        code, gone = self._place(
            keys=[keys.rq_queue(keys.PENDING_QUEUE), keys.rq_queue(nq), keys.rq_job(w.id), keys.rq_queues(),
                  keys.WHY, keys.node_held(node.name), keys.group_slots(group), keys.node(node.name),
                  keys.node_running(node.name), *more_keys],
            args=[w.id, nq, placed_meta(w, node, gpus), w.digest, w.meta.max_parallel or 0, "1" if group else "0",
                  *reserve_args(w.id, res, gpus, node.cpus or 1e9, node.memory_total)[1:],
                  *_nudge(node, w.meta, idle_elsewhere), "", *more_args],
        )
        return int(code), int(gone)

    def head_command(self, candidates: Sequence[Waiting], metas: Sequence[str], node: Node, seen: str,
                     window: int) -> list:
        """A slot's next job without reading the queue and the grid again: the one of `candidates`
        (jobs of one shape, no GPUs, in the placer's order, `metas` their placed metas on `node`)
        that is at the head of the waiting queue, by one `PLACE` that checks, atomically, that a
        slot of `node` is idle with no job in its queue there for it (as a slot's pass counts:
        one per job queued) and that every job in the first `window` of the queue is in `seen`
        (the ids the placer has read, as PLACE's head check spells them). PLACE checks all it
        checks for any placement (still waiting as read, the sweep's max_parallel, the node's room,
        the node open). No nudge: the caller's own slot takes the job. As a command (EVALSHA), for
        `run_head` or for a round trip of the caller's own (a slot sends it with its job's END:
        agent/attempt.py); `head_reply` reads its reply."""
        w, more = candidates[0], candidates[1:]
        group = w.meta.group or ""
        res = w.meta.resources.resources()
        nq = keys.node_queue(node.name)
        more_args: list = []
        for a, meta in zip(more, metas[1:], strict=True):
            more_args += [a.id, meta, a.digest]
        head_keys = [keys.rq_queue(keys.PENDING_QUEUE), keys.rq_queue(nq), keys.rq_job(w.id), keys.rq_queues(),
                     keys.WHY, keys.node_held(node.name), keys.group_slots(group), keys.node(node.name),
                     keys.node_running(node.name), *(keys.rq_job(a.id) for a in more)]
        return ["EVALSHA", self._place.sha, len(head_keys), *head_keys,
                w.id, nq, metas[0], w.digest, w.meta.max_parallel or 0, "1" if group else "0",
                *reserve_args(w.id, res, (), node.cpus or 1e9, node.memory_total)[1:],
                "", "", f"{window}\n{seen}", *more_args]

    def run_head(self, command: Sequence) -> object:
        """Run a `head_command` (the script loaded first where the broker lacks it); its raw reply."""
        n = command[2]
        return self._place(keys=command[3:3 + n], args=command[3 + n:])


def head_reply(reply: object) -> tuple[int, int, int, int, int]:
    """A head-checked PLACE's reply (`Placer.head_command`) as its code, how many candidates were
    gone before the one it is for, the node's idle slots as they are now (its slots less its
    running jobs and those in its queue), the sweep's jobs placed or running, and the jobs left waiting; a reply of
    another shape (the broker's is not trusted) is a refusal (`UNSEEN`)."""
    if not isinstance(reply, list) or not 2 <= len(reply) <= 6 or not all(isinstance(x, int) for x in reply):
        return UNSEEN, 0, 0, 0, 0
    # A closed node is refused before the head check: its reply has the code and a count alone.
    code, gone, slots, busy, throttled, waiting = (*reply, 0, 0, 0, 0, 0, 0)[:6]
    return code, gone, max(0, slots - busy), throttled, waiting


def placed_meta(w: Waiting, node: Node, gpus: Sequence[int]) -> str:
    """The job's meta as PLACE writes it: where it is placed, no reason why it waits."""
    raw = dict(w.raw)
    raw["placement"] = Placement(node=node.name, gpus=list(gpus)).model_dump()
    raw.pop("why", None)
    return json.dumps(raw)


@dataclass(frozen=True)
class Shape:
    """What decides whether a waiting job can be placed now: two jobs of one shape fit or not
    together (the cells of a sweep are one shape), so a pass can skip a run of unfit jobs by
    their shapes alone."""

    res: Resources
    queue: str
    group: str | None
    max_parallel: int

    @classmethod
    def of(cls, meta: JobMeta) -> Shape:
        limit = meta.max_parallel or 0
        return cls(meta.resources.resources(), meta.queue or "default", meta.group if limit else None, limit)


def _alternates(order: Sequence[Waiting], i: int, running: Mapping[str, int]) -> list[Waiting]:
    """The jobs right after `order[i]` that PLACE may try in its stead if it is gone: of its shape
    and sweep, and as many as its sweep has room for (as read) beyond it, up to ALTERNATES."""
    w = order[i]
    room = ALTERNATES
    if w.meta.group and w.meta.max_parallel:
        room = min(room, w.meta.max_parallel - running.get(w.meta.group, 0) - 1)
    out: list[Waiting] = []
    for a in order[i + 1:i + 1 + max(0, room)]:
        if a.shape != w.shape or a.meta.group != w.meta.group:
            break
        out.append(a)
    return out


def _throttled(job: JobMeta | Shape, running: Mapping[str, int]) -> bool:
    """Whether the job's sweep has as many jobs placed or running as its max_parallel allows."""
    limit = job.max_parallel or 0
    return bool(job.group and limit and running.get(job.group, 0) >= limit)


def ask_view(pipe, names: Sequence[str], groups: Sequence[str]) -> None:
    """Queue on `pipe` the reads of a `View` of nodes `names` and sweeps `groups` (`take_view`)."""
    pipe.time()
    pipe.zrange(keys.NODES, 0, -1, withscores=True)
    for n in names:
        pipe.hmget(keys.node(n), NODE_FIELDS)
        pipe.hkeys(keys.node_running(n))
        pipe.hgetall(keys.node_held(n))
    for g in groups:
        pipe.scard(keys.group_slots(g))


def take_view(replies: Sequence, names: Sequence[str], groups: Sequence[str], mine: str | None = None) -> View | None:
    """The `View` from the replies (read with `raise_on_error=False`) of `ask_view`'s reads;
    None if the grid's nodes are not `names` (a node joined or left), or if any reply is an
    error or a held entry is no HeldEntry: then `Placer.view` reads it again the careful way
    (each bad key failing alone, bad held entries listed to be set aside). With `mine` (an
    agent placing onto its own node), only that node's bad held entries count: another node's
    count as nothing, and its own agent sets them aside (no agent writes another's keys)."""
    if any(isinstance(x, Exception) for x in replies):
        return None
    (sec, usec), members = replies[0], replies[1]
    # The registry is ordered by heartbeat time, which reorders its nodes at every heartbeat:
    # the same nodes in another order are the same grid (reading it again the careful way cost a
    # pass on a grid of several nodes two more round trips every few passes).
    scores = {text(m): score for m, score in members}
    if len(members) != len(names) or scores.keys() != set(names):
        return None
    now = sec + usec / 1e6
    nodes, committed, seen = [], {}, []
    for i, name in enumerate(names):
        fields, running, held = replies[2 + 3 * i: 5 + 3 * i]
        node = node_view(name, dict(zip(NODE_FIELDS, fields, strict=True)), running, now, scores[name])
        nodes.append(node)
        bad: list[str] = []
        committed[name] = held_sum(name, node, held, bad)
        if mine is None or name == mine:
            seen += bad
    if seen:
        return None
    return View(nodes, committed, dict(zip(groups, replies[2 + 3 * len(names):], strict=True)))


def held_sum(name: str, node: Node, held: Mapping[bytes, bytes], seen: list[str]) -> Committed:
    """What node `name` has committed by its held hash; nothing for a down node (what its keys
    still hold, recovery gave back without writing them; the node reconciles them when back).
    Entries that are no HeldEntry count as nothing and are named in `seen`."""
    c = Committed()
    if node.state is NodeState.DOWN:
        return c
    for k, v in held.items():
        e = salvage(HeldEntry, v, f"{keys.node_held(name)} {text(k)}", seen) or HeldEntry()
        c = c.plus(Resources(cpus=e.cpus, memory=e.memory), e.gpus)
    return c


def _unfit(size: int | Exception) -> str:
    if isinstance(size, Exception):
        return f"not a job record ({str(size)[:100]})"
    return f"{size} bytes, more than the {JobMeta.MAX_BYTES} a JobMeta may have"


def idle_slots(node: Node) -> int:
    """Slots of `node` running nothing, by its running hash as read (unknown slots: one)."""
    return max(0, node.slots_total - node.slots_busy) if node.slots_total else 1


def _idle_elsewhere(node: Node, nodes: Sequence[Node]) -> int:
    """The idle slots of the nodes other than `node` that are not down (those a nudge may meet)."""
    return sum(idle_slots(n) for n in nodes if n.name != node.name and n.state is not NodeState.DOWN)


def _nudge(node: Node, meta: JobMeta, idle_elsewhere: int | None) -> tuple[str, str]:
    """The pool queue (key) an idle slot of `node` blocks on (its first) and the nudge to push
    there, passed on at most `idle_elsewhere` times; ('', '') for none (every slot of the node
    is busy or taking a job already: the first to look takes it from the node queue, and a
    nudge would show as a queued job until some slot took it)."""
    if idle_elsewhere is None:
        return "", ""
    queue = node.queues[0] if node.queues else (meta.queue or "default")
    return keys.rq_queue(queue), nudge(node.name, queue, hops=max(0, NUDGE_HOPS - idle_elsewhere))


def _why_not(res, nodes: Sequence[Node], committed: Mapping[str, Committed], queue: str) -> str:
    verdicts = explain(res, nodes, committed, queue=queue)
    return "; ".join(str(v) for v in verdicts if v.fit is not Fit.NOW) or "no node is up"


def place_submitted(conn: redis.Redis, ids: Sequence[str], *, own: bool = True, onto: str | None = None) -> None:
    """Right after a submission: place those of its jobs (sent to `grid.pending`) that fit now;
    `own=False`: jobs a parent's end has just released (their records read within bounds), placed
    `onto` the releasing agent's own node only (its ACL user writes no other node's holds).

    What does not fit that node wakes every agent's loop: another node may have room now, and
    its loop would otherwise not look before its periodic pass.

    The jobs are enqueued already, so a broker error here is no failed submission: the jobs wait
    for the agents' placement loop, as they would on a full grid (logged, not raised)."""
    if not ids:
        return
    try:
        out = Placer(conn).place_ids(ids, own=own, onto=onto)
        if onto is not None and out.unplaced:
            with conn.pipeline(transaction=False) as pipe:
                wake(pipe, anywhere=True)
                pipe.execute()
    except redis.RedisError as e:
        log.warning("placing %d waiting job(s) at once failed (%s); the agents' placement loop will", len(ids), e)
