"""Signed job envelopes: Ed25519 keys in OpenSSH formats, an authorized_keys file per agent.

A job's only argument is `{"envelope": <canonical JSON string>, "sig": <base64>, "kid": <fp>}`.
The signature covers the exact envelope string, so nothing that decides what runs can be
changed by someone who can merely write to the broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
from json.encoder import c_make_encoder, encode_basestring_ascii
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridcore.records import ENVELOPE_VERSIONS_RUN

DOMAIN = b"science-grid job v1\x00"
"""Prefix mixed into every signature so a grid signature can't be replayed as anything else."""


class SigningError(Exception):
    """A key can't be read or made; the message names the file."""


class Refused(Exception):
    """An envelope failed verification; str(exc) is the reason shown to users."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
# The C encoder `json.dumps` makes afresh at every call, made once: a bulk submission signs
# thousands of envelopes, and this was half of the time their text took. No circular check
# (what is signed is a tree of plain values, built here); the same text as `_CANONICAL`.
_C_CANONICAL = (c_make_encoder(None, _CANONICAL.default, encode_basestring_ascii, None, ":", ",", True, False, False)
                if c_make_encoder is not None else None)


def canonical(obj: Any) -> str:
    """The one text of `obj` that is signed: sorted keys, no spaces, ASCII, no NaN."""
    if _C_CANONICAL is None:
        return _CANONICAL.encode(obj)
    return "".join(_C_CANONICAL(obj, 0))


def fingerprint(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def public_line(pub: Ed25519PublicKey, comment: str = "") -> str:
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


def generate_key(path: Path, comment: str) -> Ed25519PrivateKey:
    """Write a new private key (0600) and its .pub beside it; refuse to overwrite."""
    if path.exists():
        raise SigningError(f"{path}: a key already exists (remove it first to make a new one)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    Path(str(path) + ".pub").write_text(public_line(key.public_key(), comment) + "\n")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"{path}: no signing key; make one with `grid keys init`") from None
    except OSError as e:
        raise SigningError(f"{path}: cannot read signing key: {e.strerror}") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as e:
            raise SigningError(f"{path}: not an unencrypted Ed25519 private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key")
    return key


def parse_public_line(line: str) -> tuple[Ed25519PublicKey, str]:
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise ValueError("not an ssh-ed25519 public key line")
    key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key, parts[2] if len(parts) > 2 else ""


@dataclass
class Signer:
    key: Ed25519PrivateKey
    name: str

    @cached_property
    def kid(self) -> str:
        return fingerprint(self.key.public_key())  # once: a bulk submit signs thousands

    def sign(self, envelope: dict[str, Any]) -> dict[str, str]:
        text = canonical(envelope)
        sig = self.key.sign(DOMAIN + text.encode())
        return {"envelope": text, "sig": base64.b64encode(sig).decode(), "kid": self.kid}


class AuthorizedKeys:
    """An OpenSSH-style authorized_keys file; `@revoked` lines mark keys that must be refused."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime: str | None = None  # the content's SHA-256 when last read
        self._keys: dict[str, tuple[Ed25519PublicKey, str]] = {}
        self._revoked: set[str] = set()

    def _load(self) -> None:
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            self._keys, self._revoked, self._mtime = {}, set(), None
            return
        # By content, not mtime: a revocation written within the mtime's granularity, or with
        # the old mtime restored (cp -p, rsync -t), must still take effect at the next job.
        digest = hashlib.sha256(content).hexdigest()
        if self._mtime == digest:
            return
        keys: dict[str, tuple[Ed25519PublicKey, str]] = {}
        revoked: set[str] = set()
        for raw in content.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            is_revoked = line.startswith("@revoked ")
            if is_revoked:
                line = line[len("@revoked ") :]
            try:
                key, comment = parse_public_line(line)
            except ValueError:
                continue  # foreign key types are ignored, as sshd does
            fp = fingerprint(key)
            if is_revoked:
                revoked.add(fp)
            else:
                keys[fp] = (key, comment)
        self._keys, self._revoked, self._mtime = keys, revoked, digest

    def lookup(self, kid: str) -> tuple[Ed25519PublicKey, str]:
        self._load()
        if kid in self._revoked:
            raise Refused(f"signing key {kid} is revoked")
        if kid not in self._keys:
            raise Refused(f"signing key {kid} is not authorized on this node")
        return self._keys[kid]

    def entries(self) -> list[tuple[str, str, bool]]:
        """(fingerprint, comment, revoked) for every key in the file."""
        self._load()
        out = [(fp, c, False) for fp, (_, c) in self._keys.items()]
        out += [(fp, "", True) for fp in self._revoked]
        return out

    def authorize(self, line: str) -> str:
        key, comment = parse_public_line(line.strip())
        fp = fingerprint(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [ln for ln in lines if not _line_matches(ln, fp)]
        kept.append(public_line(key, comment))
        self.path.write_text("\n".join(kept) + "\n")
        return fp

    def revoke(self, fp_or_line: str) -> str:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        target = fp_or_line.strip()
        if target.startswith("ssh-ed25519"):
            target = fingerprint(parse_public_line(target)[0])
        kept, found = [], None
        for ln in lines:
            if _line_matches(ln, target) and not ln.startswith("@revoked"):
                found = ln
            else:
                kept.append(ln)
        if found is None:
            raise SigningError(f"{self.path}: no authorized key {target}")
        kept.append("@revoked " + found)
        self.path.write_text("\n".join(kept) + "\n")
        return target


def _line_matches(line: str, fp: str) -> bool:
    body = line.strip().removeprefix("@revoked ").strip()
    try:
        return fingerprint(parse_public_line(body)[0]) == fp
    except ValueError:
        return False


def verify(signed: Any, keys: AuthorizedKeys) -> tuple[dict[str, Any], str]:
    """Check the signature and shape of a job argument; return (envelope, key comment)."""
    if not isinstance(signed, dict) or set(signed) != {"envelope", "sig", "kid"}:
        raise Refused("job argument is not a signed envelope")
    text, sig, kid = signed["envelope"], signed["sig"], signed["kid"]
    if not all(isinstance(v, str) for v in (text, sig, kid)):
        raise Refused("job argument is not a signed envelope")
    pub, comment = keys.lookup(kid)
    try:
        pub.verify(base64.b64decode(sig, validate=True), DOMAIN + text.encode())
    except (InvalidSignature, ValueError):
        raise Refused("bad signature: the envelope was changed or signed by another key") from None
    try:
        envelope = json.loads(text)
    except ValueError:
        raise Refused("envelope is not JSON") from None
    if not isinstance(envelope, dict):
        raise Refused("envelope is not a JSON object")
    if envelope.get("v") not in ENVELOPE_VERSIONS_RUN or isinstance(envelope.get("v"), bool):
        # Nodes are upgraded one at a time: say which format came and which this node runs.
        runs = ", ".join(f"v{v}" for v in ENVELOPE_VERSIONS_RUN)
        raise Refused(f"envelope format v{str(envelope.get('v'))[:20]} is not one this node runs "
                      f"(it runs {runs}): upgrade grid-agent on this node")
    return envelope, comment
