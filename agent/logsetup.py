"""The agent's logs: one line per event on stderr, at the level the admin chose.

Under systemd (stderr is the journal, `JOURNAL_STREAM`), each line starts with the syslog
priority (`<4>`), which journald stores as the entry's level, and carries no timestamp
(the journal has its own); elsewhere a line starts with the time. A line about one job
carries `job=<id>` (pass `extra={"job": id}`), so `journalctl -u grid-agent | grep job=ID`
follows a job through the slots.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""Levels `grid-agent --log-level` and `agent.log_level` accept."""

SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
"""Python level -> syslog priority, for journald's `<N>` line prefix."""

QUIET_LOGGERS = ("rq.worker", "rq.job", "rq.scheduler")
"""RQ's loggers: at INFO they print every job's whole envelope; they follow only at DEBUG."""


def to_journal(stream=None) -> bool:
    """True if `stream` (stderr) is connected to the systemd journal."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class LineFormatter(logging.Formatter):
    """`[<prio>|time] who LEVEL logger: [job=ID ]message`; every line of a traceback prefixed alike."""

    def __init__(self, who: str, journal: bool):
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")
        self.who = who
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        job = getattr(record, "job", None)
        head = f"{self.who} {record.levelname} {record.name}: " + (f"job={job} " if job else "")
        text = head + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:
            prio = f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>"
            return "\n".join(prio + line for line in text.splitlines())
        return f"{self.formatTime(record, self.datefmt)} {text}"


def parse_level(name: str) -> int:
    """A level name (any case) as logging's number; ValueError names the accepted ones."""
    upper = name.upper()
    if upper not in LEVELS:
        raise ValueError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    return getattr(logging, upper)


def rq_level(level: str) -> str:
    """The level RQ's own loggers get for the agent's `level`."""
    number = parse_level(level)
    return logging.getLevelName(number if number <= logging.DEBUG else max(number, logging.WARNING))


def configure(level: str, who: str = "grid-agent") -> None:
    """Send every log line to stderr in the agent's format at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(who, to_journal(sys.stderr)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(parse_level(level))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(rq_level(level))
