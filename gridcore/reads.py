"""`Reads`: every read of the grid's jobs, queues, sweep groups, nodes, output and events.

Usable with just a broker connection (the agent's placement pass reads nodes through it).
Each call is bounded (one page, one pipeline or a few) and none writes to the broker; RQ's
registry cleanup is never triggered from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from gridcore import events, keys, quarantine
from gridcore.errors import AmbiguousId, GridError, JobNotFound
from gridcore.jobfilter import JobFilter
from gridcore.models import Event, Job, JobState, Node, NodeState, OutputChunk, QueueStats
from gridcore.records import NODE_FIELDS, GroupRecord, JobMeta, decode_output, lenient, text
from gridcore.views import JOB_FIELDS, STATE_FIELDS, job_state, job_view, node_view, node_view_state

if TYPE_CHECKING:
    from gridcore.signedview import EnvelopeReader

SHORT_ID_MIN = 6
"""Fewest characters of a job id that `resolve` takes for the whole id."""

SHORT_ID_MATCHES = 6
"""Matches a short id lists at most when it names more than one job."""

ATTEMPTS_READ = 1000
"""Newest attempt records `get` reads of one job (an envelope allows at most 1000 attempts)."""

FILTER_WINDOW = 1000
"""Newest jobs a text filter is matched against: the broker has no full-text index."""

FIND_ALL_CAP = 10_000
"""Most jobs `find_all` reads (what `grid requeue --all-failed` considers at once)."""


class Reads:
    """The grid's reads on one connection."""

    def __init__(self, conn: redis.Redis, envelopes: Callable[[], EnvelopeReader] | None = None):
        self.redis = conn
        self._envelopes = envelopes  # set: jobs show their signed command, verified here
        self._reader: EnvelopeReader | None = None

    @property
    def envelopes(self) -> EnvelopeReader | None:
        """The envelope reader, made on first need (it loads the signing library and the keys)."""
        if self._reader is None and self._envelopes is not None:
            self._reader = self._envelopes()
        return self._reader

    # ---- jobs ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """One job with everything `grid show` prints: its attempts and what it waits on too."""
        jobs = self._fetch([job_id], detail=True)
        if not jobs:
            raise JobNotFound(f"no job {job_id!r} on this grid")
        set_aside = quarantine.about(self.redis, job_id)  # records of it that were set aside, named
        return replace(jobs[0], problems=jobs[0].problems + tuple(set_aside)) if set_aside else jobs[0]

    def quarantined(self, nodes_only: bool = False) -> list[str]:
        """Corrupt records set aside (gridcore/quarantine.py), those of nodes' keys only if asked."""
        return quarantine.entries(self.redis, keys.node("") if nodes_only else "")

    def resolve(self, job_id: str) -> str:
        """The job id that `job_id` names: itself, or the one job whose id starts with it
        (at least SHORT_ID_MIN characters). Raises JobNotFound or AmbiguousId."""
        if self.exists(job_id):
            return job_id
        if len(job_id) < SHORT_ID_MIN:
            raise JobNotFound(f"no job {job_id!r} on this grid (a short id needs {SHORT_ID_MIN} characters or more)")
        for prefix in dict.fromkeys((job_id, job_id.lower())):
            found = self._starting_with(prefix)
            if len(found) == 1:
                return found[0]
            if found:
                raise AmbiguousId(prefix, found)
        raise JobNotFound(f"no job {job_id!r} on this grid")

    def _starting_with(self, prefix: str) -> list[str]:
        """Ids of live jobs starting with `prefix` (at most SHORT_ID_MATCHES; expired ones left out)."""
        start = prefix.encode()
        ids = [text(i) for i in self.redis.zrangebylex(keys.JOB_IDS, b"[" + start, b"(" + start + b"\xff",
                                                         start=0, num=SHORT_ID_MATCHES * 4)]
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.exists(keys.rq_job(jid))
            alive = pipe.execute()
        return [jid for jid, ok in zip(ids, alive, strict=True) if ok][:SHORT_ID_MATCHES]

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """Several jobs in one pipeline (list fields only); ids that no longer exist are skipped."""
        return self._fetch(job_ids)

    def exists(self, job_id: str) -> bool:
        """Is there a job with this id (not expired)?"""
        return bool(self.redis.exists(keys.rq_job(job_id)))

    def _fetch(self, ids: Sequence[str], detail: bool = False) -> list[Job]:
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hmget(keys.rq_job(jid), JOB_FIELDS)
                pipe.get(keys.result(jid))
                if detail:
                    pipe.lrange(keys.attempts(jid), -ATTEMPTS_READ, -1)
                    pipe.smembers(keys.rq_dependencies(jid))
                if self.envelopes is not None:
                    pipe.hget(keys.rq_job(jid), "data")
            replies = pipe.execute(raise_on_error=False)
        step = (4 if detail else 2) + (self.envelopes is not None)
        # A key of another type (anyone can write one) reads as missing, for its own job only;
        # a payload that cannot be read goes to the envelope reader as it is (it says why).
        missing = ([None] * len(JOB_FIELDS), None, [], set())
        data_at = step - 1 if self.envelopes is not None else -1
        replies = [missing[i % step] if isinstance(x, redis.ResponseError) and i % step != data_at else x
                   for i, x in enumerate(replies)]
        out = []
        for i, jid in enumerate(ids):
            fields, result = replies[i * step], replies[i * step + 1]
            if fields[0] is None:
                continue  # expired or deleted since it was indexed
            more = replies[i * step + 2 : i * step + 4] if detail else (None, ())
            signed = self.envelopes.read(replies[i * step + step - 1]) if self.envelopes is not None else None
            job = job_view(jid, fields, result, *more, signed=signed)
            if detail and self.envelopes is not None:  # each attempt: was it signed by a pinned node?
                job = replace(job, attempts=self.envelopes.attempts(jid, job.attempts))
                if job.state is JobState.CANCELED:  # and its cancel by a trusted operator key?
                    job = replace(job, cancel=self.envelopes.canceled(jid, self._cancel_flag(jid), signed))
            out.append(job)
        return out

    def _cancel_flag(self, job_id: str) -> bytes | None:
        from gridcore import cancelproof  # only a detail read of a canceled job needs it

        return cancelproof.stored(self.redis, job_id)

    def state(self, job_id: str) -> JobState:
        """A job's state alone (one field read)."""
        status = self.redis.hget(keys.rq_job(job_id), "status")
        if status is None:
            raise JobNotFound(f"no job {job_id!r} on this grid")
        return job_state(job_id, status)

    def wait(self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.5,
             since: str | None = None) -> dict[str, JobState]:
        """Block until every job is terminal (or timeout); return their states. Woken by each job's
        end event; `poll`: seconds between reads when no event comes; `since`: an event before
        which none of them had ended (gridcore/waiting.py)."""
        from gridcore import waiting

        return waiting.wait(self.redis, job_ids, timeout=timeout, poll=poll, since=since)

    # ---- listing ------------------------------------------------------------------------

    def list(self, state: JobState | str | None = None, queue: str | None = None, node: str | None = None,
             group: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the total matching count.

        The most selective index drives paging (group, node, state, queue, else all jobs); other
        filters are applied to that page, so a combined filter can return a short page.
        """
        state = JobState(state) if isinstance(state, str) else state
        limit = max(1, min(limit, 1000))
        if state is not None and not group and not node:
            queues = [queue] if queue else self.queue_names()
            return self._state_page(state, queues, offset, limit), self._state_count(state, queues)
        if group:  # cell order, not newest first
            index, ids = keys.group_jobs(group), self.redis.zrange(keys.group_jobs(group), offset, offset + limit - 1)
        else:
            index = keys.node_jobs(node) if node else keys.queue_jobs(queue) if queue else keys.JOBS
            ids = self.redis.zrevrange(index, offset, offset + limit - 1)
        jobs = self._fetch([text(x) for x in ids])
        if state is not None:
            jobs = [j for j in jobs if j.state is state]
        if queue and (group or node):
            jobs = [j for j in jobs if j.queue == queue]
        return jobs, int(self.redis.zcard(index))

    def _state_ids(self, state: JobState, queues: Sequence[str], n: int) -> list[str]:
        """Up to n ids of each queue in one state, queue by queue, each newest first; one pipeline."""
        with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                if state is JobState.QUEUED:
                    pipe.lrange(keys.rq_queue(q), -n, -1)
                else:
                    pipe.zrevrange(keys.rq_registry(state.value, q), 0, n - 1)
            replies = _or(pipe.execute(raise_on_error=False), [])
        if state is JobState.QUEUED:
            return [text(x) for ids in replies for x in reversed(ids)]
        # StartedJobRegistry entries are "<job id>:<execution id>".
        return [text(m).split(":")[0] for rows in replies for m in rows]

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
            return sum(_or(pipe.execute(raise_on_error=False), 0))

    def find(self, flt: JobFilter, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
        """One page of the jobs a typed filter selects, and how many it selects. State, queue and
        node page through the indexes; text is matched on the newest FILTER_WINDOW of those."""
        if not flt.text:
            return self.list(state=flt.state, queue=flt.queue, node=flt.node, offset=offset, limit=limit)
        window, _ = self.list(state=flt.state, queue=flt.queue, node=flt.node, limit=FILTER_WINDOW)
        hits = [j for j in window if flt.matches(j)]
        return hits[offset : offset + limit], len(hits)

    def find_all(self, flt: JobFilter, cap: int = FIND_ALL_CAP) -> list[Job]:
        """The jobs the filter selects among the newest `cap` its state, queue and node select."""
        hits: list[Job] = []
        offset, total = 0, 1
        while offset < min(total, cap):
            page, total = self.list(state=flt.state, queue=flt.queue, node=flt.node, offset=offset,
                                    limit=min(1000, cap - offset))
            hits += [j for j in page if flt.matches(j)]
            offset += 1000
        return hits

    # ---- queues -------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Every queue the grid routed to, every queue RQ knows, and every node's own queue (placed
        jobs run from it, and RQ forgets a queue once it is empty: its registries stay)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.QUEUES)
            pipe.smembers(keys.rq_queues())
            pipe.zrange(keys.NODES, 0, -1)
            grid_queues, rq_queues, nodes = pipe.execute()
        names = {text(n) for n in grid_queues}
        names.update(text(k).removeprefix(keys.rq_queue_prefix()) for k in rq_queues)
        names.update(keys.node_queue(text(n)) for n in nodes)
        return sorted(n for n in names if n)

    def queue_stats(self, name: str) -> QueueStats:
        """One queue's counts by state and its workers."""
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
            r = _or(pipe.execute(raise_on_error=False), 0)
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
        gids = [text(g) for g in self.redis.zrevrange(keys.GROUPS, offset, offset + limit - 1)]
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
            return [job_state(jid, st) for jid, st in zip(ids, _or(pipe.execute(raise_on_error=False), None),
                                                          strict=True)]

    def _groups(self, gids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each group's record and counts, None where it is gone; one pipeline for every cell."""
        with self.redis.pipeline(transaction=False) as pipe:
            for gid in gids:
                pipe.hgetall(keys.group(gid))
                pipe.zrange(keys.group_jobs(gid), 0, -1)
            replies = _or(pipe.execute(raise_on_error=False), {})
        cells = [[text(i) for i in replies[2 * n + 1]] for n in range(len(gids))]
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
            rec = GroupRecord.decode(raw, keys.group(gid), gid)
            size = rec.size or len(ids)
            done = counts["finished"] + counts["failed"] + counts["canceled"]
            out.append({
                "id": gid, "name": rec.name, "size": size, "max_parallel": rec.max_parallel or None,
                "submitted": rec.submitted, "submitter": rec.submitter or None, "axes": rec.axes or [],
                "counts": counts, "progress": done / size if size else 0.0, "jobs": ids,
            })
        self._group_usage([g for g in out if g is not None])
        return out

    def _group_usage(self, groups: Sequence[dict[str, Any]]) -> None:
        """Add to each group its cells' usage, each figure's cells, median and max (efficiency.Spread's fields:
        two round trips, whatever the sweep's size), and the first cell's request."""
        from gridcore import efficiency  # only `groups` reads usage: a short command goes without

        pairs = [(g, f) for g in groups for f in efficiency.FIGURES]
        with self.redis.pipeline(transaction=False) as pipe:
            for g, f in pairs:
                pipe.zcard(keys.group_usage(g["id"], f))
            for g in groups:
                pipe.hget(keys.rq_job(g["jobs"][0]), "meta") if g["jobs"] else pipe.echo("")
            replies = pipe.execute()
        counts, metas = replies[:len(pairs)], replies[len(pairs):]
        with self.redis.pipeline(transaction=False) as pipe:
            for (g, f), n in zip(pairs, counts, strict=True):
                key = keys.group_usage(g["id"], f)
                pipe.zrange(key, (n - 1) // 2, n // 2, withscores=True)  # the middle one or two
                pipe.zrange(key, -1, -1, withscores=True)
            ranges = pipe.execute()
        for g in groups:
            g["usage"] = {}
        for i, ((g, f), n) in enumerate(zip(pairs, counts, strict=True)):
            mid, top = ranges[2 * i], ranges[2 * i + 1]
            if n and mid and top:
                g["usage"][f] = {"cells": int(n), "median": sum(v for _, v in mid) / len(mid), "max": top[0][1]}
        for g, raw in zip(groups, metas, strict=True):
            meta = lenient(JobMeta, raw or None, f"{keys.rq_job(g['jobs'][0]) if g['jobs'] else ''} meta")
            g["resources"] = meta.resources.model_dump() if meta is not None else {}

    # ---- nodes --------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Every registered node, with its state by the age of its own heartbeat (broker time)."""
        now, registry = self._registry()
        with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in registry:
                pipe.hmget(keys.node(name), NODE_FIELDS)
                pipe.hkeys(keys.node_running(name))
            # A node key of another type (anyone can write one) reads as empty, for that node only.
            r = pipe.execute(raise_on_error=False)
        r = [([None] * len(NODE_FIELDS) if i % 2 == 0 else []) if isinstance(x, redis.ResponseError) else x
             for i, x in enumerate(r)]
        return [node_view(name, dict(zip(NODE_FIELDS, r[2 * i], strict=True)), r[2 * i + 1], now, score)
                for i, (name, score) in enumerate(registry)]

    def node_states(self) -> dict[str, NodeState]:
        """Every node's state, as `nodes()` gives it, without its inventory, load or jobs."""
        now, registry = self._registry()
        with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in registry:
                pipe.hmget(keys.node(name), STATE_FIELDS)
            r = [[None] * len(STATE_FIELDS) if isinstance(x, redis.ResponseError) else x
                 for x in pipe.execute(raise_on_error=False)]
        return {name: node_view_state(name, dict(zip(STATE_FIELDS, fields, strict=True)), now, score)
                for (name, score), fields in zip(registry, r, strict=True)}

    def _registry(self) -> tuple[float, list[tuple[str, float]]]:
        """Broker time now and the registered node names with their scores (believed only for an
        agent of an earlier version: each node's heartbeat is in its own hash, NodeRecord.age)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(keys.NODES, 0, -1, withscores=True)
            now_raw, members = pipe.execute()
        return now_raw[0] + now_raw[1] / 1e6, [(text(m), score) for m, score in members]

    def node(self, name: str) -> Node | None:
        """One node by name, or None."""
        return next((n for n in self.nodes() if n.name == name), None)

    # ---- output and events --------------------------------------------------------------

    def tail(self, job_id: str, after: str = "0-0", count: int = 1000,
             block_ms: int | None = None) -> list[OutputChunk]:
        """Output chunks after stream id `after` (resume by passing the last chunk's id)."""
        key = keys.output(job_id)
        if block_ms is not None:
            reply = self.redis.xread({key: after}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        else:
            entries = self.redis.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        return [decode_output(eid, fields, key) for eid, fields in entries]

    def latest_output(self, job_ids: Sequence[str], count: int) -> dict[str, list[OutputChunk]]:
        """The newest `count` output entries of each job, oldest first; one pipeline."""
        with self.redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.xrevrange(keys.output(jid), count=count)
            replies = pipe.execute()
        return {jid: [decode_output(eid, fields, keys.output(jid)) for eid, fields in reversed(entries)]
                for jid, entries in zip(job_ids, replies, strict=True)}

    def last_lines(self, job_id: str, lines: int, batch: int = 1000) -> list[OutputChunk]:
        """The entries holding the last `lines` lines of a job's output (stdout and stderr as they
        arrived), the first one cut to start at a line, and every note and end marker after it.

        Reads back from the end only as far as it must, `batch` entries a call."""
        key = keys.output(job_id)
        picked: list[OutputChunk] = []
        newlines, upper, ends_open = 0, "+", None
        while True:
            entries = self.redis.xrevrange(key, max=upper, min="-", count=batch)
            for eid, fields in entries:
                chunk = decode_output(eid, fields, key)
                picked.append(chunk)
                if chunk.stream not in ("stdout", "stderr") or not chunk.data:
                    continue
                if ends_open is None:
                    ends_open = not chunk.data.endswith(b"\n")
                newlines += chunk.data.count(b"\n")
                # A line starts after the newline that ends the line before it.
                if newlines - (0 if ends_open else 1) >= lines:
                    return _from_line(picked[::-1], newlines - lines + (1 if ends_open else 0))
            if len(entries) < batch:
                return picked[::-1]
            upper = f"({text(entries[-1][0])}"

    def events(self, count: int = 100, before: str = "+") -> list[Event]:
        """The newest grid events, newest first."""
        return events.newest(self.redis, count, before)


def _from_line(chunks: list[OutputChunk], skip: int) -> list[OutputChunk]:
    """`chunks` after their first `skip` newlines (stdout and stderr together)."""
    for i, c in enumerate(chunks):
        if c.stream not in ("stdout", "stderr"):
            continue
        n = c.data.count(b"\n")
        if n < skip:
            skip -= n
            continue
        cut = 0
        for _ in range(skip):
            cut = c.data.index(b"\n", cut) + 1
        rest = c.data[cut:]
        first = [replace(c, data=rest, offset=None if c.offset is None else c.offset + cut,
                         line=None if c.line is None else c.line + skip)] if rest else []
        return first + chunks[i + 1 :]
    return chunks


def _or(replies: list, missing: Any) -> list:
    """Pipeline replies with a key of another type (anyone can write one) read as `missing`:
    one bad queue or registry must not fail the whole listing."""
    return [missing if isinstance(x, redis.ResponseError) else x for x in replies]
