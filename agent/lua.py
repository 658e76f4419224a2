"""Lua scripts run by their SHA, hashed once per process, on a connection of their own.

redis-py's `register_script` hashes the script's text again at every call site that builds
one; the slot's per-job scripts are several KiB each and run three times per job, so each is
made once here and run on whichever client the caller passes.

And a slot's three scripts per job are most of its round trips: through the client, each
took a connection from the pool and gave it back, past redis-py's per-command wrappers
(deprecation checks, observability hooks), about a tenth of a trivial job's CPU in the slot.
So each thread keeps one connection per pool for its scripts and runs them on it directly,
with the client's retry policy (reconnect and send again once the broker is back), as the
client itself would; except a script that takes a job, once it was sent (`Lua`'s `resend`).
A script may take other commands along in its write (`Lua.then`: a slot's END, the next
cell's PLACE and the pop of its next job), which the broker runs right after it: one round trip
for all.

For long-lived threads only (a slot's loop, the agent daemon's main and recovery threads): a
connection goes back to its pool only when it fails, so a thread that ran a script and ended
would leave its connection open and counted as in use.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

_held = threading.local()  # per thread: the last pool used and its connection, and {pool: connection}


def _forget() -> None:
    vars(_held).clear()  # a forked child must not share its parent's sockets


os.register_at_fork(after_in_child=_forget)


def _connection(pool: Any) -> Any:
    """This thread's own connection of `pool`, taken from it on first use and kept (the pool's
    checkout connects it: for Sentinel, to the primary of the moment)."""
    if getattr(_held, "pool", None) is pool:
        return _held.conn
    conns = getattr(_held, "conns", None)
    if conns is None:
        conns = _held.conns = weakref.WeakKeyDictionary()
    conn = conns.get(pool)
    if conn is None:
        conn = conns[pool] = pool.get_connection()
    _held.pool, _held.conn = pool, conn
    return conn


def _drop(pool: Any, conn: Any) -> None:
    """A failed connection goes back to its pool, closed; the next call takes a fresh one (which
    finds a failed-over primary, as the client's next command would)."""
    conn.disconnect()
    conns = getattr(_held, "conns", None)
    if conns is not None and conns.get(pool) is conn:
        del conns[pool]
    if getattr(_held, "conn", None) is conn:
        _held.pool = _held.conn = None
    pool.release(conn)


def _run(client: redis.Redis, *args: Any, resend: bool = True, meanwhile: Callable[[], None] | None = None) -> Any:
    if getattr(client, "connection", None) is not None:  # a single-connection client: its own
        if meanwhile is not None:
            meanwhile()
        return client.execute_command(*args)
    pending = [meanwhile] if meanwhile is not None else []

    def read(conn: Any) -> Any:
        while pending:  # once, after the first send that went out
            pending.pop()()
        return conn.read_response()

    return _exchange(client, lambda conn: conn.send_command(*args), read, resend)


def _run_all(client: redis.Redis, commands: Sequence[Sequence[Any]], resend: bool = True) -> list[Any]:
    """Each command's reply, all sent in one round trip; an error the broker answered is the
    reply in its place, not raised (the replies after it are read, the connection stays usable)."""
    if getattr(client, "connection", None) is not None:  # a single-connection client: its own
        out = []
        for command in commands:
            try:
                out.append(client.execute_command(*command))
            except ResponseError as e:
                out.append(e)
        return out

    return _exchange(client, lambda conn: conn.send_packed_command(conn.pack_commands(commands)),
                     lambda conn: _replies(conn, len(commands)), resend)


def _replies(conn: Any, n: int) -> list[Any]:
    """`n` replies read off `conn`, an error the broker answered kept in its reply's place: every
    reply is read, so the connection stays in step with what was sent."""
    out = []
    for _ in range(n):
        try:
            out.append(conn.read_response())
        except ResponseError as e:
            out.append(e)
    return out


def _exchange(client: redis.Redis, send: Callable[[Any], None], read: Callable[[Any], Any], resend: bool) -> Any:
    """`send` then `read` on this thread's connection of the client's pool, under its retry policy."""
    pool = client.connection_pool
    conn: Any = None
    sent = False

    def once() -> Any:
        nonlocal conn, sent
        sent = False
        conn = _connection(pool)
        send(conn)
        sent = True
        return read(conn)

    def failed(error: Exception | None) -> None:
        nonlocal conn
        if conn is not None:
            _drop(pool, conn)
            conn = None
        if error is not None and sent and not resend:
            raise error  # it may have run: not again (`Lua`'s `resend`)

    try:
        return _retry(client).call_with_retry(once, failed)
    except ResponseError:
        raise  # the broker answered: the connection is fine
    except BaseException:
        failed(None)  # a reply may be left half-read
        raise


def _retry(client: redis.Redis) -> Any:
    """The client's retry policy (redis-py keeps it on its connections, and on the client)."""
    retry = client.get_retry() if hasattr(client, "get_retry") else None
    return retry if retry is not None else Retry(NoBackoff(), 0)


class Lua:
    """One script: `script(client, keys, args)` runs it by SHA, loading it first where the
    broker does not know it (a restarted or flushed broker, a failover).

    `resend=False`: a script whose reply was lost once it was sent (a broker restart, a cut
    link) is not sent again under the client's retry policy: it may have run, and a second run
    would not answer as the first (a pop takes the next job, a start finds the job started by
    itself), leaving the first run's job with no slot that knows it. The error goes to the
    caller, whose outage path knows what such a script may have left. A send that failed is
    sent again: the script did not run."""

    __slots__ = ("text", "sha", "resend")

    def __init__(self, text: str, resend: bool = True):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.resend = resend

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any],
                 meanwhile: Callable[[], None] | None = None) -> Any:
        """The script's reply; `meanwhile` is called once, while the broker runs it (after it
        was sent, before its reply is read)."""
        try:
            return _run(client, "EVALSHA", self.sha, len(keys), *keys, *args, resend=self.resend, meanwhile=meanwhile)
        except NoScriptError:
            _run(client, "SCRIPT", "LOAD", self.text)
            return _run(client, "EVALSHA", self.sha, len(keys), *keys, *args, resend=self.resend)

    def after(self, client: redis.Redis, command: Sequence[Any], keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, Any]:
        """`command`'s reply and the script's, the script sent right behind it in the same round
        trip: behind a blocking command, the broker runs it as soon as that one is answered (it
        reads nothing more from a blocked client). Each reply, or the error the broker answered
        in its place. A script the broker does not know did not run: it is loaded and run alone."""
        first, reply = _run_all(client, [command, ("EVALSHA", self.sha, len(keys), *keys, *args)], resend=self.resend)
        if isinstance(reply, NoScriptError):
            try:
                reply = self(client, keys, args)
            except ResponseError as e:
                reply = e
        return first, reply

    def then(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any],
             after: Sequence[Sequence[Any]]) -> tuple[Any, list[Any] | None]:
        """The script's reply, and the replies of the commands `after`, sent in the same write: the
        broker runs them in order right after this script (each atomic on its own; each sees what
        those before it wrote), one round trip for all. Each of the others' replies is the error
        the broker answered in its place; the list is None where they are not this try's: `after`
        goes with the first send only (a send again after a lost connection, or after the broker
        did not know the script, sends the script alone: `after` then ran before it, and must be
        safe on its own), and a single-connection client sends the script alone."""
        if getattr(client, "connection", None) is not None:
            return self(client, keys, args), None
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        pending = [list(after)]
        sent = [0]

        def send(conn: Any) -> None:
            others = pending.pop() if pending else []
            sent[0] = len(others)
            conn.send_packed_command(conn.pack_commands([command, *others]))

        first, *others = _exchange(client, send, lambda conn: _replies(conn, 1 + sent[0]), self.resend)
        if isinstance(first, NoScriptError):
            _run(client, "SCRIPT", "LOAD", self.text)
            return _run(client, "EVALSHA", self.sha, len(keys), *keys, *args, resend=self.resend), None
        if isinstance(first, ResponseError):
            raise first
        return first, others if sent[0] else None
