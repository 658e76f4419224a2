"""The broker the console talks to, and where to look for it again after a failed poll.

A local grid (no broker URL configured: the one `grid up` runs) may come back on another port
with another password after `grid down; grid up`, so its state file is read again after every
failure and a new address is followed at once; retries stay a couple of seconds apart. Any
other broker is retried on fresh connections, so its host name is resolved again each time.
"""

from __future__ import annotations

from collections.abc import Callable

from gridcore.client import Grid
from gridcore.connection import BrokerError, connect, redact, resolve_url
from gridcore.settings import Settings

BACKOFF_MAX = 30.0
"""Longest wait between reconnect attempts to a configured broker."""

LOCAL_BACKOFF_MAX = 2.0
"""Longest wait between reconnect attempts to the local grid (restarted in seconds, on this machine)."""


class Link:
    """Holds the current `Grid`; `failed()` after a broker failure looks for the broker again."""

    def __init__(self, settings: Settings, grid: Grid, make_grid: Callable[[Settings], Grid] | None = None):
        self.settings = settings
        self.grid = grid
        self.local = not settings.redis_url
        self._make = make_grid or (lambda s: Grid(connect(s), s))
        self.target = self._resolve()

    def _resolve(self) -> tuple[str, str | None] | None:
        try:
            return resolve_url(self.settings)
        except BrokerError:
            return None  # no local grid right now

    @property
    def url(self) -> str:
        """The broker tried last, password hidden."""
        return redact(self.target[0] if self.target else self.settings.redis_url) or "the local grid"

    @property
    def backoff_max(self) -> float:
        return LOCAL_BACKOFF_MAX if self.local else BACKOFF_MAX

    def hint(self) -> str:
        """What to add to a failure's message: how to start the local grid, when it is stopped."""
        from gridcore.localgrid import stopped_hint

        return stopped_hint(self.settings)

    def failed(self) -> None:
        """A poll failed: drop the connections, and follow a local grid that moved."""
        try:
            self.grid.redis.connection_pool.disconnect()
        except Exception:  # noqa: BLE001 - a pool already broken is what we are replacing
            pass
        if not self.local:
            return
        target = self._resolve()
        if target is not None and target != self.target:
            self.target = target
            self.grid = self._make(self.settings)
