"""What a job gets: user, cwd, HOME, PATH and the grid's variables (agent/deploy/README.md)."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sys

from gridcore.models import JobSpec, JobState, Resources

# sys.executable, not `python3`: a pyenv shim on PATH would prepend its own dirs to the PATH it passes on.
DUMP = shlex.quote(sys.executable) + " -c 'import json, os; print(json.dumps({\"env\": dict(os.environ), \"cwd\": os.getcwd(), \"uid\": os.getuid()}))'"


def seen(grid, jid: str) -> dict:
    return json.loads(grid.get(jid).stdout)


def test_a_job_gets_the_documented_environment(grid, agents, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("GRID_AGENT_LOG_DIR", str(tmp_path / "ignored"))  # GRID_* never reach a job
    agents("node-env", slots=2, gpus=[{"index": 0, "name": "A100"}, {"index": 1, "name": "A100"}])
    work = tmp_path / "shared" / "proj"
    work.mkdir(parents=True)
    plain = cli("submit", "--cwd", "proj", "--env", "MINE=1", "--", DUMP, cwd=work.parent).stdout.strip()
    gpu = grid.submit(JobSpec(command=DUMP, resources=Resources(gpus=1)))
    assert grid.wait([plain, gpu], timeout=30) == {plain: JobState.FINISHED, gpu: JobState.FINISHED}
    got = seen(grid, plain)
    env = got["env"]
    assert got["cwd"] == str(work)  # a relative --cwd is the submitter's directory, made absolute
    assert got["uid"] == os.getuid()  # the agent's user (a service runs it under its own)
    assert env["HOME"] == os.environ["HOME"] and env["PATH"] == os.environ["PATH"]
    assert env["MINE"] == "1"
    assert env["GRID_JOB_ID"] == plain and env["GRID_JOB_NODE"] == "node-env"
    assert env["GRID_JOB_ATTEMPT"] == "1" and env["GRID_JOB_SLOT"] in ("0", "1")
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # asked for no GPU: sees none
    assert "GRID_AGENT_LOG_DIR" not in env and not any(k.startswith("GRID_SWEEP_") for k in env)
    assert seen(grid, gpu)["env"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert pwd.getpwuid(got["uid"]).pw_name


def test_retries_count_attempts_and_sweeps_name_their_cell(grid, agents, cli, tmp_path):
    agents("node-env", slots=2)
    flaky = grid.submit(JobSpec(command='test "$GRID_JOB_ATTEMPT" = 2 || exit 3; echo "$GRID_JOB_ATTEMPT"',
                                retries=1))
    desc = tmp_path / "sweep.json"
    desc.write_text(json.dumps({"name": "s", "command": DUMP, "env": {"CELL": "{T}-{seed}"}, "sweep": {"T": [2.5, 3], "seed": ["a"]}}))
    out = cli("submit", "-f", str(desc), "--json")
    assert out.returncode == 0, out.stderr
    cells = json.loads(out.stdout)["ids"]
    states = grid.wait([flaky, *cells], timeout=30)
    assert set(states.values()) == {JobState.FINISHED}
    assert grid.get(flaky).stdout == "2\n"
    group = grid.get(cells[1]).group
    envs = [seen(grid, c)["env"] for c in cells]
    assert [(e["GRID_SWEEP_T"], e["GRID_SWEEP_SEED"], e["GRID_SWEEP_INDEX"]) for e in envs] == [
        ("2.5", "a", "0"), ("3", "a", "1")]
    assert [e["CELL"] for e in envs] == ["2.5-a", "3-a"]
    assert {e["GRID_SWEEP_ID"] for e in envs} == {group} and {e["GRID_SWEEP_SIZE"] for e in envs} == {"2"}
