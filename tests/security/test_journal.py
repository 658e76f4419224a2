"""The node's replay journal and the signed bounds, without agents: what each refuses and why."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import bounds
from agent.journal import EarlierStartRunning, Journal
from gridcore import keys
from gridcore.records import Placement
from gridcore.settings import AgentSettings
from gridcore.signing import Refused

NOW = 1_000_000.0


def envelope(**over):
    env = {"nonce": "n" * 32, "max_attempts": 2, "expires_at": NOW + 3600, "queue": "default",
           "resources": {"cpus": 1.0, "gpus": 0, "labels": [], "node": None}}
    env.update(over)
    return env


def test_a_start_that_ran_to_its_end_never_starts_again(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    t = j.admit(envelope(), "job", NOW)
    j.ended(t, NOW + 1, final=True)
    with pytest.raises(Refused, match="already ran to its end on this node"):
        Journal(tmp_path / "j.sqlite").admit(envelope(), "job", NOW + 2)  # a new slot process, same file


def test_a_failed_start_may_be_retried_up_to_the_signed_attempts(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    for _ in range(2):
        j.ended(j.admit(envelope(), "job", NOW), NOW, final=False)
    with pytest.raises(Refused, match=r"started 2 times on this node, the most its signature allows \(2\)"):
        j.admit(envelope(), "job", NOW)


def test_a_withdrawn_start_does_not_count(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.withdraw(j.admit(envelope(max_attempts=1), "job", NOW))
    j.admit(envelope(max_attempts=1), "job", NOW)


def test_a_start_of_a_live_slot_waits_and_one_of_a_dead_slot_does_not(tmp_path):
    path = tmp_path / "j.sqlite"
    code = ("import sys; from agent.journal import Journal; from tests.security.test_journal import envelope, NOW;"
            "from pathlib import Path; Journal(Path(sys.argv[1])).admit(envelope(), 'job', NOW);"
            "sys.stdout.write('in\\n'); sys.stdout.flush(); sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=os.getcwd())
    assert other.stdout.readline() == b"in\n"
    with pytest.raises(EarlierStartRunning, match="still runs on this node"):
        Journal(path).admit(envelope(), "job", NOW)
    other.communicate(b"")
    Journal(path).admit(envelope(), "job", NOW)  # its slot is gone: a lost attempt, retried


def test_rows_go_when_the_envelope_is_void(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.ended(j.admit(envelope(), "job", NOW), NOW, final=True)
    j.admit(envelope(nonce="m" * 32), "other", NOW + 7200)
    assert j._conn().execute("SELECT count(*) FROM starts").fetchone() == (1,)


def test_the_journal_file_is_private(tmp_path):
    j = Journal(tmp_path / "node" / "j.sqlite")
    j.admit(envelope(), "job", NOW)
    assert oct((tmp_path / "node" / "j.sqlite").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "node").stat().st_mode & 0o777) == "0o700"


CFG = AgentSettings(node_name="n1", queues=["default", "gpu"], labels=["big"])


@pytest.mark.parametrize("over,taken,says", [
    ({"resources": {"node": "n2"}}, "default", "signed for node 'n2', not this node (n1)"),
    ({"resources": {"labels": ["big", "gpu"]}}, "default", "needs label gpu"),
    ({"queue": "secret"}, "default", "signed for queue 'secret', found in queue 'default'"),
    ({"queue": "secret"}, "secret", "signed for queue 'secret', which this node (n1) does not serve"),
    ({"queue": keys.PENDING_QUEUE, "job_queue": "secret"}, "node.n1", "does not serve"),
    ({"queue": "default"}, "node.n2", "found in queue 'node.n2'"),
], ids=["node", "label", "moved-queue", "unserved-queue", "placed-unserved", "other-node-queue"])
def test_bounds_refuse_what_the_envelope_was_not_signed_for(over, taken, says):
    with pytest.raises(Refused, match=says.replace("(", r"\(").replace(")", r"\)")):
        bounds.check(envelope(**over), CFG, taken, None)


def test_bounds_pass_what_was_signed_and_placed_here():
    bounds.check(envelope(resources={"node": "n1", "labels": ["big"]}), CFG, "default", None)
    bounds.check(envelope(queue=keys.PENDING_QUEUE, job_queue="gpu", resources={"gpus": 2}), CFG, "node.n1",
                 Placement(node="n1", gpus=[0, 1]))


def test_a_placement_holding_other_gpus_than_signed_is_refused():
    with pytest.raises(Refused, match="placement holds 1 GPUs here; the envelope was signed for 0"):
        bounds.check(envelope(), CFG, "node.n1", Placement(node="n1", gpus=[0]))




def test_an_open_start_under_a_reused_pid_is_not_a_twin(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.admit(envelope(), "job", NOW)
    # The slot that journaled it died and its pid now names another live process (our parent).
    j._conn().execute("UPDATE starts SET pid = ?, born = 1.0", (os.getppid(),))
    j.admit(envelope(), "job", NOW)


def test_a_start_survives_its_slot_killed_at_once(tmp_path):
    """WAL with synchronous=NORMAL (no fsync per commit) keeps every commit through a crash of
    the process: a slot SIGKILLed right after its job ended leaves the row behind."""
    path = tmp_path / "j.sqlite"
    code = ("import os, signal, sys; from agent.journal import Journal; from tests.security.test_journal import "
            "envelope, NOW; from pathlib import Path; j = Journal(Path(sys.argv[1]));"
            "j.ended(j.admit(envelope(), 'job', NOW), NOW + 1, final=True); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code, str(path)], cwd=os.getcwd()).returncode == -9
    with pytest.raises(Refused, match="already ran to its end on this node"):
        Journal(path).admit(envelope(), "job", NOW + 2)


SLOTS, ROUNDS = 2, 40


def _first_start(path: str, barrier, nonce: str, out) -> None:
    """A slot process's first job: it opens the node's journal and admits the job's envelope."""
    journal = Journal(Path(path))
    barrier.wait()
    try:
        journal.admit(envelope(nonce=nonce), f"job-{nonce}", NOW)
        out.put("")
    except Refused as e:
        out.put(str(e))


def test_a_fresh_journal_opened_by_the_nodes_slots_at_once_refuses_no_job(tmp_path):
    """The slots of a fresh node given jobs at once open its journal file at the same moment. The
    one switching the file to WAL while another did got "database is locked" at once (SQLite's
    deadlock avoidance: no wait for the busy timeout), and its job was refused: failed with no
    exit code, never run (a job of each of two slots, about one start in ten)."""
    ctx = multiprocessing.get_context("fork")
    refused = []
    for i in range(ROUNDS):
        path = tmp_path / f"node-{i}" / "j.sqlite"
        barrier, out = ctx.Barrier(SLOTS), ctx.Queue()
        procs = [ctx.Process(target=_first_start, args=(str(path), barrier, f"{i:04d}{k:028d}", out))
                 for k in range(SLOTS)]
        for p in procs:
            p.start()
        refused += [why for why in (out.get(timeout=60) for _ in procs) if why]
        for p in procs:
            p.join()
    assert not refused, refused


def test_a_slot_holding_the_journals_open_lock_refuses_the_others_jobs_within_the_timeout(tmp_path, monkeypatch):
    """A slot stopped while it opens the journal (under its lock) must not hang the node's other
    slots: they wait OPEN_TIMEOUT, then refuse the job, as for a journal SQLite finds locked."""
    import fcntl

    from agent import journal

    path = tmp_path / "j.sqlite"
    held = os.open(tmp_path / "j.sqlite.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    monkeypatch.setattr(journal, "OPEN_TIMEOUT", 0.2)
    with pytest.raises(Refused, match="replay journal is unusable .*open lock held for 0.2s"):
        Journal(path).admit(envelope(), "job", NOW)
    os.close(held)
    Journal(path).admit(envelope(), "job", NOW)
