"""What every `grid` command shares: its options, the settings, the broker (on first need)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from gridcore.client import Grid
    from gridcore.settings import Settings


class State:
    """Options shared by every command; the broker is only contacted when a command needs it."""

    def __init__(self, config: Path | None, redis_url: str | None):
        self.config = config
        self.redis_url = redis_url
        self._settings: Settings | None = None
        self._grid: Grid | None = None

    @property
    def settings(self) -> Settings:
        """The settings from the config file, the environment and --redis-url."""
        if self._settings is None:
            from gridcore.settings import load_settings

            self._settings = load_settings(self.config, overrides={"redis_url": self.redis_url})
        return self._settings

    @property
    def grid(self) -> Grid:
        """The grid, connected (and pinged) on first use."""
        if self._grid is None:
            import redis

            from gridcore.client import Grid
            from gridcore.connection import BrokerError, connect, describe_error, resolve_url

            grid = Grid(connect(self.settings), self.settings)
            try:
                grid.redis.ping()
            except redis.ConnectionError as e:
                from gridcore.localgrid import stopped_hint

                if hint := stopped_hint(self.settings):
                    raise BrokerError(describe_error(e, resolve_url(self.settings)[0]) + hint) from None
                raise
            self._grid = grid
        return self._grid


def shared(ctx: typer.Context) -> State:
    """The shared state of the running command."""
    return ctx.obj


def print_json(data) -> None:
    """Machine-readable output of --json."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
