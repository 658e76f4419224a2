"""Agent logs: levels, a line per job with its id, journald priorities, `--log-level`."""

from __future__ import annotations

import os
import subprocess
import sys

from gridcore.models import JobSpec, JobState


def test_info_logs_a_line_per_job_from_the_slot(grid, agents):
    agent = agents("node-log", slots=1, log_level="info")
    ok = grid.submit(JobSpec(command="echo hi"))
    bad = grid.submit(JobSpec(command="exit 4"))
    assert grid.wait([ok, bad], timeout=20) == {ok: JobState.FINISHED, bad: JobState.FAILED}
    agent.stop()
    lines = agent.log.read_text().splitlines()
    mine = [ln for ln in lines if f"job={ok}" in ln]
    assert any(" slot0 INFO grid.runner: " in ln and "started: pid" in ln for ln in mine), lines
    assert any("ended: exit code 0 after" in ln and "3 bytes of output" in ln for ln in mine), lines
    assert any(f"job={bad} ended: exit code 4" in ln for ln in lines), lines
    assert not any("agent.runner.run_task(" in ln for ln in lines)  # RQ's own per-job lines stay quiet


def test_warning_level_keeps_jobs_out_of_the_log(grid, agents):
    agent = agents("node-log", slots=1, log_level="WARNING")
    jid = grid.submit(JobSpec(command="true"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    agent.stop()
    assert f"job={jid}" not in agent.log.read_text()


def test_under_journald_lines_carry_the_syslog_priority(grid, agents, home, monkeypatch):
    log = home / "agent-node-jrn.log"
    log.touch()
    st = os.stat(log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")  # stderr *is* this file: as journald's
    agent = agents("node-jrn", slots=1, log_level="INFO")
    jid = grid.submit(JobSpec(command="true"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    agent.stop()
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    assert any(ln.startswith("<6>slot0 INFO grid.runner: job=" + jid) for ln in lines), lines
    assert any(ln.startswith("<4>grid-agent WARNING ") for ln in lines), lines  # the warm stop
    assert all(ln.startswith("<") for ln in lines), lines


def test_a_bad_log_level_is_one_line_and_exit_2(home):
    out = subprocess.run([sys.executable, "-m", "agent", "--log-level", "loud", "--redis-url", "redis://127.0.0.1:1/0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "log_level" in out.stderr and "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
