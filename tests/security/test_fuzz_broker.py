"""A broker writer's random and malicious values in every key family (gridcore/keys.py) while
a small grid runs jobs: legitimate jobs still finish and no agent process, slot or daemon, exits.

The values are drawn from a fixed seed (a failure reproduces). Keys of legitimate jobs and the
live node's own inventory are left alone: overwriting those is a denial of service no reader
can undo, not a record to contain. Everything else is fair game: other ids' records of any
type, junk fields in shared hashes, junk members in sets, sorted sets, lists and streams.
"""

from __future__ import annotations

import json
import os
import random
import zlib

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState, Resources
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("GRID_TEST_FUZZ_SEED", "15"))
"""Fixed, so a failure reproduces; set GRID_TEST_FUZZ_SEED to explore others."""
ROUNDS = 3

POISON = [
    b"not-json", b"{", b"[]", b"null", b"1e999", b"-1", b"NaN", b"\xff\xfe\x00", b"",
    b"\x1b]52;c;ZXZpbA==\x07\x1b[2J[bold]x[/bold]", b"[" * 5000 + b"]" * 5000,
    json.dumps({"cpus": "lots", "memory": -5, "gpus": "all", "node": ["x"], "slot": 1e300}).encode(),
    json.dumps({"start": "yesterday", "duration": "long", "exit_code": "x", "reason": "\x1b[5m"}).encode(),
    b"x" * 300_000, zlib.compress(b"\0" * (64 * 1024 * 1024), 9),
]
"""Values no agent writes: not JSON, JSON of the wrong shape, escapes, deep nesting, huge, a zlib bomb."""

BAD_IDS = ["not a job id!", "\x1b]0;t\x07", "0" * 300, "ffffffffffffffffffffffffffffffff", "../../etc", ""]


def _types(r, key: str, value: bytes, rnd: random.Random) -> None:
    """`value` stored at `key` as a string, hash, list, set, sorted set or stream."""
    r.delete(key)
    kind = rnd.randrange(6)
    if kind == 0:
        r.set(key, value)
    elif kind == 1:
        r.hset(key, mapping={"data": value, "status": value, "meta": value, "origin": value, "x": value})
    elif kind == 2:
        r.rpush(key, value or b"-")
    elif kind == 3:
        r.sadd(key, value or b"-")
    elif kind == 4:
        r.zadd(key, {value or b"-": rnd.choice([0, -1, 1e15])})
    else:
        r.xadd(key, {"s": value or b"-", "d": value or b"-", "t": value or b"-"})


def poison(r, rnd: random.Random, node: str, running: str, any_type: bool = True) -> None:
    """One round of writes into every key family (keys of any type unless not `any_type`)."""
    v = lambda: rnd.choice(POISON)  # noqa: E731
    fake = rnd.choice(BAD_IDS[:3]) + str(rnd.random()) if rnd.random() < 0.5 else "f" * 31 + str(rnd.randrange(9))
    ghost = f"ghost-{rnd.randrange(1000)}"
    # Per-id and per-node families of ids no legitimate job or node has: any type, any value.
    for key in (keys.rq_job(fake), keys.result(fake), keys.attempts(fake), keys.output(fake), keys.cancel(fake),
                keys.secret_env(fake),
                keys.nonce(fake), keys.group(fake), keys.group_jobs(fake), keys.group_slots(fake),
                keys.rq_dependents(fake), keys.rq_dependencies(fake), keys.node(ghost), keys.node_jobs(ghost),
                keys.node_running(ghost), keys.node_taking(ghost), keys.node_held(ghost),
                keys.rq_queue(keys.node_queue(ghost)), keys.rq_worker(ghost), keys.reclaim_lock(ghost),
                keys.queue_jobs(ghost), keys.rq_queue(ghost)):
        if any_type:
            _types(r, key, v(), rnd)
    if not any_type:  # their own types, junk inside
        r.delete(keys.result(fake), keys.attempts(fake), keys.output(fake), keys.group(fake))
        r.set(keys.result(fake), v())
        r.rpush(keys.attempts(fake), v() or b"-")
        r.xadd(keys.output(fake), {"s": v()[:8] or b"o", "d": v()})
        r.hset(keys.group(fake), mapping={"name": v(), "size": v(), "axes": v()})
    # A fake job a slot can take: a hash of junk, its id on the live queues.
    takeable = "e" * 30 + str(rnd.randrange(99))
    r.delete(keys.rq_job(takeable))
    r.hset(keys.rq_job(takeable), mapping={"data": v(), "status": "queued", "origin": "default", "meta": v(),
                                           "created_at": v()})
    for q in ("default", keys.PENDING_QUEUE, keys.node_queue(node)):
        r.rpush(keys.rq_queue(q), takeable, fake, rnd.choice(BAD_IDS) or "-")
        r.rpush(keys.rq_intermediate(q), rnd.choice(BAD_IDS) or "-")
    for state in ("running", "failed", "finished", "canceled", "waiting", "scheduled"):
        r.zadd(keys.rq_registry(state, "default"), {rnd.choice(BAD_IDS) or "-": rnd.choice([0, 1e15])})
    # Shared hashes, sets and sorted sets: junk fields and members beside the legitimate ones.
    for key in (keys.ACTIVE, keys.PRIORITY, keys.WHY, keys.node_running(node), keys.node_held(node)):
        r.hset(key, rnd.choice(BAD_IDS) or "-", v())
        r.hset(key, fake, v())
    r.rpush(keys.node_taking(node), fake, rnd.choice(BAD_IDS) or "-")
    r.hset(keys.node(node), mapping={"load": v(), "junk": v()})
    r.delete(keys.node(ghost))
    r.hset(keys.node(ghost), mapping={"inventory": v(), "load": v(), "slots": v(), "draining": v()})
    r.zadd(keys.NODES, {ghost: rnd.choice([0, 1])})  # long silent: every agent sweeps it
    for key in (keys.JOBS, keys.JOB_IDS, keys.GROUPS, keys.node_jobs(node)):
        r.zadd(key, {rnd.choice(BAD_IDS) or "-": rnd.random(), fake: 0})
    for key in (keys.QUEUES, keys.rq_queues(), keys.rq_workers(), keys.rq_dependents(running)):
        r.sadd(key, rnd.choice(BAD_IDS) or "-", v()[:64] or "-")
    r.xadd(keys.EVENTS, {"t": v(), "kind": v()[:64], "job": v()[:300], "msg": v()[:1000]})
    r.set(keys.placing_lock(node), v()[:64], ex=1)  # a squatter: the lock expires


def test_fuzzed_broker_stops_no_job_and_no_process(grid, agents, node, r, gate):
    agent = agents(node, slots=2)
    rnd = random.Random(SEED)
    for _ in range(ROUNDS):
        blocker = grid.submit(JobSpec(command=gate.command("echo ok")))
        eventually(lambda: grid.state(blocker) is JobState.RUNNING, 20)
        poison(r, rnd, node, blocker)
        jobs = [grid.submit(JobSpec(command="echo plain")),
                grid.submit(JobSpec(command="echo placed", resources=Resources(cpus=1)))]
        gate.open()
        states = grid.wait([blocker, *jobs], timeout=30)
        assert all(s is JobState.FINISHED for s in states.values()), f"{states}\n{agent.log.read_text()[-6000:]}"
        gate.path.unlink()
    log = agent.log.read_text()
    assert agent.proc.poll() is None, log[-3000:]
    assert " exited with " not in log, log[-3000:]  # no slot died (the daemon logs each death)


def test_every_read_command_survives_a_fuzzed_broker(grid, r, settings, monkeypatch, capsys):
    """The same poison with no agent: each `grid` read command answers (a problem named, never
    a traceback), and prints nothing that acts on the terminal."""
    from tests.support.cli import call_cli

    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    rnd = random.Random(SEED)
    jid = grid.submit(JobSpec(command="echo hi"))
    for _ in range(ROUNDS):
        poison(r, rnd, "fuzz-node", jid, any_type=rnd.random() < 0.5)
    for args in (("ls",), ("ls", "--state", "failed"), ("ls", "--state", "queued"), ("show", jid), ("nodes",),
                 ("queues",), ("events",), ("groups",), ("why", jid), ("logs", jid), ("ls", "--json"),
                 ("nodes", "--json"), ("show", "--json", jid)):
        code, out, err = call_cli(capsys, *args)
        assert code == 0 and "internal error" not in err and "Traceback" not in err, (args, err)
        assert "\x1b" not in out + err, (args, out, err)
