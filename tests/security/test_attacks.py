"""Attacks from someone who can write to the broker but holds no authorized key.

Each one runs against a real agent: the job must end `failed` with a `refused: ...` reason and
a `refused` event, and the marker file its payload would create must not appear.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import subprocess
import threading
import time
import uuid

import pytest
from rq import Callback, Queue
from rq.callbacks import execute_failure_callback, execute_stopped_callback, execute_success_callback
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import UnixSignalDeathPenalty
from rq.webhook import Webhook

from agent.rqadapter.jobs import GridJob
from gridcore import keys, quarantine
from gridcore.models import JobSpec, JobState, Resources
from gridcore.signing import AuthorizedKeys, Signer, canonical, generate_key
from tests.security import forge, gadget
from tests.support.wait import eventually

GADGET = "tests.security.gadget.touch"

pytestmark = pytest.mark.both_brokers


def refused(grid, jid: str, timeout: float = 20) -> str:
    """Wait for `jid` to end; check it was refused visibly; return the reason."""
    assert grid.wait([jid], timeout=timeout)[jid] is JobState.FAILED, f"job {jid} was not refused"
    reason = grid.get(jid).reason or ""
    assert reason.startswith("refused: "), reason
    assert any(e.kind == "refused" and e.job == jid and e.message == reason for e in grid.events(1000))
    return reason


def settle(agent, seconds: float = 0.5) -> None:
    """Give a refused payload time to misbehave, and check the agent survived the attack."""
    time.sleep(seconds)
    assert agent.proc.poll() is None, agent.log.read_text()[-3000:]


class Evil:
    """Pickles to a call of os.system: unpickling it is enough to run the payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---- RQ-level attacks: the function, its arguments and the job record -----------------------


def test_pickled_job_is_refused_without_unpickling(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "pickle-marker"
    # RQ's default serializer is pickle: both the function and an argument carry the payload.
    jid = forge.rq_job(r, os.system, Evil(marker), json=False)
    assert "JSON" in refused(grid, jid)
    settle(agent)
    assert not marker.exists()


@pytest.mark.parametrize("func,args", [
    (os.system, lambda m: (f"touch {m}",)),
    (eval, lambda m: (f"__import__('os').system('touch {m}')",)),
    (subprocess.call, lambda m: (["touch", str(m)],)),
    (GADGET, lambda m: (str(m),)),
], ids=["os.system", "eval", "subprocess.call", "importable-gadget"])
def test_json_job_naming_another_callable_is_refused(grid, agents, node, r, tmp_path, func, args):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    jid = forge.rq_job(r, func, *args(marker))
    assert "is not the grid runner" in refused(grid, jid)
    settle(agent)
    assert not marker.exists()


@pytest.fixture
def hook_server():
    """An HTTP endpoint that counts the requests a webhook would make."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", hits
    srv.shutdown()


@pytest.mark.parametrize("extra", ["on_success", "on_failure", "on_stopped", "webhooks"])
def test_runner_job_with_callbacks_or_webhooks_is_refused(grid, agents, node, r, tmp_path, hook_server, extra):
    """A correctly signed runner job is still refused when its record names code to call."""
    agent = agents(node, slots=1)
    url, hits = hook_server
    cmd_marker, cb_marker = tmp_path / "command-ran", tmp_path / "callback-ran"
    jid = uuid.uuid4().hex
    signed = grid.signer.sign(forge.envelope(grid, f"touch {cmd_marker}", jid))
    kw = {"webhooks": [Webhook(f"{url}/{s}", s) for s in ("finished", "failed")]} if extra == "webhooks" \
        else {extra: Callback(GADGET)}
    forge.signed_job(r, signed, jid, meta={"marker": str(cb_marker)}, **kw)
    reason = refused(grid, jid)
    assert ("webhooks" in reason) if extra == "webhooks" else ("callbacks" in reason)
    settle(agent)
    assert not cmd_marker.exists() and not cb_marker.exists() and hits == []


def plant(r, marker, url) -> RQJob:
    """A record naming a callback and a webhook, "abandoned" in the started registry long ago."""
    job = RQJob.create(func=GADGET, args=(str(marker),), connection=r, serializer=JSONSerializer, origin="default",
                       on_success=Callback(GADGET), on_failure=Callback(GADGET), on_stopped=Callback(GADGET),
                       webhooks=[Webhook(f"{url}/{s}", s) for s in ("finished", "failed")],
                       meta={"marker": str(marker)})
    job.set_status(JobStatus.STARTED, pipeline=None)
    job.save()
    r.zadd(StartedJobRegistry("default", connection=r).key, {f"{job.id}:forged": 1})
    return job


def test_agent_maintenance_never_calls_what_a_planted_record_names(grid, agents, node, r, tmp_path, hook_server):
    """RQ's registry sweeps call an abandoned job's failure callback and webhooks; an agent's must not."""
    url, hits = hook_server
    marker = tmp_path / "cleanup-callback-ran"
    plant(r, marker, url)
    agent = agents(node, slots=1)
    # A slot runs its maintenance before its first dequeue: once this job is done, the sweep ran.
    jid = grid.submit(JobSpec(command="true"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED
    settle(agent)
    assert not marker.exists() and hits == []


def test_grid_job_class_never_resolves_callbacks_or_webhooks(r, tmp_path, hook_server):
    """The agent's job class, on every RQ path that would call them; stock RQ's does call them."""
    url, hits = hook_server
    marker = tmp_path / "called"
    planted = plant(r, marker, url)

    def fire(job):
        execute_success_callback(job, UnixSignalDeathPenalty, None)
        execute_failure_callback(job, UnixSignalDeathPenalty, RuntimeError, RuntimeError(), None)
        execute_stopped_callback(job, UnixSignalDeathPenalty)
        job.send_webhooks(JobStatus.FAILED, exc_string="x")
        job.send_webhooks(JobStatus.FINISHED)

    fire(GridJob.fetch(planted.id, connection=r, serializer=JSONSerializer))
    with pytest.raises(RuntimeError, match="never imports"):
        GridJob.fetch(planted.id, connection=r, serializer=JSONSerializer).func  # noqa: B018
    assert not marker.exists() and hits == []
    fire(RQJob.fetch(planted.id, connection=r, serializer=JSONSerializer))
    assert marker.exists() and len(hits) == 2


# ---- envelope attacks: signature, identity, time, replay, keys -------------------------------


def test_unsigned_envelopes_are_refused(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    jid = uuid.uuid4().hex
    env = forge.envelope(grid, f"touch {marker}", jid)
    attempts = {
        "bare envelope": env,
        "empty signature": {"envelope": canonical(env), "sig": "", "kid": grid.signer.kid},
        "a command string": f"touch {marker}",
    }
    for what, arg in attempts.items():
        job_id = jid if what == "bare envelope" else uuid.uuid4().hex
        reason = refused(grid, forge.signed_job(r, arg, job_id))
        assert "not a signed envelope" in reason or "bad signature" in reason, what
    settle(agent)
    assert not marker.exists()


def test_changed_command_breaks_the_signature(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    jid = uuid.uuid4().hex
    signed = grid.signer.sign(forge.envelope(grid, "echo harmless", jid))
    signed["envelope"] = signed["envelope"].replace("echo harmless", f"touch {marker}")
    assert "bad signature" in refused(grid, forge.signed_job(r, signed, jid))
    settle(agent)
    assert not marker.exists()


def test_replay_of_a_finished_job_is_refused(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    log = tmp_path / "runs"
    jid = grid.submit(JobSpec(command=f"echo ran >> {log}"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    signed = RQJob.fetch(jid, connection=r, serializer=JSONSerializer).args[0]
    # The same envelope under its own id (RQ overwrites the record), then under a new id.
    assert "replayed envelope" in refused(grid, forge.signed_job(r, signed, jid))
    assert "another job id" in refused(grid, forge.signed_job(r, signed))
    settle(agent)
    assert log.read_text() == "ran\n"


def test_replay_while_the_job_runs_is_refused(grid, agents, node, r, tmp_path, gate):
    agent = agents(node, slots=2)
    log = tmp_path / "runs"
    jid = grid.submit(JobSpec(command=f"echo ran >> {log}; {gate.wait}"))
    eventually(lambda: grid.state(jid) is JobState.RUNNING, 20, 0.02, "the job to run")
    # A second copy of a running job for the idle slot: the envelope allows a retry, not a twin.
    r.lpush(keys.rq_queue("default"), jid)
    eventually(lambda: any(e.kind == "refused" and e.job == jid for e in grid.events(1000)), 20,
               message="the twin to be refused")
    assert any("already running" in e.message for e in grid.events(1000) if e.kind == "refused" and e.job == jid)
    gate.open()
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED  # the real one is untouched
    settle(agent)
    assert log.read_text() == "ran\n"


def test_envelope_for_another_job_id_is_refused(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    signed = grid.signer.sign(forge.envelope(grid, f"touch {marker}", "some-other-job"))
    assert "another job id" in refused(grid, forge.signed_job(r, signed))
    settle(agent)
    assert not marker.exists()


def test_expired_and_future_envelopes_are_refused(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    now = grid.broker_time()
    windows = {"expired": (now - 7200, now - 3600), "issued in the future": (now + 3600, now + 7200)}
    for what, (issued, expires) in windows.items():
        jid = uuid.uuid4().hex
        env = forge.envelope(grid, f"touch {marker}", jid, issued_at=issued, expires_at=expires)
        assert what in refused(grid, forge.signed_job(r, grid.signer.sign(env), jid))
    settle(agent)
    assert not marker.exists()


def test_revoked_key_is_refused(grid, agents, node, r, tmp_path, settings):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    former = Signer(generate_key(tmp_path / "former", "former@lab"), "former@lab")
    authorized = AuthorizedKeys(settings.authorized_keys_path)
    authorized.authorize((tmp_path / "former.pub").read_text())
    authorized.revoke(former.kid)
    jid = uuid.uuid4().hex
    signed = former.sign(forge.envelope(grid, f"touch {marker}", jid))
    assert "revoked" in refused(grid, forge.signed_job(r, signed, jid))
    settle(agent)
    assert not marker.exists()


def test_unknown_key_is_refused_and_a_borrowed_key_id_too(grid, agents, node, r, tmp_path):
    agent = agents(node, slots=1)
    marker = tmp_path / "marker"
    mallory = forge.stranger(tmp_path / "mallory")
    jid = uuid.uuid4().hex
    signed = mallory.sign(forge.envelope(grid, f"touch {marker}", jid))
    assert "not authorized" in refused(grid, forge.signed_job(r, signed, jid))
    # Claiming the operator's key id does not help without the operator's private key.
    jid = uuid.uuid4().hex
    signed = {**mallory.sign(forge.envelope(grid, f"touch {marker}", jid)), "kid": grid.signer.kid}
    assert "bad signature" in refused(grid, forge.signed_job(r, signed, jid))
    settle(agent)
    assert not marker.exists()


def test_gadget_is_live():
    """The marker gadget really writes: a missing marker above means 'not called', not 'broken'."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        gadget.touch(str(Path(d) / "m"))
        assert (Path(d) / "m").exists()


def test_evil_pickle_is_live(tmp_path):
    """Unpickling Evil runs its payload, so the pickled-job test proves the agent never unpickles."""
    pickle.loads(pickle.dumps(Evil(tmp_path / "m")))
    assert (tmp_path / "m").exists()


def test_a_corrupt_pending_record_holds_back_only_its_own_job(grid, agents, node, r):
    """Placement reads every pending job's record; one that is not a grid record is set aside
    (out of the pending queue, named in the quarantine with the bad field) and the others are
    still placed."""
    agents(node, slots=1, labels=["sec"])
    grid.drain(node)  # both wait in placement until the record is spoiled
    need = Resources(labels=("sec",))  # anything beyond one CPU goes through placement
    bad = grid.submit(JobSpec(command="true", resources=need, priority=5))
    good = grid.submit(JobSpec(command="echo placed", resources=need))
    meta = json.loads(r.hget(keys.rq_job(bad), "meta"))
    r.hset(keys.rq_job(bad), "meta", json.dumps({**meta, "priority": "high"}))
    grid.resume(node)
    assert grid.wait([good], timeout=30)[good] is JobState.FINISHED
    assert r.lpos(keys.rq_queue(keys.PENDING_QUEUE), bad) is None  # not re-read on every pass
    named = quarantine.about(r, bad)
    assert named and any("priority" in line for line in named), named
    assert r.exists(keys.rq_job(bad))  # its record is kept for the operator


def test_a_corrupt_record_in_a_registry_does_not_stop_the_node(grid, agents, node, r):
    """RQ's maintenance fetches whatever ids its lists hold; one bad record must not end every slot."""
    r.hset(keys.rq_job("corrupt"), mapping={"data": b"x", "created_at": "garbage", "status": "queued",
                                            "origin": "default"})
    r.lpush(Queue("default", connection=r).intermediate_queue_key, "corrupt")
    agent = agents(node, slots=1)
    jid = grid.submit(JobSpec(command="true"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED
    assert "exited with" not in agent.log.read_text()  # the slot was never restarted
    settle(agent)
