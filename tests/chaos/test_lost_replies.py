"""A reply lost on its way back (a broker restart, a cut link) after the command ran: redis-py
reconnects and may send the command again. A slot's pop (which claims the job) and its start
(which counts the attempt and marks the job started) must neither run a job twice nor lose it
when that happens. A proxy between the agent and the broker loses one chosen reply."""

from __future__ import annotations

import re

import pytest

from agent import claim, guarded
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import assert_accounted
from tests.support.proxy import ReplyDropper
from tests.support.wait import eventually


def _claimed(reply: bytes) -> bool:
    """The pop's reply when it took a job (its first field, the queue key, is not empty); an
    idle slot's comes behind the reply of the wait it was sent with (a job id, or none)."""
    return re.match(rb"(\$\d+\r\n[^\r]*\r\n|\*-1\r\n)?\*8\r\n\$(?!0\r\n)", reply) is not None


def _started(reply: bytes) -> bool:
    """The start script's reply when it started the job."""
    return reply.startswith(b"*4\r\n:1\r\n")


@pytest.mark.parametrize("script, lose", [(claim._POP_SCRIPT, _claimed), (guarded.START, _started)],
                         ids=["pop", "start"])
def test_a_lost_reply_runs_the_job_once_and_loses_nothing(broker, agents, grid, r, tmp_path, monkeypatch,
                                                          cleanup_jobs, script, lose):
    proxy = ReplyDropper(broker.port, script.sha.encode(), lose)
    monkeypatch.setenv("GRID_REDIS_URL", proxy.url)  # the agent and its slots, not this test's client
    try:
        agents("node-a", slots=1)
        ran = tmp_path / "ran"
        jid = grid.submit(JobSpec(command=f"echo once >> {ran}"))
        cleanup_jobs.append(jid)
        eventually(lambda: proxy.dropped, 20, 0.02, "the proxy to lose the reply")
        states = assert_accounted(r, grid, [jid], timeout=30)
        assert states[jid] is JobState.FINISHED
        assert ran.read_text() == "once\n"
        assert [a.get("reason") for a in grid.get(jid).attempts] == [None]
    finally:
        proxy.close()


@pytest.mark.parametrize("pop", ["behind the wait", "first look"])
def test_a_stop_while_a_pop_is_answered_puts_its_job_back(broker, agents, grid, r, tmp_path, monkeypatch,
                                                          cleanup_jobs, pop):
    """An idle slot's pop goes behind its wait (claim.wait_pop), and a stop signal interrupts the
    wait: the pop may have claimed a job whose reply is lost with the connection redis-py drops.
    The slot puts that job back in line before it exits: not lost, not run twice. A slot's first
    look pops without a wait (the job was queued before the agent started): a stop does not
    interrupt that read, which ends at the socket's timeout as an outage; the slot, stopping,
    puts back what the pop claimed too (it exited with the job claimed, for the node's next start
    or another node's loss sweep, when this test's 'behind the wait' case raced its first look)."""
    from gridcore import keys
    from gridcore.records import RunningEntry

    proxy = ReplyDropper(broker.port, claim._POP_SCRIPT.sha.encode(), _claimed, hold=True)
    monkeypatch.setenv("GRID_REDIS_URL", proxy.url)
    try:
        ran = tmp_path / "ran"
        if pop == "first look":
            jid = grid.submit(JobSpec(command=f"echo once >> {ran}"))
            a = agents("node-a", slots=1)
        else:
            a = agents("node-a", slots=1)
            # Once the slot waits (its first look, a plain pop, found nothing).
            eventually(lambda: any(c.get("cmd") == "blmove" for c in r.client_list()), 20, 0.01, "the slot to wait")
            jid = grid.submit(JobSpec(command=f"echo once >> {ran}"))
        cleanup_jobs.append(jid)
        eventually(lambda: proxy.dropped, 20, 0.02, "the proxy to hold the pop's reply")
        assert RunningEntry.decode(r.hget(keys.node_running("node-a"), jid)).phase == "claimed"  # the pop ran
        assert a.stop() == 0  # SIGTERM: the agent stops its slot, whose wait is interrupted
        assert r.lrange(keys.rq_queue("default"), 0, -1) == [jid.encode()]  # back in line
        assert not r.hlen(keys.node_running("node-a")) and not ran.exists()
        monkeypatch.delenv("GRID_REDIS_URL")
        agents("node-b", slots=1)
        states = assert_accounted(r, grid, [jid], timeout=30)
        assert states[jid] is JobState.FINISHED
        assert ran.read_text() == "once\n"
        assert [a.get("reason") for a in grid.get(jid).attempts] == [None]
    finally:
        proxy.close()


def test_a_lost_reply_to_an_end_with_the_next_pop_runs_each_job_once(broker, agents, grid, r, tmp_path, monkeypatch,
                                                                      cleanup_jobs):
    """A busy slot's END carries the pop of its next job (agent/rqadapter/worker.py
    `pop_with_end`): the link drops as both replies come back, the pop having claimed the next
    job. The END is recorded once (sent again alone, it finds its end recorded) and the claimed
    job goes back in line at the slot's next look: both jobs run once, one attempt each."""
    proxy = ReplyDropper(broker.port, guarded.END.sha.encode(),
                         lambda reply: re.search(rb"\*8\r\n\$(?!0\r\n)", reply) is not None)
    monkeypatch.setenv("GRID_REDIS_URL", proxy.url)
    for script in (claim._POP_SCRIPT, guarded.START, guarded.END):
        # A broker that knows them, as after a node's first jobs: on one that does not, the first
        # END is NOSCRIPT, its pop runs before it and takes nothing (claim.pop_command), and no
        # END of these two jobs would carry a pop that claimed one.
        r.script_load(script.text)
    try:
        ran = tmp_path / "ran"
        ids = grid.submit_many([JobSpec(command=f"echo {x} >> {ran}") for x in "ab"])
        cleanup_jobs.extend(ids)
        agents("node-a", slots=1)
        eventually(lambda: proxy.dropped, 20, 0.02, "the proxy to lose the END's replies")
        states = assert_accounted(r, grid, ids, timeout=30)
        assert [states[i] for i in ids] == [JobState.FINISHED] * 2
        assert sorted(ran.read_text().split()) == ["a", "b"]
        assert [[a.get("reason") for a in grid.get(i).attempts] for i in ids] == [[None], [None]]
    finally:
        proxy.close()


# ---- a client that sends a command again after a lost reply ---------------------------------
# The agent's clients (gridcore/connection.py, from a URL) never do with this redis-py; a client
# built with a retry policy does (redis.Redis(host=...) since redis-py 6). The scripts that take
# a job must not be sent again, whatever the client: the error reaches the slot, whose outage
# path knows what a lost pop or start left (claim.requeue_own, JobAttempt.give_back_unstarted).


def _resending(proxy: ReplyDropper):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 3), retry_on_error=[redis.ConnectionError])


def test_a_pop_whose_reply_was_lost_is_not_sent_again(broker, r):
    """Sent again, the pop would take the next job (or none) and leave the first one claimed by
    a slot that does not know it, in no queue, for as long as the node lives."""
    import redis

    from gridcore import keys

    pool = keys.rq_queue("default")
    for jid in ("j1", "j2"):
        r.hset(keys.rq_job(jid), mapping={"origin": "default", "status": "queued"})
        r.rpush(pool, jid)
    proxy = ReplyDropper(broker.port, claim._POP_SCRIPT.sha.encode(), _claimed)
    try:
        c = _resending(proxy)
        with pytest.raises(redis.ConnectionError):
            claim.pop(c, "a", "a.x.0", [keys.rq_queue(keys.node_queue("a")), pool])
        assert proxy.dropped and r.lrange(pool, 0, -1) == [b"j2"]  # it ran, and took j1 alone
        assert claim.requeue_own(r, "a", "a.x.0") == 1  # the slot's outage path: back in line
        assert r.lrange(pool, 0, -1) == [b"j1", b"j2"] and not r.hlen(keys.node_running("a"))
    finally:
        proxy.close()


def test_a_start_whose_reply_was_lost_is_not_sent_again(broker, r):
    """Sent again, the start would find the job started (by itself) and say it was taken up
    elsewhere: the slot would run nothing and the job stay `started` for good."""
    import redis

    from agent.verify import SPENT
    from gridcore import keys
    from gridcore.models import Resources
    from gridcore.reservations import reserve_args

    r.hset(keys.rq_job("j1"), mapping={"origin": "default", "status": "queued"})
    pipe = guarded.recorder(r)
    pipe.hset(keys.rq_job("j1"), "status", "started")
    sec, _ = r.time()
    args = [*reserve_args("j1", Resources(), [], 4, 0), sec + 3600, 3, SPENT]
    start_keys = [keys.node_held("a"), keys.nonce("n1"), keys.cancel("j1"), keys.rq_job("j1")]
    proxy = ReplyDropper(broker.port, guarded.START.sha.encode(), _started)
    try:
        c = _resending(proxy)
        with pytest.raises(redis.ConnectionError):
            guarded.START(c, start_keys, [*args, *guarded.packed(c, pipe)])
        assert proxy.dropped and r.hget(keys.rq_job("j1"), "status") == b"started" and r.get(keys.nonce("n1")) == b"1"
    finally:
        proxy.close()


def test_a_start_whose_reply_was_lost_gives_its_attempt_back(broker, r, grid, settings):
    """The start ran (the attempt counted, the job marked started) but its reply was lost: the
    slot never ran the command and hands the job back. That hand-back gives the attempt back
    too, or a job with no retries (2 signed starts: one more for a lost node) whose start replies
    were lost twice would be refused as a replay at its third start, never having run."""
    import redis

    from gridcore.models import JobSpec, JobState
    from tests.engine.test_reconcile import _slot, _take

    jid = grid.submit(JobSpec(command="echo ran", retries=0))
    proxy = ReplyDropper(broker.port, guarded.START.sha.encode(), _started, times=2)
    try:
        cut = redis.Redis(host="127.0.0.1", port=proxy.port, password=broker.password)
        slot = _slot(cut, settings, "n1")
        for _ in range(3):
            slot.perform(*_take(r, slot, "default"))
            if grid.state(jid) is not JobState.QUEUED:
                break
        assert len(proxy.dropped) == 2
        job = grid.get(jid)
        assert grid.state(jid) is JobState.FINISHED, job.attempts
        assert job.stdout == "ran\n" and [a.get("reason") for a in job.attempts] == [None]
    finally:
        proxy.close()


def test_a_rerun_whose_link_drops_right_after_its_start_runs_once_counted_once(broker, r, grid, settings):
    """A lost job's rerun starts on n1 (the start ran, its attempt counted, the journal holds
    it) and the link drops on the `rerun` event's write: the job must not be handed back as
    unstarted while its start stands counted. Handed back, it is uncounted; it runs once."""
    import json

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from gridcore import keys
    from tests.engine.test_reconcile import _slot, _take

    jid = grid.submit(JobSpec(command="echo ran", retries=0))
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    meta.update(lost_on="n0", lost_at=grid.broker_time() - 100)  # as node-loss recovery left it, long ago
    r.hset(keys.rq_job(jid), "meta", json.dumps(meta))
    # The reply to what carries the event: a write of its own (an XADD's id), or a start that ran.
    proxy = ReplyDropper(broker.port, b"rerun on n1", lambda reply: reply.startswith(b"$") or _started(reply))
    try:
        cut = redis.Redis(host="127.0.0.1", port=proxy.port, password=broker.password, retry=Retry(NoBackoff(), 0))
        slot = _slot(cut, settings, "n1")
        slot.perform(*_take(r, slot, "default"))
        assert proxy.dropped
        [counter] = r.keys(keys.nonce("*"))
        assert grid.state(jid) is JobState.QUEUED and r.get(counter) == b"0", r.get(counter)  # handed back uncounted
        slot.perform(*_take(r, slot, "default"))
        job = grid.get(jid)
        assert grid.state(jid) is JobState.FINISHED and job.stdout == "ran\n", job.attempts
        assert [a.get("reason") for a in job.attempts] == [None], job.attempts
        assert [e.kind for e in grid.events(count=100) if e.job == jid].count("rerun") == 1
    finally:
        proxy.close()
