"""RQ's scheduler, run by one slot of each node, with the grid's priority order.

RQ's scheduler puts a job whose time has come (a retry whose backoff is over) at the back of
its queue with a plain RQ queue. This one then moves each such job to where its priority
puts it (gridcore/priority.py), which for the usual job, already in place, is a look at the
queue's tail.

RQ's loop renews its locks and reads every scheduled registry (twice, with the read ahead
below) at every one-second tick: about fifteen commands a second on an idle node. This one looks
in one round trip at the first entry of each registry, does RQ's work only when one is due, and
renews its locks (which live `interval + 60` s) every LOCK_RENEW seconds. Between two looks it
waits, a tick at least, until the earliest scheduled job is due or something happens on the grid:
a job is scheduled (a retry with a backoff) only at an attempt's end, which writes the grid's
event stream, so the scheduler blocks on that stream instead of looking every second (on an
idle node its looks were most of its process's and a good part of the broker's idle CPU). A
busy grid's events wake it at every tick, as before; IDLE_WAIT bounds the wait whatever happens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

import redis
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

from agent.outage import OUTAGE_ERRORS
from gridcore import keys
from gridcore.priority import reposition

log = logging.getLogger("grid.scheduler")

PR_SET_PDEATHSIG = 1
LOCK_RENEW = 30.0
"""Seconds between renewals of the scheduler's locks and record (RQ renews them every tick; they
live `interval + 60` s)."""
IDLE_WAIT = 30.0
"""Seconds at most between two looks at the scheduled registries when no event comes and no job
is due sooner: a job scheduled without an event (none is, today) waits at most this long."""


READ_MARGIN = 2.0
"""Seconds a blocking read of the event stream ends before the connection's socket timeout."""


class _StopWaiting(Exception):
    """Raised by the stop signal's handler into the scheduler's wait for an event, only there."""


class GridScheduler(RQScheduler):
    _waiting = False  # in the wait for an event: the stop signal interrupts it
    _last_event: str | None = None  # the grid's newest event at the last look at the registries

    def request_stop(self, signum=None, frame=None):
        """RQ's handler sets a flag that its loop reads each tick; the wait is longer than a tick,
        and the slot's exit waits for this process (RQ joins it)."""
        self._stop_requested = True
        if self._waiting:
            raise _StopWaiting


    def work(self):
        """RQ's loop, riding out a broker outage (a restart, a Sentinel failover) instead of
        dying of it: RQ starts a dead scheduler again only at its next maintenance, up to ten
        minutes later, and every retry's backoff would wait that long."""
        self._install_signal_handlers()
        _die_with_slot()
        born, down_since = False, None
        renew_at = 0.0
        while not self._stop_requested:
            try:
                if not born:
                    self.register_birth()
                    born = True
                if self.should_reacquire_locks:
                    self.acquire_locks()
                # A tick early: the wait below ends a tick before the renewal is due, and the look
                # that follows it renews too (else the renewal took a look of its own a tick later).
                if time.monotonic() >= renew_at - self.interval:
                    self.heartbeat()
                    renew_at = time.monotonic() + LOCK_RENEW
                due, next_at = self._due()
                if due:
                    self.enqueue_scheduled_jobs()
                if down_since is not None:
                    log.warning("scheduler: broker back after %.1fs", time.monotonic() - down_since)
                    down_since = None
                    renew_at = 0.0  # a restarted broker may have lost the locks: renew them now
                time.sleep(self.interval)
                until = IDLE_WAIT if next_at is None else next_at - current_timestamp()
                until = min(until, IDLE_WAIT, renew_at - time.monotonic()) - self.interval
                if until > 0 and not self._stop_requested:
                    self._wait_for_event(until)
            except _StopWaiting:
                break  # redis-py dropped the interrupted connection: no reply is left half-read
            except OUTAGE_ERRORS as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("scheduler: broker unreachable (%s); retrying", e)
                time.sleep(self.interval)
        try:
            self.stop()
        except OUTAGE_ERRORS as e:  # its locks expire by themselves; RQ would log a traceback
            log.info("scheduler: stopped without the broker (%s)", e)

    def _due(self) -> tuple[bool, float | None]:
        """Whether a job of this scheduler's registries is due within the next tick, and when the
        earliest one is due (None: none is scheduled), in one round trip. The grid's newest event
        is read first in it: the wait that follows reads only what comes after this look."""
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        horizon = current_timestamp() + max(1, int(self.interval))
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.EVENTS, count=1)
            for registry in self._scheduled_job_registries:
                pipe.zrange(registry.key, 0, 0, withscores=True)
            newest, *entries = pipe.execute(raise_on_error=False)
        if not isinstance(newest, Exception):  # a writer's key of another type: healed by the agent
            self._last_event = newest[0][0].decode() if newest else "0-0"
        for e in entries:
            if isinstance(e, Exception):
                raise e
        firsts = [found[0][1] for found in entries if found]
        return any(at <= horizon for at in firsts), min(firsts, default=None)

    def _wait_for_event(self, seconds: float) -> None:
        """Block until the grid's event stream has an event after the last one seen, or for
        `seconds`; a stream the broker cannot read (retyped) is waited out as a plain sleep."""
        # RQ gives the slot's connection, and so this one, a socket timeout (its dequeue timeout
        # + 10 s): each read blocks for less than that.
        timeout = self.connection.connection_pool.connection_kwargs.get("socket_timeout")
        longest = max(1.0, timeout - READ_MARGIN) if timeout else seconds
        deadline = time.monotonic() + seconds
        self._waiting = True
        try:
            while not self._stop_requested:  # a signal that came just before the flag was set
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                got = self.connection.xread({keys.EVENTS: self._last_event or "0-0"}, count=1,
                                            block=max(1, int(min(left, longest) * 1000)))
                if got:
                    self._last_event = got[0][1][-1][0].decode()
                    return
        except redis.ResponseError:
            time.sleep(min(seconds, self.interval))
        finally:
            self._waiting = False

    def enqueue_scheduled_jobs(self):
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        # Read a scheduling interval ahead: whatever RQ's own read, a moment later, finds due
        # is in this list (a job that is not due yet is still scheduled and left alone).
        horizon = current_timestamp() + max(1, int(self.interval))
        due = [job_id for registry in self._scheduled_job_registries
               for job_id in registry.get_jobs_to_schedule(horizon)]
        super().enqueue_scheduled_jobs()
        if due:
            reposition(self.connection, due)


def _die_with_slot() -> None:
    """RQ forks the scheduler from its slot, and a fork does not inherit the slot's death
    signal: without this, a slot killed outright (SIGKILL, OOM) leaves its scheduler running."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the scheduler's own stop signal
    except OSError:
        return  # not Linux: the node's next agent reaps it (agent/daemon.py)
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the slot died before the signal was set


def start(worker, burst: bool, logging_level, date_format: str, log_format: str) -> None:
    """RQ's Worker._start_scheduler with this scheduler class (RQ names its own there)."""
    worker.scheduler = GridScheduler(
        worker.queues, connection=worker.connection,
        logging_level=logging_level if logging_level is not None else worker.log.level,
        date_format=date_format, log_format=log_format, serializer=worker.serializer,
    )
    worker.scheduler.acquire_locks()
    if not worker.scheduler.acquired_locks:
        return
    if not burst:
        worker.scheduler.start()
        return
    try:
        worker.scheduler.register_birth()
        worker.scheduler.enqueue_scheduled_jobs()
    finally:
        worker.scheduler.release_locks()
        worker.scheduler.register_death()
