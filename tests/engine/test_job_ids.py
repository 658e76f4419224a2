"""A job id is a name RQ accepts and a node can make a file or a cgroup of: the client refuses
any other before anything is written, and a node refuses a signed envelope for one."""

from __future__ import annotations

import pytest

from gridcore import keys
from gridcore.errors import GridError
from gridcore.models import JobSpec

BAD = ["a/b", "../up", "sp ace", "tab\tbed", "", "é", "x" * 257]


@pytest.mark.parametrize("bad", BAD)
def test_the_client_refuses_a_job_id_that_is_no_name_and_writes_nothing(grid, r, bad):
    before = r.dbsize()
    with pytest.raises(GridError) as e:
        grid.submit_many([JobSpec(command="true"), JobSpec(command="true")], job_ids=["fine-id", bad])
    assert repr(bad[:40])[1:-1] in str(e.value) or bad == "" or len(bad) > 40
    assert "job id" in str(e.value)
    assert r.dbsize() == before and not r.exists(keys.rq_job("fine-id"))


def test_the_ids_rq_takes_are_taken(grid):
    for jid in ("plain", "with_under-dash", "0" * 256):
        assert grid.submit(JobSpec(command="true"), job_id=jid) == jid


def test_a_cgroup_leaf_is_a_name_the_kernel_takes_however_long_its_parts():
    from agent.cgroup import leaf_name

    short = leaf_name("job1", "node.agent.0")
    assert short == "job1.node.agent.0"
    long_job, long_tag = "j" * 256, "n" * 200 + ".a1b2.0"
    name = leaf_name(long_job, long_tag)
    assert len(name.encode()) <= 255 and "/" not in name
    # still one group per job and slot
    assert name != leaf_name(long_job, long_tag[:-1] + "1") and name != leaf_name("k" + long_job[1:], long_tag)
    assert leaf_name(long_job, long_tag) == name
