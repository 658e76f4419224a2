"""The agent's main loop sleeps until it has something to do: its next due time, or a signal.

An idle node's agent used to go round ten times a second to see whether a slot had died; that
was most of its idle CPU. Now the loop blocks on a pipe that the interpreter writes a byte to
whenever a signal with a Python handler arrives (`signal.set_wakeup_fd`): SIGCHLD (a slot
exited, so the agent restarts or reaps it at once), SIGTERM and SIGINT (stop). Everything else
the loop does has a time (the heartbeat, the pulse, a slot's restart, the stop deadline).
"""

from __future__ import annotations

import os
import select
import signal


class Wakeup:
    """The self-pipe of the main thread; `wait(timeout)` returns early when a signal came."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A Python-level handler is what makes the interpreter write to the wakeup fd; the
        # handler itself has nothing to do (the loop looks at its slots when it wakes).
        signal.signal(signal.SIGCHLD, _nothing)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def wait(self, timeout: float) -> None:
        """Block for up to `timeout` seconds, less if a signal arrives (or arrived since the last wait)."""
        ready, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self._r, 512):
                    pass
            except BlockingIOError:
                pass  # drained

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._r)
        os.close(self._w)


def _nothing(signum, frame) -> None:
    """SIGCHLD's handler: the wakeup byte is the message."""
