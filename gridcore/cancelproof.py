"""A cancel, signed by the operator who asked for it: what lets `requeue` renew a canceled job in bulk.

Anyone who can write to the broker can set a finished job's status to `canceled`. So `grid
cancel` (and `Grid.cancel`, `cancel_many`, the console) signs a statement — job id, the nonce
of the envelope it cancels, broker time, the operator's key id — with the operator's key and
stores it as the job's cancel flag (`grid:cancel:<id>`), which lives as long as the canceled
job's record. A client with no key writes the plain flag "1": an unsigned cancel, shown as such.
`requeue` renews a canceled job without its being named only when the statement verifies
against a key the renewing operator trusts (authorized_keys, or its own) for this job and this
envelope.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import redis
from cryptography.exceptions import InvalidSignature

from gridcore import keys
from gridcore.records import CancelProof, CorruptRecord
from gridcore.signing import AuthorizedKeys, Refused, Signer, canonical

DOMAIN = b"science-grid cancel v1\x00"
"""Prefix of every cancel statement signed: it can never pass for an envelope's or a node's claim."""

UNSIGNED = "1"
"""The cancel flag of a cancel from a client without a signing key."""


def sign(signer: Signer, job_id: str, nonce: str | None, at: float) -> CancelProof:
    """The operator's statement that it canceled `job_id`'s envelope `nonce` at broker time `at`."""
    statement = canonical({"v": 1, "job_id": job_id, "nonce": nonce, "at": at, "kid": signer.kid})
    sig = signer.key.sign(DOMAIN + statement.encode())
    return CancelProof(statement=statement, sig=base64.b64encode(sig).decode(), kid=signer.kid)


def flag(proof: CancelProof | None) -> str:
    """The value of the job's cancel flag."""
    return proof.encode() if proof is not None else UNSIGNED


def stored(conn: redis.Redis, job_id: str) -> bytes | None:
    """The job's cancel flag as stored; None when there is none, or a broker writer left a key of
    another type there (read as no record: a bulk requeue skips the job, a named one renews it)."""
    try:
        return conn.get(keys.cancel(job_id))
    except redis.ResponseError:
        return None


@dataclass(frozen=True)
class Verdict:
    """Whether a job's cancel flag is a statement a trusted key signed for this job and envelope."""

    verified: bool
    note: str


def check(raw: bytes | None, job_id: str, nonce: str | None, trusted: AuthorizedKeys) -> Verdict:
    """What the cancel flag `raw` shows, checked against `trusted` (a lookup by key id)."""
    if raw is None:
        return Verdict(False, "no cancel record")
    if raw == UNSIGNED.encode():
        return Verdict(False, "the cancel is not signed (its client had no key)")
    try:
        proof = CancelProof.decode(raw, "cancel")
        statement: Any = json.loads(proof.statement)
    except (CorruptRecord, ValueError):
        return Verdict(False, "the cancel record is unreadable")
    if not isinstance(statement, dict) or statement.get("job_id") != job_id:
        return Verdict(False, "the cancel was signed for another job")
    if statement.get("kid") != proof.kid:
        return Verdict(False, "the cancel names another key than the one that signed it")
    try:
        pub, comment = trusted.lookup(proof.kid)
        pub.verify(base64.b64decode(proof.sig, validate=True), DOMAIN + proof.statement.encode())
    except Refused as e:
        return Verdict(False, f"the cancel is signed by a key not trusted here ({e})")
    except (InvalidSignature, ValueError):
        return Verdict(False, "the cancel's signature does not verify")
    if nonce is None or statement.get("nonce") != nonce:
        return Verdict(False, "the cancel was signed for another envelope of this job")
    return Verdict(True, f"canceled by {comment or proof.kid} (signature verified)")
