"""The runner end to end: real agent, real broker, real processes."""

from __future__ import annotations

import json

import pytest

from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from gridcore.models import JobSpec, JobState

pytestmark = pytest.mark.both_brokers


def test_echo_hello_finishes_with_result(grid, agents, r):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="echo hello; echo oops >&2", name="hello"))
    states = grid.wait([jid], timeout=20)
    assert states[jid] is JobState.FINISHED
    job = grid.get(jid)
    assert job.exit_code == 0 and job.signal is None and job.reason is None
    assert job.stdout == "hello\n" and job.stderr == "oops\n"
    assert job.node == "node-a" and job.slot == 0
    assert job.started_at <= job.ended_at and job.duration >= 0
    # The same job through RQ's own API, JSON serializer.
    rq_job = RQJob.fetch(jid, connection=r, serializer=JSONSerializer)
    assert rq_job.get_status() == "finished"
    assert rq_job.return_value()["stdout"] == "hello\n"


def test_nonzero_exit_is_failed_with_result(grid, agents):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="echo partial; exit 3"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FAILED
    job = grid.get(jid)
    assert job.exit_code == 3 and job.reason == "exit code 3" and job.stdout == "partial\n"


def test_output_stream_has_chunks_and_end_marker(grid, agents):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(argv=("python3", "-c", "import sys; print('a'); sys.stderr.write('b\\n'); print('c')")))
    grid.wait([jid], timeout=20)
    chunks = grid.tail(jid)
    out = b"".join(c.data for c in chunks if c.stream == "stdout")
    err = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert out == b"a\nc\n" and err == b"b\n"
    assert chunks[-1].stream == "end" and chunks[-1].exit_code == 0
    # Resuming from a chunk id returns only what came after it.
    assert grid.tail(jid, after=chunks[0].id) == chunks[1:]


def test_timeout_kills_the_job(grid, agents):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="sleep 30", timeout=0.5))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FAILED
    job = grid.get(jid)
    assert job.reason.startswith("timeout") and job.signal == 15


def test_cwd_env_and_missing_program(grid, agents, tmp_path):
    agents("node-a", slots=1)
    a = grid.submit(JobSpec(command='pwd; echo "$GREETING"', cwd=str(tmp_path), env={"GREETING": "hi there"}))
    b = grid.submit(JobSpec(argv=("/no/such/program",)))
    grid.wait([a, b], timeout=20)
    assert grid.get(a).stdout == f"{tmp_path}\nhi there\n"
    jb = grid.get(b)
    assert jb.state is JobState.FAILED and jb.exit_code == 127 and "cannot start" in jb.reason


def test_events_record_the_lifecycle(grid, agents):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="true"))
    grid.wait([jid], timeout=20)
    kinds = [e.kind for e in grid.events() if e.job == jid]
    assert kinds == ["finished", "started", "submitted"]
    assert json.loads(json.dumps([e.to_dict() for e in grid.events()]))


def test_a_finished_jobs_rq_record_is_whole(grid, agents, r, settings):
    """The end writes only what it changes in RQ's job hash (not RQ's whole save): every field
    the submit wrote is still there, unchanged but for the status, and RQ reads the job ended."""
    from rq.registry import FinishedJobRegistry
    from rq.results import Result as RQResult

    from gridcore import keys

    jid = grid.submit(JobSpec(command="true"))
    queued = r.hgetall(keys.rq_job(jid))
    agents("node-a", slots=1)
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    ended = r.hgetall(keys.rq_job(jid))
    changed = {k for k in queued if ended.get(k) != queued[k]}
    assert changed <= {b"status", b"meta", b"last_heartbeat", b"started_at", b"ended_at", b"worker_name"}, changed
    assert ended[b"status"] == b"finished" and ended[b"ended_at"] and ended[b"started_at"]
    rq_job = RQJob.fetch(jid, connection=r, serializer=JSONSerializer)
    assert rq_job.ended_at >= rq_job.started_at and rq_job.worker_name.startswith("node-a.")
    assert rq_job.latest_result().type is RQResult.Type.SUCCESSFUL
    registry = FinishedJobRegistry(rq_job.origin, connection=r, serializer=JSONSerializer)
    assert jid in registry.get_job_ids()
    assert 0 < r.ttl(keys.rq_job(jid)) <= settings.result_ttl
