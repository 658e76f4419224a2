"""`grid keys` and `grid acl` as a user runs them, and a key's life: made, authorized, revoked."""

from __future__ import annotations

import json

import pytest

from gridcore import acl
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState
from gridcore.settings import load_settings
from gridcore.signing import AuthorizedKeys
from tests.support.cli import call_cli


@pytest.fixture
def grid_cli(home, capsys):
    """Run `grid ARGS` in-process as the console script does; return (exit code, stdout, stderr)."""
    return lambda *args: call_cli(capsys, *args)


def one_line(text: str) -> bool:
    return text.count("\n") == 1


def test_init_show_and_refusal_to_overwrite(grid_cli, home, monkeypatch):
    key = home / "alice" / "id_ed25519"
    monkeypatch.setenv("GRID_KEY_FILE", str(key))
    monkeypatch.setenv("GRID_SUBMITTER", "alice@lab")
    code, out, _ = grid_cli("keys", "init")
    assert code == 0 and out.startswith("ssh-ed25519 ") and out.strip().endswith("alice@lab") and one_line(out)
    assert key.stat().st_mode & 0o777 == 0o600 and (home / "alice" / "id_ed25519.pub").read_text() == out
    assert grid_cli("keys", "show") == (0, out, "")
    shown = json.loads(grid_cli("keys", "show", "--json")[1])
    assert shown["public"] == out.strip() and shown["fingerprint"].startswith("SHA256:")
    code, out2, err = grid_cli("keys", "init")
    assert code == 2 and out2 == "" and "already exists" in err and one_line(err)
    monkeypatch.setenv("GRID_KEY_FILE", str(home / "nobody" / "id_ed25519"))
    code, _, err = grid_cli("keys", "show")
    assert code == 2 and "grid keys init" in err and one_line(err)


def test_authorize_list_revoke(grid_cli, home, monkeypatch):
    monkeypatch.setenv("GRID_KEY_FILE", str(home / "bob" / "id_ed25519"))
    pub_line = grid_cli("keys", "init")[1].strip()
    pub_file = home / "bob" / "id_ed25519.pub"
    code, out, _ = grid_cli("keys", "authorize", str(pub_file))
    assert code == 0 and out.startswith("authorized SHA256:") and one_line(out)
    fp = out.split()[1]
    # Inline, even unquoted (several words), re-authorizing the same key is idempotent.
    assert grid_cli("keys", "authorize", *pub_line.split())[0] == 0
    listed = json.loads(grid_cli("keys", "list", "--json")[1])
    assert [e["fingerprint"] for e in listed].count(fp) == 1 and len(listed) == 2  # the suite's key and bob's
    code, out, _ = grid_cli("keys", "revoke", fp)
    assert code == 0 and out.startswith(f"revoked {fp}")
    assert {"fingerprint": fp, "comment": "", "revoked": True} in json.loads(grid_cli("keys", "list", "--json")[1])
    assert f"{fp}\trevoked" in grid_cli("keys", "list")[1]
    for bad in (("authorize", "nonsense"), ("authorize", "ssh-ed25519", "AAAAnotbase64!"),
                ("authorize", "ssh-rsa", "AAAAB3NzaC1yc2EAAAADAQABAAABAQC", "x"), ("revoke", fp),
                ("revoke", "SHA256:nosuchkey"), ("authorize", str(home))):
        code, out, err = grid_cli("keys", *bad)
        assert code == 2 and out == "" and one_line(err) and err.startswith("grid: "), (bad, err)


def test_a_key_made_and_authorized_by_cli_runs_jobs_until_revoked(grid_cli, settings, agents, node, home,
                                                                    monkeypatch):
    monkeypatch.setenv("GRID_KEY_FILE", str(home / "carol" / "id_ed25519"))
    monkeypatch.setenv("GRID_SUBMITTER", "carol@lab")
    grid_cli("keys", "init", "--authorize")
    carol = load_settings(overrides={"redis_url": settings.redis_url})
    agents(node, slots=1)
    grid = Grid(connect(carol), carol)
    first = grid.submit(JobSpec(command="true"))
    assert grid.wait([first], timeout=30)[first] is JobState.FINISHED and grid.get(first).submitter == "carol@lab"
    fp = grid.signer.kid
    assert grid_cli("keys", "revoke", fp)[0] == 0
    assert fp in {e[0] for e in AuthorizedKeys(carol.authorized_keys_path).entries() if e[2]}
    second = grid.submit(JobSpec(command="true"))
    assert grid.wait([second], timeout=30)[second] is JobState.FAILED
    assert grid.get(second).reason == f"refused: signing key {fp} is revoked"


def test_acl_prints_lines_without_secrets_and_rejects_bad_input(grid_cli):
    code, out, err = grid_cli("acl", "--node", "gpu-1", "--node", "gpu-2")
    lines = out.splitlines()
    assert code == 0 and [ln.split()[2] for ln in lines] == [
        "grid-operator", "grid-agent-gpu-1", "grid-agent-gpu-2", "grid-viewer"]
    assert all(ln.startswith("ACL SETUSER ") and " reset on " in ln and ">" not in ln for ln in lines)
    code, out, _ = grid_cli("acl", "--role", "viewer", "--password", "grid-viewer=s3cret")
    assert code == 0 and "s3cret" not in out and "#" in out
    for bad in (("--node", "a:b"), ("--node", "gpu*"), ("--role", "root"), ("--password", "nobody=x"),
                ("--password", "grid-viewer")):
        code, out, err = grid_cli("acl", *bad)
        assert code == 2 and out == "" and one_line(err), (bad, err)


def test_acl_apply_installs_users_that_can_log_in(grid_cli, settings, r, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    code, out, err = grid_cli("acl", "--apply", "--json", "--node", "n1", "--password", "grid-viewer=view-only")
    try:
        assert code == 0, err
        creds = {u["name"]: u for u in json.loads(out)}
        assert set(creds) == {"grid-operator", "grid-agent-n1", "grid-viewer"}
        assert creds["grid-viewer"]["password"] == "view-only" and len(creds["grid-operator"]["password"]) >= 24
        assert "only this once" in err
        for name, u in creds.items():
            s = settings.model_copy(update={"redis_username": name, "redis_password": u["password"]})
            assert connect(s).ping()  # logged in with the printed password
    finally:
        for name in ("grid-operator", "grid-agent-n1", "grid-viewer"):
            r.execute_command("ACL", "DELUSER", name)
    assert acl.users(["n1"])[1].name == "grid-agent-n1"
