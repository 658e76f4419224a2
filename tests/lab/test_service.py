"""`grid service install`: the unit shipped with the package, enrolment, and the unit's own
command run as its own user against a real broker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gridcore.models import JobSpec, JobState
from tests.lab.conftest import grid_cli, unit_command, unit_fields

SERVICE_USER = "nobody"
"""An unprivileged user every Debian machine has (the real install makes `grid`)."""


pytestmark = pytest.mark.agents


def test_dry_run_prints_everything_and_writes_nothing(tmp_path, home):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    out = grid_cli("service", "install", "--dry-run", "--redis-url", "rediss://broker.lab:6380/0",
                   "--redis-username", "grid-agent-n1", "--redis-password-file", str(pw), "--node", "n1",
                   "--authorize", str(home / "config" / "keys" / "id_ed25519.pub"),
                   "--config", str(tmp_path / "etc" / "config.toml"), "--data-dir", str(tmp_path / "var"),
                   "--unit-dir", str(tmp_path / "units"), "--user", "grid-test-user")
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout and 'redis_password = "***"' in out.stdout
    assert "    Delegate=yes" in out.stdout and "    Restart=on-failure" in out.stdout
    assert "would run: useradd --system --user-group" in out.stdout
    assert "would run: systemctl enable --now grid-agent.service" in out.stdout
    assert not any((tmp_path / d).exists() for d in ("etc", "var", "units"))


@pytest.mark.skipif(os.geteuid() != 0, reason="installs files owned by another user: needs root")
def test_installed_unit_runs_the_agent_as_its_user(settings, broker, r, home, grid):
    root = Path(tempfile.mkdtemp(prefix="grid-service-"))
    root.chmod(0o755)  # the service user must reach its files
    try:
        _install_and_run(root, r, broker, home, grid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _install_and_run(root: Path, r, broker, home: Path, grid) -> None:
    config, data, units = root / "etc" / "config.toml", root / "var", root / "units"
    out = grid_cli("service", "install", "--no-start", "--redis-url", broker.url, "--node", "node-svc", "--slots", "1",
                   "--authorize", str(home / "config" / "keys" / "id_ed25519.pub"), "--config", str(config),
                   "--data-dir", str(data), "--unit-dir", str(units), "--user", SERVICE_USER, "--stop-grace", "5")
    assert out.returncode == 0, out.stderr
    unit = (units / "grid-agent.service").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640" and data.stat().st_uid == 65534
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(units / "grid-agent.service")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    f = unit_fields(unit)
    assert f["Delegate"] == ["yes"] and f["User"] == [SERVICE_USER] and f["TimeoutStopSec"] == ["35"]
    # What systemd would do: the unit's command, as its user, in its directory, with its environment.
    argv, env, cwd, uid = unit_command(units / "grid-agent.service")
    log = open(root / "journal", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while r.hget("grid:node:node-svc", "ready") != str(proc.pid).encode():
            assert proc.poll() is None and time.monotonic() < deadline, (root / "journal").read_text()
            time.sleep(0.1)
        jid = grid.submit(JobSpec(command="id -u; echo $HOME; pwd"))
        assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
        assert grid.get(jid).stdout.split("\n")[0] == str(uid)
        proc.send_signal(signal.SIGTERM)  # systemctl stop: the warm stop
        assert proc.wait(35) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (root / "journal").read_text()
    assert f"job={jid} started" in text and "Traceback" not in text
