"""A job with a memory limit never runs outside its memory cgroup on a node that makes them:
if its group cannot be made, or the job cannot be moved into it, the attempt ends with a
reason naming the group, as the node's fault (runner.NODE_FAULT: handed back, the node drained;
tests/chaos/test_cgroup_failure.py), and the command does not run. Plain directories stand in for the
cgroup hierarchy (a real group's files cannot be made to refuse root's writes on demand)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from agent import cgroup, runner
from agent.output import OutputSink
from agent.runner import RunContext, execute

MB = 1 << 20


@pytest.fixture
def slot_groups(monkeypatch):
    """Point the runner at job cgroups of the test's choosing, as runner.job_cgroups() would probe them."""
    def use(cgs: cgroup.JobCgroups) -> cgroup.JobCgroups:
        monkeypatch.setattr(runner, "_cgroups", cgs)
        monkeypatch.setattr(runner, "_cgroups_probed", True)
        return cgs
    return use


def _run(r, tmp_path, command: str, memory: int | None, **envelope):
    job = uuid.uuid4().hex
    ctx = RunContext(job_id=job, node="n1", slot=0, kill_grace=1.0, marker_env={}, broker_time=time.time,
                     cgroup_tag="n1.test.0", run_id=uuid.uuid4().hex)
    sink = OutputSink(r, job, "n1", time.time(), budget=1 << 20, log_dir=tmp_path / "logs", log_cap=1 << 20, ttl=60)
    resources = {"memory": memory} if memory else {}
    result, outcome = execute({"command": command, "resources": resources, **envelope}, ctx, sink)
    return result, outcome


def test_a_job_that_cannot_enter_its_group_does_not_run(r, tmp_path, slot_groups):
    """The slot's kept group (cgroup v1) whose `tasks` file refuses the move: here a directory."""
    group = tmp_path / "grid-jobs" / "n1.test.0.1"
    (group / "tasks").mkdir(parents=True)
    cgs = slot_groups(cgroup.JobCgroups(tmp_path / "grid-jobs", v2=False))
    cgs.idle = cgroup.JobCgroup(group, v2=False)
    ran = tmp_path / "ran"
    result, outcome = _run(r, tmp_path, f"touch {ran}", 64 * MB)
    assert not ran.exists()  # never ran, limited or not
    assert outcome == runner.NODE_FAULT and result.reason_kind == "error" and result.exit_code is None, result
    assert result.reason.startswith(f"not run: cannot move the job into its memory cgroup {group}: "), result
    assert "Is a directory" in result.reason and result.memory_peak is None and result.reason in result.stderr


def test_a_job_whose_group_cannot_be_made_does_not_run(r, tmp_path, slot_groups):
    slot_groups(cgroup.JobCgroups(tmp_path / "gone" / "grid-jobs", v2=False))
    ran = tmp_path / "ran"
    result, outcome = _run(r, tmp_path, f"touch {ran}", 64 * MB)
    assert not ran.exists()
    assert outcome == runner.NODE_FAULT and result.reason_kind == "error" and result.exit_code is None, result
    assert result.reason.startswith("not run: no memory cgroup for its 64 MiB limit: cannot create "), result
    assert str(tmp_path / "gone" / "grid-jobs") in result.reason and "No such file or directory" in result.reason


def test_a_job_that_enters_its_group_runs_and_keeps_its_descriptors(r, tmp_path, slot_groups):
    """The move's report channel is the shim's alone: the job has 0, 1 and 2 open, its stdin /dev/null."""
    cgs = slot_groups(cgroup.JobCgroups(tmp_path / "grid-jobs", v2=False))
    (tmp_path / "grid-jobs").mkdir()
    result, _ = _run(r, tmp_path, "ls /proc/self/fd; readlink /proc/self/fd/0", 64 * MB)
    assert result.exit_code == 0 and result.reason is None, result
    *fds, stdin = result.stdout.split()
    assert sorted(map(int, fds)) == [0, 1, 2, 3] and stdin == "/dev/null"  # 3: ls's own listing of the directory
    entered = [p for p in (tmp_path / "grid-jobs").iterdir() if (p / "tasks").is_file()]
    assert len(entered) == 1 and (entered[0] / "tasks").read_text() == "0\n"
    assert cgs.idle is None  # a plain directory is not fit for reuse; the runner tried to remove it


@pytest.mark.parametrize("form", ["command", "argv"])
def test_a_grouped_jobs_env_reaches_its_command_and_no_argv(r, tmp_path, slot_groups, form):
    """The shim starts with an environment of its own and sources the job's once moved: the
    command sees the job's variables (and the shell's own PWD), and no process's argv, readable
    by anyone in /proc, holds a value."""
    base = tmp_path / "grid-jobs"
    base.mkdir()
    slot_groups(cgroup.JobCgroups(base, v2=False))
    script = 'printf "%s|%s|%s\\n--\\n" "$TOKEN" "$QUOTED" "$PWD"; tr "\\0" " " </proc/$$/cmdline'
    env = {"TOKEN": "s3cret-token", "QUOTED": "it's \"a\" $x\nline", "BAD-NAME": "x"}
    shape = {"argv": ["/bin/sh", "-c", script]} if form == "argv" else {}
    result, outcome = _run(r, tmp_path, script, 64 * MB, env=env, cwd=str(tmp_path), **shape)
    assert outcome is None and result.exit_code == 0, result
    values, cmdline = result.stdout.split("--\n", 1)
    assert "s3cret" not in cmdline and "BAD-NAME" not in result.stdout, cmdline
    assert values == f"s3cret-token|it's \"a\" $x\nline|{tmp_path}\n", values


def test_a_group_whose_names_are_all_taken_says_why_and_no_earlier_reason(r, tmp_path, slot_groups):
    """cgroup v1: the 3 names a slot tries are left in use (a dead slot of the same tag): the
    failure names them, not an empty reason nor an earlier call's."""
    base = tmp_path / "grid-jobs"
    for i in (1, 2, 3):
        (base / f"n1.test.0.{i}").mkdir(parents=True)
    cgs = slot_groups(cgroup.JobCgroups(base, v2=False))
    cgs.why = "cannot create an earlier group"
    ran = tmp_path / "ran"
    result, outcome = _run(r, tmp_path, f"touch {ran}", 64 * MB)
    assert not ran.exists()
    assert outcome == runner.NODE_FAULT and result.reason_kind == "error" and result.exit_code is None, result
    assert result.reason == f"not run: no memory cgroup for its 64 MiB limit: the names n1.test.0.1..3 " \
                            f"are all taken under {base}", result


@pytest.mark.parametrize("memory", [64 * MB, None], ids=["in-a-group", "no-group"])
def test_a_command_with_a_nul_fails_its_attempt_and_keeps_no_descriptor_nor_group(r, tmp_path, slot_groups, memory):
    """Popen refuses a NUL byte with ValueError, not OSError: the attempt fails as a command that
    cannot start, and the cgroup report pipe's read end and the group are given back."""
    base = tmp_path / "grid-jobs"
    base.mkdir()
    cgs = slot_groups(cgroup.JobCgroups(base, v2=False))
    released = []
    cgs.release = lambda cg: released.append(cg.path) or True
    before = sorted(os.listdir("/proc/self/fd"))
    result, outcome = _run(r, tmp_path, "echo a\x00b", memory)
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert outcome is None and result.reason_kind == "exit" and result.exit_code == 127, result
    assert result.reason == "cannot start '/bin/sh': embedded null byte in its command, arguments, environment " \
                            "or working directory" and result.reason in result.stderr, result
    assert released == ([base / "n1.test.0.1"] if memory else [])


def test_a_node_faulting_after_an_operators_drain_keeps_the_operators_reason(r, grid, settings, tmp_path,
                                                                              slot_groups):
    """The operator drains n1 while its slot holds a memory job it just took; the job's cgroup
    then fails (the node's fault): the node stays drained with the operator's reason (what
    `grid nodes` shows), the fault is an event of its own. `grid resume` clears both, and a fault
    on a node no one drained names itself."""
    from gridcore import keys
    from gridcore.models import JobSpec, Resources
    from gridcore.placing import Placer
    from tests.engine.test_reconcile import _slot, _take
    from tests.support.records import node_record, put_node

    slot_groups(cgroup.JobCgroups(tmp_path / "gone" / "grid-jobs", v2=False))  # no group can be made
    jid = grid.submit(JobSpec(command="true", resources=Resources(memory=64 * MB)))  # no node yet: it waits
    put_node(r, "n1", grid.broker_time(), node_record())
    n1 = _slot(r, settings, "n1")

    def fault():
        assert Placer(r).place_ids([jid]).placed == {jid: "n1"}
        return _take(r, n1, keys.node_queue("n1"))

    taken = fault()
    grid.drain("n1", "disk swap tomorrow")
    n1.perform(*taken)
    [node] = [n for n in grid.nodes() if n.name == "n1"]
    assert node.draining and node.drain_reason == "disk swap tomorrow", node.drain_reason
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [jid.encode()]  # handed back, for another node
    drains = [e.message for e in grid.events(count=100) if e.kind == "node_draining" and e.node == "n1"]
    assert sorted(m.split(":")[0] for m in drains) == ["disk swap tomorrow", "job cgroups failing"], drains

    grid.resume("n1")
    [node] = [n for n in grid.nodes() if n.name == "n1"]
    assert not node.draining and node.drain_reason is None
    n1.perform(*fault())
    [node] = [n for n in grid.nodes() if n.name == "n1"]
    assert node.draining and node.drain_reason.startswith("job cgroups failing: no memory cgroup"), node.drain_reason


def test_a_job_handed_back_unrun_then_lost_still_has_its_lost_retry(r, grid, settings, tmp_path, slot_groups):
    """A job with no retries: n1's cgroups fail (its command never runs: handed back, the node's
    fault), n2 starts it and is lost, n3 runs it. The hand-back took none of the envelope's
    signed attempts (1 + retries + one for a lost node), so n3's start is no "replay"."""
    import threading

    from agent import recovery
    from gridcore import keys
    from gridcore.models import JobSpec, JobState, Resources
    from gridcore.placing import Placer
    from tests.engine.test_reconcile import _slot, _take
    from tests.support.records import node_record, put_node
    from tests.support.wait import eventually

    flag = tmp_path / "go"
    jid = grid.submit(JobSpec(command=f"while [ ! -e {flag} ]; do sleep 0.02; done; echo ran",
                              resources=Resources(memory=64 * MB), retries=0))

    def on(node):
        put_node(r, node, grid.broker_time(), node_record())
        assert Placer(r).place_ids([jid]).placed == {jid: node}
        slot = _slot(r, settings, node)
        return slot, _take(r, slot, keys.node_queue(node))

    slot_groups(cgroup.JobCgroups(tmp_path / "gone" / "grid-jobs", v2=False))  # n1: no group can be made
    n1, taken = on("n1")
    n1.perform(*taken)
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [jid.encode()]  # handed back, unrun

    (tmp_path / "grid-jobs").mkdir()
    slot_groups(cgroup.JobCgroups(tmp_path / "grid-jobs", v2=False))  # groups work from here on
    n2, taken = on("n2")
    running = threading.Thread(target=n2.perform, args=taken)
    running.start()
    try:
        eventually(lambda: grid.state(jid) is JobState.RUNNING, 20, 0.02, "n2 to start the job")
        # n2 is lost: its heartbeat is past its node_timeout and another node's sweep reclaims the job.
        r.hset(keys.node("n2"), "beat", repr(grid.broker_time() - 60))
        assert recovery.reclaim(r, "n2", grid.broker_time(), "node lost", settings.result_ttl, foreign=True) == [jid]
    finally:
        flag.touch()
        running.join(60)
    assert not running.is_alive()
    if r.lpos(keys.rq_queue(keys.PENDING_QUEUE), jid) is None:  # a rerun waits for placement
        r.rpush(keys.rq_queue(keys.PENDING_QUEUE), jid)
    n3, taken = on("n3")
    n3.perform(*taken)
    job = grid.get(jid)
    assert grid.state(jid) is JobState.FINISHED, job.attempts
    assert job.node == "n3" and job.stdout == "ran\n"


def test_a_node_that_could_not_run_a_job_twice_runs_it_once_mended(r, grid, settings, tmp_path, slot_groups):
    """A job with no retries (2 signed attempts: one more for a lost node): n1's cgroups fail
    twice (resumed after each), then work. Neither unrun start counts, in the broker's count nor
    in n1's own replay journal: the third start runs the command, once."""
    from gridcore import keys
    from gridcore.models import JobSpec, JobState, Resources
    from gridcore.placing import Placer
    from tests.engine.test_reconcile import _slot, _take
    from tests.support.records import node_record, put_node

    jid = grid.submit(JobSpec(command="echo ran", resources=Resources(memory=64 * MB), retries=0))
    put_node(r, "n1", grid.broker_time(), node_record())
    n1 = _slot(r, settings, "n1")

    def attempt():
        assert Placer(r).place_ids([jid]).placed == {jid: "n1"}
        n1.perform(*_take(r, n1, keys.node_queue("n1")))

    slot_groups(cgroup.JobCgroups(tmp_path / "gone" / "grid-jobs", v2=False))  # no group can be made
    for _ in range(2):
        attempt()
        assert r.hget(keys.node("n1"), "draining") == b"1"
        assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [jid.encode()]  # handed back, unrun
        grid.resume("n1")
    (tmp_path / "grid-jobs").mkdir()
    slot_groups(cgroup.JobCgroups(tmp_path / "grid-jobs", v2=False))
    attempt()
    job = grid.get(jid)
    assert grid.state(jid) is JobState.FINISHED, job.attempts
    assert job.stdout == "ran\n"


def _drains_with_a_job_waiting(r, grid, settings, tmp_path, slot_groups, conn=None):
    """n1 (live) takes a memory job its cgroups cannot hold, while a second job placed on n1
    waits in its node queue: n1's slot drains the node (its fault) and sends the second job
    back to placement. `conn`: the slot's client (through a proxy), else `r`."""
    from gridcore import keys
    from gridcore.models import JobSpec, Resources
    from gridcore.placing import Placer
    from tests.engine.test_reconcile import _slot, _take
    from tests.support.records import node_record, put_node

    slot_groups(cgroup.JobCgroups(tmp_path / "gone" / "grid-jobs", v2=False))  # no group can be made
    first, waiting = (grid.submit(JobSpec(command="true", resources=Resources(memory=64 * MB))) for _ in range(2))
    put_node(r, "n1", grid.broker_time(), node_record())
    assert Placer(r).place_ids([first, waiting]).placed == {first: "n1", waiting: "n1"}
    assert r.hexists(keys.node_held("n1"), waiting)
    n1 = _slot(conn or r, settings, "n1")
    job, queue, taken = _take(r, n1, keys.node_queue("n1"))
    assert job.id == first
    n1.perform(job, queue, taken)
    return first, waiting


def test_a_node_that_drains_itself_gives_back_what_its_moved_jobs_held(r, grid, settings, tmp_path, slot_groups):
    """The node is live (not down, whose keys another agent may not write): what the jobs it
    sent back to placement held on it goes with them, or after `grid resume` its CPUs, memory
    and GPUs would stay committed to jobs that ran elsewhere, until its agent restarts."""
    from gridcore import keys

    first, waiting = _drains_with_a_job_waiting(r, grid, settings, tmp_path, slot_groups)
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [first.encode(), waiting.encode()]
    assert not r.llen(keys.rq_queue(keys.node_queue("n1")))
    assert r.hgetall(keys.node_held("n1")) == {}


def test_a_node_that_drains_itself_sends_its_placed_jobs_away_after_an_outage(broker, r, grid, settings, tmp_path,
                                                                            slot_groups):
    """The broker is away as the slot reads the node's queue (the reply is lost): nothing else
    re-places a live drained node's queue, so the slot retries until the broker is back."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from gridcore import keys
    from tests.support.proxy import ReplyDropper

    # The reply to a read of n1's node queue that lists one job: only the slot's, after the drain.
    proxy = ReplyDropper(broker.port, keys.rq_queue(keys.node_queue("n1")).encode(),
                         lambda reply: reply.startswith(b"*1\r\n$"))
    try:
        cut = redis.Redis(host="127.0.0.1", port=proxy.port, password=broker.password, retry=Retry(NoBackoff(), 0))
        first, waiting = _drains_with_a_job_waiting(r, grid, settings, tmp_path, slot_groups, conn=cut)
        assert proxy.dropped
        assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [first.encode(), waiting.encode()]
        assert not r.llen(keys.rq_queue(keys.node_queue("n1")))
    finally:
        proxy.close()


def test_a_placed_job_a_slot_takes_as_its_node_drains_is_not_also_sent_to_placement(r, grid, settings, broker):
    """The drained node's queue is read, then a slot of the node takes one of its jobs before
    the move: the move finds it gone from the node queue and leaves it be (it is the slot's),
    not a job both taken and waiting for placement."""
    from agent import recovery
    from gridcore import keys
    from gridcore.models import JobSpec, Resources
    from gridcore.placing import Placer
    from tests.engine.test_reconcile import _slot, _take
    from tests.support.records import node_record, put_node

    jid = grid.submit(JobSpec(command="true", resources=Resources(memory=64 * MB)))
    put_node(r, "n1", grid.broker_time(), node_record())
    assert Placer(r).place_ids([jid]).placed == {jid: "n1"}
    n1 = _slot(r, settings, "n1")
    took = []

    class SlotTakesMeanwhile(type(r)):
        """The real broker; a slot of n1 takes the job as the mover reads the job's record."""

        def hget(self, name, key):
            if name == keys.rq_job(jid) and not took:
                took.append(_take(r, n1, keys.node_queue("n1")))
            return super().hget(name, key)

    mover = SlotTakesMeanwhile(host="127.0.0.1", port=broker.port, password=broker.password)
    recovery.replace_queued(mover, "n1")
    assert took and took[0][0].id == jid
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == []
    assert r.hexists(keys.node_held("n1"), jid)  # the slot's job keeps what it holds


def test_a_node_faulting_after_an_older_resume_says_why_it_drained(r, grid, settings, tmp_path, slot_groups):
    """An older `grid resume` left the drain reason empty (""), not deleted: the node's own
    drain still writes its reason (what `grid nodes` shows), as when the field is missing."""
    from gridcore import keys

    r.hset(keys.node("n1"), mapping={"draining": "0", "drain_reason": ""})
    _drains_with_a_job_waiting(r, grid, settings, tmp_path, slot_groups)
    [node] = [n for n in grid.nodes() if n.name == "n1"]
    assert node.draining and (node.drain_reason or "").startswith("job cgroups failing: no memory cgroup"), node


def test_a_node_fault_whose_move_of_placed_jobs_fails_still_ends_its_journal_start(r, grid, settings, tmp_path,
                                                                                  slot_groups, broker):
    """The broker refuses the move of the drained node's placed jobs (out of memory): the
    attempt's start in the node's replay journal is still given back (it ran nothing), or a
    rerun of the job on this node would wait as 'an earlier start still runs' while the slot
    lives."""
    import sqlite3

    import redis

    from agent.journal import journal_path
    from gridcore import keys

    class BrokerOutOfMemory(type(r)):
        """The real broker, out of memory when the slot reads its node's queue to move it."""

        def lrange(self, name, start, end):
            if name == keys.rq_queue(keys.node_queue("n1")):
                raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
            return super().lrange(name, start, end)

    oom = BrokerOutOfMemory(host="127.0.0.1", port=broker.port, password=broker.password)
    with pytest.raises(redis.ResponseError, match="OOM"):
        _drains_with_a_job_waiting(r, grid, settings, tmp_path, slot_groups, conn=oom)
    [first] = [j for j in r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1)]
    with sqlite3.connect(journal_path("n1")) as db:
        rows = db.execute("SELECT seq, ended FROM starts WHERE job_id = ?", (first.decode(),)).fetchall()
    assert rows == []  # withdrawn: the start ran nothing
