"""The agent's pulse: how its slots tell a live agent from a frozen one.

A node's liveness, as every other agent sees it, is its agent's heartbeat. An agent that is
stopped (`kill -STOP`) or hung in its main loop (an NVML call that never returns) stops
heartbeating while its slots live on: other agents' node-loss sweeps then reclaim every job
those slots run, and a job lost twice fails "node lost". So the agent stamps a pulse after
every heartbeat that got through, in memory its slots share (a memfd they inherit), and a
slot that finds the pulse stale while it can itself reach the broker stops taking work and
hands back what it runs, before the node timeout makes it a node loss.

A slot that cannot reach the broker either is in a broker outage or a network cut: no one
reclaims its jobs meanwhile (outage) or the job is already lost (cut), so it rides on.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger("grid.pulse")

ORPHANED = "orphaned"
"""A running job's stop reason when its agent stopped heartbeating: handed back, not failed."""
WATCH_SHARE = 20
"""A slot looks at its agent's pulse this many times per silence limit (a read of 8 bytes of
shared memory) once the pulse is late (older than half the limit): the limit is half the node
timeout, so a look every few hundred ms answers within a few percent of it. While the pulse is
fresh, the next look is when it would turn late, unless stamped again meanwhile (the agent
stamps it four times per limit): a look every few seconds, not several a second, on every
slot of every node, most of their idle wakes."""
WATCH_EVERY = (0.05, 1.0)
"""The shortest and the longest seconds between two looks."""
PING_TIMEOUT = 1.0
"""Seconds a slot waits on the broker's answer when it checks that it can reach it."""
_FMT = "d"


def silence_limit(heartbeat_interval: float, node_timeout: float) -> float:
    """Seconds without a pulse after which a slot counts its agent as gone: half the node
    timeout (so its jobs are handed back before any sweep can reclaim them), and at least a
    heartbeat interval and a second (a heartbeat may be late by that much on a busy node)."""
    return max(node_timeout / 2, heartbeat_interval + 1.0)


class Pulse:
    """The agent's side: a memfd its slots inherit, stamped with the monotonic clock
    (one clock for every process of the machine)."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("grid-agent-pulse", 0)
        else:  # not Linux: an unlinked temporary file is as good (the slots inherit its descriptor)
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the agent
            self.fd = self._file.fileno()
        os.ftruncate(self.fd, struct.calcsize(_FMT))
        self.stamp()

    def stamp(self) -> None:
        os.pwrite(self.fd, struct.pack(_FMT, time.monotonic()), 0)


class PulseWatch(threading.Thread):
    """A slot's side: a thread that marks the slot orphaned while its agent's pulse is older
    than `limit` and the broker answers this slot; `on_orphaned` is called once each time
    that begins (to hand back the running job)."""

    def __init__(self, fd: int, limit: float, conn: redis.Redis, on_orphaned: Callable[[], None]):
        super().__init__(name="agent-pulse", daemon=True)
        self.fd = fd
        self.limit = limit
        self.conn = conn
        self.on_orphaned = on_orphaned
        self.orphaned = threading.Event()
        self.reachable_since: float | None = None
        self.every = min(WATCH_EVERY[1], max(WATCH_EVERY[0], limit / WATCH_SHARE))

    def age(self) -> float:
        (stamped,) = struct.unpack(_FMT, os.pread(self.fd, struct.calcsize(_FMT), 0))
        return time.monotonic() - stamped

    def _reachable_for(self) -> float:
        """Seconds this slot has reached the broker without a break (0 if it cannot now)."""
        try:
            self.conn.ping()
        except redis.RedisError:
            self.reachable_since = None
            return 0.0
        now = time.monotonic()
        if self.reachable_since is None:
            self.reachable_since = now
        return now - self.reachable_since

    def check(self) -> bool:
        """Whether the agent counts as gone now (updates `orphaned`)."""
        age = self.age()
        if age <= self.limit / 2:
            self.reachable_since = None
            if self.orphaned.is_set():
                log.warning("the agent's pulse is back; taking jobs again")
                self.orphaned.clear()
            return False
        # Late: the agent is frozen, or it waits on a broker this slot cannot reach either (a
        # hung broker, a cut link). The broker must have answered this slot for half the limit
        # (from when the pulse was half late), so a broker that just came back gives the
        # agent's blocked call time to return.
        reachable = self._reachable_for()
        if age <= self.limit or reachable < self.limit / 2:
            return self.orphaned.is_set()
        if not self.orphaned.is_set():
            log.error("the agent has not heartbeat for %.1fs while the broker answers: taking no jobs, "
                      "handing back the running one", age)
            self.orphaned.set()
            self.on_orphaned()
        return True

    def next_look(self) -> float:
        """Seconds until the next look: `every` once the pulse is late (or this slot orphaned),
        else until it would turn late (its age past half the limit), if not stamped meanwhile."""
        if self.orphaned.is_set():
            return self.every
        until_late = self.limit / 2 - self.age()
        # Just past the turn: the first late look comes no later than with a look every `every`.
        return until_late + WATCH_EVERY[0] if until_late > self.every else self.every

    def run(self) -> None:
        while True:
            wait = self.every
            try:
                self.check()
                wait = self.next_look()
            except Exception:  # noqa: BLE001 - the watch must outlive a bad moment; it is logged
                log.exception("checking the agent's pulse failed")
            time.sleep(wait)
