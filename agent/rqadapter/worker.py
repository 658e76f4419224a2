"""GridWorker: a slot's RQ worker, and every override of RQ's worker the grid needs.

RQ's forking Worker buys nothing when the job is itself a subprocess, and its SimpleWorker
neither heartbeats during a job nor obeys stop commands. This one hands each job to the
slot's Performer (agent/perform.py), which runs it through the runner (heartbeats, cancel,
killing the whole tree).

Jobs are taken with agent/claim.py (pop and claim in one step), never with RQ's BLPOP, whose
popped job is lost if the reply is (broker restart) or the slot dies before it records the
job. The idle loop waits for the broker instead of quitting on a connection error (stock RQ
leaves the loop on most of them) and wakes every DEQUEUE_WAKE seconds. Stop signals set flags,
and interrupt the slot only inside its blocking wait: what that wait takes is in the node's
taking list, never lost (agent/claim.py).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import redis
from rq import worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job
from rq.queue import Queue
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry, ReadyJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.worker import SimpleWorker, WorkerStatus

from agent import claim, room
from agent.outage import OUTAGE_ERRORS, retyped
from agent.perform import Performer
from agent.rqadapter import scheduler
from agent.rqadapter.book import RQBook
from agent.rqadapter.jobs import GridJob, GridQueue, restore_job
from agent.verify import Gatekeeper
from gridcore import keys, quarantine

log = logging.getLogger("grid.slot")

BEAT_EVERY = 1.0
"""Seconds between a slot's own RQ worker heartbeats outside a job's start and end."""
IDLE_BEAT_MARGIN = 75
"""Seconds before its worker key would expire that an idle slot heartbeats it again: RQ's rule
(an idle RQ worker beats once per wait for a job, `worker_ttl - 15` s, and its key lives
`worker_ttl + 60` s), kept whatever TTL the last beat gave the key (a job's start gives it
less). `rq info` and rq-dashboard show a worker while its key lives; nothing of the grid reads
an idle slot's beat, so beating it at every wake (4 writes) was most of an idle slot's load."""
DEQUEUE_WAKE = 5
"""Seconds between two looks of an idle node at its node queue, its pool queues past the one
its slots block on, the suspend flag and the scheduler (and a heartbeat, when IDLE_BEAT_MARGIN
says so): every look costs the broker two commands. A job for the slots' pool queue ends their
wait at once, a placed one nudges them (gridcore/placing.py), a stop signal interrupts it; the
looks are the safety net for the rest. The node's idle slots take turns (`turn_wait`): each
wakes once per round of `slots` looks, not every slot at every look."""
WAIT_MARGIN = 2.0
"""Seconds a slot's blocking wait ends before its connection's socket timeout (RQ sets that to
the dequeue timeout + 10 s), so the wait never trips it."""
SUSPENSION_CHECK = 1.0
"""Seconds between a slot's looks at RQ's suspend flag."""
DRAIN_POLL = 1.0
"""Seconds between looks at the drain flag while the node is draining."""
RECONNECT_BACKOFF = (0.25, 0.5, 1.0, 2.0, 5.0)
"""Seconds between an idle slot's attempts to reach the broker again (the last one repeats)."""
ORPHAN_POLL = 0.5
"""Seconds between an orphaned slot's looks at whether its agent's pulse is back."""
SCHEDULER_RETRY = 5.0
"""Seconds between attempts to restart RQ's scheduler process after it died with the broker."""


class _StopWaiting(Exception):
    """Raised by a stop signal's handler into the slot's blocking wait for a job, only there."""


class GridWorker(SimpleWorker):
    queue_class = GridQueue
    job_class = GridJob  # registries and sweeps built from this worker never call a record's callbacks
    dequeue_timeout = DEQUEUE_WAKE  # shadows RQ's property (worker_ttl - 15 seconds)

    def __init__(self, queues, *, connection, name: str, node: str, slot: int, settings, gate: Gatekeeper,
                 marker_env: dict[str, str], capacity: dict[str, Any] | None = None, slots: int = 1):
        super().__init__(queues, connection=connection, name=name, serializer=JSONSerializer,
                         queue_class=GridQueue, job_class=GridJob, default_result_ttl=settings.result_ttl)
        self.node = node
        self.slot, self.slots = slot, max(1, slots)
        book = RQBook(connection, settings.result_ttl, worker=self, node=node)
        self.performer = Performer(connection, book, node=node, slot=slot, worker=name, settings=settings, gate=gate, marker_env=marker_env,
                                   capacity=capacity)
        self.taken: claim.Taken | None = None  # what the last pop read besides the job
        self._own_queues = {q.key: q for q in self.queues}
        self._beat_at = 0.0
        self._beat_ttl = 0  # the TTL the last beat gave the worker's key
        self._beat_queued: tuple[float, int] | None = None  # a beat queued, not yet written (when, TTL)
        self._node_busy = False  # the last empty pop found jobs held by the node's slots (`turn_wait`)
        self._suspension_checked = 0.0
        self._scheduler_retry_at = 0.0
        self._pubsub_down = False
        self._waiting = False  # in claim.wait_pop: a stop signal may interrupt it
        # The pop sent with the last job's END (`pop_with_end`): what it took, claimed for this
        # slot; or, where its reply was not taken, that what it may have claimed goes back.
        self._next: claim.Popped | None = None
        self._next_lost = False
        self.performer.next_pop = self.pop_with_end
        GridQueue.result_ttl = settings.result_ttl

    # ---- signals and commands -----------------------------------------------------------

    def _install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._warm_stop)
        signal.signal(signal.SIGUSR1, self._cold_stop)
        # Ctrl-C in the agent's terminal reaches us too; the agent decides what it means.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Handlers set flags, and raise only into the idle wait: anywhere else (a job being taken,
    # started or ended) an exception could leave the job half-recorded. What the interrupted
    # wait took is in the node's taking list, which any pop of the node takes from, and which the
    # agent gives back when its slots have exited.
    def _warm_stop(self, signum, frame):
        self._stop_requested = True
        if self._waiting:
            raise _StopWaiting

    def _cold_stop(self, signum, frame):
        self._stop_requested = True
        self.performer.stop_cold()
        if self._waiting:
            raise _StopWaiting

    def kill_horse(self, sig=None):
        """RQ's stop-job command (from the pubsub thread): cancel the running job."""
        self.performer.cancel("canceled")

    def request_stop_execution(self, execution_id: str):
        self.kill_horse()

    def _pubsub_exception_handler(self, exc, pubsub, pubsub_thread):
        # RQ's handler logs every 2 s for as long as the broker is away; once is enough.
        if isinstance(exc, redis.ConnectionError):
            if not self._pubsub_down:
                self._pubsub_down = True
                log.info("slot %s: command channel lost (%s); resubscribing when the broker is back", self.name, exc)
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    # ---- the worker's own records -------------------------------------------------------

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            # Counted once written (`beat_recorded`): a job's start queues it into its script,
            # which may write nothing (canceled, full, replayed, taken elsewhere, a lost reply).
            self._beat_queued = (time.monotonic(), timeout or self.worker_ttl + 60)  # RQ's default TTL
            return super().heartbeat(timeout, pipeline)
        # RQ beats before and after every job; its worker key lives for minutes, so once a
        # second is plenty, and a slot running thousands of tiny jobs saves two round trips each.
        if time.monotonic() - self._beat_at < BEAT_EVERY:
            return None
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                self.heartbeat(timeout, pipe)
                # The state too: set_state skips repeats, and this restores it after a broker loss.
                pipe.hset(self.key, "state", self._state)
                pipe.execute()
            self.beat_recorded(True)
        except OUTAGE_ERRORS as e:
            self._beat_at, self._beat_queued = 0.0, None  # not written: due again
            log.debug("slot heartbeat skipped: %s", e)  # the idle loop waits for the broker

    def beat_recorded(self, written: bool) -> None:
        """The pipeline the last beat was queued on ran (`written`), or was dropped unwritten."""
        if written and self._beat_queued is not None:
            self._beat_at, self._beat_ttl = self._beat_queued
        self._beat_queued = None

    def maintain_heartbeats(self, job, execution):
        try:
            super().maintain_heartbeats(job, execution)  # its own pipeline, executed (raises if not)
        except BaseException:
            self.beat_recorded(False)  # left queued, a later write would count it as written
            raise
        self.beat_recorded(True)

    def idle_beat(self) -> None:
        """An idle slot's heartbeat: only when its worker key would expire within IDLE_BEAT_MARGIN."""
        if time.monotonic() - self._beat_at >= self._beat_ttl - IDLE_BEAT_MARGIN:
            self.heartbeat()

    def beat_due(self) -> bool:
        """Whether the worker's heartbeat is older than BEAT_EVERY (a job's start beats only then)."""
        return time.monotonic() - self._beat_at >= BEAT_EVERY

    def set_state(self, state, pipeline=None):
        if state == WorkerStatus.SUSPENDED and (self._next is not None or self._next_lost):
            # RQ's suspension wait begins (`rq suspend`): it would hold the job the last END's
            # pop claimed for as long as it lasts. Back in line; a broker away leaves it to the
            # slot's next look (`_next_lost`).
            try:
                self._requeue_own()
            except OUTAGE_ERRORS as e:
                log.warning("slot %s: putting back its next job as it is suspended: %s", self.name, e)
        if pipeline is None and state == self._state:
            return  # unchanged; the heartbeat rewrites it at every wake anyway
        try:
            super().set_state(state, pipeline)
        except OUTAGE_ERRORS:
            if pipeline is not None:
                raise

    def register_death(self):
        try:
            super().register_death()
        except OUTAGE_ERRORS as e:
            log.warning("slot %s: could not record its exit: %s", self.name, e)

    def unsubscribe(self):
        try:
            super().unsubscribe()
        except OUTAGE_ERRORS:
            pass

    def check_for_suspension(self, burst):
        # RQ asks before every job; `rq suspend` taking a second to reach a slot is fine.
        if time.monotonic() - self._suspension_checked < SUSPENSION_CHECK:
            return
        try:
            super().check_for_suspension(burst)
            self._suspension_checked = time.monotonic()
        except OUTAGE_ERRORS:
            pass  # the idle loop waits for the broker

    # ---- maintenance and the scheduler --------------------------------------------------

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=DEFAULT_LOGGING_DATE_FORMAT,
                         log_format=DEFAULT_LOGGING_FORMAT):
        scheduler.start(self, burst, logging_level, date_format, log_format)

    def _revive_scheduler(self) -> None:
        # RQ's scheduler process dies with the broker connection and RQ restarts it only at
        # the next maintenance (10 minutes): retries waiting on a backoff would wait as long.
        proc = getattr(getattr(self, "scheduler", None), "_process", None)
        if proc is None or proc.is_alive() or time.monotonic() < self._scheduler_retry_at:
            return
        self._scheduler_retry_at = time.monotonic() + SCHEDULER_RETRY
        self.scheduler.acquire_locks(auto_start=True)

    def run_maintenance_tasks(self):
        try:
            super().run_maintenance_tasks()
        except OUTAGE_ERRORS as e:
            log.info("slot %s: maintenance skipped, broker unreachable: %s", self.name, e)
        except Exception:  # noqa: BLE001
            # A corrupt or hostile record in a registry would otherwise end the slot at every
            # start: one HSET by any broker writer would keep every node off the queue.
            log.exception("slot %s: registry maintenance failed; trying again next interval", self.name)
            self.last_cleaned_at = rq_now()

    def clean_registries(self):
        """RQ's registry maintenance, minus its sweep of "abandoned" started jobs.

        RQ fails a started job whose heartbeat expired, which is exactly what a broker outage
        looks like for a job that ran on through it. Running jobs are the grid's to reclaim,
        by node liveness (agent/recovery.py).
        """
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                try:
                    for cls in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry):
                        cls(name=queue.name, connection=queue.connection, job_class=queue.job_class,
                            serializer=queue.serializer).cleanup()
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                finally:
                    queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()

    def teardown(self):
        if self._next is not None or self._next_lost:
            self._requeue_at_stop()  # RQ's loop ended before the slot took its next job
        super().teardown()

    # ---- taking a job -------------------------------------------------------------------

    def pop_with_end(self, ended: str, node_queue_only: bool = False) -> tuple[tuple, Any] | None:
        """The pop of this slot's next job, to send in the round trip of its job's END (the
        Performer's `next_pop`; agent/attempt.py `_end_at_once`): the command, and what takes its
        reply. A job it claims is this slot's next (`_pop`); a reply not taken (the END refused,
        sent again or lost) leaves a claim that the slot's next look puts back first. A pop that
        took nothing is not kept: what the slot's end does after its END (placing for its node)
        may queue a job, and the next look pops as it always has. It takes nothing where the END
        left the job's end to RQ's steps, which release its dependents (claim.pop_command). None
        while the slot stops, is orphaned, or already holds such a job. A trivial job's pop cost
        a round trip of its own between two jobs: a third of a busy slot's round trips."""
        if (self._stop_requested or self.performer.cold or self.performer.orphaned.is_set() or self._next is not None
                or self._next_lost or getattr(self.connection, "connection", None) is not None):
            return None  # a single-connection client sends the END alone (agent/lua.py `Lua.then`)
        queue_keys = [q.key for q in self._ordered_queues]
        if node_queue_only:  # behind a hint's PLACE (agent/perform.py `_with_end`)
            node_queue = keys.rq_queue(keys.node_queue(self.node))
            queue_keys = [k for k in queue_keys if k == node_queue]
        command = claim.pop_command(self.node, self.name, queue_keys, ended)

        def settle(reply: Any, _later: bool) -> None:
            if isinstance(reply, redis.exceptions.NoScriptError):
                return  # not run: the next look's own pop loads the script
            self._next_lost = True  # until the reply is read as a pop's
            if reply is None or isinstance(reply, Exception):
                return
            found = claim.popped(reply)
            self.performer.clock.anchor(*found.time)
            self._next_lost = False
            if found.taken is not None or found.draining:
                self._next = found

        return command, settle

    def _requeue_own(self) -> int:
        """Put back in line every job this slot claimed and did not start (claim.requeue_own),
        the one its last END's pop took too; how many. Where the broker fails it, the slot's
        next look tries again (`_next_lost`)."""
        self._next, self._next_lost = None, True
        n = claim.requeue_own(self.connection, self.node, self.name)
        self._next_lost = False
        return n

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        self.set_state("idle")
        failures = 0
        stale_claims = False  # a pop failed after it may have claimed a job
        looked = False  # the last wait's pop took nothing: the next look needs no pop of its own
        while not self._stop_requested:
            fresh, looked = looked, False
            try:
                self.idle_beat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self._revive_scheduler()
                if failures or stale_claims or self._next_lost:
                    stale_claims = False
                    self._requeue_own()  # a pop the outage swallowed
                if self.performer.no_room:
                    held = room.no_room(self.connection, self.node, self.performer.capacity.cpus)
                    if held is not None:
                        self.set_state(f"idle: node full ({held:g} of {self.performer.capacity.cpus:g} CPUs held)")
                        time.sleep(room.ROOM_POLL)
                        continue
                    self.performer.no_room = False
                    self.set_state("idle")
                if self.performer.orphaned.is_set():
                    # The agent went silent (agent/pulse.py): take nothing, and give back what the
                    # node's waits took, before another agent's sweep counts this node lost.
                    if self._next is not None:
                        self._requeue_own()
                    claim.give_back(self.connection, self.node)
                    time.sleep(ORPHAN_POLL)
                    continue
                result = None if fresh else self._pop()
                if result is claim.DRAINING:
                    # A draining node finishes what it runs and takes nothing new (until resumed).
                    if timeout is None:
                        return None
                    time.sleep(DRAIN_POLL)
                    continue
                if result is None and timeout is None:
                    return None  # burst mode: the queues are empty
                if result is None:
                    queues = self._ordered_queues
                    pool = queues[1] if len(queues) > 1 else queues[0]
                    result = self._pop(wait=(pool.key, self.turn_wait()))
                    if result is None:
                        looked = True  # a timed-out wait: the loop's top beats, and waits again
                        continue
                    if result is claim.DRAINING:
                        continue
                    if self.performer.orphaned.is_set():
                        # The agent went silent while the slot waited: the job goes back in line.
                        self._requeue_own()
                        continue
            except _StopWaiting:
                # redis-py dropped the interrupted connection: no reply is left half-read, but the
                # pop behind the wait may have claimed a job whose reply was lost: back in line.
                # What the wait took is in the taking list, which the agent gives back at its exit.
                self._requeue_at_stop()
                break
            except OUTAGE_ERRORS as e:
                if self._stop_requested:
                    failures += 1  # what the failed pop may have claimed goes back as the loop ends
                    break
                if failures == 0:
                    log.warning("slot %s: broker unreachable (%s); waiting for it", self.name, e)
                time.sleep(RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)])
                failures += 1
                continue
            except redis.ResponseError as e:
                if not retyped(e):
                    raise
                self._heal(e)
                stale_claims = True  # a pop that failed after it claimed a job: the claim goes back
                time.sleep(RECONNECT_BACKOFF[0])
                continue
            if failures:
                log.warning("slot %s: broker back; taking jobs again", self.name)
                failures = 0
                self._beat_at = 0.0  # a broker restarted without its data lost the worker's key: beat now
                self._pubsub_down = False
            if result is not None:
                self.reorder_queues(reference_queue=result[1])
                return result
        if failures or stale_claims or self._next is not None or self._next_lost:
            # Stopping after a pop whose reply never came (a stop does not interrupt a plain
            # pop's read, only the wait; a hung broker or a cut link ends it at the socket's
            # timeout), or holding the job its END's pop took: it may have claimed a job, and
            # the loop's next look, which would put it back, never comes.
            self._requeue_at_stop()
        return None  # stop requested: RQ's work loop ends

    def turn_wait(self, now: float | None = None) -> float:
        """Seconds until this slot's next turn to look: the node's slots wake in turn, slot `i` at
        `i` of `slots` parts of a round (on the monotonic clock every process of the machine
        shares), so an idle node looks every DEQUEUE_WAKE s, each look by one slot. A round
        is at most the connection's socket timeout less WAIT_MARGIN (the wait must not trip it).
        A busy slot's turn passes (it looks at its node queue first at its job's end anyway):
        while the last pop found a job held on the node, each idle slot looks every
        DEQUEUE_WAKE s, so the node still looks that often whichever slots are busy (more
        looks only while a job runs; none more on a fully idle node)."""
        timeout = self.connection.connection_pool.connection_kwargs.get("socket_timeout")
        round_ = DEQUEUE_WAKE * self.slots
        if timeout:
            round_ = max(DEQUEUE_WAKE, min(round_, timeout - WAIT_MARGIN))
        if self._node_busy:
            round_ = DEQUEUE_WAKE
        now = time.monotonic() if now is None else now
        wait = (self.slot % self.slots * round_ / self.slots - now) % round_
        return wait if wait >= 0.05 else wait + round_  # 0 would block for good; a turn just passed: the next

    def _pop(self, wait: tuple[str, float] | None = None) -> tuple[Job, Queue] | str | None:
        """(job, queue) claimed from the first non-empty queue of this slot; None if all are
        empty; claim.DRAINING if the node is draining. Sets `taken` and anchors the clock.
        `wait` (pool queue key, seconds): first wait that long for a job to come to the pool
        queue, in the pop's round trip (claim.wait_pop); a stop signal interrupts it."""
        while True:
            queue_keys = [q.key for q in self._ordered_queues]
            popped, self._next = self._next, None
            if popped is not None:
                wait = None  # what the job's END popped (`pop_with_end`), its clock anchored then
            elif wait is None:
                popped = claim.pop(self.connection, self.node, self.name, queue_keys)
                self.performer.clock.anchor(*popped.time)
            else:
                try:
                    self._waiting = True
                    if self._stop_requested:  # a signal that came just before the flag was set
                        raise _StopWaiting
                    popped = claim.wait_pop(self.connection, self.node, self.name, queue_keys, *wait)
                finally:
                    self._waiting = False
                wait = None  # a record found gone: the next look pops at once
                self.performer.clock.anchor(*popped.time)
            if popped.draining:
                return claim.DRAINING
            taken = popped.taken
            if taken is None:
                self._node_busy = popped.held > 0
                return None
            self.taken = taken
            job = restore_job(self.connection, taken.job_id, taken.fields)
            if job is not None:
                queue = self._own_queues.get(taken.queue_key)  # one of this slot's: no new Queue per job
                if queue is None:
                    queue = self.queue_class.from_queue_key(taken.queue_key, connection=self.connection,
                                                            job_class=self.job_class, serializer=self.serializer,
                                                            death_penalty_class=self.death_penalty_class)
                return job, queue
            # The record is gone or unreadable: RQ's own fetch (and GridQueue's refusal).
            result = self.queue_class._fetch_dequeued_job(
                self.connection, taken.queue_key, taken.job_id, job_class=self.job_class, serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
            if result is not None:
                return result
            claim.release(self.connection, self.node, taken.job_id, claim.marker(self.name))  # nothing to start

    def _requeue_at_stop(self) -> None:
        """Put back a job the interrupted wait's pop may have claimed. A broker away now leaves
        the claim to the node's next start (its own reclaim) or another node's sweep."""
        try:
            if n := self._requeue_own():
                log.info("slot %s: stopped while taking %d job(s); back in line", self.name, n)
        except redis.RedisError as e:
            self._next_lost = False  # left to the node's next start or another node's sweep, as said
            log.warning("slot %s: putting back what its last pop claimed: %s", self.name, e)

    # ---- the job ------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue):
        taken = self.taken if self.taken is not None and self.taken.job_id == job.id else None
        try:
            self.performer.perform(job, queue, taken)
        except redis.ResponseError as e:
            if not retyped(e):
                raise
            self._heal(e)
            self._requeue_own()  # claimed, not started: back in line

    def _heal(self, e: redis.ResponseError) -> None:
        """A shared key retyped by a broker writer (agent/outage.py `retyped`): remove it now
        rather than at the daemon's next heartbeat, and go on."""
        log.warning("slot %s: %s; removing retyped shared keys", self.name, e)
        try:
            quarantine.heal(self.connection)
        except redis.RedisError as err:
            log.warning("slot %s: healing the shared keys: %s", self.name, err)
