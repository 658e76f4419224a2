"""The gate every job passes before anything of it runs (or is even imported)."""

from __future__ import annotations

import os
from typing import Any

import redis
from rq.job import Job

from gridcore import keys
from gridcore.settings import AgentSettings
from gridcore.signing import AuthorizedKeys, Refused, verify

CLOCK_SKEW = 120.0
"""Seconds of tolerance on issued-at/expiry, against broker time."""


class Gatekeeper:
    def __init__(self, conn: redis.Redis, authorized: AuthorizedKeys, cfg: AgentSettings):
        self.conn = conn
        self.authorized = authorized
        self.cfg = cfg

    @staticmethod
    def check_shape(job: Job) -> Any:
        """The job must name the grid runner with one argument and nothing else; return it."""
        try:
            func_name = job.func_name  # JSON-decodes the payload; imports nothing
        except Exception as e:  # noqa: BLE001 - any decode failure is a refusal, not a crash
            raise Refused(f"job payload is not JSON ({type(e).__name__})") from None
        if func_name != keys.RUNNER_FUNC:
            raise Refused(f"function {str(func_name)[:100]!r} is not the grid runner")
        if job._instance is not None or job.kwargs or len(job.args) != 1:
            raise Refused("job arguments are not a single signed envelope")
        callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
        if any(callbacks):
            raise Refused("job names callbacks (on_success/on_failure/on_stopped)")
        if getattr(job, "webhooks", None):
            raise Refused("job names webhooks")
        return job.args[0]

    def check(self, job: Job, now: float) -> tuple[dict[str, Any], str]:
        """Verify signature, identity, time window, policy and replay; return (envelope, signer)."""
        signed = self.check_shape(job)
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
        self._policy(envelope)
        nonce = envelope.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < 16:
            raise Refused("envelope has no nonce")
        max_attempts = int(envelope.get("max_attempts") or 1)
        with self.conn.pipeline() as pipe:
            pipe.incr(keys.nonce(nonce))
            pipe.expireat(keys.nonce(nonce), int(expires + 2 * CLOCK_SKEW))
            used, _ = pipe.execute()
        if used > max_attempts:
            raise Refused(f"replayed envelope (attempt {used} of at most {max_attempts})")
        return envelope, signer or envelope.get("submitter") or ""

    def _policy(self, envelope: dict[str, Any]) -> None:
        policy = self.cfg.policy
        cwd = envelope.get("cwd")
        if policy.cwd_roots and cwd:
            real = os.path.realpath(cwd)
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in map(os.path.realpath, policy.cwd_roots)):
                raise Refused(f"cwd {cwd!r} is outside this node's allowed roots")
        if policy.cwd_roots and not cwd:
            raise Refused("this node requires a cwd inside its allowed roots")
        timeout = envelope.get("timeout")
        if policy.max_timeout and (not timeout or timeout > policy.max_timeout):
            raise Refused(f"timeout must be set and at most {policy.max_timeout:g}s on this node")
        if policy.env_allow is not None:
            bad = sorted(set(envelope.get("env") or {}) - set(policy.env_allow))
            if bad:
                raise Refused(f"environment variables not allowed on this node: {', '.join(bad)}")
