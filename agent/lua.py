"""Lua scripts run by their SHA, hashed once per process.

redis-py's `register_script` hashes the script's text again at every call site that builds
one; the slot's per-job scripts are several KiB each and run three times per job, so each is
made once here and run on whichever connection the caller passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError


class Lua:
    """One script: `script(conn, keys, args)` runs it by SHA, loading it first where the
    broker does not know it (a restarted or flushed broker, a failover)."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, conn: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            conn.script_load(self.text)
            return conn.evalsha(self.sha, len(keys), *keys, *args)
