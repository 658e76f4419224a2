"""`gridtui` options: wiring into make_app, and one-line errors instead of tracebacks."""

from __future__ import annotations

import pytest

import console.app
from console import cli


class FakeApp:
    def __init__(self, settings, grid, **kw):
        self.settings, self.grid, self.kw = settings, grid, kw
        self.fatal = None
        self.return_code = 0
        self.ran_with = None

    def run(self, mouse=False):
        self.ran_with = {"mouse": mouse}


@pytest.fixture
def captured(monkeypatch):
    made = []

    def fake_make_app(settings, grid, **kw):
        made.append(FakeApp(settings, grid, **kw))
        return made[-1]

    monkeypatch.setattr(console.app, "make_app", fake_make_app)
    return made


def test_defaults():
    args = cli.parse_args([])
    assert args.mouse is False and args.poll_interval == 1.0 and not args.read_only and not args.local


def test_bad_poll_interval_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--poll-interval", "0"])
    assert e.value.code == 2


def test_options_reach_the_app(home, broker, captured):
    code = cli.main(["--redis-url", broker.url, "--read-only", "--mouse", "--poll-interval", "0.5"])
    assert code == 0
    app = captured[0]
    assert app.settings.redis_url == broker.url and app.settings.read_only is True
    assert app.kw["poll_interval"] == 0.5 and app.ran_with == {"mouse": True}


def test_missing_config_is_one_line(home, capsys, captured):
    assert cli.main(["--config", str(home / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridtui: ") and "config file not found" in err and "Traceback" not in err
    assert not captured


def test_no_broker_configured_is_one_line(home, capsys, captured):
    assert cli.main([]) == 2
    assert "no broker configured" in capsys.readouterr().err


def test_local_starts_the_embedded_grid(home, broker, monkeypatch, captured):
    import json

    from gridcore import localgrid
    from gridcore.connection import local_state_path

    calls = []

    def ensure_up(settings, slots=None):
        calls.append(settings)
        local_state_path().parent.mkdir(parents=True, exist_ok=True)
        local_state_path().write_text(json.dumps({"url": broker.url, "password": None}))  # as `grid up` writes it
        return {"url": broker.url, "password": None, "running_as_root": True}

    monkeypatch.setattr(localgrid, "ensure_up", ensure_up)
    assert cli.main(["--local", "--redis-url", "redis://elsewhere:1/0"]) == 0
    app = captured[0]
    # No URL of its own: the console finds the local grid through its state file, and follows it there.
    assert calls and app.settings.redis_url is None and app.settings.redis_password is None
    assert app.grid.redis.connection_pool.connection_kwargs["port"] == broker.port
    assert app.kw["where"] == "local grid" and app.kw["notices"] == [localgrid.ROOT_NOTE]


def test_local_failure_is_one_line(home, monkeypatch, capsys, captured):
    from gridcore import localgrid

    def ensure_up(settings, slots=None):
        raise RuntimeError("port in use")

    monkeypatch.setattr(localgrid, "ensure_up", ensure_up)
    assert cli.main(["--local"]) == 2
    assert "could not start the local grid: port in use" in capsys.readouterr().err
