"""RQ's records of an attempt that the book writes itself (agent/rqadapter/book.py) are what RQ's
own methods write, and RQ reads them back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq.job import Job
from rq.results import Result as RQResult
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from agent.rqadapter.book import RQBook
from gridcore import keys
from gridcore.records import Result


def _ended_job(r, jid: str) -> Job:
    job = Job.create("agent.runner.run_task", args=["signed"], connection=r, serializer=JSONSerializer, id=jid,
                     origin="default")
    job.save()
    job.started_at = rq_now()
    job.ended_at = job.started_at + timedelta(milliseconds=3)
    return job


def _entries(r, jid: str) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in r.xrange(keys.rq_results(jid))]


@pytest.mark.parametrize("ttl", [600, -1])
def test_the_success_result_is_the_one_rq_writes(r, ttl):
    jid = f"rq-result-{'forever' if ttl == -1 else ttl}"
    result = Result(exit_code=0, node="n1", slot=0, start=1.0, end=1.003, duration=0.003, run_id="run-1")
    job = _ended_job(r, jid)
    with r.pipeline() as pipe:  # RQ's own, as the book called it before writing it itself
        RQResult.create(job, RQResult.Type.SUCCESSFUL, return_value=result.model_dump(mode="json"), ttl=ttl,
                        worker_name="", pipeline=pipe, execution_id=result.run_id,
                        execution_started_at=job.started_at, execution_ended_at=job.ended_at)
        pipe.execute()
    rqs = _entries(r, jid)
    rqs_ttl = r.ttl(keys.rq_results(jid))
    r.delete(keys.rq_results(jid))

    with r.pipeline() as pipe:
        RQBook(r, ttl).record_success(pipe, job, result, None)
        pipe.execute()
    assert _entries(r, jid) == rqs
    assert (r.ttl(keys.rq_results(jid)) == -1) == (rqs_ttl == -1) == (ttl == -1)
    latest = Job.fetch(jid, connection=r, serializer=JSONSerializer).latest_result()
    assert latest.type is RQResult.Type.SUCCESSFUL
    assert latest.return_value == result.model_dump(mode="json")
    assert latest.execution_id == "run-1"
    assert latest.worker_name == ""
