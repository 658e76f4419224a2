"""A job's env values, kept where the viewer role cannot read them.

People put tokens in `env`, and the viewer ACL user reads every `grid:*` and `rq:*` key, the
RQ job hash (and the signed envelope in it) included. So a v2 envelope signs only the names of
the variables and a digest of their values; the values live in `gridsecret:env:<job id>`
(records.SecretEnv), which the operator and agent ACL users read and the viewer's cannot. The
digest covers a random salt stored with the values, so the envelope does not let its readers
test a guess. A node reads the values, checks the signed digest and names, and refuses the job
if they are missing or differ. A sweep cell's GRID_SWEEP_* variables stay in the envelope:
they are its parameters, public in its meta anyway, and listings check them against it.

The key lives as long as the job's record: written with the envelope (envelope and result
lifetime), brought down to the result's lifetime at the job's end, renewed by a requeue.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from gridcore import keys
from gridcore.records import CorruptRecord, SecretEnv
from gridcore.signing import Refused

PUBLIC_PREFIX = "GRID_SWEEP_"
"""Variables that stay in the envelope: a sweep cell's values (descriptors/sweep.py), not secrets."""

MAX_NAMES = 1024
"""Variables a job may set (records.Envelope's bound), and the most names shown."""

DIGEST = "sha256:"
"""Prefix of the digest an envelope signs."""


@dataclass(frozen=True)
class Sealed:
    """The sealed part of a job's env: the exact text stored, its digest and its names."""

    text: str
    digest: str
    names: tuple[str, ...]


def split(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what stays in the envelope, what is sealed)."""
    public = {k: v for k, v in env.items() if k.startswith(PUBLIC_PREFIX)}
    return public, {k: v for k, v in env.items() if k not in public}


def digest(text: str) -> str:
    return DIGEST + hashlib.sha256(text.encode()).hexdigest()


def seal(env: Mapping[str, str]) -> Sealed | None:
    """The sealed values of `env`'s secret part; None when it has none (no key is written)."""
    hidden = split(env)[1]
    if not hidden:
        return None
    text = SecretEnv(salt=secrets.token_hex(16), env=hidden).encode()
    return Sealed(text, digest(text), tuple(sorted(hidden)))


def names(envelope: Mapping[str, Any]) -> list[str]:
    """Every variable an envelope sets (inline or sealed), by name; values are not read."""
    env, sealed = envelope.get("env"), envelope.get("env_names")
    out = [k[:256] for k in env if isinstance(k, str)] if isinstance(env, dict) else []
    out += [k[:256] for k in sealed if isinstance(k, str)] if isinstance(sealed, list) else []
    return sorted(set(out))[:MAX_NAMES]


def lifetime(envelope_ttl: int, result_ttl: int) -> int:
    """Seconds a new (or renewed) job's values are kept: it may wait until its envelope expires,
    then its record stays for the result's lifetime."""
    return envelope_ttl + result_ttl


def unseal(envelope: Mapping[str, Any], raw: bytes | None, job_id: str) -> dict[str, str]:
    """The job's whole env (inline and sealed) once its sealed values match what was signed;
    raises Refused, with the reason, when they are missing or differ."""
    inline = envelope.get("env") or {}
    wanted, signed = envelope.get("env_names"), envelope.get("env_digest")
    if wanted in (None, []) and signed is None:
        return dict(inline)  # nothing sealed (a v1 envelope keeps its values inline)
    if not (isinstance(wanted, list) and all(isinstance(n, str) for n in wanted) and isinstance(signed, str)):
        raise Refused("envelope has malformed sealed env names or digest")
    key = keys.secret_env(job_id)
    if raw is None:
        raise Refused(f"its env values are missing ({key} is gone): submit the job again")
    if len(raw) > SecretEnv.MAX_BYTES:
        raise Refused(f"its env values ({key}) are {len(raw)} bytes, more than a job's env may have")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = ""
    if not secrets.compare_digest(digest(text), signed):
        raise Refused(f"its env values ({key}) are not the ones signed: changed after it was submitted")
    try:
        sealed = SecretEnv.decode(raw, key)
    except CorruptRecord as e:
        raise Refused(str(e)) from None
    if sorted(sealed.env) != sorted(wanted):
        raise Refused(f"its env values ({key}) are not the variables signed")
    return {**inline, **sealed.env}


def read(conn: Any, envelope: Mapping[str, Any], job_id: str) -> dict[str, str]:
    """unseal() on the values in the broker; one GET, and none for a job with nothing sealed."""
    if envelope.get("env_names") in (None, []) and envelope.get("env_digest") is None:
        return unseal(envelope, None, job_id)
    return unseal(envelope, _stored(conn, job_id), job_id)


def _stored(conn: Any, job_id: str) -> bytes | None:
    key = keys.secret_env(job_id)
    try:
        return conn.get(key)
    except redis.ResponseError as e:  # a key of another type, or an ACL user without the pattern
        raise Refused(f"cannot read its env values ({key}): {str(e)[:200]}") from None


def renewed(conn: Any, envelope: Mapping[str, Any], job_id: str) -> tuple[dict[str, str], Sealed | None]:
    """What a requeue's new envelope carries: (its inline env, its sealed values, written again
    for the new envelope's lifetime). Stored values must still match what was signed (Refused if
    not); a v1 envelope's inline values are sealed now."""
    if envelope.get("env_digest") is None:
        whole = unseal(envelope, None, job_id)
        return split(whole)[0], seal(whole)
    raw = _stored(conn, job_id)
    whole = unseal(envelope, raw, job_id)
    return split(whole)[0], Sealed(raw.decode(), str(envelope["env_digest"]), tuple(sorted(envelope["env_names"])))
