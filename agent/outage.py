"""Riding out broker outages: which errors mean "the broker is away", retry with backoff, and
a broker clock that keeps ticking (estimated) while the broker cannot be asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from agent import claim
from gridcore import clock

log = logging.getLogger("grid.outage")

BROKER_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # refused, reset, closed; includes BusyLoadingError (loading the AOF)
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a failed-over primary that is now a replica
)
"""Errors that mean the broker is unreachable for now, not that a request was wrong."""

RETRY_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Seconds between attempts to reach the broker again, by attempt (the last one repeats)."""

T = TypeVar("T")


class GaveUp(Exception):
    """`until_broker` stopped retrying because its caller said to give up."""


def until_broker(fn: Callable[[], T], what: str, give_up: Callable[[], bool] | None = None) -> T:
    """Call `fn` until it gets through to the broker; it must be safe to repeat."""
    attempt = 0
    down_since: float | None = None
    while True:
        try:
            out = fn()
        except BROKER_ERRORS as e:
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s: broker unreachable (%s); retrying until it is back", what, e)
            if give_up is not None and give_up():
                raise GaveUp(f"{what}: gave up after {time.monotonic() - down_since:.0f}s without the broker") from e
            time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
            attempt += 1
            continue
        if down_since is not None:
            log.warning("%s: done after the broker was away %.1fs", what, time.monotonic() - down_since)
        return out


class BrokerClock(clock.BrokerClock):
    """The grid's clock (gridcore/clock.py) that keeps ticking while the broker is away.

    An estimate (local clock plus the last known offset) is better than failing a job's
    start or end record because the broker was restarting at that moment.
    """

    def now(self) -> float:
        try:
            return super().now()
        except BROKER_ERRORS:
            with self._lock:
                return time.time() + (self.offset or 0.0)


DEQUEUE_WAKE = 1
"""Seconds an idle slot blocks in BLPOP before it looks at stop requests and heartbeats again."""

SUSPENSION_CHECK = 1.0
"""Seconds between a slot's looks at RQ's suspend flag."""

DRAIN_POLL = 1.0
"""Seconds between looks at the drain flag while the node is draining."""

RECONNECT_BACKOFF = (0.25, 0.5, 1.0, 2.0, 5.0)
"""Seconds between an idle slot's attempts to reach the broker again (the last one repeats)."""

SCHEDULER_RETRY = 5.0
"""Seconds between attempts to restart RQ's scheduler process after it died with the broker."""


class OutageTolerantLoop:
    """Mixin for the slot's RQ worker: an idle loop and maintenance that wait for the broker
    instead of quitting on a connection error (stock RQ leaves the loop on most of them).

    Jobs are taken with agent/claim.py (pop and claim in one step), never with RQ's BLPOP,
    whose popped job is lost if the reply is (broker restart) or the slot dies before it
    records the job. The idle loop wakes every DEQUEUE_WAKE seconds, so stop signals only
    set flags and never interrupt a dequeue.
    """

    dequeue_timeout = DEQUEUE_WAKE  # shadows RQ's property (worker_ttl - 15 seconds)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        self.set_state("idle")
        failures = 0
        while not self._stop_requested:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self._revive_scheduler()
                if failures:
                    claim.requeue_own(self)  # a pop whose reply the outage swallowed
                result = claim.pop(self)  # pop and claim in one step
                if result is claim.DRAINING:
                    # A draining node finishes what it runs and takes nothing new (until resumed).
                    if timeout is None:
                        return None
                    time.sleep(DRAIN_POLL)
                    continue
                if result is None and timeout is None:
                    return None  # burst mode: the queues are empty
                if result is None:
                    claim.wait(self, DEQUEUE_WAKE)
                    result = claim.pop(self)
                    if result is claim.DRAINING:
                        continue
            except BROKER_ERRORS as e:
                if failures == 0:
                    log.warning("slot %s: broker unreachable (%s); waiting for it", self.name, e)
                time.sleep(RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)])
                failures += 1
                continue
            if failures:
                log.warning("slot %s: broker back; taking jobs again", self.name)
                failures = 0
                self._pubsub_down = False
            if result is not None:
                self.reorder_queues(reference_queue=result[1])
                return result
        return None  # stop requested: RQ's work loop ends

    def _revive_scheduler(self) -> None:
        # RQ's scheduler process dies with the broker connection and RQ restarts it only at
        # the next maintenance (10 minutes): retries waiting on a backoff would wait as long.
        proc = getattr(getattr(self, "scheduler", None), "_process", None)
        if proc is None or proc.is_alive() or time.monotonic() < getattr(self, "_scheduler_retry_at", 0.0):
            return
        self._scheduler_retry_at = time.monotonic() + SCHEDULER_RETRY
        self.scheduler.acquire_locks(auto_start=True)

    def _pubsub_exception_handler(self, exc, pubsub, pubsub_thread):
        # RQ's handler logs every 2 s for as long as the broker is away; once is enough.
        if isinstance(exc, redis.ConnectionError):
            if not getattr(self, "_pubsub_down", False):
                self._pubsub_down = True
                log.info("slot %s: command channel lost (%s); resubscribing when the broker is back", self.name, exc)
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def check_for_suspension(self, burst):
        # RQ asks before every job; `rq suspend` taking a second to reach a slot is fine.
        if time.monotonic() - getattr(self, "_suspension_checked", 0.0) < SUSPENSION_CHECK:
            return
        try:
            super().check_for_suspension(burst)
            self._suspension_checked = time.monotonic()
        except BROKER_ERRORS:
            pass  # the idle loop waits for the broker

    def run_maintenance_tasks(self):
        try:
            super().run_maintenance_tasks()
        except BROKER_ERRORS as e:
            log.info("slot %s: maintenance skipped, broker unreachable: %s", self.name, e)

    def clean_registries(self):
        """RQ's registry maintenance, minus its sweep of "abandoned" started jobs.

        RQ fails a started job whose heartbeat expired, which is exactly what a broker outage
        looks like for a job that ran on through it. Running jobs are the grid's to reclaim,
        by node liveness (agent/recovery.py).
        """
        from rq import worker_registration
        from rq.utils import now

        from agent.recovery import clean_rq_registries

        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                try:
                    clean_rq_registries(queue)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                finally:
                    queue.release_maintenance_lock()
        self.last_cleaned_at = now()

    def set_state(self, state, pipeline=None):
        try:
            super().set_state(state, pipeline)
        except BROKER_ERRORS:
            if pipeline is not None:
                raise

    def register_death(self):
        try:
            super().register_death()
        except BROKER_ERRORS as e:
            log.warning("slot %s: could not record its exit: %s", self.name, e)

    def unsubscribe(self):
        try:
            super().unsubscribe()
        except BROKER_ERRORS:
            pass
