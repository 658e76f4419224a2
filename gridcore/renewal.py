"""What `requeue` may renew: re-signing is the one way an old envelope runs again, so it is
refused for what a broker writer could have laundered by editing a job's status.

- an envelope signed for another job id is never renewed (a record's envelope swapped in);
- a job the broker says ended with exit code 0 on some attempt is not renewed (a finished job
  set back to `failed`);
- a canceled job is renewed in bulk only if its cancel is signed by a key the operator trusts,
  for this job and envelope (gridcore/cancelproof.py); an unsigned or forged one needs its name;
- an envelope past its expiry is renewed only when the operator named the job: a bulk
  requeue (`--all-failed`, a sweep's cells, the console's `R`) skips it and says why;
- once the operator pins node keys (`known_nodes`), a bulk requeue renews a failed job only if
  its last attempt's failure is signed by a pinned node for this job and envelope: the node
  that ran it or, for a lost one, the node that reclaimed it, and the node it was lost on must
  be pinned too (a failure no node signed, such as one recorded by an older agent, is renewed
  by naming it). The node must have signed it
  as the job's end (`final`): a writer who removes a later attempt (a success) leaves a
  genuine failure that was retried. A signed refusal is renewed only by naming the job: a
  node signs one for whatever copy it is shown, a finished job that a writer put in a queue
  it was not signed for included.

The attempt records read here are the broker's: a writer who also rewrites them is stopped
only by what each node keeps itself (agent/journal.py). See the README's Security section.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridcore import cancelproof, keys, nodekeys
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


def check(conn: redis.Redis, envelope: Envelope, job_id: str, now: float, *, named: bool, failed: bool = False,
          known: Mapping[str, Ed25519PublicKey] | None = None, canceled: cancelproof.Verdict | None = None) -> None:
    """Raise GridError (RenewalSkipped for what only a named requeue renews) if `envelope` must not be renewed.

    `failed`: the job is failed (not canceled); `known`: the operator's pinned node keys. Once
    an operator pins node keys, a bulk requeue renews a failed job only if its last attempt's
    failure was signed by a pinned node, for this job and this envelope. `canceled`: for a
    canceled job, whether its cancel is signed by a key trusted here, for this envelope; a bulk
    requeue renews it only then."""
    if envelope.job_id != job_id:
        raise GridError(f"will not requeue {job_id}: its envelope was signed for job {envelope.job_id}")
    last: Attempt | None = None
    for n, raw in enumerate(conn.lrange(keys.attempts(job_id), 0, -1), start=1):
        last = lenient(Attempt, raw, f"{keys.attempts(job_id)}[{n}]")
        if last is not None and last.exit_code == 0:
            raise GridError(f"will not requeue {job_id}: its attempt {n} on {last.node or 'a node'} ended "
                            "with exit code 0 (it finished; a finished job is not run again)")
    if now > envelope.expires_at:
        days = (now - envelope.expires_at) / DAY
        if not named:
            raise RenewalSkipped(f"skipped {job_id}: its envelope expired {days:.1f} days ago; "
                                 f"name the job to renew it (grid requeue {job_id})")
    if canceled is not None and not canceled.verified and not named:
        raise RenewalSkipped(f"skipped {job_id}: {canceled.note}; name the job to renew it (grid requeue {job_id})")
    if failed and known and not named:
        why = _unsigned_failure(last, known, job_id, envelope.nonce)
        if why:
            raise RenewalSkipped(f"skipped {job_id}: its failure is not signed by a pinned node ({why}); "
                                 f"name the job to renew it (grid requeue {job_id})")


def _unsigned_failure(last: Attempt | None, known: Mapping[str, Ed25519PublicKey], job_id: str,
                      nonce: str) -> str | None:
    """Why the last attempt is not a failure a pinned node signed for this envelope; None if it is."""
    if last is None:
        return "no attempt recorded"
    verdict = nodekeys.check(last.proof, known, job_id)
    if not verdict.pinned:
        return verdict.note
    claim = verdict.claim or {}
    if claim.get("nonce") != nonce:
        return "signed for another envelope of this job"
    if claim.get("exit_code") == 0:
        return "the node signed a success"
    if claim.get("reason_kind") == "refused":  # a writer routes any finished job where a node refuses it
        return (f"node {str(claim.get('by', claim.get('node')))[:100]} signed a refusal, which says only that "
                "the copy it was shown did not run there, not that the job never ran")
    lost_on = claim.get("node")
    if claim.get("reason_kind") == "lost" and not (isinstance(lost_on, str) and lost_on in known):
        # A loss is the reclaiming node's word on what the broker said ran where: a writer can
        # plant any finished job as running on a made-up node that looks long dead.
        return f"it was lost on node {str(lost_on)[:100]}, which is not pinned here"
    if claim.get("reason_kind") == "lost" and claim.get("by", lost_on) == lost_on and claim.get("seen") is not True:
        return f"node {str(lost_on)[:100]} signed the loss without its journal showing that the job started there"
    if claim.get("final") is not True:  # a retry of this envelope followed it: not how the job ended
        return f"the node signed attempt {str(claim.get('attempt'))[:20]} as retried, not as the job's end"
    return None
