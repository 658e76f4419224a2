"""The agent's placement loop: place waiting jobs as soon as something is given back.

Jobs with anything beyond the plainest needs wait in the `grid.pending` RQ queue (no slot
listens to it). Their submitter places those that fit at once (gridcore/placing.py); the
rest are placed here. Every agent runs this loop in a thread: it reads the wake stream that
every release of resources or of a sweep's throttle slot adds to (`reservations.wake`), and
runs a pass at once when an entry concerns it (its own node gave resources back, or any node
may place: a throttle slot), or every heartbeat interval when not (the safety net: a job
that waits for a node to come back, or to be resumed). An agent places onto its own node
only (its ACL user can write no other node's reservations): every node fills itself. One pass
at a time per node (under a lock); the pass reads a chunk of the queue and places, by priority then age, each
job that fits now, by `placing.PLACE` (atomic, so racing submitters are harmless); while
nothing it read fits it reads on, and the next pass starts past that unfit head (`Skip`).
A job that fits nowhere now keeps a plain-words reason per node, shown by `grid why` and the
console, written by the periodic pass. A slot whose job had been placed (or was in a throttled
sweep) also runs a quick pass itself as the job ends (agent/perform.py), before it looks for
its next job: the next cell of a sweep is then in its node queue already, without waiting for
the woken loop of the agent, a process that shares the node's cores with the jobs. That pass
looks at the head of the queue only (TAKE_WINDOW), and at the jobs of a higher priority among
the prefetched ones it has read; when it places nothing, or jobs wait past what it looked at
and a slot of its node is left idle, the slot wakes its node's loop, which looks further. A
pass that placed one job for its own slot leaves a `Hint` (the next jobs of that shape, and the
ids it read): at the slot's next job end one PLACE places the one at the head of the queue
(`take_next`) if nothing a pass would look at changed, without the pass's reads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from agent.outage import OUTAGE_ERRORS, retyped
from gridcore import keys
from gridcore.models import Node
from gridcore.placing import (
    BUSY, PLACED, WINDOW, Outcome, Placer, Shape, View, Waiting, ask_view, head_reply, idle_slots, placed_meta, take_view,
)
from gridcore.quarantine import Quarantine
from gridcore.records import NODE_SLOTS, text
from gridcore.reservations import Corrupt, Wake

log = logging.getLogger("grid.negotiator")

EVENT_WINDOW = 100
"""Waiting jobs a woken pass looks at in one chunk (the periodic pass looks at WINDOW): it runs
at every job end, so it stays small; it looks further only while nothing it looked at fits."""
TAKE_WINDOW = 8
"""Waiting jobs a slot's pass at its job's end looks at (`taker`), one chunk and no further: it
fills what that job gave back (its own slot, an idle one), at every cell end of a sweep, in the
slot's own process, so it looks at the head only (and at the prefetched jobs already read of a
higher priority than the head's lowest). If nothing there fits, or jobs wait past it and a slot
of its node is left idle, the slot wakes its node's loop (agent/perform.py), whose pass looks
further down the queue. Looking at a chunk of
EVENT_WINDOW, and on down the queue when a race lost every job it tried, cost the slot ~1 ms of
CPU per cell (every record of a big sweep read again by each lost pass)."""
PREFETCH = 64
"""Waiting jobs past the window whose records a pass reads ahead, so that as the queue moves up
a pass reads new records once per this many jobs, not at every pass."""
AHEAD = 192
"""Waiting jobs a slot's pass reads past what it looks at (TAKE_WINDOW and its prefetch, PREFETCH
jobs in all), for its `Hint` only: the next cells of a sweep may be placed without reading the
queue again while every job in its first PREFETCH is one the pass has read, until this many have
left it. At 64, on three agents, 5% of a sweep's cell ends found an unread job in the queue's
first PREFETCH (the hint ran out: a pass); each record is read once either way, in fewer reads."""
HINT_TTL = 2.0
"""Seconds a slot's `Hint` serves its next job ends (its node as read: cpus, memory, GPUs)."""
HINT_TRIES = 2 * TAKE_WINDOW
"""Candidates of a `Hint` sent in one PLACE, at most: the one at the head of the queue is placed (on
a grid of several nodes the other nodes' slots take the cells before it between two of this slot's
ends). Each is a key and its placed meta in PLACE's arguments, tried only while those before it
are gone."""
DEPTH = 2000
"""Waiting jobs a pass looks at, at most, while none it looked at fits (the jobs past them are
looked at by the next passes: each starts past the unfit head the last one found)."""
RECHECK_FIRST = 0.1
"""Seconds after a loop's pass that placed nothing for a sweep at its max_parallel until it looks
again whether a slot of its node is idle (doubled at each such pass, up to the periodic interval;
reset when a pass places or no slot is idle)."""
WAKE_READ = 256
"""Wake entries a loop reads at once (a busy grid adds one at every job end)."""
LOCK_TTL = 15
"""Seconds the pass lock outlives an agent that died holding it."""
LOCK_WAIT = 3.0
"""Seconds a woken loop waits for another agent's pass to end (that pass may have read the
queue before the change that woke this one)."""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Lua: drop the pass lock if this pass still holds it (it may have expired and been taken)."""


@dataclass(frozen=True)
class Skip:
    """The head of the waiting queue that fitted nowhere at the last pass: how many jobs, the
    last of them, and their shapes (if none of these fits now, none of those jobs does). The
    last job further down than it was means jobs were put ahead of it: look from the top; higher
    up, that jobs left the head (as a busy sweep's cells do at every turn): the rest of it is
    skipped still. Jobs put into the head while as many or more left it go unnoticed (the head
    is shrunk by the difference, and they are within it): a lost job put back at the front of the
    queue (`requeue_lost`) as a sweep's cells leave it, or a writer's insert amid the queue
    (submissions go to its end). The first says so in its wake (`front`): the woken loop drops
    its skip and reads from the top (`wait_wake`). The periodic pass, which reads from the top,
    places the others (and so does any pass when one of the head's shapes fits again). Telling
    them apart would take a read of the head at every pass, what the skip saves."""

    count: int
    last: str
    shapes: frozenset[Shape]


@dataclass
class Hint:
    """What a slot's pass that placed the head of the queue for its own slot read, kept for the
    slot's next job ends (`Negotiator.take_next`): the next jobs of the queue that are of that
    job's shape, in the order a pass would place them (no job read sorts before them), the ids
    read (as PLACE's head check spells them) and its node as read. Placing one of them, PLACE
    checks that nothing a pass would have looked at is unknown to it: then its decision is the
    pass's, without the pass's reads of the queue and of every node. `seen` and `next` lose their
    heads as the queue's head moves past them (PLACE's arguments shrink with them)."""

    node: Node
    next: list[Waiting]
    seen: list[str]
    until: float
    others: bool = False  # jobs of other shapes among those read
    reach: int = HINT_TRIES  # candidates other placers took before the last one this hint placed
    metas: dict[str, str] = field(default_factory=dict)  # job id -> its meta placed on `node`


class Negotiator:
    def __init__(self, conn: redis.Redis, owner: str, node: str | None = None, taker: bool = False):
        """`node`: the one node this placer places onto (an agent's own; its loop wakes for what
        is given back there); None: any node (a placer running as operator). `taker`: a slot's
        pass at its job's end, whose slot takes the first job it places itself (no nudge for it)."""
        self.conn = conn
        self.owner = owner
        self.node = node
        self._lock_key = keys.placing_lock(node) if node else keys.NEGOTIATOR_LOCK
        self.placer = Placer(conn)
        self.taker = taker
        self._mutex = threading.Lock()  # the loop's thread and a caller's run_once: one pass at a time
        self._read: dict[str, Waiting | str] = {}  # waiting job id -> its record (unchanged while it waits)
        self._explained: dict[str, str] = {}  # job id -> the reason last written for it
        self._names: list[str] = []  # the nodes the last pass saw
        self._skip: Skip | None = None  # the unfit head of the queue, as the last pass left it
        self._taking = 0  # jobs this pass places that its own slot takes (`taker`), not placed yet
        self._unsure = False  # a hint's PLACE ran whose reply was not taken (`with_end`): it may have queued a job here
        self.raced = 0  # placements the last pass lost to another placer (Outcome.raced)
        self.full: set[str] = set()  # sweeps the last pass found at their max_parallel (Outcome.full)
        self._quick_pass = False  # the pass now running looks at one chunk (`_quick`)
        self.beyond = False  # the last quick pass left jobs past its chunk and a slot of its node idle
        self.waiting = 0  # jobs waiting for placement as the loop's last wait ended (`wait_wake`)
        self.spoken = False  # the last quick pass found jobs in its node's queue for every idle slot
        self._queued = 0  # jobs in this node's queue as the survey read them (a quick pass only)
        self._room = None  # jobs the quick pass now running may still place (None: no bound)
        self.idle_only = False  # every wake the last wait_wake read that concerns this loop was an idle one
        self._hint: Hint | None = None  # a slot's: the next cells it may place without a read (`take_next`)
        self._placed: list[Waiting] = []  # the records of the jobs the last chunk placed
        self.idle_left = 0  # the node's slots the last `take_next` left idle, besides its own
        self._unlock = conn.register_script(_UNLOCK)
        self.quarantine = Quarantine(conn)

    def run_once(self, *, full: bool = True, wait: float = 0.0, lock: bool = True) -> int:
        """One pass if no other agent is doing one (waiting up to `wait` s for it to end);
        returns how many jobs were placed. `full`: write every reason, read every record again.
        `lock=False`: a slot's quick pass at its job's end, alongside any agent's (placing is
        atomic job by job; the lock only keeps agents' passes from doing the same work)."""
        with self._mutex:
            token = f"{self.owner}.{uuid.uuid4().hex[:8]}"
            deadline = time.monotonic() + wait
            self.raced = 0
            self.full = set()
            self.beyond = False
            self.spoken = False
            while (survey := self._survey(token, full, lock)) is None:
                if time.monotonic() >= deadline:
                    return 0
                time.sleep(0.002)
            try:
                return self._pass(full, *survey)
            finally:
                if lock:
                    self._unlock(keys=[self._lock_key], args=[token])

    def _survey(self, token: str, full: bool, lock: bool) -> tuple[list[str], View, int] | None:
        """Take the pass lock and read the waiting jobs' ids (past the unfit head the last pass
        found, if it is still there and none of its shapes fits now) and the grid, in one round
        trip (the nodes and sweeps of the last pass are read; others take a second one); None
        if another agent holds the lock. Returns the ids, the view and the ids' offset."""
        if full:
            self._read, self._explained, self._skip = {}, {}, None
        skip = self._skip
        groups = sorted({w.meta.group for w in self._read.values()
                         if isinstance(w, Waiting) and w.meta.group and w.meta.max_parallel}
                        | {s.group for s in (skip.shapes if skip else ()) if s.group})
        pending = keys.rq_queue(keys.PENDING_QUEUE)
        offset = skip.count if skip else 0
        with self.conn.pipeline(transaction=False) as pipe:
            if lock:
                pipe.set(self._lock_key, token, nx=True, ex=LOCK_TTL)
            else:
                pipe.echo("unlocked")  # keeps the replies' order
            if skip:
                pipe.lpos(pending, skip.last)
            else:
                pipe.echo("")
            pipe.lrange(pending, offset, offset + self._chunk(full) + self._prefetch(full) + self._ahead(full) - 1)
            if self._quick(full) and self.node:
                pipe.llen(keys.rq_queue(keys.node_queue(self.node)))
            else:
                pipe.echo("")
            ask_view(pipe, self._names, groups)
            locked, last, ids, queued, *replies = pipe.execute(raise_on_error=False)
        if isinstance(locked, Exception):
            raise locked
        if not locked:
            return None
        self._queued = queued if isinstance(queued, int) else 0
        view = take_view(replies, self._names, groups, mine=self.node)
        if view is None:  # a node joined or left since the last pass, or a bad key or entry
            view = self._careful_view(groups)
            self._names = [n.name for n in view.nodes]
        if skip and (not isinstance(last, int) or last >= skip.count):
            # Jobs were put ahead of the head's last job (or it left): from the top, one more read.
            self._skip, offset = None, 0
            ids = self._ids(0, full)
        elif skip:
            if last < skip.count - 1:
                # Jobs left the head (placed by other nodes, canceled; a sweep's cells, as they
                # run): the rest of it is as it was, and the jobs after it start higher up.
                self._skip = skip = Skip(last + 1, skip.last, skip.shapes)
            if self.placer.any_fits(skip.shapes, view):
                # Something in the head may fit now: from the top, one more read. The head is
                # still known: if the pass finds its shapes unfit again, it jumps past it (`_pass`).
                offset = 0
                ids = self._ids(0, full)
            elif offset != skip.count:
                offset = skip.count
                ids = self._ids(offset, full)
        # A pending queue of another type (anyone can write one) holds nothing to place.
        return ([] if isinstance(ids, Exception) else [text(i) for i in ids]), view, offset

    def _chunk(self, full: bool) -> int:
        return WINDOW if full else TAKE_WINDOW if self.taker else EVENT_WINDOW

    def _prefetch(self, full: bool) -> int:
        return PREFETCH if full or not self.taker else PREFETCH - TAKE_WINDOW

    def _ahead(self, full: bool) -> int:
        """Ids read past the chunk and its prefetch, for a slot's `Hint` only."""
        return AHEAD if self._quick(full) else 0

    def _quick(self, full: bool) -> bool:
        """Whether this pass looks at one chunk only (a slot's pass at its job's end)."""
        return self.taker and not full

    def _ids(self, offset: int, full: bool) -> list[bytes] | Exception:
        """The ids of the waiting jobs from `offset` on (a chunk and the prefetch)."""
        try:
            return self.conn.lrange(keys.rq_queue(keys.PENDING_QUEUE), offset,
                                    offset + self._chunk(full) + self._prefetch(full) + self._ahead(full) - 1)
        except redis.ResponseError as e:
            return e

    def _careful_view(self, groups: list[str]) -> View:
        """The grid read key by key; held entries that are no HeldEntry (the reserve script
        counts them as nothing) are set aside for good, then the grid is read again. An agent
        sets aside its own node's only: another node's are that node's to set aside."""
        corrupt: list[Corrupt] = []
        view = self.placer.view(groups, corrupt=corrupt)
        corrupt = [c for c in corrupt if self.node is None or c.node == self.node]
        if not corrupt:
            return view
        for c in corrupt:
            self.quarantine.hash_field(keys.node_held(c.node), c.field, c.raw, c.problem, node=c.node)
        return self.placer.view(groups)

    def _pass(self, full: bool, ids: list[str], view: View, offset: int) -> int:
        """Place what fits in the chunk at `offset`; while every job looked at fits nowhere, go
        on with the next chunk (up to DEPTH jobs a pass), so a job that fits is placed however
        many unfit ones wait ahead of it. What stays unfit at the head is remembered (`Skip`):
        the next pass starts past it unless something there may fit now."""
        skip = self._skip
        past = skip is not None and offset == skip.count  # started past the head, else from the top
        head = skip.count if past else 0
        shapes = set(skip.shapes) if past else set()
        last = skip.last if past else ""
        seen: set[str] = set()
        placed = looked = 0
        # A hint's PLACE whose reply was not taken may have queued a job here, without a nudge (its
        # slot was to take it): the slot's pop takes the head of its node's queue, that job, so
        # what this pass places there is for another idle slot, nudged (else it waits for that
        # slot's periodic look, seconds).
        self._taking = 1 if self.taker and not (self._unsure and self._queued) else 0
        self._unsure = False
        self.raced = 0
        self.full = set()
        self._quick_pass = self._quick(full)
        self._hint = None
        unread = self._quick_pass and len(ids) > self._chunk(full)
        mine = next((n for n in view.nodes if n.name == self.node), None)
        # A slot's pass places for its node's idle slots only (its own among them), less the jobs
        # already in its node's queue (placed by another pass, not taken yet): a slot that has
        # just been given a job there but not taken it yet looks idle. On a grid of several nodes
        # a cell placed past the node's free slots waited there, holding its sweep's slot, while
        # another node's slot found the sweep full and sat idle.
        self._room = idle_slots(mine) - self._queued if self._quick_pass and mine is not None else None
        if self._room is not None and self._room <= 0:
            self.spoken = True  # this slot takes a job of its node's queue next
            return 0
        first = True
        while True:
            chunk = ids[:self._chunk(full)]
            seen.update(ids)
            # Nothing was placed so far (else the pass would have ended): the view is as read, so a
            # shape that did not fit before does not fit now, and its jobs are not looked at again.
            out, gone = self._place_chunk(full and first, chunk, ids, view, shapes)
            placed += len(out.placed)
            looked += len(chunk)
            first = False
            # The chunk starts where the unfit head ends, so its unfit jobs extend the head up to the
            # first one to read again (those placed or set aside have left the queue).
            lead = 0
            for jid in chunk:
                if jid in out.placed or jid in gone:
                    continue
                w = self._read.get(jid)
                if jid in out.changed or not isinstance(w, Waiting):
                    break
                shapes.add(w.shape)
                last = jid
                lead += 1
            head += lead
            if lead < len(chunk) or len(ids) <= len(chunk) or looked >= DEPTH or self._quick_pass:
                break
            offset += len(chunk)  # every job so far fits nowhere: look further down the queue
            if skip is not None and not past and offset < skip.count and skip.shapes <= shapes:
                # Into the head the last passes found: its jobs are all of shapes that fit nowhere
                # now (nothing was placed yet in this pass), so none of them is looked at again.
                offset = head = skip.count
                last = skip.last
                past = True
            more = self._ids(offset, full)
            ids = [] if isinstance(more, Exception) else [text(i) for i in more]
            if not ids:
                break
        # A head shorter than a chunk is not worth skipping: the next pass reads a chunk from the
        # top anyway (and a sweep's throttled cells are such a head after each of its cells ends).
        # A pass from the top that placed what fitted in it keeps the head the last passes found
        # (the next survey finds how many of its jobs left it): when the sweep is at its
        # max_parallel again, the next pass jumps past its cells instead of reading them all.
        # Jobs past a quick pass's chunk may fit what is left: its node's loop reads further, in
        # priority order (agent/perform.py wakes it), if a slot of the node is left idle by what
        # it placed (its own slot takes the first). A sweep's cell end that placed the next cell
        # leaves none: a wake there would cost the agent a pass per cell that places nothing.
        self.beyond = unread and mine is not None and idle_slots(mine) - self._queued > placed
        if self._quick_pass and placed == 1 and offset == 0 and not self.beyond and mine is not None:
            self._hint = self._arm(ids, mine)
        if head >= EVENT_WINDOW:
            self._skip = Skip(head, last, frozenset(shapes))
        elif past or full:
            self._skip = None
        # Records of jobs no longer waiting are forgotten; a waiting job's meta changes only when
        # it leaves and comes back (a lost job), and PLACE refuses a stale one (read again).
        self._read = {i: w for i, w in self._read.items() if i in seen}
        self._explained = {i: w for i, w in self._explained.items() if i in self._read}
        return placed

    def _place_chunk(self, full: bool, chunk: list[str], ids: list[str], view: View,
                     unfit: set[Shape]) -> tuple[Outcome, set[str]]:
        """Place what fits of `chunk` (the records of `ids`, the chunk and its prefetch, read
        where not known yet), jobs of the `unfit` shapes aside; the outcome, and the corrupt
        records set aside."""
        if not chunk:
            return Outcome(), set()
        # The prefetch too: one read per PREFETCH new jobs. A slot's pass reads as soon as one of
        # the jobs its hint's head check covers (PREFETCH) is new: a hint lasts while they are read.
        if any(i not in self._read for i in (ids[:PREFETCH] if self._quick_pass else chunk)):
            new = [i for i in ids if i not in self._read]
            self._read.update(zip(new, self.placer.read(new), strict=True))
        whys = {i: f"not placed: {w}" for i in chunk if isinstance(w := self._read[i], str)}
        for jid, why in whys.items():
            # Out of the window for good: a corrupt record must not be read on every pass, nor
            # crowd out the jobs behind it.
            self.quarantine.list_item(keys.rq_queue(keys.PENDING_QUEUE), jid, why, job=jid)
        jobs = [w for i in chunk if isinstance(w := self._read[i], Waiting) and w.shape not in unfit]
        if self._quick_pass and jobs:
            # The queue is in submission order: a job of a higher priority than the chunk's lowest,
            # among the prefetched ones already read, competes for what was given back (a sweep's
            # cells share one priority: nothing is added, nothing read for it).
            low = min(w.meta.priority for w in jobs)
            jobs += [w for i in ids[len(chunk):PREFETCH] if isinstance(w := self._read.get(i), Waiting)
                     and w.meta.priority > low and w.shape not in unfit]
        # A woken pass writes no reasons: the periodic one does, and a woken pass must be quick.
        out = self.placer.place(jobs, view=view, explain_rest=None if full else (), onto=self.node,
                                taking=self._taking, at_most=self._room)
        if self._room is not None:
            self._room -= len(out.placed)
        self._taking = max(0, self._taking - len(out.placed))
        self.raced += out.raced
        self.full |= out.full
        self._placed = [w for jid in out.placed if isinstance(w := self._read.get(jid), Waiting)]
        for jid in [*out.placed, *out.changed]:
            self._read.pop(jid, None)
            self._explained.pop(jid, None)
        gone = set(whys)
        if self._quick_pass:
            return out, gone  # a slot's pass writes no reasons, not even of the races it lost
        whys.update(out.whys)
        fresh = {i: w for i, w in whys.items() if self._explained.get(i) != w and i in self._read}
        if fresh:
            self.conn.hset(keys.WHY, mapping=fresh)
            self._explained.update(fresh)
        return out, gone

    def _arm(self, ids: list[str], mine: Node) -> Hint | None:
        """The `Hint` a quick pass leaves when it placed one job (`ids`: the queue read from the
        top): the jobs right behind it of its shape, in the order a pass would place them, while no
        other job read would be placed before them. None where GPUs are involved (a pass picks
        GPUs, and keeps a GPU node for GPU jobs)."""
        if len(self._placed) != 1 or mine.gpus:
            return None
        top = self._placed[0]
        if top.id not in ids or top.meta.resources.gpus:
            return None
        # The jobs before it were taken by other placers as this pass tried them (else it would not
        # have placed this one): left out, so that the head check fails on any that still waits.
        ids = ids[ids.index(top.id):]
        # The ids whose records are read (a pass reads new ones when its chunk has one: those past it
        # may be unread yet): the hint knows those only, and lasts while the queue's first PREFETCH
        # jobs are among them.
        known = next((k for k, i in enumerate(ids) if not isinstance(self._read.get(i), Waiting)
                      and i != top.id), len(ids))
        ids = ids[:known]
        rest = [self._read[i] for i in ids[1:]]
        key = _order  # as Placer.place sorts, ties kept in queue order
        nxt: list[Waiting] = []
        for w in rest:
            if w.shape != top.shape or w.meta.group != top.meta.group or key(w) < key(nxt[-1] if nxt else top):
                break
            nxt.append(w)
        others = rest[len(nxt):]
        # A job of another shape that a pass would place before a candidate: the candidates stop there.
        bound = min((key(w) for w in others), default=None)
        if bound is not None:
            if bound < key(top):
                return None
            nxt = [w for w in nxt if key(w) <= bound]
        if not nxt:
            return None
        return Hint(mine, nxt, ids, time.monotonic() + HINT_TTL, others=bool(others))

    def take_next(self) -> bool:
        """A slot's job ended: place the next job its last pass found (`Hint`) for its own slot,
        without reading the queue and the grid again, in one PLACE whose head check makes the
        decision the pass's (agent/perform.py). False where there is no hint or PLACE did not
        place (anything changed that a pass would look at, the sweep full, no room): the slot's
        pass runs then, as without a hint; except where every idle slot of its node has a job
        queued (`spoken`), where a pass would place nothing."""
        with self._mutex:
            head = self._head()
            if head is None:
                return False
            return self._settle(head, self.placer.run_head(head.command))

    def with_end(self) -> tuple[list, Callable[[Any, bool], bool | None]] | None:
        """`take_next` in two halves, for a slot to send the hint's PLACE in the round trip of its
        job's END, which the broker runs right before it (the head check sees what the END gave
        back; where the broker did not know the END script, right after it): the command, and what
        takes its reply and says what `take_next` would. The slot passes the reply where that END
        was recorded by that round trip, and None where not (the END refused, sent again, or its
        reply lost): False then. Where the END left the end to RQ's steps after it (`later`), a
        PLACE that did not place keeps the hint for `take_next` after them (None). A PLACE whose reply is not taken
        may have placed a job in the node's queue, which is safe (it checked all a placement
        checks): the hint is gone, and the slot's pass runs as without one, nudging for what it
        places where its node's queue holds a job (`_pass`). None where there is no hint."""
        with self._mutex:
            head = self._head()
        if head is None:
            return None

        def settle(reply: Any, later: bool = False) -> bool | None:
            with self._mutex:
                self._unsure = reply is None
                if later and head_reply(reply)[0] != PLACED:
                    # The END left the job's end to RQ's steps (it has dependents: a gathered
                    # sweep's every cell): its sweep slot was still held as the PLACE ran, which
                    # found the sweep full. The hint serves the placement after those steps
                    # (`take_next`, None: as if none was sent), not a pass per cell.
                    self._hint = head.hint
                    return None
                return reply is not None and self._settle(head, reply)

        return head.command, settle

    def _head(self) -> _Head | None:
        """The hint's PLACE (the hint is taken: `_settle` puts it back where the PLACE placed)."""
        hint, self._hint = self._hint, None
        self.idle_left = 0
        self.spoken = False
        if hint is None or not hint.next or time.monotonic() > hint.until:
            return None
        # Twice as many candidates as other placers took cells between two of this slot's ends,
        # and three more (one node: the head is nearly always the first). With as many and three
        # more, on three agents 6% of the cell ends found the head past them (a pass each).
        tries = hint.next[:min(HINT_TRIES, 2 * hint.reach + 3)]
        metas = [hint.metas.get(w.id) or hint.metas.setdefault(w.id, placed_meta(w, hint.node, ()))
                 for w in tries]
        return _Head(hint, tries, self.placer.head_command(tries, metas, hint.node,
                                                             "".join(i + "\n" for i in hint.seen), PREFETCH))

    def _settle(self, head: _Head, reply: Any) -> bool:
        """What the hint's PLACE did (its `reply`), taken in: the hint moved on, `idle_left`."""
        hint, tries = head.hint, head.tries
        code, gone, idle, _running, waiting = head_reply(reply)
        if code == BUSY:
            # Its node's idle slots each have a job queued (placed by another pass, or for a slot
            # that ended at the same moment): a pass would place nothing either, and this slot
            # takes one of them next (`spoken`). Nothing the hint knows changed: it serves the
            # slot's next end.
            self.spoken = True
            self._hint = hint
            return False
        if code != PLACED or not 0 <= gone < len(tries):
            return False
        placed = tries[gone]
        self._read.pop(placed.id, None)
        # Placements take the head: the jobs before it are gone, and out of what the check needs.
        hint.next = hint.next[gone + 1:]
        if placed.id in hint.seen:
            hint.seen = hint.seen[hint.seen.index(placed.id) + 1:]
        hint.reach = gone
        self._hint = hint
        # Another slot of the node idle with no job queued for it (this slot takes one) is
        # worth a wake of its loop only if a job may be placed there: a job of another shape
        # the pass read, or a cell of a sweep without max_parallel. A throttled sweep's cells
        # are placed as its cells end, each by the ending slot for itself: the sweep's slot it
        # gave back is the one it fills (a cell that ends otherwise, canceled or refused, wakes
        # the loops as it gives its slot back). On three nodes of two slots, the idle slot was
        # nearly always one between its own job's end and its pass (a sweep below its
        # max_parallel for that moment): 0.15 wakes per cell, each a loop pass placing a cell
        # for a slot that then found its node's queue holding it. Jobs past what the pass read
        # are looked at by the next pass that reads the queue (the hint ran out, its head
        # check failed), or the loop's periodic one.
        limit = placed.meta.max_parallel or 0
        more = hint.others or not (placed.meta.group and limit)
        self.idle_left = max(0, idle - 1) if more and waiting else 0
        return True

    def wait_wake(self, last: str, timeout: float) -> tuple[str, bool]:
        """Wait up to `timeout` s for wake entries after `last` (`$`: from now on); returns the
        last entry read and whether one concerns this loop (its node, or any node). How many jobs
        wait for placement as the wait ends is read in the same round trip, into `waiting` (the
        broker runs a pipelined command after a blocking one once that one is answered): an idle
        loop's look at the pending queue at every periodic pass was a round trip of its own. A
        pending queue of another type (anyone can write one) counts as empty: it holds nothing
        to place, and the pass would only fail on it."""
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.xread({keys.PLACE_WAKES: last}, count=WAKE_READ, block=max(1, int(timeout * 1000)))
            pipe.llen(keys.rq_queue(keys.PENDING_QUEUE))
            got, waiting = pipe.execute(raise_on_error=False)
        if isinstance(waiting, redis.ResponseError) and retyped(waiting):
            waiting = 0
        elif isinstance(waiting, Exception):
            raise waiting
        self.waiting = waiting
        if isinstance(got, redis.ResponseError):  # not a stream (anyone can write the key): the periodic pass stays
            log.debug("placement wake stream unreadable: %s", got)
            time.sleep(timeout)
            return last, False
        if isinstance(got, Exception):
            raise got
        woke = front = False
        self.idle_only = True
        for _stream, entries in got or ():
            for eid, fields in entries:
                last = text(eid)
                wake = Wake.read(fields)
                if self.node is None or wake.anywhere:
                    woke, self.idle_only = True, False
                elif wake.node == self.node.encode():
                    woke = True
                    self.idle_only = self.idle_only and wake.idle
                front = front or wake.front
        self.idle_only = woke and self.idle_only
        if front:
            # A job went back to the top of the queue (a lost job, `release(requeued=True)`): the
            # next pass reads from the top, as the skip's check cannot see it when jobs of the
            # head left in the same moment.
            with self._mutex:
                self._skip = None
        return last, woke

    def worth_a_pass(self, periodic: bool) -> bool:
        """Whether the loop, due (`periodic`) or woken, runs a pass: not when nothing waits
        (plain jobs, whose every end wakes it, or an idle grid: the wait's round trip told, and
        no pass runs on the cores the jobs run on), nor when every wake it read was for an idle
        slot of its node (`reservations.IDLE_WAKE`) and none is idle any more, or a job in its
        node's queue is there for each (one more round trip, only for such wakes)."""
        if not self.waiting:
            return False
        if periodic or not self.idle_only or self.node is None:
            return True
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.hget(keys.node(self.node), NODE_SLOTS)
            pipe.hlen(keys.node_running(self.node))
            pipe.llen(keys.rq_queue(keys.node_queue(self.node)))
            slots = pipe.execute(raise_on_error=False)
        total, busy, queued = slots
        if any(isinstance(x, Exception) for x in slots) or not (total or b"").isdigit():
            return True  # the node's slots unknown (a spoiled key): a pass, as before this check
        # Jobs in the node's queue are for its idle slots (as a slot's pass counts them).
        return not int(total) or busy + queued < int(total)

    def loop(self, stop: threading.Event, interval: float) -> None:
        """Place at once when woken, and every `interval` s regardless, until `stop` is set."""
        due = time.monotonic()
        last = "$"
        recheck: float | None = None  # when to look again: a slot here idle behind a full sweep
        backoff = RECHECK_FIRST
        while not stop.is_set():
            try:
                if last == "$":  # the stream's end, read once: no entry added after it is missed
                    last = self._tail()
                # Each wait is shorter than the connection's socket timeout, so it never trips it.
                wait = min(max(0.0, min(due, recheck or due) - time.monotonic()), 5.0)
                last, woke = self.wait_wake(last, max(0.1, wait))
                if stop.is_set():
                    break
                # A busy grid wakes this loop at every job end: the periodic pass is due all the same.
                now = time.monotonic()
                periodic = now >= due
                if periodic:
                    due = now + interval
                again = not (periodic or woke) and recheck is not None and now >= recheck
                if again:
                    self.idle_only = True  # a pass only if a slot of this node is idle still
                if not (periodic or woke or again):
                    continue
                recheck = None
                if not self.worth_a_pass(periodic):
                    backoff = RECHECK_FIRST
                    continue
                placed = self.run_once(full=periodic, wait=LOCK_WAIT if woke else 0.0)
                if placed or not self.full or self.node is None:
                    backoff = RECHECK_FIRST
                else:
                    # A sweep at its max_parallel kept a job from a slot of this node: slots of the
                    # sweep's other nodes refill the sweep slots their own cells give back (the
                    # slot's hint), and wake nobody; one lost to a placer elsewhere for a slot that
                    # then took another job leaves the sweep below its max_parallel with this
                    # node's slot idle. Look again soon, then less and less often.
                    recheck = now + backoff
                    backoff = min(backoff * 2, interval)
            except redis.RedisError as e:
                # The heartbeat sees (and logs) an outage; this loop only waits it out. A refusal
                # (NOPERM: an ACL user that does not fit this version) is no outage: it is logged.
                if isinstance(e, redis.ResponseError) and not isinstance(e, OUTAGE_ERRORS):
                    log.error("placement pass refused: %s", e)
                else:
                    log.debug("placement loop: %s", e)
                stop.wait(1.0)
            except Exception:  # noqa: BLE001 - a placement bug must not end placement for good; it is logged
                log.exception("placement pass failed")
                stop.wait(1.0)

    def _tail(self) -> str:
        """The id of the wake stream's last entry ('0-0' if it has none, or is no stream)."""
        try:
            entries = self.conn.xrevrange(keys.PLACE_WAKES, count=1)
        except redis.ResponseError:
            return "0-0"
        return text(entries[0][0]) if entries else "0-0"

    def start(self, interval: float) -> threading.Event:
        """Run `loop` in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.loop, args=(stop, interval), name="placement", daemon=True).start()
        return stop


@dataclass(frozen=True)
class _Head:
    """A hint's PLACE: the hint, the candidates it sends, and the command (EVALSHA) itself."""

    hint: Hint
    tries: list[Waiting]
    command: list


def _order(w: Waiting) -> tuple[int, float]:
    """Where a pass places a job among others: priority first, then the oldest (Placer.place)."""
    return -w.meta.priority, w.meta.submitted or 0
