"""Changing what the grid does: cancel, requeue, drain and resume nodes, fail a job's dependents."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import CanceledJobRegistry

from gridcore import cancelproof, dependencies, events, keys, nodekeys, renewal, reservations, secretenv
from gridcore.cancel import cancel_jobs
from gridcore.clock import BrokerClock
from gridcore.errors import GridError, JobNotFound
from gridcore.models import JobState
from gridcore.priority import reposition
from gridcore.reads import Reads
from gridcore.boundedjob import BoundedJob
from gridcore.records import ENVELOPE_VERSION, CorruptRecord, Envelope, JobMeta, NodeRecord
from gridcore.settings import Settings
from gridcore.signedview import TrustedKeys
from gridcore.signing import AuthorizedKeys, Refused, Signer, verify
from gridcore.submission import SERIALIZER



class Control:
    """The operator's writes on one grid."""

    def __init__(self, conn: redis.Redis, settings: Settings, clock: BrokerClock, signer: Callable[[], Signer],
                 reads: Reads):
        self.redis = conn
        self.settings = settings
        self.clock = clock
        self._signer = signer
        self.reads = reads

    def _rq_job(self, job_id: str) -> RQJob:
        try:
            return BoundedJob.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            raise JobNotFound(f"no job {job_id!r} on this grid") from None
        except CorruptRecord as e:
            raise GridError(str(e)) from None
        except ValueError:  # RQ refuses to load a record under an id it would never make: planted
            raise GridError(f"will not requeue {job_id[:200]!r}: not an id this grid makes") from None

    # ---- jobs ---------------------------------------------------------------------------

    def cancel(self, job_id: str, wait: float = 15.0) -> JobState:
        """Cancel a queued, waiting, scheduled or running job; return the state it reached.

        A running job is killed (whole process tree) by its agent; this waits up to `wait`
        seconds for the agent to confirm by moving the job to `canceled`.
        """
        return self.cancel_many([job_id], wait=wait)[job_id]

    def cancel_many(self, job_ids: Sequence[str], wait: float = 15.0) -> dict[str, JobState]:
        """Cancel jobs: every one not started yet in one atomic step (none of them starts after
        it), then the running ones stopped at once; the state each reached (gridcore/cancel.py).
        Each cancel is signed with this operator's key, or unsigned without one (gridcore/cancelproof.py)."""
        return cancel_jobs(self.redis, self.clock, self.settings.result_ttl, job_ids, wait=wait, signer=self._signer)

    def fail_dependents(self, job_id: str, now: float) -> list[str]:
        """Mark every job that needs `job_id` to succeed as failed ('dependency failed')."""
        return dependencies.fail_dependents(self.redis, job_id, now, self.settings.result_ttl)

    def requeue(self, job_id: str, named: bool = False) -> Envelope:
        """Run a failed or canceled job again: its envelope is re-signed by this submitter; return it.

        `named`: the operator named this job (not a bulk requeue): an expired envelope may be renewed."""
        state = self.reads.state(job_id)
        if state not in (JobState.FAILED, JobState.CANCELED):
            raise GridError(f"job {job_id} is {state.value}; only failed or canceled jobs can be requeued")
        job = self._rq_job(job_id)
        if job.func_name != keys.RUNNER_FUNC or not job.args:
            raise GridError(f"job {job_id} is not a grid job")
        signer = self._signer()
        now = self.clock.now()
        stored = self._verified_envelope(job.args[0], job_id)
        renewal.check(self.redis, stored, job_id, now, named=named, failed=state is JobState.FAILED,
                      known=nodekeys.KnownNodes().entries(), canceled=self._cancel_verdict(job_id, stored)
                      if state is JobState.CANCELED else None)
        try:  # its env values, still as signed, sealed again for the renewed envelope
            public, sealed = secretenv.renewed(self.redis, stored.model_dump(mode="json"), job_id)
        except Refused as e:
            raise GridError(f"will not requeue {job_id}: {e}") from None
        envelope = stored.model_copy(update={
            "issued_at": now, "expires_at": now + self.settings.envelope_ttl, "nonce": secrets.token_hex(16),
            "submitter": signer.name, "v": ENVELOPE_VERSION, "env": public,
            "env_names": list(sealed.names) if sealed else [], "env_digest": sealed.digest if sealed else None,
        })
        try:
            meta = JobMeta.decode(self.redis.hget(keys.rq_job(job_id), "meta"), f"{keys.rq_job(job_id)} meta")
        except CorruptRecord as e:
            raise GridError(f"will not requeue {job_id}: {e}") from None
        job.args = (signer.sign(envelope.model_dump(mode="json")),)
        job.meta = meta.model_copy(update={"reason": None, "run": None, "requeued_by": signer.name}).model_dump(
            mode="json", exclude_none=True)
        registry = (job.failed_job_registry if state is JobState.FAILED
                    else CanceledJobRegistry(job.origin, connection=self.redis, serializer=SERIALIZER))
        with self.redis.pipeline() as pipe:
            job.save(pipeline=pipe)
            pipe.delete(keys.result(job_id), keys.output(job_id), keys.cancel(job_id))
            if sealed is not None:
                pipe.set(keys.secret_env(job_id), sealed.text,
                         ex=secretenv.lifetime(self.settings.envelope_ttl, self.settings.result_ttl))
            events.emit(pipe, now, "requeued", job=job_id, message=f"by {signer.name}")
            pipe.execute()
        try:
            registry.requeue(job_id)
        except InvalidJobOperation as e:
            raise GridError(f"cannot requeue {job_id}: {e}") from None
        reposition(self.redis, [job_id])  # RQ put it at the back: where its priority says
        return envelope

    def _cancel_verdict(self, job_id: str, envelope: Envelope) -> cancelproof.Verdict:
        """Whether the job's cancel is signed, for `envelope`, by a key trusted here: the
        authorized_keys file, or this operator's own."""
        trusted = TrustedKeys(self.settings.authorized_keys_path, self.settings.public_key_path)
        return cancelproof.check(cancelproof.stored(self.redis, job_id), job_id, envelope.nonce, trusted)

    def _verified_envelope(self, signed: Any, job_id: str) -> Envelope:
        # Re-signing what the broker holds would launder a tampered command: verify first,
        # against the authorized keys here and this submitter's own key.
        ak = AuthorizedKeys(self.settings.authorized_keys_path)
        signer = self._signer()
        try:
            envelope, _ = verify(signed, ak)
        except Refused as first:
            if not (isinstance(signed, dict) and signed.get("kid") == signer.kid):
                raise GridError(f"will not requeue: cannot verify the stored envelope ({first})") from None
            try:
                envelope, _ = verify(signed, _OwnKey(signer))
            except Refused as e:
                raise GridError(f"will not requeue: stored envelope fails verification ({e})") from None
        try:
            return Envelope.from_dict(envelope, f"{keys.rq_job(job_id)} envelope")
        except CorruptRecord as e:
            raise GridError(f"will not requeue: {e}") from None

    # ---- nodes --------------------------------------------------------------------------

    def drain(self, node: str, reason: str = "") -> None:
        """Stop a node taking new jobs; what it runs finishes."""
        self._set_drain(node, True, reason or "drained by operator", "node_draining")

    def resume(self, node: str) -> None:
        """Let a drained node take jobs again."""
        self._set_drain(node, False, "taking jobs again", "node_resumed")

    def _set_drain(self, node: str, draining: bool, message: str, event: str) -> None:
        if not self.redis.exists(keys.node(node)):
            raise GridError(f"no node {node!r} on this grid")
        now = self.clock.now()
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.node(node), mapping=NodeRecord.drain_fields(draining, message))
            if not draining:  # a node back in service may take waiting jobs now
                # No reason left behind: a node that drains itself later writes its own only
                # where none is (agent/attempt.py), so an operator's drain keeps the operator's.
                pipe.hdel(keys.node(node), "drain_reason")
                reservations.wake(pipe, node)
            events.emit(pipe, now, event, node=node, message=message)
            pipe.execute()


class _OwnKey(AuthorizedKeys):
    """Authorized-keys view holding only the submitter's own public key."""

    def __init__(self, signer: Signer):
        self._signer = signer

    def lookup(self, kid: str):
        if kid != self._signer.kid:
            raise Refused(f"signing key {kid} is not this submitter's")
        return self._signer.key.public_key(), self._signer.name
