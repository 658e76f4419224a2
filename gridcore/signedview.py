"""What was signed, as the people watching the grid see it: the command of a job's envelope,
verified here against the keys this machine trusts.

A job's `meta` (its name, command preview and sweep parameters) is written unsigned next to the
envelope, and anyone who can write to the broker can change it: listings that believed it
would show one command while the nodes run another. So `grid ls`, `grid show`, the console
and the sweep grid show the envelope's command, say whether its signature verified here (the
authorized_keys file, then this user's own public key), and flag a meta that disagrees.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridcore import cancelproof, keys, nodekeys, secretenv
from gridcore.records import AttemptProof, CorruptRecord, SignedEnvelope
from gridcore.signing import AuthorizedKeys, Refused, fingerprint, parse_public_line, verify

MAX_DATA = SignedEnvelope.MAX_BYTES + 64 * 1024
"""Bytes of a job's payload read, decompressed: more is not an envelope."""
MAX_STORED = MAX_DATA + MAX_DATA // 65535 * 5 + 64
"""Bytes of a job's payload read as stored: MAX_DATA stored uncompressed (zlib level 0, as
gridcore/rqjob.py writes it) is that plus 5 bytes per 64 KiB block and the stream's header."""

CACHE = 4096
"""Payloads whose reading is remembered (a console poll reads the same page every second)."""

PREVIEW = 2000
"""Characters of the command a job's meta keeps (gridcore/submission.py's COMMAND_PREVIEW)."""

SWEEP_ENV = "GRID_SWEEP_"
"""Prefix of a sweep cell's signed variables (descriptors/sweep.py writes them)."""


@dataclass(frozen=True)
class Signed:
    """What a job's payload says was signed: its command and environment, and whether it verified."""

    command: str | None  # None: no readable envelope
    signature: str  # "verified: <key comment>", or "NOT verified: <why>"
    env: dict[str, str] = field(default_factory=dict)  # the values inline (a sweep's): never sealed ones
    env_names: tuple[str, ...] = ()  # every variable it sets, inline or sealed (gridcore/secretenv.py)
    nonce: str | None = None  # the verified envelope's (a cancel statement names it)

    @property
    def verified(self) -> bool:
        return self.signature.startswith("verified")


class TrustedKeys(AuthorizedKeys):
    """The authorized_keys file, then this user's own public key (a submitter trusts its own)."""

    def __init__(self, authorized: Path, own_pub: Path):
        super().__init__(authorized)
        self.own_pub = own_pub

    def lookup(self, kid: str) -> tuple[Ed25519PublicKey, str]:
        try:
            return super().lookup(kid)
        except Refused as e:
            if "revoked" in str(e):
                raise
            try:
                key, comment = parse_public_line(self.own_pub.read_text().strip())
            except (OSError, ValueError):
                raise e from None
            if fingerprint(key) != kid:
                raise Refused(f"signing key {kid} is neither authorized here nor yours") from None
            return key, comment


def _payload(data: bytes) -> Any:
    """RQ's stored payload (zlib of JSON [func, instance, args, kwargs]), bounded before and after."""
    if len(data) > MAX_STORED:
        raise ValueError(f"{len(data)} bytes")
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data, MAX_DATA)
    if inflater.unconsumed_tail:
        raise ValueError(f"more than {MAX_DATA} bytes uncompressed")
    return json.loads(raw)


class EnvelopeReader:
    """Reads and verifies the envelopes of jobs, remembering recent answers."""

    def __init__(self, authorized: Path, own_pub: Path, known_nodes: nodekeys.KnownNodes | None = None):
        self.keys = TrustedKeys(authorized, own_pub)
        self.known_nodes = known_nodes or nodekeys.KnownNodes()
        self._seen: dict[bytes, Signed] = {}

    def attempts(self, job_id: str, attempts: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        """Each attempt with `signed` (whether a pinned node signed it, for this job) and `trust` (pinned,
        unpinned, unsigned or bad) in place of its proof."""
        if not attempts:
            return attempts
        known = self.known_nodes.entries()
        out = []
        for a in attempts:
            a = dict(a)
            raw = a.pop("proof", None)
            try:
                proof = AttemptProof.from_dict(raw, f"{keys.attempts(job_id)} proof") if raw is not None else None
            except CorruptRecord:
                a["trust"], a["signed"] = "bad", "its node signature is unreadable"
            else:
                checked = nodekeys.check(proof, known, job_id)
                a["trust"], a["signed"] = checked.trust, checked.note
            out.append(a)
        return tuple(out)

    def read(self, data: bytes | Exception | None) -> Signed:
        """What `data` (RQ's payload field, or the error reading it) says was signed."""
        if isinstance(data, Exception):
            return Signed(None, f"NOT verified: the payload could not be read ({str(data)[:80]})")
        if not data:
            return Signed(None, "NOT verified: the job has no payload")
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in self._seen:
            return self._seen[digest]
        signed = self._read(data)
        if len(self._seen) >= CACHE:
            self._seen.clear()
        self._seen[digest] = signed
        return signed

    def _read(self, data: bytes) -> Signed:
        try:
            payload = _payload(data)
        except (ValueError, zlib.error) as e:
            return Signed(None, f"NOT verified: the payload is unreadable ({str(e)[:80]})")
        if not (isinstance(payload, list) and len(payload) == 4 and payload[0] == keys.RUNNER_FUNC
                and isinstance(payload[2], list) and len(payload[2]) == 1):
            return Signed(None, "NOT verified: the job is not a grid runner job with one signed envelope")
        signed = payload[2][0]
        try:
            envelope, signer = verify(signed, self.keys)
            signature = f"verified: {signer}" if signer else "verified"
        except (Refused, OSError) as e:
            # Still say what it would run: the nodes check its signature themselves.
            signature = f"NOT verified: {e}" if isinstance(e, Refused) else f"NOT verified: cannot read keys ({e})"
            envelope = _unverified(signed)
        nonce = envelope.get("nonce") if signature.startswith("verified") else None
        return Signed(_command(envelope), signature, _env(envelope), tuple(secretenv.names(envelope)),
                      nonce if isinstance(nonce, str) else None)

    def canceled(self, job_id: str, flag: bytes | None, signed: Signed | None) -> str:
        """Whether the job's cancel was signed by a key trusted here, for its envelope (a line)."""
        verdict = cancelproof.check(flag, job_id, signed.nonce if signed is not None else None, self.keys)
        return verdict.note if verdict.verified else f"NOT verified: {verdict.note}"


def payload_nonce(data: bytes | None) -> str | None:
    """The nonce the envelope in RQ's payload names, unverified; None when none can be read."""
    try:
        payload = _payload(data) if data else None
    except (ValueError, zlib.error):
        return None
    if not (isinstance(payload, list) and len(payload) == 4 and isinstance(payload[2], list) and len(payload[2]) == 1):
        return None
    return nodekeys.claimed_nonce(payload[2][0])


def _unverified(signed: Any) -> dict[str, Any]:
    """The envelope's text as written, whatever else the argument holds (nothing: {})."""
    text = signed.get("envelope") if isinstance(signed, dict) else None
    if not isinstance(text, str):
        return {}
    try:
        envelope = json.loads(text)
    except ValueError:
        return {}
    return envelope if isinstance(envelope, dict) else {}


def _command(envelope: dict[str, Any]) -> str | None:
    argv, command = envelope.get("argv"), envelope.get("command")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return shlex.join(argv)
    return command if isinstance(command, str) else None


def _env(envelope: dict[str, Any]) -> dict[str, str]:
    env = envelope.get("env")
    return {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(env, dict) else {}


def sweep_value(value: Any) -> str:
    """A sweep parameter as its GRID_SWEEP_* variable holds it (descriptors/sweep.py's render)."""
    return value if isinstance(value, str) else json.dumps(value)


def signed_params(signed: Signed, params: dict[str, Any]) -> dict[str, Any]:
    """The sweep values whose signed variable says otherwise than the meta, as signed."""
    out = {}
    for name, value in params.items():
        var = SWEEP_ENV + str(name).upper()
        if not str(name).startswith("_") and var in signed.env and sweep_value(value) != signed.env[var]:
            out[name] = signed.env[var]
    return out


def disagreements(job_id: str, signed: Signed, meta_command: str, params: dict[str, Any]) -> list[str]:
    """Where the job's unsigned meta says something else than its envelope: one problem line each."""
    where = f"{keys.rq_job(job_id)} meta"
    out = []
    if signed.command is not None and meta_command and meta_command != signed.command[:PREVIEW]:
        out.append(f"{where}: command {meta_command[:80]!r} is not the signed command; the signed one is shown")
    for name, value in signed_params(signed, params).items():
        out.append(f"{where}: params.{str(name)[:40]} {sweep_value(params[name])[:40]!r} is not the signed value "
                   f"{value[:40]!r}; the signed one is shown")
    return out
