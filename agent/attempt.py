"""An attempt of a job on this node: every write of its life into the broker, in one place.

    start      hold the job's resources, count the attempt, mark it started (one script)
    stream     the sink its output goes to (agent/output.py)
    beat       RQ's heartbeats, and whether to stop: canceled, or fenced off
    finish     its end: output, end marker, result and attempt records, fenced (see below)
    hand_back  a cold stop: the job goes back to the front of its queue
    refuse, drop_twin, put_back, give_back_unstarted, drop_claim   it did not run here
    lost, requeue_claimed, complete_recorded                    node-loss recovery's side

The end is recorded so that a broker outage delays it but never loses or doubles it:

1. One transaction, fenced: unstored output, the end marker, the result and the attempt
   record, leaving `grid:active`, the nonce spent if no attempt may follow, and the node's
   running-hash entry turned `ended:` (or, on a cold stop, the hand-back to the queue). It
   commits only while this slot still owns the job: WATCH on the job's hash, which a
   node-loss reclaim writes, with the ownership read after the WATCH.
2. RQ's bookkeeping (agent/rqadapter/book.py), only while the job is `started`. If the
   slot dies before this, recovery finds the `ended:` entry and does it instead.
3. Dropping the running-hash entry, and dependents.

Each step is atomic and repeated until the broker answers. A repeat after a lost reply finds
its own earlier write by the attempt's run id (step 1) or the job's status (step 2). A plain
success with nothing waiting on it does all three in one script (agent/guarded.py).

RQ's side of each step is written by the RQBook; this module knows no RQ internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis

from agent import claim, guarded, metrics, rerun, slotnames
from agent.journal import Journal, journal_path
from agent.outage import GaveUp, until_broker
from agent.output import OutputSink, reply_errors
from agent.pulse import ORPHANED
from agent.rqadapter.book import RQBook
from agent.rqadapter.jobs import shown_argument
from agent.runner import NODE_FAULT
from agent.verify import SPENT, judge_attempt, nonce_expiry, refund, spend
from gridcore import efficiency, events, history, keys
from gridcore.dependencies import fail_dependents
from gridcore.models import LOST_RETRIES, Resources
from gridcore.nodekeys import NodeSigner, claimed_nonce
from gridcore.records import (
    NODE_DRAINING,
    ActiveEntry,
    Attempt,
    CorruptRecord,
    EndMarker,
    JobMeta,
    NodeRecord,
    OutputEntry,
    Result,
    RunningEntry,
    lenient,
    text,
)
from gridcore.reservations import release, reserve_args, wake_entry
from gridcore.signing import Refused

log = logging.getLogger("grid.attempt")

HANDED_BACK = ("shutdown", ORPHANED, NODE_FAULT)
"""Outcomes that put the job back in line instead of ending it: its agent stops or is gone, or
this node could not run it (NODE_FAULT: the node drains itself)."""

SET_IF_BLANK = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or v == '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""
"""Lua: HSETNX that also writes over an empty value (KEYS: the hash; ARGV: field, value). Run
by EVAL inside the hand-back's transaction (a rare step: its text sent each time)."""

Then = tuple[list, Callable[[Any, bool], Any]]
"""A command to send in the round trip of a job's end script, and what takes its reply (None
where the end was not recorded by that script: `JobAttempt._end_at_once`) and whether the script
left the end to RQ's steps after it (the job has dependents: what it holds is given back by those
steps, after the command ran). A slot sends a list of them, run in its order (agent/perform.py
`_with_end`: the hint's PLACE, then the pop of the slot's next job)."""


@dataclass(frozen=True)
class Capacity:
    """What the node has for the reservation check at a job's start."""

    cpus: float = 1e9
    memory: int = 0  # bytes; 0 = not checked
    gpus: bool = False


class JobAttempt:
    """One attempt of one job on `node`, run by the slot whose RQ worker is named `worker`."""

    def __init__(self, conn: redis.Redis, book: RQBook, job: Any, queue: Any, *, node: str, worker: str,
                 result_ttl: int, slot: int | None = None):
        self.conn = conn
        self.book = book
        self.job = job
        self.queue = queue
        self.id: str = job.id
        self.node = node
        self.worker = worker
        self.slot = slot
        self.result_ttl = result_ttl
        self.execution: Any = None
        self.run_id = uuid4().hex  # its execution's id, known before its start (a held shell's marker)
        self.gpus: list[int] = []
        self.started = False  # its start is recorded: the claim became the start
        self.canceled_at_start = False
        self.taken_elsewhere = False  # claimed here, then taken up elsewhere before it started
        self.number = 0  # which start of its envelope this is, once started
        # The nonce counter and its expiry while the start is sent and its reply not read: a
        # lost reply may hide a start that counted an attempt (give_back_unstarted refunds it).
        self._counting: tuple[str, int] | None = None
        self.sink: OutputSink | None = None
        # The raw meta read, what it read as, and whether it read (a corrupt one reads as empty).
        self._meta: tuple[dict[str, Any], JobMeta, bool] | None = None

    @property
    def meta(self) -> JobMeta:
        """The grid's part of the job's record; a corrupt one reads as empty (logged).

        Read once per version of the raw meta (a job's life reads it about ten times): a reload
        of the job replaces the dict, and this class's own edits of it drop the copy."""
        raw = self.job.meta
        if self._meta is not None and self._meta[0] is raw:
            return self._meta[1]
        read = True
        try:
            meta = JobMeta.from_dict(raw, f"{keys.rq_job(self.id)} meta")
        except CorruptRecord as e:
            log.warning("job %s: %s", self.id, e)
            meta, read = JobMeta(), False
        self._meta = (raw, meta, read)
        return meta

    @property
    def places_next(self) -> bool:
        """Whether this slot places the next waiting jobs itself as the job ends (a placed job, or
        a cell of a throttled sweep: the next cell usually fits where it ran): then its end wakes
        no placement loop unless that pass placed nothing (agent/perform.py)."""
        meta = self.meta
        return meta.placement is not None or bool(meta.max_parallel)

    def _owns(self, raw: bytes | None) -> bool:
        # The node-loss sweep removes a lost job's ACTIVE entry: a copy still running here
        # after that is stale and must neither go on nor record a result.
        entry = lenient(ActiveEntry, raw, f"{keys.ACTIVE} field {self.id}")
        return entry is not None and entry.owned_by(self.worker)

    # ---- start --------------------------------------------------------------------------

    def start(self, envelope: dict[str, Any], now: float, capacity: Capacity,
              meanwhile: Callable[[], None] | None = None) -> bool:
        """Hold the job's resources, count the attempt and mark it started, in one script.

        False when the node has no room for it now (nothing written); raises Refused for a
        replayed envelope. RQ's start records are recorded for the script by the RQBook.
        `meanwhile` is called while the broker runs the script (the slot takes the job's held
        shell then, forked on its forking thread: agent/runner.py `Forker`).
        """
        res = Resources.from_dict(envelope.get("resources"))
        meta = self.meta
        self.gpus = self.placed_gpus()
        if res.gpus and len(self.gpus) != res.gpus:
            return False  # GPU jobs come placed by the negotiator; a stray copy waits
        pipe = guarded.recorder(self.conn)
        self.execution = self.book.start(pipe, self.job, self.run_id)
        run = ActiveEntry(node=self.node, slot=self.slot, worker=self.worker, started=now,
                          gpus=[str(g) for g in self.gpus])
        self.job.meta["run"] = run.model_dump()  # the raw meta: keys this agent does not know stay
        for k in ("lost_on", "lost_at"):  # a rerun started: where it had been lost no longer matters
            self.job.meta.pop(k, None)
        # What the raw meta now reads as, without reading all of it again (it was just read); a
        # corrupt one is read again (as empty, logged), as before this edit.
        self._meta = ((self.job.meta, meta.model_copy(update={"run": run, "lost_on": None, "lost_at": None}), True)
                      if self._meta is not None and self._meta[2] else None)
        self.book.save_meta(pipe, self.job, started=True)
        pipe.hset(keys.node_running(self.node), self.id, RunningEntry("started", slot=self.slot).encode())
        pipe.hset(keys.ACTIVE, self.id, run.encode())
        pipe.zadd(keys.node_jobs(self.node), {self.id: now})
        pipe.delete(keys.output(self.id))
        events.emit(pipe, now, "started", job=self.id, node=self.node, message=f"slot {self.slot}")
        rerun.record(pipe, self.id, meta, self.node, now)  # `meta`: as read before the start cleared lost_on
        args = [*reserve_args(self.id, res, self.gpus, capacity.cpus, capacity.memory), nonce_expiry(envelope),
                envelope.get("max_attempts") or 1, SPENT, *guarded.packed(self.conn, pipe)]
        self._counting = (keys.nonce(envelope["nonce"]), nonce_expiry(envelope))
        try:
            ok, used, errs, canceled = guarded.START(
                self.conn, [keys.node_held(self.node), keys.nonce(envelope["nonce"]), keys.cancel(self.id),
                            keys.rq_job(self.id)], args, meanwhile)
        except BaseException:
            self.book.start_written(False)  # unknown: the slot's beat is due again (a beat more at worst)
            raise
        self._counting = None  # its reply came: what it counted is known
        self.book.start_written(ok > 0)
        if ok <= 0:
            self.book.forget(self.execution)
            self.execution = None
        if ok == -2:  # canceled before it started: its canceler recorded that; it must not run
            self.canceled_at_start = True
            return False
        if ok == -3:  # taken up elsewhere since it was claimed here: nothing to start or record
            self.taken_elsewhere = True
            return False
        if ok == 0:
            return False
        if ok < 0:
            judge_attempt(used, envelope)
            raise Refused(f"replayed envelope (attempt {used})")  # judge_attempt always raises here
        for err in guarded.errors(errs):
            log.error("job %s: recording its start: %s", self.id, err)
        self.started = True
        self.number = int(used)  # the envelope's attempt counter: 1 for the first start
        self.canceled_at_start = bool(canceled)
        return True

    def placed_gpus(self) -> list[int]:
        """The GPUs the job holds here: those its placement on this node gave it."""
        placement = self.meta.placement
        return list(placement.gpus) if placement is not None and placement.node == self.node else []

    def stream(self, start: float, *, budget: int, log_dir: Path, log_cap: int) -> OutputSink:
        """The sink the attempt's output goes to, its stream entry ids after `start`."""
        self.sink = OutputSink(self.conn, self.id, self.node, start, budget=budget, log_dir=log_dir,
                               log_cap=log_cap, ttl=self.result_ttl)
        return self.sink

    def beat(self) -> str | None:
        """Keep RQ's heartbeats alive; say whether to stop (canceled, or fenced off)."""
        self.book.beat(self.job, self.execution)
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.exists(keys.cancel(self.id))
            pipe.hget(keys.ACTIVE, self.id)
            canceled, active = pipe.execute()
        if canceled:
            return "canceled"
        if not self._owns(active):
            return None if active is None and self._restore_active() else "fenced"
        return None

    def _restore_active(self) -> bool:
        """A deleted `grid:active` entry while RQ still names this worker is a stray HDEL, not a
        reclaim: put it back (agent/claim.py) and go on; True if it was put back."""
        if not self.started or not claim.restore_active(self.conn, self.id, self.worker, self.job.meta.get("run")):
            return False
        log.warning("job %s: its grid:active entry was deleted while it ran; put back", self.id)
        return True

    # ---- not run here -------------------------------------------------------------------

    def refuse(self, reason: str, now: float, sign: Callable[[Result], Result] | None = None) -> None:
        """The job is refused (bad signature, replay, policy): it failed, with the reason; `sign`
        adds the node's proof to the record."""
        log.warning("job %s: %s", self.id, reason)
        metrics.job_refused(self.node, reason)
        record = Result(reason=reason[:4096], reason_kind="refused", end=now, node=self.node)
        if sign is not None:
            record = sign(record)
        with self.conn.pipeline() as pipe:
            release(pipe, self.id, self.node)
            self.book.refuse(pipe, self.job, self.queue, record.reason)
            pipe.set(keys.result(self.id), record.encode(), ex=self.result_ttl)
            pipe.rpush(keys.attempts(self.id), record.attempt().encode())
            pipe.expire(keys.secret_env(self.id), self.result_ttl)
            events.emit(pipe, now, "refused", job=self.id, node=self.node, message=reason)
            history.append(pipe, history.entry(self.id, self.meta, record, "refused"))
            pipe.execute()

    def drop_twin(self, reason: str, now: float) -> None:
        """Discard a duplicate of a running job; the record and what it holds belong to the running copy."""
        log.warning("job %s: %s", self.id, reason)
        with self.conn.pipeline() as pipe:
            self.book.unqueue(pipe, self.job, self.queue)
            events.emit(pipe, now, "refused", job=self.id, node=self.node, message=reason)
            pipe.execute()

    def put_back(self) -> None:
        """The node is full for this job: back to the front of its queue for another slot."""
        with self.conn.pipeline() as pipe:
            self.book.put_back(pipe, self.job, self.queue)
            pipe.execute()

    def drop_claim(self) -> None:
        """The job did not start here (refused, a twin, put back): this slot's claim goes."""
        claim.release(self.conn, self.node, self.id, claim.marker(self.worker))

    def give_back_unstarted(self) -> None:
        """The job was taken but not started (broker failure, or the slot is stopping): back in line."""
        # A job placed on this node keeps what it holds here; any other may start elsewhere.
        placement = self.meta.placement
        placed_here = placement is not None and placement.node == self.node
        q = self.queue

        # A start sent whose reply was lost: if it ran, the script gives its count back.
        counter, expiry = ([self._counting[0]], [self._counting[1]]) if self._counting is not None else ([], [])
        self._counting = None

        def once() -> list:  # [1 if put back else 0, why its count was not given back or '']
            return guarded.REQUEUE_UNSTARTED(
                self.conn,
                [q.key, keys.rq_job(self.id), keys.node_running(self.node), keys.ACTIVE,
                 q.intermediate_queue_key, keys.node_held(self.node), keys.rq_registry("running", q.name),
                 *counter],
                [self.id, self.book.execution_member(self.job, self.execution), self.worker,
                 "0" if placed_here else "1", claim.marker(self.worker), *expiry],
            )

        moved, unrefunded = until_broker(once, f"job {self.id}: handing back an unstarted job")
        if unrefunded:
            log.warning("job %s: its start's count not given back (%s: %s)", self.id, counter[0], text(unrefunded))
        if moved:
            log.warning("job %s: not started here; put back at the front of its queue", self.id)
        self.book.forget(self.execution)

    # ---- end ----------------------------------------------------------------------------

    def finish(self, envelope: dict[str, Any], result: Result, outcome: str | None,
               give_up: Callable[[], bool] | None = None,
               then: Callable[[], list[Then]] | None = None) -> None:
        """Record how the attempt ended (see the module doc); discard it if the job was reclaimed.

        `outcome`: why the job was stopped when that is not a job failure (canceled,
        shutdown: hand it back, fenced), else None. `then`: where the whole end is one script,
        what to send in its round trip (`_end_at_once`); where it is not, `then` is not called.
        """
        self.book.ended(self.job)
        result = result.model_copy(update={"run_id": self.execution.id})
        what = f"job {self.id}"
        try:
            if outcome is None and result.exit_code == 0:
                after = [then] if then is not None else []  # sent with the first try only
                done = until_broker(lambda: self._end_at_once(envelope, result, after.pop() if after else None),
                                    f"{what}: recording its end", give_up)
                if done is not None:
                    if not done:
                        log.warning("%s: reclaimed by the grid while running here; result discarded", what)
                        until_broker(self._drop_reclaimed, f"{what}: dropping its entries", give_up)
                    self.book.forget(self.execution)
                    return
            owned = until_broker(lambda: self._record_end(envelope, result, outcome), f"{what}: recording its end",
                                 give_up)
            if not owned:
                log.warning("%s: reclaimed by the grid while running here; result discarded", what)
                until_broker(self._drop_reclaimed, f"{what}: dropping its entries", give_up)
                self.book.forget(self.execution)
                return
            if outcome in HANDED_BACK:
                return
            until_broker(lambda: self.book.finish(self.job, self.queue, result, outcome, self.execution),
                         f"{what}: finishing", give_up)
            until_broker(lambda: self._after_end(result, outcome, RunningEntry("ended", worker=self.worker)),
                         f"{what}: releasing dependents", give_up)
        except GaveUp as e:
            log.error("%s; the node's next agent reclaims the job", e)
        except Exception:  # noqa: BLE001 - a bookkeeping bug must not take the slot down with it
            log.exception("%s: recording its end failed", what)
        finally:
            if self.sink is not None:
                self.sink.close()

    def _drop_reclaimed(self) -> None:
        """The job was recovered by another agent while it ran here (this node was counted down),
        which left this node's keys alone: its running entry and what it held here go now."""
        claim.release(self.conn, self.node, self.id, RunningEntry("started", slot=self.slot).encode())
        claim.reconcile_held(self.conn, self.node)

    def _is_final(self, result: Result, outcome: str | None) -> bool:
        """No further attempt of this envelope may run (so its nonce is spent)."""
        return outcome == "canceled" or result.exit_code == 0 or not self.job.should_retry

    def ends_job(self, result: Result, outcome: str | None) -> bool:
        """The attempt is the job's last (what its node signs as `final`): not handed back, not retried."""
        return outcome not in HANDED_BACK and self._is_final(result, outcome)

    def _end_at_once(self, envelope: dict[str, Any], result: Result,
                     then: Callable[[], list[Then]] | None = None) -> bool | None:
        """The whole end of a successful attempt in one script: the grid's records and RQ's.

        True: recorded (now, or by an earlier try whose reply was lost). False: the job was
        reclaimed from this slot; nothing written. None: RQ has more to do than record (the job
        has dependents, or is no longer `started`): the caller takes the stepwise path.
        `then`: gives what to send in the same round trip (the slot's hint: its next cell's
        PLACE, agent/negotiator.py `with_end`; the pop of its next job): commands the broker runs
        right after the script, in order, and what takes each one's reply, called with it only
        where this script recorded the end, else with None (the command ran all the same, or
        may have: it must be safe on its own).
        """
        after = self._then(then)
        try:
            ok, detail, replies = self._end_script(envelope, result, [command for command, _ in after])
        except BaseException:
            self._settle(after, None)
            raise
        self._settle(after, replies if ok in (1, 2) else None, later=ok == 2)
        if ok == 2:
            return None
        if ok == 0:  # not ours (any more): ours already, if the last attempt recorded is this one
            if self._restore_active():
                return self._end_at_once(envelope, result)
            return self._last_run_id(detail or None) == result.run_id
        for err in guarded.errors(detail):
            log.error("job %s: recording its end: %s", self.id, err)
        return True

    def _then(self, then: Callable[[], list[Then]] | None) -> list[Then]:
        """What to send with the end script; nothing where making it failed (a bug: logged, the
        end is recorded all the same)."""
        try:
            return then() if then is not None else []
        except Exception:  # noqa: BLE001 - what goes with the end must never keep it from being recorded
            log.exception("job %s: what goes with its end", self.id)
            return []

    def _settle(self, after: list[Then], replies: list[Any] | None, later: bool = False) -> None:
        """Each command's reply to what takes it (None for each where there are none)."""
        for k, (_, settle) in enumerate(after):
            try:
                settle(replies[k] if replies is not None else None, later)
            except Exception:  # noqa: BLE001 - as in `_then`: the end is recorded, this is logged
                log.exception("job %s: the reply sent with its end", self.id)

    def _end_script(self, envelope: dict[str, Any], result: Result, commands: list[list]) -> tuple[Any, Any, Any]:
        """The end script's run: its two replies, and those of `commands` where they went with it
        (else None)."""
        pipe = guarded.recorder(self.conn)
        spend(pipe, envelope)
        self._write_end(pipe, result, None, rq_done=True, wake_in_script=True)
        self.book.record_success(pipe, self.job, result, self.execution)
        self.book.idle(pipe)
        # The wake the end's release would record, made by the script only if a job waits.
        entry = None if self.places_next else wake_entry(self.node, self.meta.group)
        wake = [x for kv in entry.items() for x in kv] if entry else ["", "", "", ""]
        end_keys = [keys.ACTIVE, keys.rq_job(self.id), keys.rq_dependents(self.id), keys.attempts(self.id),
                    keys.rq_queue(keys.PENDING_QUEUE), keys.PLACE_WAKES]
        args = [self.id, self.worker, *wake, *guarded.packed(self.conn, pipe)]
        if not commands:
            ok, detail = guarded.END(self.conn, end_keys, args)
            return ok, detail, None
        (ok, detail), replies = guarded.END.then(self.conn, end_keys, args, commands)
        return ok, detail, replies

    def _record_end(self, envelope: dict[str, Any], result: Result, outcome: str | None) -> bool:
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.rq_job(self.id))
                    if not self._owns(pipe.hget(keys.ACTIVE, self.id)):
                        if self._restore_active():
                            pipe.unwatch()
                            continue
                        return self._last_run_id(pipe.lindex(keys.attempts(self.id), -1)) == result.run_id
                    pipe.multi()
                    if outcome in HANDED_BACK:
                        self._hand_back(pipe, result, outcome)
                        if outcome == NODE_FAULT and self.started and envelope.get("nonce"):
                            # Its command never ran (the runner stopped before exec): the attempt
                            # its start counted is given back with the hand-back, so a job the
                            # grid could not run here keeps every attempt it was signed for (a
                            # job without retries, handed back, then on a lost node, would be
                            # refused as a replay on its rerun). This writes no more runs than
                            # signed: the command runs at most max_attempts times all the same,
                            # and only this node, in this owned step, says it did not run it. The
                            # broker count guards nothing against broker writers (they can
                            # delete it); the node's journal does, and withdraws only this
                            # unrun start (Admission.ended). A shutdown or orphaned hand-back
                            # keeps its count: its command may have started (and was killed);
                            # one stopped before its command ran (agent/runner.py `execute`)
                            # keeps it too: an attempt spent, never a run more than signed.
                            refund(pipe, envelope)
                    else:
                        if self._is_final(result, outcome) and envelope.get("nonce"):
                            # In the same transaction: no replay slips in before the end is visible.
                            spend(pipe, envelope)
                        self._write_end(pipe, result, outcome)
                    for err in reply_errors(pipe.execute(raise_on_error=False)):
                        log.error("job %s: recording its end: %s", self.id, err)
                    return True
                except redis.WatchError:
                    continue

    def _last_run_id(self, raw: bytes | None) -> str | None:
        last = lenient(Attempt, raw, keys.attempts(self.id))
        return last.run_id if last is not None else None

    def _write_end(self, pipe, result: Result, outcome: str | None, rq_done: bool = False,
                   wake_in_script: bool = False) -> None:
        """Queue the attempt's end on `pipe`. `rq_done`: RQ's own end records are in the same
        atomic step, so the job leaves the node's running hash now. `wake_in_script`: the end
        script wakes the placement loops itself (only if a job waits: guarded.END)."""
        kind = outcome or ("finished" if result.exit_code == 0 else "failed")
        out = keys.output(self.id)
        if self.sink is not None:
            self.sink.write_last(pipe, EndMarker.of(result).fields())
        else:
            pipe.xadd(out, EndMarker.of(result).fields())
        pipe.expire(out, self.result_ttl)
        pipe.set(keys.result(self.id), result.encode(), ex=self.result_ttl)
        pipe.rpush(keys.attempts(self.id), result.attempt().encode())
        pipe.expire(keys.attempts(self.id), self.result_ttl)
        if self._is_final(result, outcome):  # its env values go with its record (gridcore/secretenv.py)
            pipe.expire(keys.secret_env(self.id), self.result_ttl)
        if rq_done:
            pipe.hdel(keys.node_running(self.node), self.id)
        else:  # not gone yet: if this slot dies before RQ's bookkeeping, recovery finishes it
            pipe.hset(keys.node_running(self.node), self.id, RunningEntry("ended", worker=self.worker).encode())
        pipe.hdel(keys.ACTIVE, self.id)
        group = self.meta.group
        release(pipe, self.id, self.node, group, wake_loops=not (self.places_next or wake_in_script))
        if group and result.usage is not None:  # the sweep's median and max per cell
            efficiency.record_cell(pipe, group, self.id, result.usage.model_dump(), self.result_ttl)
        if outcome == "canceled":  # the operator's signed cancel stays with the record (gridcore/cancelproof.py)
            pipe.expire(keys.cancel(self.id), self.result_ttl)
        else:
            pipe.delete(keys.cancel(self.id))
        events.emit(pipe, result.end or 0.0, kind, job=self.id, node=self.node,
                    message=result.reason or "exit code 0")
        history.append(pipe, history.entry(self.id, self.meta, result, kind))

    def _hand_back(self, pipe, result: Result, outcome: str = "shutdown") -> None:
        """Cold stop, or the agent stopped heartbeating (orphaned): the job was killed because
        its agent is going or gone; put it back in line. NODE_FAULT: this node could not run
        it; the node drains itself in the same step (the operator resumes it once mended) and
        a job the grid placed goes back to placement, for another node (no placer can put it
        here again: the node is draining); one a user pinned here waits for the node."""
        end = result.end or 0.0
        to = None
        if outcome == NODE_FAULT:
            why = result.reason or "not run"
            note = f"attempt on {self.node} {why}; node drained, job handed back"
            meta = self.meta
            to = keys.PENDING_QUEUE if meta.placement is not None and not meta.resources.node else None
            # Said first: `grid nodes` shows a drain reason's first 30 characters.
            drained = "job cgroups failing: " + why.removeprefix("not run: ")
            # A node an operator drained already (between this slot's pop and now) keeps the
            # operator's reason: written only where there is none, missing (`grid resume`
            # deletes it: gridcore/control.py) or empty (an older resume wrote ""); the fault
            # is still said, by its event. Decided in the step that writes it: a read first
            # would let a drain landing in between lose its reason.
            fields = NodeRecord.drain_fields(True, drained)
            pipe.hset(keys.node(self.node), NODE_DRAINING, fields[NODE_DRAINING])
            pipe.eval(SET_IF_BLANK, 1, keys.node(self.node), "drain_reason", fields["drain_reason"])
            events.emit(pipe, end, "node_draining", node=self.node, message=drained)
        else:
            why = "agent shutdown" if outcome == "shutdown" else "agent not heartbeating"
            note = f"attempt on {self.node} stopped by {why}; job handed back to the queue"
        if self.sink is not None:
            self.sink.write_last(pipe, OutputEntry.note(note).fields())
        pipe.rpush(keys.attempts(self.id), result.attempt(reason=why).encode())
        pipe.hdel(keys.node_running(self.node), self.id)
        pipe.hdel(keys.ACTIVE, self.id)
        if to is None:
            release(pipe, self.id, self.node)  # its sweep slot stays: the job still counts as placed
        else:  # placed no longer: its sweep slot goes too, and every placement loop is woken
            release(pipe, self.id, self.node, self.meta.group, requeued=True)
        self.book.hand_back(pipe, self.job, self.queue, self.execution, to)
        events.emit(pipe, end, "requeued", job=self.id, node=self.node, message=note)
        history.append(pipe, history.entry(self.id, self.meta, result.model_copy(update={"reason": why}),
                                           "requeued"))

    def _after_end(self, result: Result, outcome: str | None, entry: RunningEntry, foreign: bool = False) -> None:
        if not foreign:  # another node's running hash is not this agent's to write
            claim.release(self.conn, self.node, self.id, entry.encode())
        end = result.end or 0.0
        if outcome == "canceled":
            fail_dependents(self.conn, self.id, end, self.result_ttl)
        elif result.exit_code != 0:
            self.job.refresh()
            status = self.book.status(self.job)
            if status in ("queued", "scheduled"):
                with self.conn.pipeline(transaction=False) as pipe:
                    events.emit(pipe, end, "retried", job=self.id, node=self.node,
                                message=f"after {result.reason}; {self.job.retries_left} retries left")
                    pipe.execute()
            elif status == "failed":
                fail_dependents(self.conn, self.id, end, self.result_ttl)

    # ---- node-loss recovery -------------------------------------------------------------
    # `foreign`: the attempt was on another (down) node, whose keys this agent may not write:
    # the job is recovered through its own, the shared and RQ's keys only; the down node's
    # running, held and taking entries stay, and it drops them itself when it is back (each
    # step below reads the job's state, so a stale entry read again changes nothing).

    def drop_entry(self, pipe, foreign: bool = False) -> bool:
        """A stale running-hash entry (the job is gone, or runs or ended elsewhere): only it goes
        (on this node; another node's is left to it).

        `pipe` WATCHes the entry; returns False (nothing reclaimed)."""
        if foreign:
            pipe.reset()
            return False
        pipe.multi()
        pipe.hdel(keys.node_running(self.node), self.id)
        pipe.execute()
        return False

    def lost(self, pipe, now: float, reason: str, witness: NodeSigner | None = None,
             foreign: bool = False) -> bool:
        """The job was running on a node that is gone: the attempt is lost; the job is retried
        while it has lost-retries left, else failed. `pipe` WATCHes the job's running-hash
        entry and RQ hash (what a slot recording the job's end writes). `witness`: the node
        reclaiming it, which signs the lost record. True if reclaimed."""
        active = lenient(ActiveEntry, pipe.hget(keys.ACTIVE, self.id), f"{keys.ACTIVE} field {self.id}")
        if (active is not None and active.node != self.node) or self.book.status(self.job) != "started":
            return self.drop_entry(pipe, foreign)
        if foreign and active is None and not slotnames.of_node(self.book.started_by(self.job), self.node):
            return self.drop_entry(pipe, foreign)  # a stale entry: the job was taken up again elsewhere
        started = self.book.started_entries(pipe, self.job)
        meta = self.meta
        lost = meta.lost + 1
        self.job.meta["lost"] = lost
        self.job.meta.update(lost_on=self.node, lost_at=now)  # its rerun prefers another node (agent/rerun.py)
        self.job.meta.pop("run", None)
        self._meta = None
        retry = lost <= LOST_RETRIES
        record = Result(node=self.node, end=now, reason=reason[:4096], reason_kind="lost")
        if witness is not None:
            nonce = claimed_nonce(shown_argument(self.job))
            used = text(pipe.get(keys.nonce(nonce))) if nonce else ""  # the envelope's starts: this attempt's number
            seen = None  # another node's loss: this node cannot know what ran there
            if witness.node == self.node:  # its own: vouched for only as far as its journal saw the start
                seen = bool(nonce) and Journal(journal_path(self.node)).started_unended(nonce)
            record = witness.attest(record, self.id, nonce, int(used) if used.isdigit() and len(used) < 6 else None,
                                    final=not retry, on=self.node, seen=seen)
        pipe.multi()
        if not foreign:
            pipe.hdel(keys.node_running(self.node), self.id)
        pipe.hdel(keys.ACTIVE, self.id)
        pipe.rpush(keys.attempts(self.id), record.attempt().encode())
        history.append(pipe, history.entry(self.id, meta, record.model_copy(
            update={"start": active.started if active is not None else None}), "lost"))
        self.book.save_meta(pipe, self.job)
        # A job the grid placed goes back to placement; one a user pinned waits for its node.
        to = keys.PENDING_QUEUE if retry and meta.placement is not None and not meta.resources.node else None
        release(pipe, self.id, None if foreign else self.node, meta.group, requeued=to is not None)
        if retry:
            self.book.requeue_lost(pipe, self.job, started, to)
            events.emit(pipe, now, "lost", job=self.id, node=self.node, message=f"{reason}; retrying")
        else:
            self.book.fail_lost(pipe, self.job, started, reason)
            pipe.set(keys.result(self.id), record.encode(), ex=self.result_ttl)
            pipe.expire(keys.secret_env(self.id), self.result_ttl)
            events.emit(pipe, now, "lost", job=self.id, node=self.node, message=f"{reason}; no retries left")
        pipe.execute()
        if not retry:
            fail_dependents(self.conn, self.id, now, self.result_ttl)
        return True

    def requeue_claimed(self, pipe, others=(), foreign: bool = False) -> bool:
        """The slot claimed the job and died before it ran: back at the front of its queue, as it
        was. RQ may already say `started` (the slot got that far); no attempt is counted.
        `pipe` WATCHes as for `lost`. Not if one of the nodes `others` has taken or claimed it
        since (the claim read is stale: recovery put the job back already)."""
        active = lenient(ActiveEntry, pipe.hget(keys.ACTIVE, self.id), f"{keys.ACTIVE} field {self.id}")
        ours = active is None or active.owned_by(self.worker)
        if not ours or self.book.status(self.job) not in ("queued", "started") \
                or claim.claimed_elsewhere(pipe, self.id, self.node, others):
            return self.drop_entry(pipe, foreign)
        started = self.book.started_entries(pipe, self.job)
        queued = pipe.lpos(keys.rq_queue(self.job.origin), self.id) is not None
        if foreign and queued and not started and active is None and self.book.status(self.job) == "queued":
            pipe.reset()  # back in its queue already (an earlier sweep): nothing to do
            return False
        pipe.multi()
        if not foreign:
            pipe.hdel(keys.node_running(self.node), self.id)
        if active is not None:
            pipe.hdel(keys.ACTIVE, self.id)
        self.book.requeue_claimed(pipe, self.job, started, queued)
        pipe.execute()
        log.warning("job %s: claimed on %s but never run there; back in its queue", self.id, self.node)
        return True

    def complete_recorded(self, foreign: bool = False) -> bool:
        """The slot recorded the job's end and died before RQ's bookkeeping: finish that from the
        recorded result, as the slot would have. True if there was something to finish."""
        if self.book.status(self.job) != "started":
            if not foreign:
                claim.release(self.conn, self.node, self.id, RunningEntry("ended", worker=self.worker).encode())
            return False
        # An end whose result is gone (expired, deleted) counts as a failure.
        result = lenient(Result, self.conn.get(keys.result(self.id)), keys.result(self.id)) or Result(reason="failed")
        outcome = "canceled" if result.reason_kind == "canceled" else None
        self.book.finish(self.job, None, result, outcome, None)
        self._after_end(result, outcome, RunningEntry("ended", worker=self.worker), foreign)
        log.warning("job %s: its slot on %s died after recording its end; RQ's records finished", self.id,
                    self.node)
        return True
