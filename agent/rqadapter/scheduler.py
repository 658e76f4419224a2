"""RQ's scheduler, run by one slot of each node, with the grid's priority order.

RQ's scheduler puts a job whose time has come (a retry whose backoff is over) at the back of
its queue with a plain RQ queue. This one then moves each such job to where its priority
puts it (gridcore/priority.py), which for the usual job, already in place, is a look at the
queue's tail.

RQ's loop renews its locks and reads every scheduled registry (twice, with the read ahead
below) at every one-second tick: about fifteen commands a second on an idle node. This one looks once a tick, in one round trip, at the first
entry of each registry, does RQ's work only when one is due, and renews its locks (which live
`interval + 60` s) every LOCK_RENEW seconds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

from agent.outage import OUTAGE_ERRORS
from gridcore.priority import reposition

log = logging.getLogger("grid.scheduler")

PR_SET_PDEATHSIG = 1
LOCK_RENEW = 15.0
"""Seconds between renewals of the scheduler's locks and record (RQ renews them every tick)."""


class GridScheduler(RQScheduler):
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
                if time.monotonic() >= renew_at:
                    self.heartbeat()
                    renew_at = time.monotonic() + LOCK_RENEW
                if self._due():
                    self.enqueue_scheduled_jobs()
                if down_since is not None:
                    log.warning("scheduler: broker back after %.1fs", time.monotonic() - down_since)
                    down_since = None
                    renew_at = 0.0  # a restarted broker may have lost the locks: renew them now
            except OUTAGE_ERRORS as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("scheduler: broker unreachable (%s); retrying", e)
            time.sleep(self.interval)
        try:
            self.stop()
        except OUTAGE_ERRORS as e:  # its locks expire by themselves; RQ would log a traceback
            log.info("scheduler: stopped without the broker (%s)", e)

    def _due(self) -> bool:
        """Whether a job of this scheduler's registries is due within the next tick (one round trip)."""
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        if not self._scheduled_job_registries:
            return False
        horizon = current_timestamp() + max(1, int(self.interval))
        with self.connection.pipeline(transaction=False) as pipe:
            for registry in self._scheduled_job_registries:
                pipe.zrangebyscore(registry.key, 0, horizon, start=0, num=1)
            return any(pipe.execute())

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
