"""The `/` text filter also matches failure reasons: `state:failed lost` finds node-loss victims."""

from __future__ import annotations

from console.poller import Poller, Request
from gridcore.models import JobSpec, JobState
from tests.support.records import put_result


def test_text_filter_matches_reason_and_kind(grid, r):
    lost, other = (grid.submit(JobSpec(command=f"echo {i}")) for i in range(2))
    for jid, record in ((lost, {"reason": "node lost: node-b stopped heartbeating", "reason_kind": "lost"}),
                        (other, {"reason": "exit code 3", "reason_kind": "exit", "exit_code": 3})):
        put_result(r, jid, **record)
    poller = Poller(app=None, grid=grid, request=lambda: None)
    by_kind = poller.read(Request(view="jobs", text="lost"))
    assert [j.id for j in by_kind.jobs] == [lost] and by_kind.total == 1
    by_words = poller.read(Request(view="jobs", text="exit code"))
    assert [j.id for j in by_words.jobs] == [other]
    assert grid.get(lost).reason_kind == "lost" and grid.get(lost).state is JobState.QUEUED
