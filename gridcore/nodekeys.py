"""Trust from nodes to operators, like SSH host keys: each node's own Ed25519 key, pinned by operators.

Nodes already trust operator keys (authorized_keys). In the other direction, each node makes
its own key at its first start (`<data dir>/nodes/<node>/node_ed25519`, 0600), publishes the
public half in the broker (`grid:node:<node>:key`), and signs what it records about each
attempt it ran or refused: job id, envelope nonce, attempt number, start, end, exit code,
signal, reason, and whether the attempt ended the job (`final`: no attempt of this envelope
follows it, so a failure signed without it was retried and is not how the job ended). A node
that reclaims a dead node's job signs its "lost" record, naming the
dead node (`node`) and itself (`by`).

The broker copy of a node key is only a suggestion: an operator pins it in `known_nodes`
(`<config dir>/known_nodes`, one `<node> ssh-ed25519 AAAA... comment` line each), after
comparing its fingerprint (`grid keys nodes`, `grid keys pin NODE [--fingerprint FP]`), as
`ssh` asks on first contact. From then on a record signed by a key other than the pinned one,
or not signed at all, is shown as such and never counts as that node's word.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridcore import keys
from gridcore.records import AttemptProof, Result
from gridcore.settings import config_dir, data_dir
from gridcore.signing import SigningError, canonical, fingerprint, generate_key, load_private_key, parse_public_line, public_line

DOMAIN = b"science-grid attempt v1\x00"
"""Prefix of every attempt claim a node signs: its signature can never pass for a job envelope's."""

CLAIM_VERSION = 1


def node_key_path(node: str) -> Path:
    return data_dir() / "nodes" / node / "node_ed25519"


def known_nodes_path() -> Path:
    return config_dir() / "known_nodes"


def node_key(node: str) -> Ed25519PrivateKey:
    """This node's key; made at its first start."""
    path = node_key_path(node)
    if not path.exists():
        try:
            return generate_key(path, f"grid-node:{node}")
        except (SigningError, FileExistsError):
            pass  # made meanwhile by another process of this node: read it
    return load_private_key(path)


def publish(conn: redis.Redis, node: str, key: Ed25519PrivateKey) -> None:
    """Offer the node's public key to operators (they pin it, or not)."""
    conn.set(keys.node_pubkey(node), public_line(key.public_key(), f"grid-node:{node}"))


def published(conn: redis.Redis, node: str) -> Ed25519PublicKey | None:
    """The key the broker says `node` has (untrusted until pinned); None if none or unreadable."""
    raw = conn.get(keys.node_pubkey(node))
    try:
        return parse_public_line(raw.decode()[:1000])[0] if raw else None
    except (ValueError, UnicodeDecodeError):
        return None


def attest(key: Ed25519PrivateKey, claim: dict[str, Any]) -> AttemptProof:
    """The node's signature over one attempt's claim."""
    text = canonical({"v": CLAIM_VERSION, **claim})
    sig = key.sign(DOMAIN + text.encode())
    return AttemptProof(claim=text, sig=base64.b64encode(sig).decode(), kid=fingerprint(key.public_key()))


@dataclass(frozen=True)
class NodeSigner:
    """A node's key, signing what it records about attempts: those it ran or refused, and those
    it found lost when it reclaimed a dead node's jobs (the claim then names both nodes)."""

    node: str
    key: Ed25519PrivateKey

    def attest(self, result: Result, job_id: str, nonce: Any, attempt: int | None, *, final: bool,
               on: str | None = None, seen: bool | None = None) -> Result:
        """`result` with this node's proof; `final`: the job ends with this attempt (no retry of
        this envelope follows); `on`: the node the attempt was on, when not this one; `seen`:
        for a loss on this node, whether its own journal shows the attempt started here."""
        claim = {"job_id": job_id, "nonce": nonce if isinstance(nonce, str) else None, "attempt": attempt,
                 "node": on or self.node, "start": result.start, "end": result.end, "exit_code": result.exit_code,
                 "signal": result.signal, "reason_kind": result.reason_kind, "reason": (result.reason or "")[:500],
                 "final": final}
        if seen is not None:
            claim["seen"] = seen
        if on is not None and on != self.node:
            claim["by"] = self.node
        return result.model_copy(update={"proof": attest(self.key, claim)})


def claimed_nonce(signed: Any) -> str | None:
    """The nonce a job's signed argument names, unverified: a node signing a refusal or a loss says
    which envelope it saw; the operator's renewal compares it with the one it verified."""
    text = signed.get("envelope") if isinstance(signed, dict) else None
    try:
        nonce = json.loads(text).get("nonce") if isinstance(text, str) and len(text) <= (1 << 20) else None
    except (ValueError, AttributeError):
        return None
    return nonce[:128] if isinstance(nonce, str) else None


class KnownNodes:
    """The operator's `known_nodes` file: each node's pinned public key."""

    def __init__(self, path: Path | None = None):
        self.path = path or known_nodes_path()

    def entries(self) -> dict[str, Ed25519PublicKey]:
        out: dict[str, Ed25519PublicKey] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return out
        for raw in lines:
            parts = raw.strip().split(None, 1)
            if len(parts) != 2 or raw.startswith("#"):
                continue
            try:
                out[parts[0]] = parse_public_line(parts[1])[0]
            except ValueError:
                continue  # a foreign line is ignored, as ssh does
        return out

    def pin(self, node: str, pub: Ed25519PublicKey) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [ln for ln in lines if ln.split(None, 1)[:1] != [node]]
        kept.append(f"{node} {public_line(pub, f'grid-node:{node}')}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(kept) + "\n")

    def unpin(self, node: str) -> bool:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [ln for ln in lines if ln.split(None, 1)[:1] != [node]]
        if len(kept) != len(lines):
            self.path.write_text("\n".join(kept) + ("\n" if kept else ""))
        return len(kept) != len(lines)


@dataclass(frozen=True)
class Checked:
    """What an attempt record's proof shows: `trust` is pinned, unpinned, bad or unsigned."""

    trust: str
    note: str
    claim: dict[str, Any] | None = None

    @property
    def pinned(self) -> bool:
        return self.trust == "pinned"


def check(proof: AttemptProof | None, known: dict[str, Ed25519PublicKey], job_id: str) -> Checked:
    """Whether an attempt's record was signed by the pinned key of the node its claim names, for this job."""
    if proof is None:
        return Checked("unsigned", "not signed by a node")
    try:
        claim = json.loads(proof.claim)
    except ValueError:
        return Checked("bad", "its node signature is unreadable")
    if not isinstance(claim, dict) or claim.get("v") != CLAIM_VERSION:
        return Checked("bad", "its node signature is unreadable")
    node = claim.get("node")
    by = claim.get("by", node)  # the signer: the attempt's node, or the node that reclaimed it
    if claim.get("job_id") != job_id:
        return Checked("bad", "signed by a node for another job", claim)
    pub = known.get(by) if isinstance(by, str) else None
    if pub is None:
        return Checked("unpinned", f"signed by node {str(by)[:100]}, whose key is not pinned here", claim)
    if fingerprint(pub) != proof.kid:
        return Checked("bad", f"signed by a key that is not {str(by)[:100]}'s pinned key", claim)
    try:
        pub.verify(base64.b64decode(proof.sig, validate=True), DOMAIN + proof.claim.encode())
    except (InvalidSignature, ValueError):
        return Checked("bad", f"bad signature for node {str(by)[:100]}", claim)
    if by != node:
        return Checked("pinned", f"signed by pinned node {by}, for node {str(node)[:100]}", claim)
    return Checked("pinned", f"signed by pinned node {node}", claim)
