"""`grid dashboard`: rq-dashboard on the grid's broker with the viewer user and the JSON
serializer, looked at in headless Chromium (a screenshot is kept with the test's files)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
import urllib.request

import pytest

from gridcore import acl
from gridcore.models import JobSpec
from tests.support.brokers import free_port
from tests.lab.conftest import GRID

pytestmark = [pytest.mark.slow, pytest.mark.agents]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=8000", *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(importlib.util.find_spec("rq_dashboard") is None, reason="rq-dashboard is not installed")
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_dashboard_lists_the_grid_s_jobs_as_the_viewer(grid, r, settings, tmp_path):
    ids = [grid.submit(JobSpec(command=f"echo {i}", name=f"dash-{i}")) for i in range(3)]
    viewer = acl.users(roles=["viewer"])
    creds = acl.apply(r, viewer)
    port = free_port()
    env = {"GRID_REDIS_USERNAME": viewer[0].name, "GRID_REDIS_PASSWORD": creds[viewer[0].name]}
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([GRID, "--redis-url", settings.redis_url, "dashboard", "--port", str(port)],
                            env={**__import__("os").environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/0/data/jobs/default/queued/10/asc/1.json", timeout=5) as resp:
                    data = resp.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.3)
        assert all(i in data for i in ids)  # JSON jobs decoded with the JSON serializer, as the viewer
        page = f"{base}/0/view/jobs/default/queued/10/asc/1"
        dom = chromium("--dump-dom", page)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert all(i in dom.stdout for i in ids), dom.stdout[-3000:]
        shot = tmp_path / "dashboard.png"
        taken = chromium(f"--screenshot={shot}", "--window-size=1280,800", page)
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
        assert "NOPERM" not in (tmp_path / "dashboard.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        r.execute_command("ACL", "DELUSER", viewer[0].name)
