"""The grid's clock: the broker's `TIME`, read as seldom as a round trip per timestamp allows.

Every timestamp the grid compares across machines comes from the broker. A `TIME` reading
anchors the clock; for a few seconds after it, now() is that reading plus the elapsed
monotonic time, which is still the broker's clock (a monotonic clock does not jump and
drifts by microseconds over seconds), without asking the broker again. Readings that come
with other replies (the slot's pop script returns TIME) anchor it too.
"""

from __future__ import annotations

import threading
import time

import redis

ANCHOR_AGE = 5.0
"""Seconds a broker TIME reading serves as the clock's anchor before TIME is asked again."""


class BrokerClock:
    def __init__(self, conn: redis.Redis, anchor_age: float = ANCHOR_AGE):
        self.conn = conn
        self.anchor_age = anchor_age
        self.offset: float | None = None  # broker time - local wall clock, at the last reading
        self._anchor: tuple[float, float] | None = None  # (broker time, local monotonic time)
        self._lock = threading.Lock()

    def anchor(self, sec: int, usec: int) -> float:
        """Take a broker TIME reply read elsewhere as the current broker time; return it."""
        t = sec + usec / 1e6
        with self._lock:
            self._anchor = (t, time.monotonic())
            self.offset = t - time.time()
        return t

    def estimate(self) -> float | None:
        """Broker time from the anchor, or None when there is none recent enough."""
        anchor = self._anchor
        if anchor is not None:
            elapsed = time.monotonic() - anchor[1]
            if elapsed < self.anchor_age:
                return anchor[0] + elapsed
        return None

    def now(self) -> float:
        t = self.estimate()
        if t is not None:
            return t
        sec, usec = self.conn.time()
        return self.anchor(sec, usec)
