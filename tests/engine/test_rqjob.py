"""A job the grid writes itself (gridcore/rqjob.py) is the job RQ's `enqueue_call` would write,
and a bulk submission writes the jobs a loop of single submissions would."""

from __future__ import annotations

import json
import zlib

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job

from gridcore import keys, rqjob
from gridcore.models import JobSpec
from gridcore.priority import PrioritizedQueue

STAMPS = ("created_at", "enqueued_at")


def _fields(r, job_id: str) -> dict[bytes, bytes]:
    h = r.hgetall(keys.rq_job(job_id))
    h[b"data"] = zlib.decompress(h[b"data"])
    return h


@pytest.mark.parametrize("retries, intervals", [(0, 0), (2, 5), (3, [1, 2, 3])])
def test_record_is_rqs(r, retries, intervals):
    meta = {"grid": 1, "name": "n", "priority": 0}
    args = ({"envelope": "{}", "sig": "s", "kid": "k"},)
    common = dict(timeout=93, result_ttl=600, failure_ttl=700, description="n")
    PrioritizedQueue("q", connection=r, serializer=rqjob.JSONSerializer).enqueue_call(
        func=keys.RUNNER_FUNC, args=args, job_id="by-rq", meta=meta,
        retry=Retry(max=retries, interval=intervals) if retries else None, **common)
    with r.pipeline() as pipe:
        rqjob.enqueue(pipe, "by-grid", "q", rqjob.queued_record(
            "by-grid", keys.RUNNER_FUNC, args, queue="q", meta=meta, retries=retries, retry_intervals=intervals,
            **common), priority=0)
        pipe.execute()
    ours, theirs = _fields(r, "by-grid"), _fields(r, "by-rq")
    assert {k: v for k, v in ours.items() if k.decode() not in STAMPS} == \
        {k: v for k, v in theirs.items() if k.decode() not in STAMPS}
    assert set(ours) == set(theirs)
    assert r.lrange(keys.rq_queue("q"), 0, -1) == [b"by-rq", b"by-grid"]
    assert r.smembers(keys.rq_queues()) == {keys.rq_queue("q").encode()}
    job = Job.fetch("by-grid", connection=r, serializer=rqjob.JSONSerializer)
    assert (job.func_name, job.args, job.meta, job.origin) == (keys.RUNNER_FUNC, list(args), meta, "q")


def test_rq_key_constants_are_rqs():
    assert keys.rq_job("x") == Job.key_for("x") and keys.rq_job_prefix() == Job.redis_job_namespace_prefix
    assert keys.rq_queue_prefix() == Queue.redis_queue_namespace_prefix
    assert keys.rq_queues() == Queue.redis_queues_keys


def test_submit_many_writes_what_submit_writes(grid, r):
    specs = [JobSpec(command="echo one", name="a", priority=3, retries=1, timeout=60, env={"A": "1"}),
             JobSpec(argv=("echo", "two"), queue="other")]
    singles = [grid.submit(s) for s in specs]
    bulk = grid.submit_many(specs)

    def comparable(jid: str) -> dict:
        h = _fields(r, jid)
        meta = json.loads(h.pop(b"meta"))
        meta.pop("submitted")
        func, _, (signed,), _ = json.loads(h.pop(b"data"))
        env = json.loads(signed["envelope"])
        for k in ("job_id", "issued_at", "expires_at", "nonce", "env_digest"):  # the digest is salted per job
            env.pop(k)
        sealed = json.loads(r.get(keys.secret_env(jid)) or "{}").get("env")  # what the digest covers
        return {**{k: v for k, v in h.items() if k.decode() not in STAMPS}, "meta": meta, "func": func, "env": env,
                "sealed": sealed}

    for one, many in zip(singles, bulk, strict=True):
        assert comparable(one) == comparable(many)
        assert r.zscore(keys.JOB_IDS, one) == r.zscore(keys.JOB_IDS, many) == 0
    assert [j.id for j in grid.list(queue="other")[0]] == [bulk[1], singles[1]]


def test_push_keeps_priority_order_with_negative_and_default_priorities(r):
    from gridcore.prioritypush import push

    arrivals = [("a", 0), ("b", -1), ("c", 0), ("d", 5), ("e", -1), ("f", 0), ("g", -2), ("h", 5), ("i", 0)]
    for jid, p in arrivals:
        push(r, keys.rq_queue("q"), jid, p)
    # Higher priorities first; within one priority, first come first served.
    expected = [jid for jid, _ in sorted(arrivals, key=lambda a: -a[1])]
    assert [j.decode() for j in r.lrange(keys.rq_queue("q"), 0, -1)] == expected


def _batch_lands_as_one_by_one(r, queued, arrivals) -> None:
    """`arrivals` pushed as one batch behind `queued` land where a push of each would, in
    priority order (first come first served within one)."""
    from gridcore.prioritypush import push, push_many

    for name in ("one-by-one", "batch"):
        for jid, p in queued:  # already waiting there, submitted earlier
            push(r, keys.rq_queue(name), jid, p)
    for jid, p in arrivals:
        push(r, keys.rq_queue("one-by-one"), jid, p)
    assert push_many(r, keys.rq_queue("batch"), arrivals) == len(arrivals)
    one_by_one = r.lrange(keys.rq_queue("one-by-one"), 0, -1)
    assert r.lrange(keys.rq_queue("batch"), 0, -1) == one_by_one
    assert [j.decode() for j in one_by_one] == [jid for jid, _ in sorted(queued + arrivals, key=lambda a: -a[1])]


def test_a_batch_of_pushes_lands_where_one_push_of_each_would(r):
    queued = [("q0", 0), ("q1", 5), ("q2", -1)]
    arrivals = [("a", 0), ("b", -1), ("c", 0), ("d", 5), ("e", -1), ("f", 0), ("g", -2), ("h", 5), ("i", 0), ("j", 7)]
    _batch_lands_as_one_by_one(r, queued, arrivals)


def test_submit_many_queues_each_job_where_its_priority_puts_it(grid, r):
    earlier = grid.submit(JobSpec(command="true", priority=1))
    priorities = [0, 5, -1, 5, 0, 1]
    ids = grid.submit_many([JobSpec(command=f"echo {i}", priority=p) for i, p in enumerate(priorities)])
    expected = [jid for jid, _ in sorted([(earlier, 1), *zip(ids, priorities)], key=lambda a: -a[1])]
    assert [j.decode() for j in r.lrange(keys.rq_queue("default"), 0, -1)] == expected


def test_submit_many_records_a_submitted_event_per_job_in_order(grid, r):
    specs = [JobSpec(command=f"echo {i}", name=f"n{i}" if i % 2 else None) for i in range(5)]
    single = grid.submit(JobSpec(command="true", name="single"))
    ids = grid.submit_many(specs)
    shown = list(reversed(grid.events(count=10)))
    assert [(e.kind, e.job, e.message) for e in shown] == [("submitted", single, "single")] + [
        ("submitted", jid, s.name or s.display_command) for jid, s in zip(ids, specs)]
    assert len({e.time for e in shown[1:]}) == 1 and shown[1].time >= shown[0].time > 0


def test_a_group_submission_records_one_submitted_event_for_the_group(grid, r):
    """A sweep or `grid submit --each` of 10,000 jobs would otherwise fill the capped event log
    (events.MAX_EVENTS) with its own lines, pushing out every node, refusal and failure event;
    each job's submission stays in its own record (its submit time, its group)."""
    from gridcore import events

    before = grid.submit(JobSpec(command="true", name="before"))
    cells = [JobSpec(command=f"echo {i}", group="g1", params={"_cell": i, "i": i}) for i in range(3)]
    ids = grid.submit_many([*cells, JobSpec(command="true", name="loose")],
                           groups={"g1": {"name": "sweep one", "max_parallel": None, "axes": ["i"]}})
    shown = [(e.kind, e.job, e.message) for e in reversed(grid.events(count=10))]
    assert shown == [("submitted", before, "before"), ("submitted", ids[3], "loose"),
                     ("submitted", None, "group g1 (sweep one): 3 jobs")]
    assert "submitted" in events.KINDS
    for jid in ids[:3]:
        job = grid.get(jid)
        assert job.group == "g1" and job.enqueued_at == grid.get(ids[3]).enqueued_at > 0


def test_runs_of_one_priority_in_a_batch_land_where_one_push_of_each_would(r):
    """A batch's runs of equal priorities go in with one RPUSH when a place of each would put
    each last; a run whose first job went in the middle goes job by job."""
    queued = [("q0", 3), ("q1", 0), ("q2", -3)]  # a -1 arriving goes ahead of q2, not last
    arrivals = [("a", -1), ("b", -1), ("c", -1), ("d", 0), ("e", 0), ("f", 0), ("g", 2), ("h", 2), ("i", -3),
                ("j", -3), ("k", -4), ("l", -4), ("m", 0), ("n", 0)]
    _batch_lands_as_one_by_one(r, queued, arrivals)
    assert r.hgetall(keys.PRIORITY) == {jid.encode(): str(p).encode() for jid, p in queued + arrivals if p}


def test_a_submitted_jobs_hash_is_the_queued_record(grid, r, settings):
    """The batch's one script writes each job's hash: the shared fields and its own, exactly
    what `queued_record` (held equal to RQ's by test_record_is_rqs) makes of them."""
    specs = [JobSpec(command="echo one", retries=2, retry_backoff=(1, 5)), JobSpec(command="echo two", timeout=30)]
    for jid, spec in zip(grid.submit_many(specs), specs, strict=True):
        h = r.hgetall(keys.rq_job(jid))
        func, _, args, _ = json.loads(zlib.decompress(h[b"data"]))
        expected = rqjob.queued_record(
            jid, func, args, queue=h[b"origin"].decode(), description=spec.display_command,
            timeout=int(h[b"timeout"]), result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
            meta=h[b"meta"].decode(), retries=spec.retries,
            retry_intervals=json.loads(h.get(b"retry_intervals", b"0")), stamp=h[b"created_at"].decode())
        written = {k.decode(): v for k, v in h.items()}
        assert written.pop("data") != b"" and written.keys() == expected.keys() - {"data"}
        assert written == {k: str(v).encode() if not isinstance(v, bytes) else v for k, v in expected.items()
                           if k != "data"}
        assert expected["data"] == zlib.compress(zlib.decompress(h[b"data"]), 0)


def test_a_failed_batch_ends_a_bulk_submission_there(grid, r, monkeypatch):
    """Batches are written in order, the next one signed while one is on its way: a batch the
    broker refuses raises in the submitter, and no batch after it is sent."""
    from gridcore import submission

    monkeypatch.setattr(submission, "BATCH", 10)
    ids = [f"bulk-{i:02d}" for i in range(35)]
    r.set(keys.rq_job(ids[13]), "not a hash")  # a writer's key of another type, in the second batch
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        grid.submit_many([JobSpec(command=f"echo {i}") for i in range(35)], job_ids=ids)
    indexed = {j.decode() for j in r.zrange(keys.JOBS, 0, -1)}
    assert indexed == set(ids[:20])  # the first two batches: the one that failed is written but for that job
    assert all(r.hget(keys.rq_job(j), "status") == b"queued" for j in ids[:20] if j != ids[13])
    assert not any(r.exists(keys.rq_job(j)) for j in ids[20:])
