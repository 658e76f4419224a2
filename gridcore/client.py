"""`Grid`: the client API used by the CLI, the console and Python callers.

A thin facade over its parts, one module each: submission (gridcore/submission.py), reads
(gridcore/reads.py), control (gridcore/control.py) and placement questions
(gridcore/explain.py). Read calls are bounded (one page, one pipeline) and never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from gridcore.clock import BrokerClock
from gridcore.connection import connect
from gridcore.errors import AmbiguousId, GridError, JobNotFound, Unplaceable
from gridcore.jobfilter import JobFilter
from gridcore.models import Event, Job, JobSpec, JobState, Node, NodeState, OutputChunk, QueueStats
from gridcore.reads import FIND_ALL_CAP, Reads
from gridcore.settings import Settings, load_settings

if TYPE_CHECKING:
    from gridcore.control import Control
    from gridcore.placement import Committed
    from gridcore.explain import Explainer
    from gridcore.records import Envelope
    from gridcore.signedview import EnvelopeReader
    from gridcore.signing import Signer
    from gridcore.submission import Submission

__all__ = ["AmbiguousId", "Event", "Grid", "GridError", "JobNotFound", "QueueStats", "Unplaceable"]


class Grid:
    """A handle on one grid (one broker)."""

    def __init__(self, connection: redis.Redis, settings: Settings | None = None, signer: Signer | None = None):
        self.redis = connection
        self.settings = settings or load_settings()
        self._signer = signer
        self.clock = BrokerClock(connection)
        # Jobs as read show their signed command, verified with the keys this user trusts.
        self.reads = Reads(connection, self._envelope_reader)

    # The parts a command may not need are made (and their modules imported: RQ, the signing
    # library) on first use, so that a short command stays short.

    @cached_property
    def explainer(self) -> Explainer:
        """Placement questions: why a job waits, what nodes have committed."""
        from gridcore.explain import Explainer

        return Explainer(self.redis, self.reads)

    @cached_property
    def submission(self) -> Submission:
        """Signing and enqueueing jobs."""
        from gridcore.submission import Submission

        return Submission(self.redis, self.settings, self.clock, lambda: self.signer, self.explainer)

    @cached_property
    def control(self) -> Control:
        """Cancel, requeue, drain and resume."""
        from gridcore.control import Control

        return Control(self.redis, self.settings, self.clock, lambda: self.signer, self.reads)

    def _envelope_reader(self) -> EnvelopeReader:
        from gridcore.signedview import EnvelopeReader

        return EnvelopeReader(self.settings.authorized_keys_path, self.settings.public_key_path)

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Grid:
        """A Grid on the broker the settings name."""
        settings = settings or load_settings()
        return cls(connect(settings), settings)

    def broker_time(self) -> float:
        """Seconds since the epoch by the broker's clock (the grid's only clock)."""
        return self.clock.now()

    @property
    def signer(self) -> Signer:
        """This submitter's signing key, loaded on first use."""
        if self._signer is None:
            from gridcore.signing import Signer, load_private_key

            self._signer = Signer(load_private_key(self.settings.key_path), self.settings.submitter)
        return self._signer

    # ---- submit -------------------------------------------------------------------------

    @staticmethod
    def is_plain(spec: JobSpec, max_parallel: int | None = None) -> bool:
        """A job any slot of its queue may take: one CPU, nothing else asked for."""
        from gridcore.placement import is_plain  # placement's model: not for a command that only reads

        return is_plain(spec, max_parallel)

    def route(self, spec: JobSpec, max_parallel: int | None = None) -> str:
        """The RQ queue a job goes to: its queue when plain, else the placement queue."""
        from gridcore.submission import route

        return route(spec, max_parallel)

    def check_placeable(self, specs: Sequence[JobSpec]) -> None:
        """Refuse a request no node of the grid could ever run, with the reason."""
        self.explainer.check_placeable(specs)

    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> str:
        """Sign and enqueue one job; return its id."""
        return self.submission.submit(spec, job_id=job_id)

    def submit_many(self, specs: Sequence[JobSpec], *, job_ids: Sequence[str] | None = None,
                    groups: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Sign and enqueue several jobs with one broker clock reading (`groups`: sweeps by id)."""
        return self.submission.submit_many(specs, job_ids=job_ids, groups=groups)

    # ---- read ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """One job with everything `grid show` prints."""
        return self.reads.get(job_id)

    def resolve(self, job_id: str) -> str:
        """The whole id of the job `job_id` names: itself, or a unique start of one (>= 6 chars)."""
        return self.reads.resolve(job_id)

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """Several jobs in one pipeline; ids that no longer exist are skipped."""
        return self.reads.get_many(job_ids)

    def exists(self, job_id: str) -> bool:
        """Is there a job with this id?"""
        return self.reads.exists(job_id)

    def list(self, state: JobState | str | None = None, queue: str | None = None, node: str | None = None,
             group: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the total matching count."""
        return self.reads.list(state=state, queue=queue, node=node, group=group, offset=offset, limit=limit)

    def find(self, flt: JobFilter, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
        """One page of the jobs a typed filter selects, and how many it selects."""
        return self.reads.find(flt, offset=offset, limit=limit)

    def find_all(self, flt: JobFilter, cap: int = FIND_ALL_CAP) -> list[Job]:
        """The jobs a typed filter selects among the newest `cap` its indexes give."""
        return self.reads.find_all(flt, cap)

    def queue_names(self) -> list[str]:
        """Every queue the grid knows."""
        return self.reads.queue_names()

    def queues(self, names: Sequence[str] | None = None) -> list[QueueStats]:
        """Per queue: job counts by state and the workers listening."""
        return self.reads.queues(names)

    def queue_stats(self, name: str) -> QueueStats:
        """One queue's counts."""
        return self.reads.queue_stats(name)

    def groups(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Newest sweep groups with their job counts by state."""
        return self.reads.groups(limit=limit, offset=offset)

    def group_count(self) -> int:
        """Sweep groups in the index."""
        return self.reads.group_count()

    def group(self, group_id: str) -> dict[str, Any]:
        """One sweep group with its counts and cells."""
        return self.reads.group(group_id)

    def failed_cells(self, group_id: str) -> list[str]:
        """Ids of a group's failed or canceled cells, in cell order."""
        return self.reads.failed_cells(group_id)

    def nodes(self) -> list[Node]:
        """Every node that ever heartbeated, with its state by heartbeat age."""
        return self.reads.nodes()

    def quarantined(self, nodes_only: bool = False) -> list[str]:
        """Corrupt broker records set aside (those of nodes' keys only, if asked), one line each."""
        return self.reads.quarantined(nodes_only)

    def node_states(self) -> dict[str, NodeState]:
        """Every node's state, without its inventory, load or jobs."""
        return self.reads.node_states()

    def node(self, name: str) -> Node | None:
        """One node by name, or None."""
        return self.reads.node(name)

    def tail(self, job_id: str, after: str = "0-0", count: int = 1000,
             block_ms: int | None = None) -> list[OutputChunk]:
        """Output chunks after stream id `after`."""
        return self.reads.tail(job_id, after=after, count=count, block_ms=block_ms)

    def latest_output(self, job_ids: Sequence[str], count: int) -> dict[str, list[OutputChunk]]:
        """The newest `count` output entries of each job, oldest first."""
        return self.reads.latest_output(job_ids, count)

    def last_lines(self, job_id: str, lines: int) -> list[OutputChunk]:
        """The output entries holding a job's last `lines` lines (`grid logs --tail`)."""
        return self.reads.last_lines(job_id, lines)

    def state(self, job_id: str) -> JobState:
        """A job's state alone."""
        return self.reads.state(job_id)

    def wait(self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.5) -> dict[str, JobState]:
        """Block until every job is terminal (or timeout); return their states. Woken by each job's
        end event; `poll`: seconds between reads when no event comes (gridcore/waiting.py). Right
        after this Grid submitted them, it reads on from its submission's last event."""
        submission = self.__dict__.get("submission")  # made by a submit (cached_property), if any
        since = submission.since(job_ids) if submission is not None else None
        return self.reads.wait(job_ids, timeout=timeout, poll=poll, since=since)

    def events(self, count: int = 100, before: str = "+") -> list[Event]:
        """The newest grid events, newest first."""
        return self.reads.events(count=count, before=before)

    # ---- explain ------------------------------------------------------------------------

    def why(self, job_id: str) -> list[str]:
        """Why a job is not running, in plain words."""
        return self.explainer.why(job_id)

    def committed(self, nodes: Sequence[Node] | None = None) -> dict[str, Committed]:
        """node name -> what running and placed jobs hold there."""
        return self.explainer.committed(nodes)

    # ---- control ------------------------------------------------------------------------

    def cancel(self, job_id: str, wait: float = 15.0) -> JobState:
        """Cancel a job (a running one's whole process tree); return the state it reached."""
        return self.control.cancel(job_id, wait=wait)

    def cancel_many(self, job_ids: Sequence[str], wait: float = 15.0) -> dict[str, JobState]:
        """Cancel jobs: the ones not started in one atomic step (none of them starts after
        it), then the running ones at once; the state each reached."""
        return self.control.cancel_many(job_ids, wait=wait)

    def requeue(self, job_id: str, named: bool = False) -> Envelope:
        """Run a failed or canceled job again, re-signed by this submitter; return the signed envelope.

        `named`: the operator named this job itself, so an expired envelope may be renewed."""
        return self.control.requeue(job_id, named=named)

    def fail_dependents(self, job_id: str, now: float) -> list[str]:
        """Fail every job that needs `job_id` to succeed."""
        return self.control.fail_dependents(job_id, now)

    def drain(self, node: str, reason: str = "") -> None:
        """Stop a node taking new jobs; what it runs finishes."""
        self.control.drain(node, reason)

    def resume(self, node: str) -> None:
        """Let a drained node take jobs again."""
        self.control.resume(node)
