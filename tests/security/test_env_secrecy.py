"""The viewer cannot read a job's env values; the node still gets them, as signed.

The viewer ACL user reads every `grid:*` and `rq:*` key. A job's env values are sealed in
`gridsecret:env:<id>` (gridcore/secretenv.py): operator and agents read it, the viewer cannot,
and the envelope signs only their names and a salted digest.
"""

from __future__ import annotations

import json
import uuid
import zlib

import pytest
import redis

from agent.rqadapter.jobs import GridJob
from agent.verify import Gatekeeper
from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Envelope
from gridcore.settings import AgentSettings
from gridcore.signing import AuthorizedKeys, Refused
from gridcore.submission import SERIALIZER
from tests.engine.test_reads import fail
from tests.security import forge
from tests.security import test_acl
from tests.security.test_acl import as_user
from tests.support.cli import call_cli

users = test_acl.users  # the ACL users fixture (operator, viewer, agents of `node`)

TOKEN = "tok-" + "7f3a9c" * 6
"""The secret: long and random enough that finding it anywhere is a leak, not a coincidence."""


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def _inflated(value: bytes) -> list[bytes]:
    """A value as read, and inflated if it is zlib (RQ's job `data`)."""
    try:
        return [value, zlib.decompress(value)]
    except zlib.error:
        return [value]


def everything_readable(conn: redis.Redis) -> tuple[list[bytes], list[str]]:
    """Every value `conn` may read of every key (SCAN lists them all), and the keys it may not."""
    seen, denied = [], []
    for key in conn.scan_iter(count=1000):
        name = key.decode()
        try:
            kind = conn.type(key).decode()
            if kind == "string":
                values = [conn.get(key)]
            elif kind == "hash":
                values = [v for kv in conn.hgetall(key).items() for v in kv]
            elif kind == "list":
                values = conn.lrange(key, 0, -1)
            elif kind == "set":
                values = list(conn.smembers(key))
            elif kind == "zset":
                values = conn.zrange(key, 0, -1)
            elif kind == "stream":
                values = [v for _, fields in conn.xrange(key) for kv in fields.items() for v in kv]
            else:
                values = []
            values.append(conn.dump(key) or b"")
        except redis.exceptions.NoPermissionError:
            denied.append(name)
            continue
        seen += [x for v in values if v for x in _inflated(v)]
    return seen, denied


def leaks(values: list[bytes]) -> list[bytes]:
    return [v[:200] for v in values if TOKEN.encode() in v]


def gate(settings, r) -> Gatekeeper:
    return Gatekeeper(r, AuthorizedKeys(settings.authorized_keys_path), AgentSettings())


def as_node(r, jid: str) -> GridJob:
    return GridJob.fetch(jid, connection=r, serializer=SERIALIZER)


def test_the_viewer_reads_no_env_value_in_any_key_while_the_operator_can(r, grid, settings, users):
    operator = as_user(settings, users["operator"])
    jid = operator.submit(JobSpec(command="deploy", env={"TOKEN": TOKEN, "MODE": "fast"}))
    plain = operator.submit(JobSpec(command="true"))
    viewer = as_user(settings, users["viewer"])
    values, denied = everything_readable(viewer.redis)
    assert values and leaks(values) == []
    assert denied == [keys.secret_env(jid)]  # the one key a job with env writes; `plain` wrote none
    assert not r.exists(keys.secret_env(plain))
    # What the viewer's own tools show: the names, never the values.
    assert viewer.get(jid).env_names == ("MODE", "TOKEN")
    assert TOKEN not in json.dumps(viewer.get(jid).to_dict())
    assert TOKEN.encode() in operator.redis.get(keys.secret_env(jid))
    # The envelope signs the names and a digest; a node (agent user) reads the values and gets them.
    envelope = Envelope.model_validate_json(as_node(r, jid).args[0]["envelope"])
    assert envelope.env == {} and envelope.env_names == ["MODE", "TOKEN"] and envelope.env_digest
    assert r.ttl(keys.secret_env(jid)) > settings.envelope_ttl
    signed, _ = gate(settings, r).verify(as_node(r, jid), grid.broker_time())
    assert signed["env"] == {"TOKEN": TOKEN, "MODE": "fast"}


def test_grid_show_json_gives_env_names_only(capsys, grid):
    jid = grid.submit(JobSpec(command="deploy", env={"TOKEN": TOKEN}))
    code, out, _ = call_cli(capsys, "show", "--json", jid)
    assert code == 0 and json.loads(out)["env_names"] == ["TOKEN"] and TOKEN not in out
    code, out, _ = call_cli(capsys, "show", jid)
    assert code == 0 and "TOKEN" in out and TOKEN not in out


@pytest.mark.parametrize("tamper", ["missing", "changed", "other job's", "another type"])
def test_a_node_refuses_env_values_that_are_missing_or_not_the_signed_ones(r, grid, settings, tamper):
    jid = grid.submit(JobSpec(command="deploy", env={"TOKEN": TOKEN}))
    other = grid.submit(JobSpec(command="deploy", env={"TOKEN": "something else"}))
    if tamper == "missing":
        r.delete(keys.secret_env(jid))
    elif tamper == "changed":
        r.set(keys.secret_env(jid), r.get(keys.secret_env(jid)).replace(TOKEN.encode(), b"evil"))
    elif tamper == "other job's":
        r.set(keys.secret_env(jid), r.get(keys.secret_env(other)))
    else:
        r.delete(keys.secret_env(jid))
        r.hset(keys.secret_env(jid), "TOKEN", TOKEN)
    with pytest.raises(Refused) as e:
        gate(settings, r).verify(as_node(r, jid), grid.broker_time())
    why = {"missing": "are missing", "another type": "WRONGTYPE"}.get(tamper, "are not the ones signed")
    assert why in str(e.value) and keys.secret_env(jid) in str(e.value)


def test_a_v1_envelope_with_its_env_inline_still_runs_and_a_requeue_seals_it(r, grid, settings):
    jid = uuid.uuid4().hex
    old = forge.envelope(grid, "deploy", jid, v=1, env={"TOKEN": TOKEN}, env_names=[], env_digest=None)
    forge.signed_job(r, grid.signer.sign(old), jid)
    r.hset(keys.rq_job(jid), "meta", json.dumps({"command": "deploy", "name": "deploy"}))
    signed, _ = gate(settings, r).verify(as_node(r, jid), grid.broker_time())
    assert signed["env"] == {"TOKEN": TOKEN}
    fail(r, jid, "default", grid.broker_time())
    renewed = grid.requeue(jid, named=True)
    assert renewed.v == 2 and renewed.env == {} and renewed.env_names == ["TOKEN"]
    assert TOKEN.encode() not in zlib.decompress(r.hget(keys.rq_job(jid), "data"))
    signed, _ = gate(settings, r).verify(as_node(r, jid), grid.broker_time())
    assert signed["env"] == {"TOKEN": TOKEN}


def test_requeue_keeps_the_env_and_refuses_when_its_values_are_gone(r, grid, settings):
    jid = grid.submit(JobSpec(command="deploy", queue="parked", env={"TOKEN": TOKEN, "GRID_SWEEP_LR": "0.1"}))
    fail(r, jid, "parked", grid.broker_time())
    r.expire(keys.secret_env(jid), 60)  # as the job's end leaves it: the result's lifetime
    renewed = grid.requeue(jid)
    assert renewed.env == {"GRID_SWEEP_LR": "0.1"} and renewed.env_names == ["TOKEN"]  # a sweep's values stay inline
    assert r.ttl(keys.secret_env(jid)) > settings.envelope_ttl  # renewed with the envelope
    assert gate(settings, r).verify(as_node(r, jid), grid.broker_time())[0]["env"]["TOKEN"] == TOKEN
    fail(r, jid, "parked", grid.broker_time())
    r.delete(keys.secret_env(jid))
    with pytest.raises(Exception, match=f"will not requeue {jid}: its env values are missing"):
        grid.requeue(jid)
    assert grid.state(jid) is JobState.FAILED


def test_submit_many_and_jobs_with_parents_seal_each_jobs_values(r, grid):
    first, second = grid.submit_many([JobSpec(command="a", env={"TOKEN": TOKEN}), JobSpec(command="b")])
    child = grid.submit(JobSpec(command="c", after=(first,), env={"TOKEN": TOKEN}))
    assert r.exists(keys.secret_env(first)) and r.exists(keys.secret_env(child))
    assert not r.exists(keys.secret_env(second))
    for jid in (first, second, child):
        assert TOKEN.encode() not in zlib.decompress(r.hget(keys.rq_job(jid), "data"))
