"""What a verified envelope must still pass on this node before it starts, and the node's
record of each start: the signed bounds (agent/bounds.py) and the replay journal (agent/journal.py).

Neither trusts the broker's word that a job may run here: the queue it sits in, its attempt
counter and its status are all writable by anyone who can write to the broker.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import redis

from agent import bounds
from agent.journal import Journal, Ticket, journal_path
from agent.runner import NODE_FAULT
from gridcore import nodekeys
from gridcore.records import Placement, Result
from gridcore.settings import AgentSettings

log = logging.getLogger("grid.admission")


class Admission:
    """One slot's side of the node's journal, and the bounds checks before it."""

    def __init__(self, conn: redis.Redis, cfg: AgentSettings, journal: Journal | None = None):
        self.conn = conn
        self.cfg = cfg
        self.journal = journal or Journal(journal_path(cfg.node_name))
        # The node's key, made by the daemon at the node's first start.
        self.signer = nodekeys.NodeSigner(cfg.node_name, nodekeys.node_key(cfg.node_name))

    def admit(self, job_id: str, taken_from: str, placement: Placement | None, envelope: dict[str, Any],
              now: float) -> Ticket:
        """Refuse (Refused, AlreadyRunning) what this node may not start now; else journal the start."""
        bounds.check(envelope, self.cfg, taken_from, placement)
        bounds.check_parents(self.conn, envelope)
        return self.journal.admit(envelope, job_id, now)

    def withdraw(self, ticket: Ticket) -> None:
        """The journaled start did not happen after all."""
        try:
            self.journal.withdraw(ticket)
        except sqlite3.Error as e:
            # The row stays and counts as one of the envelope's starts here: safe, and said.
            log.error("replay journal: withdrawing a start that did not happen: %s", e)

    def attest(self, result: Result, job_id: str, envelope: dict[str, Any], number: int, *, final: bool) -> Result:
        """The attempt's end, signed by this node: what operators check before they renew a failure.
        `final`: the job ends with it (a failure that is retried is not how the job ended)."""
        return self.signer.attest(result, job_id, envelope.get("nonce"), number, final=final)

    def attest_refusal(self, result: Result, job_id: str, signed: Any) -> Result:
        """A refusal, signed by this node for the envelope it was shown (verified or not)."""
        return self.signer.attest(result, job_id, nodekeys.claimed_nonce(signed), None, final=True)

    def ended(self, ticket: Ticket, now: float, result: Result, outcome: str | None) -> None:
        """The start ended; one that ran to its end (exit 0, canceled) never starts here again.
        One whose command never ran (NODE_FAULT: the runner stopped before exec) is withdrawn,
        as its broker count was given back with its hand-back (JobAttempt._record_end): the
        journal counts the runs of an envelope here, and this was none."""
        if outcome == NODE_FAULT:
            self.withdraw(ticket)
            return
        final = outcome == "canceled" or (outcome is None and result.exit_code == 0)
        try:
            self.journal.ended(ticket, result.end or now, final)
        except sqlite3.Error as e:
            log.error("replay journal: recording the end of a start: %s", e)
