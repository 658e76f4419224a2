"""`Grid`: the client API used by the CLI, the console and Python callers.

Read calls are bounded (one page, one pipeline) and never write to the broker.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.job import Dependency
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from gridcore import events, keys
from gridcore.clock import BrokerClock
from gridcore.connection import connect
from gridcore.models import (
    LOST_RETRIES,
    RQ_TO_STATE,
    GpuInfo,
    Job,
    JobSpec,
    JobState,
    Node,
    NodeState,
    OutputChunk,
    Resources,
    node_state,
)
from gridcore.priority import PrioritizedQueue, reposition
from gridcore.settings import Settings, load_settings
from gridcore.signing import ENVELOPE_VERSION, AuthorizedKeys, Refused, Signer, load_private_key, verify

SERIALIZER = JSONSerializer
"""Jobs are JSON only: a broker writer must never get code execution through pickle."""

COMMAND_PREVIEW = 2000
"""Characters of the command kept in job meta for listings."""

_JOB_FIELDS = (b"status", b"origin", b"meta", b"description", b"worker_name", b"enqueued_at", b"retries_left")

_NODE_FIELDS = ("inventory", "load", "draining", "drain_reason", "hb_interval", "node_timeout", "slots", "agent_pid",
                "hostname", "queues", "started", "version")
"""The node hash fields a `Node` is made of (the agent's bookkeeping fields are not read)."""

_STATE_FIELDS = ("hb_interval", "node_timeout", "draining")
"""The node hash fields its state needs besides the heartbeat age."""


class GridError(Exception):
    """An operation failed for a reason the user can act on; the message says which."""


class JobNotFound(GridError):
    pass


class Unplaceable(GridError):
    """No node of the grid could ever run the request (too many GPUs, an unknown label...)."""


@dataclass(frozen=True)
class QueueStats:
    name: str
    queued: int
    running: int
    scheduled: int
    waiting: int
    finished: int
    failed: int
    canceled: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    id: str
    time: float
    kind: str
    job: str | None
    node: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _s(v: bytes | str | None) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _json(v: bytes | str | None) -> Any:
    if not v:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return f if f is not None and f == f and abs(f) != float("inf") else None


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def rq_retry_intervals(spec: JobSpec) -> int | list[int]:
    """RQ's Retry interval(s) for the spec's backoff: one per retry, the last value repeating.

    RQ reads its list from the end when there are more retries than values (the first value
    repeats), and schedules on whole seconds rounded down (a retry could start up to a second
    early): give it one value per retry, each a second longer, so no retry starts before its
    backoff."""
    b = spec.retry_backoff or (0,)
    waits = [(s + 1 if s > 0 else 0) for s in (b[min(i, len(b) - 1)] for i in range(spec.retries))]
    return waits if len(set(waits)) > 1 else (waits or [0])[0]


class Grid:
    """A handle on one grid (one broker)."""

    def __init__(self, connection: redis.Redis, settings: Settings | None = None, signer: Signer | None = None):
        self.redis = connection
        self.settings = settings or load_settings()
        self._signer = signer
        self._server_version: tuple[int, int, int] | None = None
        self.clock = BrokerClock(connection)

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Grid:
        settings = settings or load_settings()
        return cls(connect(settings), settings)

    # ---- time and signing ---------------------------------------------------------------

    def broker_time(self) -> float:
        """Seconds since the epoch by the broker's clock (the grid's only clock)."""
        return self.clock.now()

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(load_private_key(self.settings.key_path), self.settings.submitter)
        return self._signer

    def _envelope(self, spec: JobSpec, job_id: str, queue: str, now: float, attempts: int) -> dict[str, Any]:
        return {
            "v": ENVELOPE_VERSION,
            "job_id": job_id,
            "command": spec.command,
            "argv": list(spec.argv) if spec.argv is not None else None,
            "cwd": spec.cwd,
            "env": dict(spec.env),
            "timeout": spec.timeout,
            "resources": spec.resources.to_dict(),
            "queue": queue,
            "submitter": self.signer.name,
            "issued_at": now,
            "expires_at": now + self.settings.envelope_ttl,
            "nonce": secrets.token_hex(16),
            "max_attempts": attempts,
        }

    # ---- submit -------------------------------------------------------------------------

    @staticmethod
    def is_plain(spec: JobSpec, max_parallel: int | None = None) -> bool:
        """A job any slot of its queue may take: one CPU, nothing else asked for."""
        r = spec.resources
        return (r.cpus <= 1 and not r.gpus and not r.memory and not r.labels and not r.node
                and not max_parallel)

    def route(self, spec: JobSpec, max_parallel: int | None = None) -> str:
        """The RQ queue a job goes to: its queue when plain, else the placement queue."""
        return spec.queue if self.is_plain(spec, max_parallel) else keys.PENDING_QUEUE

    def check_placeable(self, specs: Sequence[JobSpec]) -> None:
        """Refuse a request no node of the grid could ever run, with the reason."""
        from gridcore.placement import never_fits

        if all(self.is_plain(s) for s in specs):
            return
        nodes = self.nodes()
        for spec in specs:
            reason = never_fits(spec.resources, nodes)
            if reason:
                raise Unplaceable(f"{spec.name or spec.display_command[:60]}: no node can ever run this: {reason}")

    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> str:
        """Sign and enqueue one job; return its id."""
        return self.submit_many([spec], job_ids=[job_id] if job_id else None)[0]

    def submit_many(self, specs: Sequence[JobSpec], *, job_ids: Sequence[str] | None = None,
                    groups: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Sign and enqueue several jobs with one broker clock reading.

        `groups` describes sweep groups by id: {"name", "max_parallel", "params"}.
        """
        self.check_placeable(specs)
        now = self.broker_time()
        ids = list(job_ids) if job_ids else [uuid.uuid4().hex for _ in specs]
        groups = groups or {}
        sizes: dict[str, int] = {}
        for spec in specs:
            if spec.group:
                sizes[spec.group] = sizes.get(spec.group, 0) + 1
        if sizes:
            with self.redis.pipeline(transaction=False) as pipe:
                for gid, n in sizes.items():
                    info = groups.get(gid, {})
                    pipe.hset(keys.group(gid), mapping={
                        "name": info.get("name") or gid, "size": n, "submitted": now,
                        "max_parallel": info.get("max_parallel") or 0, "submitter": self.signer.name,
                        "axes": json.dumps(info.get("axes") or {}),
                    })
                    pipe.expire(keys.group(gid), self.settings.result_ttl)
                    pipe.zadd(keys.GROUPS, {gid: now})
                pipe.execute()
        for spec, job_id in zip(specs, ids, strict=True):
            mp = groups.get(spec.group, {}).get("max_parallel") if spec.group else None
            self._enqueue(spec, job_id, now, mp)
        return ids

    def _queue(self, name: str, priority: int) -> Queue:
        """A queue to enqueue one job on; a plain queue inserts it by priority."""
        q = (Queue(name, connection=self.redis, serializer=SERIALIZER) if name == keys.PENDING_QUEUE
             else PrioritizedQueue(name, connection=self.redis, serializer=SERIALIZER, priority=priority))
        # A new RQ Queue asks the server's version (INFO) before its first enqueue: once is enough.
        q.redis_server_version = self._server_version or q.get_redis_server_version()
        self._server_version = q.redis_server_version
        return q

    def _enqueue(self, spec: JobSpec, job_id: str, now: float, max_parallel: int | None = None) -> None:
        queue_name = self.route(spec, max_parallel)
        attempts = 1 + spec.retries + LOST_RETRIES
        signed = self.signer.sign(self._envelope(spec, job_id, queue_name, now, attempts))
        meta = {
            "grid": 1,
            "name": spec.name or spec.display_command[:80],
            "command": spec.display_command[:COMMAND_PREVIEW],
            "submitter": self.signer.name,
            "submitted": now,
            "resources": spec.resources.to_dict(),
            "tags": list(spec.tags),
            "group": spec.group,
            "params": spec.params,
            "priority": spec.priority,
            "retries": spec.retries,
            "retry_backoff": list(spec.retry_backoff),
            "after_on": spec.after_on,
            "timeout": spec.timeout,
            "queue": spec.queue,
            "max_parallel": max_parallel,
        }
        q = self._queue(queue_name, spec.priority)
        # RQ's own timeout only sizes heartbeats here: the runner enforces the real one.
        rq_timeout = int(spec.timeout + self.settings.agent.kill_grace + 60) if spec.timeout else -1
        retry = Retry(max=spec.retries, interval=rq_retry_intervals(spec)) if spec.retries else None
        depends = None
        if spec.after:
            depends = Dependency(jobs=list(spec.after), allow_failure=spec.after_on == "any", enqueue_at_front=False)
        with self.redis.pipeline() as pipe:
            # One transaction for the job and the grid's records of it; RQ checks dependencies
            # with a WATCH of its own, so a job that has some is enqueued by RQ on its own.
            q.enqueue_call(
                func=keys.RUNNER_FUNC,
                args=(signed,),
                job_id=job_id,
                timeout=rq_timeout,
                result_ttl=self.settings.result_ttl,
                failure_ttl=self.settings.result_ttl,
                description=meta["name"],
                meta=meta,
                retry=retry,
                depends_on=depends,
                pipeline=None if depends else pipe,
            )
            pipe.zadd(keys.JOBS, {job_id: now})
            pipe.sadd(keys.QUEUES, queue_name)
            if spec.group:
                pipe.zadd(keys.group_jobs(spec.group), {job_id: int(spec.params.get("_cell", 0))})
            events.emit(pipe, now, "submitted", job=job_id, message=meta["name"])
            pipe.execute()

    # ---- read ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """One job with everything `grid show` prints."""
        jobs = self._fetch([job_id], detail=True)
        if not jobs:
            raise JobNotFound(f"no job {job_id!r} on this grid")
        return jobs[0]

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """Several jobs in one pipeline (list fields only); ids that no longer exist are skipped."""
        return self._fetch(job_ids)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.rq_job(job_id)))

    def _fetch(self, ids: Sequence[str], detail: bool = False) -> list[Job]:
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hmget(keys.rq_job(jid), _JOB_FIELDS)
                pipe.get(keys.result(jid))
                if detail:
                    pipe.lrange(keys.attempts(jid), 0, -1)
                    pipe.smembers(keys.rq_job(jid) + ":dependencies")
            replies = pipe.execute()
        step = 4 if detail else 2
        out = []
        for i, jid in enumerate(ids):
            fields, result = replies[i * step], replies[i * step + 1]
            if fields[0] is None:
                continue  # expired or deleted since it was indexed
            attempts = ()
            waiting_on: tuple[str, ...] = ()
            if detail:
                attempts = tuple(a for a in (_json(x) for x in replies[i * step + 2]) if isinstance(a, dict))
                waiting_on = tuple(sorted(_s(x) or "" for x in replies[i * step + 3]))
            out.append(self._job_from(jid, fields, _json(result), attempts, waiting_on))
        return out

    def _job_from(self, jid, fields, result, attempts, waiting_on) -> Job:
        status, origin, meta_raw, description, worker_name, enqueued_at, retries_left = (_s(f) for f in fields)
        meta = _json(meta_raw) or {}
        result = result if isinstance(result, dict) else {}
        state = RQ_TO_STATE.get(status or "", JobState.QUEUED)
        if state is JobState.WAITING or state is JobState.QUEUED:
            waiting_on = waiting_on if state is JobState.WAITING else ()
        run = meta.get("run") or {}
        return Job(
            id=jid,
            name=str(meta.get("name") or description or ""),
            state=state,
            queue=meta.get("queue") or origin or "",
            command=str(meta.get("command") or ""),
            node=result.get("node") or run.get("node"),
            slot=result.get("slot", run.get("slot")),
            submitter=meta.get("submitter"),
            exit_code=result.get("exit_code"),
            signal=result.get("signal"),
            reason=result.get("reason") or meta.get("reason"),
            reason_kind=result.get("reason_kind"),
            enqueued_at=meta.get("submitted"),
            started_at=result.get("start") or run.get("started"),
            ended_at=result.get("end"),
            duration=result.get("duration"),
            stdout=result.get("stdout", ""),
            stderr=result.get("stderr", ""),
            stdout_bytes=result.get("stdout_bytes", 0),
            stderr_bytes=result.get("stderr_bytes", 0),
            dropped_bytes=result.get("dropped_bytes", 0),
            log_path=result.get("log_path"),
            group=meta.get("group"),
            params=meta.get("params") or {},
            tags=tuple(meta.get("tags") or ()),
            resources=meta.get("resources") or {},
            timeout=meta.get("timeout"),
            # RQ counts retries down as it schedules them; a job without retries has no counter.
            retries_left=_int(retries_left) if retries_left is not None else _int(meta.get("retries")),
            attempts=attempts,
            waiting_on=waiting_on,
            gpus=tuple(run.get("gpus") or result.get("gpus") or ()),
        )

    def queue_names(self) -> list[str]:
        names = {_s(n) for n in self.redis.smembers(keys.QUEUES)}
        for k in self.redis.smembers(keys.rq_queues()):
            names.add(_s(k).removeprefix(keys.rq_queue_prefix()))
        return sorted(n for n in names if n)

    def _state_ids(self, state: JobState, queues: Sequence[str], n: int) -> list[str]:
        """Up to n ids of each queue in one state, queue by queue, each newest first; one pipeline."""
        with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                if state is JobState.QUEUED:
                    pipe.lrange(keys.rq_queue(q), -n, -1)
                else:
                    pipe.zrevrange(keys.rq_registry(state.value, q), 0, n - 1)
            replies = pipe.execute()
        if state is JobState.QUEUED:
            return [_s(x) for ids in replies for x in reversed(ids)]
        # StartedJobRegistry entries are "<job id>:<execution id>".
        return [_s(m).split(":")[0] for rows in replies for m in rows]

    def _state_page(self, state: JobState, queues: Sequence[str], offset: int, limit: int) -> list[Job]:
        """Jobs offset..offset+limit of one state, newest submitted first, reading only those in full.

        Each queue's newest offset+limit ids are ranked by their submit time in `grid:jobs` (the
        `submitted` of their meta), then only the page's records are read. A record that expired
        while its id sat in a registry is skipped, before the page (EXISTS) as on it.
        """
        ids = self._state_ids(state, queues, offset + limit)
        if not ids:
            return []
        submitted = self.redis.zmscore(keys.JOBS, ids)
        ranked = [ids[k] for k in sorted(range(len(ids)), key=lambda k: -(submitted[k] or 0))]
        pos, skip = 0, offset
        while skip and pos < len(ranked):
            batch = ranked[pos : pos + skip]
            pos += len(batch)
            skip -= self.redis.exists(*(keys.rq_job(i) for i in batch))
        page: list[Job] = []
        while len(page) < limit and pos < len(ranked):
            batch = ranked[pos : pos + limit - len(page)]
            pos += len(batch)
            page.extend(self._fetch(batch))
        return page

    def _state_count(self, state: JobState, queues: Iterable[str]) -> int:
        with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                if state is JobState.QUEUED:
                    pipe.llen(keys.rq_queue(q))
                else:
                    pipe.zcard(keys.rq_registry(state.value, q))
            return sum(pipe.execute())

    def list(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        node: str | None = None,
        group: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the total matching count.

        The most selective index drives paging (group, node, state, else all jobs); other
        filters are applied to that page, so a combined filter can return a short page.
        """
        state = JobState(state) if isinstance(state, str) else state
        limit = max(1, min(limit, 1000))
        if group:
            total = self.redis.zcard(keys.group_jobs(group))
            ids = [_s(x) for x in self.redis.zrange(keys.group_jobs(group), offset, offset + limit - 1)]
        elif node:
            total = self.redis.zcard(keys.node_jobs(node))
            ids = [_s(x) for x in self.redis.zrevrange(keys.node_jobs(node), offset, offset + limit - 1)]
        elif state is not None:
            queues = [queue] if queue else self.queue_names()
            return self._state_page(state, queues, offset, limit), self._state_count(state, queues)
        elif queue:
            # A queue with no state filter: every state of that queue, read from the index.
            total = sum(self.queue_stats(queue).to_dict()[s.value] for s in JobState)
            ids = [_s(x) for x in self.redis.zrevrange(keys.JOBS, 0, 4 * (offset + limit))]
            jobs = [j for j in self._fetch(ids) if j.queue == queue]
            return jobs[offset : offset + limit], total
        else:
            total = self.redis.zcard(keys.JOBS)
            ids = [_s(x) for x in self.redis.zrevrange(keys.JOBS, offset, offset + limit - 1)]
        jobs = self._fetch(ids)
        if state is not None:
            jobs = [j for j in jobs if j.state is state]
        if queue:
            jobs = [j for j in jobs if j.queue == queue]
        return jobs, total

    def queue_stats(self, name: str) -> QueueStats:
        return self.queues([name])[0]

    def queues(self, names: Sequence[str] | None = None) -> list[QueueStats]:
        """Per queue: job counts by state and the workers listening."""
        names = list(names) if names is not None else self.queue_names()
        order = [s for s in JobState if s is not JobState.QUEUED]
        with self.redis.pipeline(transaction=False) as pipe:
            for q in names:
                pipe.llen(keys.rq_queue(q))
                for s in order:
                    pipe.zcard(keys.rq_registry(s.value, q))
                pipe.scard(keys.rq_workers_of(q))
            r = pipe.execute()
        out = []
        width = len(order) + 2
        for i, q in enumerate(names):
            row = r[i * width : (i + 1) * width]
            counts = dict(zip([s.value for s in order], row[1:-1], strict=True))
            out.append(QueueStats(name=q, queued=row[0], workers=row[-1], **counts))
        return out

    # ---- sweep groups -------------------------------------------------------------------

    def groups(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Newest sweep groups with their job counts by state (two round trips for the page)."""
        gids = [_s(g) for g in self.redis.zrevrange(keys.GROUPS, offset, offset + limit - 1)]
        return [g for g in self._groups(gids) if g is not None]  # a group whose record expired is left out

    def group_count(self) -> int:
        """Sweep groups in the index (paging total; expired ones count until trimmed)."""
        return int(self.redis.zcard(keys.GROUPS))

    def group(self, group_id: str) -> dict[str, Any]:
        """One sweep group: name, size, max_parallel, counts by state, and its cells."""
        found = self._groups([group_id])[0]
        if found is None:
            raise GridError(f"no sweep group {group_id!r} on this grid")
        return found

    def failed_cells(self, group_id: str) -> list[str]:
        """Ids of the failed or canceled cells of a group, in cell order (what a retry requeues)."""
        ids = self.group(group_id)["jobs"]
        retry = (JobState.FAILED, JobState.CANCELED)
        return [jid for jid, st in zip(ids, self._cell_states(ids), strict=True) if st in retry]

    def _cell_states(self, ids: Sequence[str]) -> list[JobState]:
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hget(keys.rq_job(jid), "status")
            return [RQ_TO_STATE.get(_s(st) or "", JobState.QUEUED) for st in pipe.execute()]

    def _groups(self, gids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each group's record and counts, None where it is gone; one pipeline for every cell."""
        with self.redis.pipeline(transaction=False) as pipe:
            for gid in gids:
                pipe.hgetall(keys.group(gid))
                pipe.zrange(keys.group_jobs(gid), 0, -1)
            replies = pipe.execute()
        cells = [[_s(i) for i in replies[2 * n + 1]] for n in range(len(gids))]
        states = iter(self._cell_states([jid for ids in cells for jid in ids]))
        out: list[dict[str, Any] | None] = []
        for n, gid in enumerate(gids):
            raw, ids = replies[2 * n], cells[n]
            counts: dict[str, int] = {s.value: 0 for s in JobState}
            for _ in ids:
                counts[next(states).value] += 1
            if not raw:
                out.append(None)
                continue
            info = {_s(k): _s(v) for k, v in raw.items()}
            size = _int(info.get("size")) or len(ids)
            done = counts["finished"] + counts["failed"] + counts["canceled"]
            out.append({
                "id": gid, "name": info.get("name") or gid, "size": size,
                "max_parallel": _int(info.get("max_parallel")) or None,
                "submitted": _float(info.get("submitted")) or 0.0,
                "submitter": info.get("submitter"), "axes": _json(info.get("axes")) or [], "counts": counts,
                "progress": done / size if size else 0.0, "jobs": ids,
            })
        return out

    # ---- nodes --------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Every node that ever heartbeated, with its state by heartbeat age (broker time)."""
        beats = self._heartbeats()
        with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in beats:
                pipe.hmget(keys.node(name), _NODE_FIELDS)
                pipe.hkeys(keys.node_running(name))
            r = pipe.execute()
        out = []
        for i, (name, age) in enumerate(beats):
            h = {f: _s(v) for f, v in zip(_NODE_FIELDS, r[2 * i], strict=True) if v is not None}
            running = tuple(sorted(_s(k) for k in r[2 * i + 1]))
            out.append(self._node_from(name, h, running, age))
        return out

    def node_states(self) -> dict[str, NodeState]:
        """Every node's state, as `nodes()` gives it, without its inventory, load or jobs."""
        beats = self._heartbeats()
        with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in beats:
                pipe.hmget(keys.node(name), _STATE_FIELDS)
            r = pipe.execute()
        out = {}
        for (name, age), (hb, timeout, draining) in zip(beats, r, strict=True):
            out[name] = node_state(age, _float(_s(hb)) or 2.0, _float(_s(timeout)) or 30.0, _s(draining) == "1")
        return out

    def _heartbeats(self) -> list[tuple[str, float]]:
        """(name, heartbeat age in broker seconds) of every node, oldest heartbeat first."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(keys.NODES, 0, -1, withscores=True)
            now_raw, members = pipe.execute()
        now = now_raw[0] + now_raw[1] / 1e6
        return [(_s(m), now - score) for m, score in members]

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes() if n.name == name), None)

    @staticmethod
    def _node_from(name: str, h: dict[str, str], running: tuple[str, ...], age: float) -> Node:
        # Node hashes are written by agents, i.e. by anyone with broker write access: every
        # field is coerced on its own, so one bad value blanks that field, not the node list.
        inv = _dict(_json(h.get("inventory")))
        load = _dict(_json(h.get("load")))
        draining = h.get("draining") == "1"
        gpus_live = {g.get("index"): g for g in _list(load.get("gpus")) if isinstance(g, dict)}
        gpus = []
        for g in _list(inv.get("gpus")):
            if isinstance(g, dict) and _int(g.get("index")) is not None:
                merged = {**g, **gpus_live.get(g.get("index"), {})}
                gpus.append(GpuInfo(
                    index=_int(merged.get("index")) or 0, name=str(merged.get("name") or ""),
                    uuid=_str(merged.get("uuid")), memory_total=_int(merged.get("memory_total")),
                    memory_used=_int(merged.get("memory_used")), utilization=_int(merged.get("utilization")),
                ))
        return Node(
            name=name,
            state=node_state(age, _float(h.get("hb_interval")) or 2.0, _float(h.get("node_timeout")) or 30.0, draining),
            heartbeat_age=max(age, 0.0),
            cpus=_int(inv.get("cpus")) or 0,
            cpus_physical=_int(inv.get("cpus_physical")),
            cpu_model=str(inv.get("cpu_model") or ""),
            load=tuple(x for x in (_float(v) for v in _list(load.get("loadavg"))) if x is not None),
            cpu_percent=_float(load.get("cpu_percent")),
            memory_total=_int(inv.get("memory_total")) or 0,
            memory_used=_int(load.get("memory_used")) or 0,
            disk_total=_int(inv.get("disk_total")) or 0,
            disk_used=_int(load.get("disk_used")) or 0,
            gpus=tuple(gpus),
            driver_version=_str(inv.get("driver_version")),
            cuda_version=_str(inv.get("cuda_version")),
            labels=tuple(str(x) for x in _list(inv.get("labels"))),
            slots_total=_int(h.get("slots")) or 0,
            slots_busy=len(running),
            running=running,
            draining=draining,
            drain_reason=h.get("drain_reason") or None,
            agent_pid=_int(h.get("agent_pid")),
            hostname=h.get("hostname"),
            queues=tuple(str(x) for x in _list(_json(h.get("queues")))),
            started_at=_float(h.get("started")),
            version=(h.get("version") or "")[:64] or None,
        )

    def drain(self, node: str, reason: str = "") -> None:
        """Stop a node taking new jobs; what it runs finishes."""
        if not self.redis.exists(keys.node(node)):
            raise GridError(f"no node {node!r} on this grid")
        now = self.broker_time()
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.node(node), mapping={"draining": "1", "drain_reason": reason or "drained by operator"})
            events.emit(pipe, now, "node_draining", node=node, message=reason or "drained by operator")
            pipe.execute()

    def resume(self, node: str) -> None:
        if not self.redis.exists(keys.node(node)):
            raise GridError(f"no node {node!r} on this grid")
        now = self.broker_time()
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.node(node), mapping={"draining": "0", "drain_reason": ""})
            events.emit(pipe, now, "node_resumed", node=node, message="taking jobs again")
            pipe.execute()

    # ---- output -------------------------------------------------------------------------

    def tail(self, job_id: str, after: str = "0-0", count: int = 1000, block_ms: int | None = None) -> list[OutputChunk]:
        """Output chunks after stream id `after` (resume by passing the last chunk's id)."""
        key = keys.output(job_id)
        if block_ms is not None:
            reply = self.redis.xread({key: after}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        else:
            entries = self.redis.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        return [_chunk(eid, fields) for eid, fields in entries]

    def latest_output(self, job_ids: Sequence[str], count: int) -> dict[str, list[OutputChunk]]:
        """The newest `count` output entries of each job, oldest first; one pipeline."""
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.xrevrange(keys.output(jid), count=count)
            replies = pipe.execute()
        return {jid: [_chunk(eid, fields) for eid, fields in reversed(entries)]
                for jid, entries in zip(job_ids, replies, strict=True)}

    def output_trimmed(self, job_id: str) -> int:
        """Entries the broker dropped from the head of a job's output stream (MAXLEN)."""
        key = keys.output(job_id)
        if not self.redis.exists(key):
            return 0  # no stream (yet, or any more); XINFO would answer with an error
        try:
            info = self.redis.xinfo_stream(key)
        except redis.ResponseError:
            return 0  # expired between the two calls
        added = info.get("entries-added")
        if added is None:
            return 0
        return max(0, int(added) - int(info.get("length") or 0))

    # ---- control ------------------------------------------------------------------------

    def _rq_job(self, job_id: str) -> RQJob:
        try:
            return RQJob.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            raise JobNotFound(f"no job {job_id!r} on this grid") from None

    def state(self, job_id: str) -> JobState:
        status = self.redis.hget(keys.rq_job(job_id), "status")
        if status is None:
            raise JobNotFound(f"no job {job_id!r} on this grid")
        return RQ_TO_STATE.get(_s(status), JobState.QUEUED)

    def cancel(self, job_id: str, wait: float = 15.0) -> JobState:
        """Cancel a queued, waiting, scheduled or running job; return the state it reached.

        A running job is killed (whole process tree) by its agent; this waits up to `wait`
        seconds for the agent to confirm by moving the job to `canceled`.
        """
        state = self.state(job_id)
        if state.terminal:
            return state
        now = self.broker_time()
        # The flag first: a job dequeued between our read and our cancel still sees it.
        self.redis.set(keys.cancel(job_id), "1", ex=7 * 24 * 3600)
        if state is not JobState.RUNNING:
            job = self._rq_job(job_id)
            try:
                job.cancel()
            except InvalidJobOperation:
                pass  # already canceled by a concurrent call
            else:
                state = self.state(job_id)
                if state is JobState.CANCELED:
                    self._release(job)
                    self._record_cancel(job_id, now, "canceled before it started")
                    self.fail_dependents(job_id, now)
                    return state
        try:
            send_stop_job_command(self.redis, job_id, serializer=SERIALIZER)
        except (InvalidJobOperation, NoSuchJobError):
            pass  # not started yet, or already done: the flag covers both
        deadline = time.monotonic() + wait
        while True:
            state = self.state(job_id)
            if state.terminal or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def _release(self, job: RQJob) -> None:
        """Give back a placed job's reservation and throttle slot."""
        placement = job.meta.get("placement") or {}
        with self.redis.pipeline(transaction=False) as pipe:
            if placement.get("node"):
                pipe.hdel(keys.node_held(placement["node"]), job.id)
            if job.meta.get("group"):
                pipe.srem(keys.group_slots(job.meta["group"]), job.id)
            pipe.hdel(keys.WHY, job.id)
            pipe.hdel(keys.PRIORITY, job.id)
            pipe.execute()

    def why(self, job_id: str) -> list[str]:
        """Why a job is not running, in plain words (per node for a job waiting for placement)."""
        from gridcore.placement import Fit, explain

        job = self.get(job_id)
        if job.state is JobState.RUNNING:
            return [f"running on {job.node}"]
        if job.state.terminal:
            return [f"{job.state.value}" + (f": {job.reason}" if job.reason else "")]
        if job.state is JobState.WAITING:
            return [f"waiting for {', '.join(job.waiting_on) or 'its dependencies'}"]
        if job.state is JobState.SCHEDULED:
            return ["scheduled for a later retry"]
        origin = _s(self.redis.hget(keys.rq_job(job_id), "origin")) or ""
        if origin.startswith("node."):
            return [f"placed on {origin[5:]}; waiting for a free slot there"]
        if origin != keys.PENDING_QUEUE:
            serving = [n for n in self.nodes() if job.queue in (n.queues or ())]
            up = [n for n in serving if n.state is NodeState.UP]
            if not up:
                if any(n.state is NodeState.DRAINING for n in serving):
                    return [f"every node serving queue {job.queue!r} that is up is draining"]
                return [f"no node serving queue {job.queue!r} is up"]
            busy = all(n.slots_busy >= n.slots_total for n in up)
            return ["queued; every slot serving it is busy" if busy else "queued; a slot should take it shortly"]
        stored = _s(self.redis.hget(keys.WHY, job_id))
        nodes = self.nodes()
        held = self.committed(nodes)
        res = Resources.from_dict(job.resources)
        lines = [str(v) for v in explain(res, nodes, held, queue=job.queue) if v.fit is not Fit.NOW]
        if stored and stored.startswith("throttled"):
            lines.insert(0, stored)
        return lines or ["waiting for the next placement pass"]

    def committed(self, nodes: Sequence[Node] | None = None):
        """node name -> what running and placed jobs hold there (placement.Committed)."""
        from gridcore.reservations import Reservations

        nodes = self.nodes() if nodes is None else nodes
        return Reservations(self.redis).committed([n.name for n in nodes])

    def _record_cancel(self, job_id: str, now: float, message: str) -> None:
        record = {"reason": "canceled", "reason_kind": "canceled", "end": now, "exit_code": None, "signal": None}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.result(job_id), json.dumps(record), ex=self.settings.result_ttl, nx=True)
            events.emit(pipe, now, "canceled", job=job_id, message=message)
            pipe.execute()

    def fail_dependents(self, job_id: str, now: float) -> list[str]:
        """Mark every job that needs `job_id` to succeed as failed ('dependency failed')."""
        from gridcore.dependencies import fail_dependents

        return fail_dependents(self.redis, job_id, now, self.settings.result_ttl)

    def requeue(self, job_id: str) -> None:
        """Run a failed or canceled job again: its envelope is re-signed by this submitter."""
        state = self.state(job_id)
        if state not in (JobState.FAILED, JobState.CANCELED):
            raise GridError(f"job {job_id} is {state.value}; only failed or canceled jobs can be requeued")
        job = self._rq_job(job_id)
        if job.func_name != keys.RUNNER_FUNC or not job.args:
            raise GridError(f"job {job_id} is not a grid job")
        envelope = self._verified_envelope(job.args[0])
        now = self.broker_time()
        envelope.update(
            issued_at=now,
            expires_at=now + self.settings.envelope_ttl,
            nonce=secrets.token_hex(16),
            submitter=self.signer.name,
        )
        job.args = (self.signer.sign(envelope),)
        meta = dict(job.meta)
        meta.pop("reason", None)
        meta.pop("run", None)
        meta["requeued_by"] = self.signer.name
        job.meta = meta
        registry = (job.failed_job_registry if state is JobState.FAILED
                    else CanceledJobRegistry(job.origin, connection=self.redis, serializer=SERIALIZER))
        with self.redis.pipeline() as pipe:
            job.save(pipeline=pipe)
            pipe.delete(keys.result(job_id), keys.output(job_id), keys.cancel(job_id))
            events.emit(pipe, now, "requeued", job=job_id, message=f"by {self.signer.name}")
            pipe.execute()
        try:
            registry.requeue(job_id)
        except InvalidJobOperation as e:
            raise GridError(f"cannot requeue {job_id}: {e}") from None
        reposition(self.redis, [job_id])  # RQ put it at the back: where its priority says

    def _verified_envelope(self, signed: Any) -> dict[str, Any]:
        # Re-signing what the broker holds would launder a tampered command: verify first,
        # against the authorized keys here and this submitter's own key.
        ak = AuthorizedKeys(self.settings.authorized_keys_path)
        try:
            envelope, _ = verify(signed, ak)
            return envelope
        except Refused as first:
            if isinstance(signed, dict) and signed.get("kid") == self.signer.kid:
                own = _OwnKey(self.signer)
                try:
                    return verify(signed, own)[0]
                except Refused as e:
                    raise GridError(f"will not requeue: stored envelope fails verification ({e})") from None
            raise GridError(f"will not requeue: cannot verify the stored envelope ({first})") from None

    def wait(self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.1) -> dict[str, JobState]:
        """Block until every job is terminal (or timeout); return their states."""
        deadline = None if timeout is None else time.monotonic() + timeout
        states: dict[str, JobState] = {}
        while True:
            with self.redis.pipeline(transaction=False) as pipe:
                for jid in job_ids:
                    pipe.hget(keys.rq_job(jid), "status")
                raw = pipe.execute()
            for jid, s in zip(job_ids, raw, strict=True):
                if s is None:
                    raise JobNotFound(f"no job {jid!r} on this grid")
                states[jid] = RQ_TO_STATE.get(_s(s), JobState.QUEUED)
            if all(s.terminal for s in states.values()):
                return states
            if deadline is not None and time.monotonic() > deadline:
                return states
            time.sleep(poll)

    # ---- events -------------------------------------------------------------------------

    def events(self, count: int = 100, before: str = "+") -> list[Event]:
        """The newest grid events, newest first."""
        rows = self.redis.xrevrange(keys.EVENTS, max=before, count=count)
        out = []
        for eid, f in rows:
            f = {_s(k): _s(v) for k, v in f.items()}
            out.append(
                Event(
                    id=_s(eid),
                    time=float(f.get("t") or 0),
                    kind=f.get("kind") or "",
                    job=f.get("job") or None,
                    node=f.get("node") or None,
                    message=f.get("msg") or "",
                )
            )
        return out


class _OwnKey(AuthorizedKeys):
    """Authorized-keys view holding only the submitter's own public key."""

    def __init__(self, signer: Signer):
        self._signer = signer

    def lookup(self, kid: str):
        if kid != self._signer.kid:
            raise Refused(f"signing key {kid} is not this submitter's")
        return self._signer.key.public_key(), self._signer.name


def _chunk(eid: bytes | str, fields: dict) -> OutputChunk:
    f = {_s(k): v for k, v in fields.items()}
    kind = _s(f.get("s")) or "o"
    eid = _s(eid)
    if kind == "x":
        code = _s(f.get("code"))
        sig = _s(f.get("sig"))
        return OutputChunk(
            id=eid,
            stream="end",
            exit_code=int(code) if code not in (None, "") else None,
            signal=int(sig) if sig not in (None, "") else None,
            reason=_s(f.get("reason")) or None,
        )
    name = {"o": "stdout", "e": "stderr", "n": "note"}.get(kind, "note")
    data = f.get("d") or b""
    return OutputChunk(id=eid, stream=name, data=data if isinstance(data, bytes) else data.encode())
