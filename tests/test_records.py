"""The broker's records: every decoding is bounded and names the key and field it rejects."""

from __future__ import annotations

import json

import pytest

from gridcore import records
from gridcore.jobfilter import JobFilter, parse
from gridcore.models import Job, JobState
from gridcore.records import (ActiveEntry, Attempt, CorruptRecord, EndMarker, Envelope, HeldEntry, JobMeta,
                              NodeRecord, OutputEntry, Result, RunningEntry, decode_output)


def test_result_round_trip_and_attempt_subset():
    r = Result(node="n1", slot=0, start=10.0, end=12.5, duration=2.5, exit_code=3, reason="exit code 3",
               reason_kind="exit", stdout="out", run_id="r1")
    back = Result.decode(r.encode().encode(), "grid:result:j")
    assert back == r
    a = back.attempt(reason="agent shutdown")
    assert isinstance(a, Attempt) and a.reason == "agent shutdown" and a.exit_code == 3
    assert "stdout" not in json.loads(a.encode())


@pytest.mark.parametrize("raw, field", [
    (b'{"exit_code": "three"}', "exit_code"),
    (b'{"signal": 999}', "signal"),
    (b'{"start": -5}', "start"),
    (b'{"reason_kind": "whatever"}', "reason_kind"),
    (b'{"exit_code": 1e999}', "exit_code"),
])
def test_bad_field_is_named(raw, field):
    with pytest.raises(CorruptRecord) as e:
        Result.decode(raw, "grid:result:j")
    assert e.value.key == "grid:result:j" and e.value.field == field
    assert f"grid:result:j field {field}" in str(e.value)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"a string"', b"null"])
def test_bad_shape_is_refused(raw):
    with pytest.raises(CorruptRecord):
        Result.decode(raw, "grid:result:j")


def test_size_is_checked_before_parsing():
    huge = b'{"reason": "' + b"x" * (ActiveEntry.MAX_BYTES + 10) + b'"}'
    with pytest.raises(CorruptRecord, match="bytes, more than"):
        ActiveEntry.decode(huge, "grid:active")


def test_unknown_fields_are_ignored_for_rolling_upgrades():
    e = ActiveEntry.decode(b'{"node": "a", "slot": 1, "worker": "w", "started": 5, "new_field": [1]}', "k")
    assert e.owned_by("w") and not e.owned_by("v")


def test_envelope_requires_its_identity():
    with pytest.raises(CorruptRecord) as e:
        Envelope.decode(b'{"v": 1, "queue": "q", "issued_at": 1, "expires_at": 2, "nonce": "0123456789abcdef"}', "env")
    assert e.value.field == "job_id"


def test_meta_and_held_defaults():
    m = JobMeta.decode(b"{}", "rq:job:x")
    assert m.priority == 0 and m.resources.cpus == 1.0 and m.placement is None
    assert HeldEntry.decode(b'{"cpus": 2, "memory": 5, "gpus": [0]}', "h").gpus == [0]


def test_node_record_blanks_only_the_bad_field():
    n = NodeRecord.decode({b"inventory": b"{nope", b"slots": b"4", b"hb_interval": b"abc",
                           b"queues": b'["default", "gpu"]', b"draining": b"1"}, "grid:node:a")
    assert n.slots == 4 and n.queues == ("default", "gpu") and n.draining
    assert n.inventory.cpus == 0 and n.hb_interval == 2.0
    assert len(n.problems) == 2 and any("inventory" in p for p in n.problems)
    again = NodeRecord.decode(NodeRecord(slots=2, queues=("q",), version="1.2").encode(), "k")
    assert again.slots == 2 and again.queues == ("q",) and again.version == "1.2" and not again.problems


def test_output_entries():
    assert decode_output(b"1-1", OutputEntry("o", b"hi").fields(), "k").data == b"hi"
    end = decode_output("1-2", {k.encode(): v.encode() for k, v in EndMarker(None, 9, "killed", "signal").fields().items()}, "k")
    assert end.stream == "end" and end.signal == 9 and end.exit_code is None and end.reason == "killed"
    odd = decode_output(b"1-3", {b"s": b"?", b"d": b"x"}, "grid:out:j")
    assert odd.stream == "note" and b"unknown kind" in odd.data


def test_running_entry_phases():
    for e in (RunningEntry("claimed", worker="w"), RunningEntry("started", slot=3), RunningEntry("ended", worker="w")):
        assert RunningEntry.decode(e.encode().encode()) == e


def test_reason_kinds_are_the_literal():
    assert "lost" in records.REASON_KINDS and "oom" in records.REASON_KINDS


def _job(**kw) -> Job:
    base = dict(id="abcdef123456", name="fit", state=JobState.FAILED, queue="default", command="python fit.py")
    return Job(**{**base, **kw})


def test_one_filter_matches_what_the_console_shows():
    lost = _job(reason="node lost: n2 stopped heartbeating", reason_kind="lost")
    exit1 = _job(id="ffff00001111", reason="exit code 1", reason_kind="exit")
    f = parse("state:failed lost")
    assert f.matches(lost) and not f.matches(exit1)
    assert parse("abcdef").matches(lost) and not parse("abcdef").matches(exit1)
    assert not JobFilter(state=JobState.RUNNING).matches(lost)
    assert JobFilter(queue="default", text="FIT").matches(exit1)


def test_salvage_keeps_the_readable_fields_and_names_each_bad_one():
    problems: list[str] = []
    r = records.salvage(Result, b'{"exit_code": "x", "signal": 999, "node": "n1"}', "grid:result:j", problems)
    assert (r.node, r.exit_code, r.signal) == ("n1", None, None)
    assert [p.split(" field ")[1].split(":")[0] for p in problems] == ["exit_code", "signal"]
    assert records.salvage(Result, b"nope", "grid:result:k", problems) is None and "grid:result:k" in problems[-1]
    assert records.salvage(Result, None, "k", problems) is None and len(problems) == 3
    assert records.salvage(ActiveEntry, b'{"node": "a"}', "k", problems) is None  # its required fields are missing


def test_drain_fields_round_trip():
    drained = NodeRecord.decode(NodeRecord.drain_fields(True, "maintenance"), "grid:node:a")
    assert drained.draining and drained.drain_reason == "maintenance"
    assert not NodeRecord.decode(NodeRecord.drain_fields(False, "ignored"), "grid:node:a").drain_reason


@pytest.mark.parametrize("level", [0, 1, 9])
def test_a_job_payload_is_inflated_once_within_its_bound(r, level):
    """RQ's job hash read through BoundedJob: the payload as stored, inflated once (a nested zlib
    stream inside it stays compressed: RQ never inflates what the bound did not see)."""
    import zlib

    from rq.serializers import JSONSerializer

    from gridcore.boundedjob import BoundedJob

    payload = json.dumps(["agent.runner.run_task", None, [{"envelope": "{}", "sig": "s", "kid": "k"}], {}]).encode()
    nested = zlib.compress(zlib.compress(b"\0" * (1 << 20)), level)
    for data, want in ((zlib.compress(payload, level), payload), (payload, payload), (nested, zlib.decompress(nested))):
        job = BoundedJob("jid", connection=r, serializer=JSONSerializer)
        job.restore({b"data": data, b"origin": b"default", b"status": b"queued", b"exc_info": zlib.compress(b"tb")})
        assert job.data == want
        assert job.origin == "default"
    job = BoundedJob("jid", connection=r, serializer=JSONSerializer)
    job.restore({b"data": zlib.compress(payload, level), b"origin": b"default"})
    assert job.func_name == "agent.runner.run_task" and job.args[0]["kid"] == "k"
