"""The gate every job passes before anything of it runs (or is even imported)."""

from __future__ import annotations

import os
from typing import Any

import redis

from agent.rqadapter.jobs import signed_argument
from gridcore import keys, secretenv
from gridcore.records import ActiveEntry, lenient
from gridcore.settings import AgentSettings
from gridcore.signing import AuthorizedKeys, Refused, verify

CLOCK_SKEW = 120.0
"""Seconds of tolerance on issued-at/expiry, against broker time."""

SPENT = 1 << 40
"""Nonce counter value of an envelope whose job is done: any further use is a replay."""


class AlreadyRunning(Refused):
    """A second copy of a job that a live slot is running; the running one must not be touched."""


class Gatekeeper:
    def __init__(self, conn: redis.Redis, authorized: AuthorizedKeys, cfg: AgentSettings):
        self.conn = conn
        self.authorized = authorized
        self.cfg = cfg

    def verify(self, job: Any, now: float, active: ActiveEntry | None | object = ...) -> tuple[dict[str, Any], str]:
        """Everything but counting the attempt: shape, signature, identity, window, policy, and
        that no live slot runs this job. `active` is the job's `grid:active` entry if the caller
        already read it (the slot's pop does); otherwise it is read here."""
        signed = signed_argument(job)
        envelope, signer = verify(signed, self.authorized)
        if envelope.get("job_id") != job.id:
            raise Refused("envelope was signed for another job id")
        issued, expires = envelope.get("issued_at"), envelope.get("expires_at")
        if not isinstance(issued, (int, float)) or not isinstance(expires, (int, float)):
            raise Refused("envelope has no validity window")
        if now < issued - CLOCK_SKEW:
            raise Refused("envelope is issued in the future")
        if now > expires + CLOCK_SKEW:
            raise Refused("envelope expired")
        cmd, argv = envelope.get("command"), envelope.get("argv")
        if not ((isinstance(cmd, str) and cmd) or (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv))):
            raise Refused("envelope has no command")
        _check_types(envelope)
        # Sealed values (gridcore/secretenv.py) only once they match the digest signed; the
        # policy below judges every variable, sealed or not.
        envelope["env"] = secretenv.read(self.conn, envelope, job.id)
        self._policy(envelope)
        nonce = envelope.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < 16:
            raise Refused("envelope has no nonce")
        if active is ...:
            active = lenient(ActiveEntry, self.conn.hget(keys.ACTIVE, job.id), f"{keys.ACTIVE} field {job.id}")
        self._not_running(active, job)
        return envelope, signer or envelope.get("submitter") or ""

    def _not_running(self, active: ActiveEntry | None, job: Any) -> None:
        # Retries and node-loss requeues come after the last attempt left ACTIVE (or its slot died).
        # A running copy has two witnesses, written in one step at its start: its `grid:active`
        # entry and RQ's record, started by the same worker. Any agent may write the entry alone
        # (naming a live worker, or one it made up): believed alone, it would drop a queued job as
        # a twin. (A pop with no entry makes one from RQ's record: agent/claim.py `started_by`.)
        if active is None or job.worker_name != active.worker or job.get_status(refresh=False) != "started":
            return
        if self.conn.exists(keys.rq_worker(active.worker)):
            raise AlreadyRunning(f"job is already running on {active.node} (a second copy of its envelope)")

    def _policy(self, envelope: dict[str, Any]) -> None:
        policy = self.cfg.policy
        cwd = envelope.get("cwd")
        if policy.cwd_roots and cwd:
            real = os.path.realpath(cwd)
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in map(os.path.realpath, policy.cwd_roots)):
                raise Refused(f"cwd {cwd!r} is outside this node's allowed roots")
            # The job starts in the directory checked, not in whatever `cwd` resolves to later
            # (a symlink swapped between the check and the chdir).
            envelope["cwd"] = real
        if policy.cwd_roots and not cwd:
            raise Refused("this node requires a cwd inside its allowed roots")
        timeout = envelope.get("timeout")
        if policy.max_timeout and (not timeout or timeout > policy.max_timeout):
            raise Refused(f"timeout must be set and at most {policy.max_timeout:g}s on this node")
        if policy.env_allow is not None:
            # GRID_SWEEP_* are the grid's own (a sweep cell's values), not the submitter's choice.
            bad = sorted(n for n in set(envelope.get("env") or {}) - set(policy.env_allow)
                         if not n.startswith("GRID_SWEEP_"))
            if bad:
                raise Refused(f"environment variables not allowed on this node: {', '.join(bad)}")


def nonce_expiry(envelope: dict[str, Any]) -> int:
    """When an envelope's attempt counter may go: after the envelope itself is void."""
    return int(envelope["expires_at"] + 2 * CLOCK_SKEW)


def spend(pipe, envelope: dict[str, Any]) -> None:
    """The job is done for good: no attempt of this envelope may ever run again (on `pipe`)."""
    pipe.set(keys.nonce(envelope["nonce"]), SPENT, exat=nonce_expiry(envelope))


def refund(pipe, envelope: dict[str, Any]) -> None:
    """The attempt this node counted (its start) whose command never ran (runner.NODE_FAULT)
    gives its count back (on `pipe`, in the step that hands the job back). The count keeps its
    expiry: it is set again, so a counter a broker writer deleted meanwhile does not outlive the
    envelope. Safe: see JobAttempt._record_end."""
    pipe.decr(keys.nonce(envelope["nonce"]))
    pipe.expireat(keys.nonce(envelope["nonce"]), nonce_expiry(envelope))


REFUND_FN = """
local function refund(key, expiry)
  -- pcall: a counter a broker writer retyped must not fail the hand-back it is part of (the job
  -- would wait for node-loss recovery); nothing is given back, and the error is returned.
  local r = redis.pcall('DECR', key)
  if type(r) == 'table' and r.err then return r.err end
  redis.call('EXPIREAT', key, expiry)
  return nil
end
"""
"""Lua: `refund`'s two commands, for a script that decides in the same step whether the count
goes back (guarded.REQUEUE_UNSTARTED: a start whose reply was lost); ARGV-free, its key and the
envelope's `nonce_expiry` passed in. Returns why the count could not go back, or nil."""


def judge_attempt(used: int, envelope: dict[str, Any]) -> None:
    """Refuse an attempt whose count (after counting it) shows a replay."""
    if used > SPENT:
        raise Refused("replayed envelope: its job already ended")
    max_attempts = envelope.get("max_attempts") or 1
    if used > max_attempts:
        raise Refused(f"replayed envelope (attempt {used} of at most {max_attempts})")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(envelope: dict[str, Any]) -> None:
    """Fields the policy and the runner compare must have their types, or the slot would crash."""
    timeout, env, cwd = envelope.get("timeout"), envelope.get("env"), envelope.get("cwd")
    attempts = envelope.get("max_attempts")
    if timeout is not None and not (_number(timeout) and timeout > 0):
        raise Refused("envelope has a malformed timeout")
    if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise Refused("envelope has a malformed env")
    if cwd is not None and not isinstance(cwd, str):
        raise Refused("envelope has a malformed cwd")
    if attempts is not None and not (isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 1):
        raise Refused("envelope has a malformed max_attempts")
