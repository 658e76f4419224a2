"""What a slot does with a job it took: verify it, start its attempt, run it, record its end.

The slot's RQ worker (agent/rqadapter/worker.py) hands each job here; its signal handlers
only set the flags kept here (cancel the running job, stop cold).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from agent import recovery, rerun, runner, usage
from agent.admission import Admission
from agent.journal import EarlierStartRunning
from agent.attempt import Capacity, JobAttempt, Then
from agent.claim import Taken
from agent.negotiator import Negotiator
from agent.outage import OUTAGE_ERRORS, GaveUp, OutageClock, retyped, until_broker
from agent.pulse import ORPHANED
from agent.rqadapter.book import RQBook
from agent.rqadapter.jobs import shown_argument
from agent.verify import AlreadyRunning, Gatekeeper
from gridcore import keys
from gridcore.records import NODE_DRAINING, NodeRecord, Result
from gridcore.reservations import wake
from gridcore.settings import Settings
from gridcore.signing import Refused

log = logging.getLogger("grid.slot")

COLD_SETTLE_WAIT = 10.0
"""Seconds a cold-stopped slot keeps trying to record a job's end while the broker is away."""
PUT_BACK_PAUSE = 0.25
"""Seconds a slot that put a job back (no room here) waits, so a slot elsewhere can take it."""


class Performer:
    """The job-running side of one slot: `worker` is its RQ worker's name, `slot` its index."""

    def __init__(self, conn, book: RQBook, *, node: str, slot: int, worker: str, settings: Settings,
                 gate: Gatekeeper, marker_env: dict[str, str], capacity: dict[str, Any] | None = None):
        self.conn = conn
        self.book = book
        self.node = node
        self.slot = slot
        self.worker = worker
        self.settings = settings
        self.log_dir = settings.log_dir  # resolved once: it is the same for every job of the slot
        self.gate = gate
        self.admission = Admission(conn, settings.agent)  # signed bounds and the node's replay journal
        self.marker_env = marker_env
        capacity = capacity or {}
        self.capacity = Capacity(cpus=float(capacity.get("cpus") or 1e9), memory=int(capacity.get("memory") or 0),
                                 gpus=bool(capacity.get("gpus")))
        self.clock = OutageClock(conn)
        self.cancel_event = threading.Event()
        self.stop_reason: list[str] = []
        self.busy = False
        self.cold = False
        self.cold_at = 0.0
        # This slot's quick pass at a placed job's end, onto its own node; it takes the first job itself.
        self.placing = Negotiator(conn, owner=worker, node=node, taker=True)
        self.forker = runner.Forker()
        if self.capacity.gpus:
            # NVML's first use takes 100 ms or more; a GPU job's meter is made after its command
            # was released: then its first samples and its watch would start that much later.
            usage.nvml()
        self.orphaned = threading.Event()  # set by the slot's PulseWatch (agent/pulse.py)
        self.no_room = False  # the last start found the node full: wait for room (agent/room.py)
        # Set by the slot's RQ worker: the pop of its next job, to send in the round trip of a
        # successful job's END, given that job's id and whether it may take only from the node's
        # queue (agent/rqadapter/worker.py `pop_with_end`).
        self.next_pop: Callable[[str, bool], Then | None] | None = None

    # ---- flags set by signals and RQ commands ---------------------------------------------

    def cancel(self, reason: str) -> None:
        """Stop the running job, if any, for `reason` (canceled, shutdown)."""
        if self.busy:
            self.stop_reason.append(reason)
            self.cancel_event.set()

    def stop_cold(self) -> None:
        """The agent is going away: kill the running job and hand it back; start nothing."""
        if not self.cold:
            self.cold_at = time.monotonic()
        self.cold = True
        self.cancel("shutdown")

    def _give_up(self) -> bool:
        # Once the agent is gone (cold stop), wait a while for the broker, then leave the job
        # to the node's next agent, which reclaims it.
        return self.cold and time.monotonic() - self.cold_at > COLD_SETTLE_WAIT

    # ---- one job ------------------------------------------------------------------------

    def perform(self, job: Any, queue: Any, taken: Taken | None) -> None:
        """Take one job through its attempt here. Until the job's process starts, a broker
        failure puts the job back in line (never lost, never failed by an outage); after
        that nothing raises one (the runner, the attempt's end)."""
        attempt = JobAttempt(self.conn, self.book, job, queue, node=self.node, worker=self.worker, slot=self.slot,
                             result_ttl=self.settings.result_ttl)
        try:
            if not self.cold and not self.orphaned.is_set():  # a stopping slot hands the job straight back
                self._verify_and_run(attempt, taken)
                if not attempt.started:
                    self._drop_claim(attempt)  # refused, a twin, put back: it did not start here
                return
        except OUTAGE_ERRORS as e:
            log.warning("job %s: not started (%s)", job.id, e)
        self.busy = False
        attempt.give_back_unstarted()

    def _drop_claim(self, attempt: JobAttempt) -> None:
        try:
            attempt.drop_claim()
        except OUTAGE_ERRORS:
            pass  # a stale claim is harmless: recovery requeues only a job still queued and in no queue

    def _verify_and_run(self, attempt: JobAttempt, taken: Taken | None) -> None:
        now = self.clock.now()
        meta = attempt.meta  # before the start, which consumes `lost_on`
        if rerun.pass_on(self.conn, meta, self.node, attempt.job.origin, now):
            attempt.put_back()  # lost here a moment ago: another node reruns it if it takes it in time
            time.sleep(PUT_BACK_PAUSE)
            return
        try:
            envelope, _signer = self.gate.verify(attempt.job, now, taken.active if taken is not None else ...)
            started = False
            held: list[runner.Held | None] = []
            ctx: list[runner.RunContext] = []  # the held shell's, the run's too (its attempt number set then)
            forking: runner.Forking | None = None
            if runner.holdable(envelope):
                # The job's shell is forked (held at its gate) on the slot's forking thread while
                # this one admits and starts the job: the fork and exec run off the GIL, beside it.
                attempt.gpus = attempt.placed_gpus()
                ctx.append(self._context(attempt))
                forking = self.forker.hold(envelope, ctx[0])

            def forked() -> None:
                if forking is not None and not held:
                    held.append(forking.result())

            try:
                ticket = self.admission.admit(attempt.id, attempt.queue.name, attempt.meta.placement, envelope, now)
            except BaseException:
                forked()
                if held and held[0] is not None:
                    held[0].abort()  # not admitted here: never run
                raise
            try:
                started = attempt.start(envelope, now, self.capacity, forked)  # the shell's, while the script runs
            finally:
                forked()
                if not started:
                    self.admission.withdraw(ticket)
                    if held and held[0] is not None:
                        held[0].abort()  # refused, canceled, no room, or the broker away: never run
        except EarlierStartRunning as e:
            log.info("job %s: not yet: %s", attempt.id, e)
            attempt.put_back()  # its stale copy's slot kills that copy by its attempt (agent/runner.py)
            time.sleep(PUT_BACK_PAUSE)
            return
        except AlreadyRunning as e:
            # The running copy holds the reservation under the same job id: leave it be.
            attempt.drop_twin(f"refused: {e}", now)
            return
        except Refused as e:
            shown = shown_argument(attempt.job)
            attempt.refuse(f"refused: {e}", now, lambda r: self.admission.attest_refusal(r, attempt.id, shown))
            return
        if not started:
            if attempt.canceled_at_start:
                log.info("job %s: canceled before it started; not run", attempt.id)
                return  # not started: `perform` drops this slot's claim
            if attempt.taken_elsewhere:
                log.warning("job %s: recovered elsewhere while this node was away; not run here", attempt.id)
                return  # not started: `perform` drops this slot's claim
            attempt.put_back()
            self.no_room = True  # until a plain job fits, the slot takes nothing (agent/room.py)
            time.sleep(PUT_BACK_PAUSE)
            return
        self.no_room = False
        try:
            # The next cell's PLACE from the slot's hint and the pop of the slot's next job go
            # with the job's end, one round trip for all, where that end is one script
            # (Negotiator.with_end); what the PLACE did, if taken.
            took: list[bool | None] = []
            result, outcome = self._run(attempt, envelope, now, held[0] if held else None,
                                        lambda: self._with_end(took, attempt), ctx[0] if ctx else None)
            self.admission.ended(ticket, now, result, outcome)
            if outcome == runner.NODE_FAULT:
                # After the journal has the start's end: a move the broker refuses (it may, out
                # of memory) must not leave the start open, which would hold a rerun here back.
                self._drained()
            if attempt.places_next:
                self._place_next(attempt.meta.group, took[0] if took else None)
        finally:
            if held and held[0] is not None:
                held[0].abort()  # still at its gate if something failed before its release
            self.busy = False
            self.book.idle()

    def _context(self, attempt: JobAttempt) -> runner.RunContext:
        """What the runner needs of the slot for this attempt (its number is set once started)."""
        gpus = attempt.gpus
        return runner.RunContext(
            job_id=attempt.id,
            node=self.node,
            slot=self.slot,
            kill_grace=self.settings.agent.kill_grace,
            marker_env=self.marker_env,
            broker_time=self.clock.now,
            heartbeat=attempt.beat,
            cancel=self.cancel_event,
            stop_reason=self.stop_reason,
            cgroup_tag=self.worker,
            attempt=attempt.number,
            run_id=attempt.run_id,
            worker=self.worker,
            # A job sees exactly the GPUs it holds; one that asked for none sees none.
            extra_env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if self.capacity.gpus or gpus else {},
        )

    def _with_end(self, took: list[bool | None], attempt: JobAttempt) -> list[Then]:
        """What to send with the job's end, in order: the hint's PLACE where the job places the
        next waiting job (its verdict kept in `took`), then the pop of the slot's next job.

        A job that places the next one pops from its node's queue only, and only behind the
        hint's PLACE: it takes the cell the PLACE put there (or one another pass placed for this
        node). Without a hint, or where the PLACE placed nothing, the slot's pass places after
        the END (`_place_next`) and counts the node's idle slots as it does: a pool job claimed
        by the END's pop would hold this slot, the pass would find the node full and place
        nothing, and at every end of the node's jobs the same: a placed job waiting here would
        wait behind every plain job of the pool queue."""
        out: list[Then] = []
        after = self.placing.with_end() if attempt.places_next else None
        if after is not None:
            command, settle = after
            out.append((command, lambda reply, later: took.append(settle(reply, later))))
        if attempt.places_next and after is None:
            return out
        pop = self.next_pop(attempt.id, attempt.places_next) if self.next_pop is not None else None
        if pop is not None:
            out.append(pop)
        return out

    def _run(self, attempt: JobAttempt, envelope: dict[str, Any], now: float,
             held: runner.Held | None = None, then: Callable[[], list[Then]] | None = None,
             ctx: runner.RunContext | None = None) -> tuple[Result, str | None]:
        self.busy = True
        self.cancel_event.clear()
        self.stop_reason.clear()
        if self.cold:  # a cold stop that came before `busy` was set
            self.stop_reason.append("shutdown")
            self.cancel_event.set()
        elif self.orphaned.is_set():  # the agent went silent while this job was being started
            self.stop_reason.append(ORPHANED)
            self.cancel_event.set()
        if attempt.canceled_at_start:  # canceled while it was being taken: ended at once, its command not run
            self.stop_reason.append("canceled")
            self.cancel_event.set()
        agent = self.settings.agent
        if ctx is None:
            ctx = self._context(attempt)
        else:  # the held shell's, made before the start gave the attempt its number
            ctx.attempt = attempt.number
        # A held shell runs its command now: the sink and the meter are made while it does.
        released = runner.release(held, ctx) if held is not None else None
        try:
            sink = attempt.stream(now, budget=agent.output_budget, log_dir=self.log_dir, log_cap=agent.log_cap)
            # What the attempt uses, measured until its tree is gone; a held shell's slot children
            # were read before its fork.
            meter = usage.Meter(attempt.gpus, before=held.before if held is not None else None)
        except BaseException:
            if released is not None:
                held.kill()  # running, and nothing would watch it
            raise
        if meter.walk:  # one read of the slot's children for both (where /proc lists them)
            ctx.children_before = meter.before
        try:
            result, outcome = runner.execute(envelope, ctx, sink, held, released)
        except Exception as e:  # noqa: BLE001 - an agent bug fails the job, loudly, not the slot
            log.exception("job %s: runner error", attempt.id)
            end = self.clock.now()
            result = Result(node=self.node, slot=self.slot, start=now, end=end, duration=max(0.0, end - now),
                            reason=f"agent error: {type(e).__name__}: {e}"[:4096], reason_kind="error")
            outcome = None
        result = meter.finish(result, ctx.children_after)
        result = self.admission.attest(result, attempt.id, envelope, attempt.number,
                                       final=attempt.ends_job(result, outcome))
        # Fenced, final (nonce spent), atomic and repeated through broker outages: agent/attempt.py.
        attempt.finish(envelope, result, outcome, give_up=self._give_up, then=then)
        return result, outcome

    def _drained(self) -> None:
        """This node drained itself with the job it could not run (agent/attempt.py): the jobs
        the grid placed here that no slot took yet go back to placement too, for other nodes."""
        def once() -> int:
            if not NodeRecord.draining_read(self.conn.hget(keys.node(self.node), NODE_DRAINING)):
                return 0
            return recovery.replace_queued(self.conn, self.node, own=True)

        # Until the broker answers: nothing else re-places a live drained node's queue (the
        # node-loss sweep is for down nodes); each move is safe to repeat.
        try:
            if n := until_broker(once, f"node {self.node} drained: its placed jobs back to placement", self._give_up):
                log.warning("node %s drained: %d job(s) placed here went back to placement", self.node, n)
        except GaveUp as e:
            log.warning("%s; they wait for the node", e)

    def _place_next(self, group: str | None, took: bool | None = None) -> None:
        """What the ended job gave back may let the next waiting job in (the next cell of its
        sweep): place it now, before this slot looks for its next job (agent/negotiator.py).
        Its end woke no placement loop: if this places nothing, the loops it concerns are woken
        now (another node may take what this one could not). If other placers beat this one to
        what it tried, they are placing what was given back: only this node's loop is woken (it
        reads the queue from the top), not every agent's (on a grid of several nodes every node's
        ending slots race for the head of a sweep; waking every loop at each lost race added a
        pass per agent that found nothing); nor when the pass found the job's sweep at its
        max_parallel again (another placer took the slot it gave back). The pass looks at the
        head of the queue only (agent/negotiator.py TAKE_WINDOW): the woken loop looks further,
        so it is woken (this node's only) also when the pass placed a job but jobs wait past what
        it looked at and a slot of the node is left idle (`Negotiator.beyond`): what else fits is
        placed at once, not at the periodic pass. A sweep's cell end that placed the next cell
        leaves no slot idle: no wake, no pass per cell that would place nothing. `took`: what the
        hint's PLACE sent with the job's end did (None: none was, the hint is placed now)."""
        placed = raced = 0
        beyond = False
        full: set[str] = set()
        try:
            # The next cell its last pass found, placed without the pass's reads where nothing a
            # pass would look at changed (Negotiator.take_next); else the pass.
            if took if took is not None else self.placing.take_next():
                placed, beyond = 1, self.placing.idle_left > 0
            elif not self.placing.spoken:  # (spoken: a job is queued here for every idle slot)
                placed = self.placing.run_once(full=False, lock=False)
                raced, full, beyond = self.placing.raced, self.placing.full, self.placing.beyond
        except OUTAGE_ERRORS as e:
            log.warning("placing after a job's end: %s (the agents' placement loop will)", e)
        except Exception:  # noqa: BLE001 - a placement bug must not take the slot down; it is logged
            log.exception("placing after a job's end failed")
        if placed and not beyond:
            return
        if self.placing.spoken and not group:
            return  # jobs wait in its node's queue for every idle slot: this slot takes one next
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                # For an idle slot of this node only (this one if it placed nothing, another if it
                # did): its loop passes only if one still is when it reads the wake.
                wake(pipe, self.node, anywhere=not placed and bool(group) and not raced and group not in full,
                     idle=True)
                pipe.execute()
        except OUTAGE_ERRORS as e:
            log.warning("waking the placement loops after a job's end: %s (the periodic pass will)", e)
        except redis.ResponseError as e:
            if not retyped(e):
                raise
            # The wake stream spoiled by a writer: the heartbeat heals it; the job's end is written.
            log.warning("waking the placement loops after a job's end: %s (the periodic pass will)", e)
