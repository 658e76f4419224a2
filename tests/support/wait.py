"""The suite's one polling loop: wait for a condition, fail saying what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Message = str | Callable[[], str]
"""What was awaited; a callable is asked at the timeout (to show the state then)."""


def _timed_out(timeout: float, message: Message, error: BaseException | None) -> AssertionError:
    what = message() if callable(message) else message
    why = f" (last error: {error!r})" if error is not None else ""
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}{why}")


def eventually(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
               message: Message = "the condition", *, tolerate: tuple[type[BaseException], ...] = ()) -> T:
    """Call `predicate` until it returns something truthy and return that; errors of the
    `tolerate` types count as "not yet"; after `timeout` seconds fail naming `message`."""
    deadline = time.monotonic() + timeout
    error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except tolerate as e:
            error = e
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message, error)
        time.sleep(interval)


async def eventually_async(predicate: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.1,
                           message: Message = "the condition") -> T:
    """`eventually` for a coroutine predicate (a Pilot test that must let the app run between tries)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message, None)
        await asyncio.sleep(interval)
