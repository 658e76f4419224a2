"""Riding out broker outages: which errors mean "the broker is away", retry with backoff, and
a clock that keeps ticking (estimated) while the broker cannot be asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis._parsers.base import BaseParser

from gridcore import clock

log = logging.getLogger("grid.outage")


class WritesRefused(redis.ResponseError):
    """MISCONF: the broker refuses writes because its last save to disk failed."""


# redis-py raises a plain ResponseError for MISCONF; its parser maps error codes to classes,
# so registering one lets every `except OUTAGE_ERRORS` of the agent see it as an outage.
BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", WritesRefused)

OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # refused, reset, closed; includes BusyLoadingError (loading the AOF)
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a failed-over primary that is now a replica
    redis.exceptions.OutOfMemoryError,  # maxmemory reached under noeviction: writes refused
    WritesRefused,
)
"""Errors that mean the broker cannot do the request for now (it is away, or refuses every
write), not that the request was wrong: retry later, and never count the write as done."""

RETYPED_PATIENCE = 15.0
"""Seconds `until_broker` keeps retrying a write that met a retyped shared key (`retyped`): the
daemon's next heartbeat removes such a key (gridcore/quarantine.py heal); a per-job key of the
wrong type is no outage, and after that long the error is the caller's."""


def retyped(e: BaseException) -> bool:
    """A command met a shared key spoiled by a broker writer (any agent may write them): of another
    type than the grid keeps there (WRONGTYPE), or a stream whose ids are used up (an XADD with
    the largest id); not the broker refusing writes. The daemon's heal removes both."""
    return isinstance(e, redis.ResponseError) and ("WRONGTYPE" in str(e) or "exhausted the last possible ID" in str(e))


RETRY_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Seconds between attempts to reach the broker again, by attempt (the last one repeats)."""

T = TypeVar("T")


class GaveUp(Exception):
    """`until_broker` stopped retrying because its caller said to give up."""


def until_broker(fn: Callable[[], T], what: str, give_up: Callable[[], bool] | None = None) -> T:
    """Call `fn` until it gets through to the broker; it must be safe to repeat."""
    attempt = 0
    down_since: float | None = None
    retyped_since: float | None = None
    while True:
        try:
            out = fn()
        except OUTAGE_ERRORS as e:
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s: broker unreachable (%s); retrying until it is back", what, e)
            if give_up is not None and give_up():
                raise GaveUp(f"{what}: gave up after {time.monotonic() - down_since:.0f}s without the broker") from e
            time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
            attempt += 1
            continue
        except redis.ResponseError as e:
            if not retyped(e):
                raise
            if retyped_since is None:
                retyped_since = time.monotonic()
                log.warning("%s: %s; retrying until the key is healed", what, e)
            if time.monotonic() - retyped_since > RETYPED_PATIENCE or (give_up is not None and give_up()):
                raise
            time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
            attempt += 1
            continue
        if down_since is not None:
            log.warning("%s: done after the broker was away %.1fs", what, time.monotonic() - down_since)
        return out


class OutageClock(clock.BrokerClock):
    """The grid's clock (gridcore/clock.py) that keeps ticking while the broker is away.

    An estimate (local clock plus the last known offset) is better than failing a job's
    start or end record because the broker was restarting at that moment.
    """

    def now(self) -> float:
        try:
            return super().now()
        except OUTAGE_ERRORS:
            with self._lock:
                return time.time() + (self.offset or 0.0)
