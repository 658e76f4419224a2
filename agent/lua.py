"""Lua scripts run by their SHA, hashed once per process, on a connection of their own.

redis-py's `register_script` hashes the script's text again at every call site that builds
one; the slot's per-job scripts are several KiB each and run three times per job, so each is
made once here and run on whichever client the caller passes.

And a slot's three scripts per job are most of its round trips: through the client, each
took a connection from the pool and gave it back, past redis-py's per-command wrappers
(deprecation checks, observability hooks), about a tenth of a trivial job's CPU in the slot.
So each thread keeps one connection per pool for its scripts and runs them on it directly,
with the client's retry policy (reconnect and send again once the broker is back), as the
client itself would.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

_held = threading.local()  # per thread: {pool: (pid, connection)}


def _connection(client: redis.Redis) -> Any:
    """This thread's own connection of `client`'s pool (made on first use, and again in a
    forked child, which must not share its parent's socket)."""
    held = getattr(_held, "conns", None)
    if held is None:
        held = _held.conns = weakref.WeakKeyDictionary()
    pool = client.connection_pool
    entry = held.get(pool)
    if entry is None or entry[0] != os.getpid():
        entry = held[pool] = (os.getpid(), pool.make_connection())
    return entry[1]


def _run(client: redis.Redis, *args: Any) -> Any:
    if getattr(client, "connection", None) is not None:  # a single-connection client: its own
        return client.execute_command(*args)
    conn = _connection(client)

    def once() -> Any:
        conn.send_command(*args)
        return conn.read_response()

    try:
        return conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
    except ResponseError:
        raise  # the broker answered: the connection is fine
    except BaseException:
        conn.disconnect()  # a reply may be left half-read: the next call reconnects
        raise


class Lua:
    """One script: `script(client, keys, args)` runs it by SHA, loading it first where the
    broker does not know it (a restarted or flushed broker, a failover)."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return _run(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            _run(client, "SCRIPT", "LOAD", self.text)
            return _run(client, "EVALSHA", self.sha, len(keys), *keys, *args)
