"""What `requeue` may renew: re-signing is the one way an old envelope runs again, so it is
refused for what a broker writer could have laundered by editing a job's status.

- an envelope signed for another job id is never renewed (a record's envelope swapped in);
- a job the broker says ended with exit code 0 on some attempt is not renewed (a finished job
  set back to `failed`);
- an envelope past its expiry is renewed only when the operator named the job: a bulk
  requeue (`--all-failed`, a sweep's cells, the console's `R`) skips it and says why.

The attempt records read here are the broker's: a writer who also rewrites them is stopped
only by what each node keeps itself (agent/journal.py). See the README's Security section.
"""

from __future__ import annotations

import shlex

import redis

from gridcore import keys
from gridcore.errors import GridError
from gridcore.records import Attempt, Envelope, lenient

DAY = 24 * 3600.0


class RenewalSkipped(GridError):
    """A bulk requeue leaves this job alone; naming the job renews it (the message says so)."""


def signed_command(envelope: Envelope) -> str:
    """The command an envelope runs, as one shell line."""
    if envelope.argv is not None:
        return shlex.join(envelope.argv)
    return envelope.command or ""


def check(conn: redis.Redis, envelope: Envelope, job_id: str, now: float, *, named: bool) -> None:
    """Raise GridError (RenewalSkipped for a bulk requeue of an expired one) if `envelope` must not be renewed."""
    if envelope.job_id != job_id:
        raise GridError(f"will not requeue {job_id}: its envelope was signed for job {envelope.job_id}")
    for n, raw in enumerate(conn.lrange(keys.attempts(job_id), 0, -1), start=1):
        attempt = lenient(Attempt, raw, f"{keys.attempts(job_id)}[{n}]")
        if attempt is not None and attempt.exit_code == 0:
            raise GridError(f"will not requeue {job_id}: its attempt {n} on {attempt.node or 'a node'} ended "
                            "with exit code 0 (it finished; a finished job is not run again)")
    if now > envelope.expires_at:
        days = (now - envelope.expires_at) / DAY
        if not named:
            raise RenewalSkipped(f"skipped {job_id}: its envelope expired {days:.1f} days ago; "
                                 f"name the job to renew it (grid requeue {job_id})")
