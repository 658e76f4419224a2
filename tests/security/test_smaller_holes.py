"""The smaller holes of issue 15: TLS names the broker, authorized_keys is read by content, the
policy's cwd is the directory the job starts in, job logs are private to the agent's user."""

from __future__ import annotations

import os
import stat

import pytest

from agent.logfiles import open_log
from agent.verify import Gatekeeper
from gridcore.connection import connect
from gridcore.settings import AgentSettings, NodePolicy
from gridcore.signing import AuthorizedKeys, Refused, fingerprint, generate_key, public_line


def test_tls_checks_the_broker_hostname_explicitly(settings):
    s = settings.model_copy(update={"redis_url": "rediss://broker.example:6380/0"})
    kw = connect(s).connection_pool.connection_kwargs
    assert kw["ssl_check_hostname"] is True and kw["ssl_cert_reqs"] == "required"


def test_authorized_keys_are_reloaded_when_the_content_changes_under_the_same_mtime(tmp_path):
    key = generate_key(tmp_path / "k", "alice@lab")
    kid = fingerprint(key.public_key())
    path = tmp_path / "authorized_keys"
    path.write_text(public_line(key.public_key(), "alice@lab") + "\n")
    before = path.stat().st_mtime_ns
    ak = AuthorizedKeys(path)
    assert ak.lookup(kid)[1] == "alice@lab"
    path.write_text("@revoked " + public_line(key.public_key(), "alice@lab") + "\n")
    os.utime(path, ns=(before, before))  # cp -p, rsync -t, or a write within the clock's granularity
    with pytest.raises(Refused, match="revoked"):
        ak.lookup(kid)


def test_the_policy_cwd_is_the_directory_the_job_starts_in(tmp_path, r):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "link").symlink_to(root / "real")
    gate = Gatekeeper(r, AuthorizedKeys(tmp_path / "none"),
                      AgentSettings(policy=NodePolicy(cwd_roots=[str(root)])))
    envelope = {"cwd": str(root / "link")}
    gate._policy(envelope)
    # Swapping the link after the check does not move the job: it got the resolved directory.
    (root / "link").unlink()
    (root / "link").symlink_to(elsewhere)
    assert envelope["cwd"] == str(root / "real")


def test_job_logs_are_0600_in_a_0700_directory(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    os.chmod(logs, 0o755)
    with open_log(logs / "job.log") as f:
        f.write(b"secret\n")
    assert stat.S_IMODE((logs / "job.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    (logs / "other.log").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        open_log(logs / "other.log")  # never through a planted symlink
    assert not (tmp_path / "target").exists()
