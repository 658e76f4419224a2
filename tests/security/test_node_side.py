"""The node's side of env secrecy and signed cancels, on one real agent logged in as its node's
ACL user: a job gets its sealed env values (which the viewer still cannot read anywhere), and
a running job's signed cancel stays with its record once the node ended it."""

from __future__ import annotations

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.security import test_acl
from tests.security.test_acl import as_user
from tests.security.test_env_secrecy import TOKEN, everything_readable, leaks
from tests.support.wait import eventually

users = test_acl.users
agent_as_user = test_acl.agent_as_user  # a real agent logged in as its node's ACL user  # the ACL users fixture (operator, viewer, agents of `node`)


@pytest.mark.agents
def test_an_agent_user_runs_sealed_env_and_keeps_a_running_jobs_signed_cancel(r, settings, users, agent_as_user,
                                                                             tmp_path):
    agent_as_user(slots=2)
    got = tmp_path / "got"
    operator = as_user(settings, users["operator"])
    jid = operator.submit(JobSpec(command=f'printf %s "$TOKEN" > {got}; echo done', env={"TOKEN": TOKEN}))
    long = operator.submit(JobSpec(command="sleep 60"))
    assert operator.wait([jid], timeout=30)[jid] is JobState.FINISHED, operator.get(jid).reason
    assert got.read_text() == TOKEN
    values, denied = everything_readable(as_user(settings, users["viewer"]).redis)
    assert leaks(values) == [] and denied == [keys.secret_env(jid)]
    assert 0 < r.ttl(keys.secret_env(jid)) <= settings.result_ttl  # it ended: it lives as long as its record

    eventually(lambda: operator.state(long) is JobState.RUNNING, 20, message="the long job to run")
    assert operator.cancel(long, wait=20) is JobState.CANCELED
    assert operator.get(long).cancel == "canceled by tester@suite (signature verified)"
    assert 0 < r.ttl(keys.cancel(long)) <= settings.result_ttl
