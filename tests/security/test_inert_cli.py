"""Whatever a broker writer puts in ids, names, events, groups and attempts, every `grid`
command shows it inert: no escape reaches the terminal, no Rich markup is parsed."""

from __future__ import annotations

import json

import pytest

from gridcore import keys
from gridcore.models import JobSpec
from gridcore.records import GroupRecord, OutputEntry
from tests.support.cli import call_cli, run_cli, run_cli_tty

EVIL = "e\x1b]0;pwned\x07\x1b[2J\x9b5m[link=file:///etc/passwd]x[/link]\u202e"
"""A title change, a screen clear, a C1 CSI, a hyperlink in Rich markup and a bidi override."""


def inert(text: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in text, repr(text)


@pytest.fixture
def planted(grid, r, settings, monkeypatch):
    """A real failed job copied under an evil id into every index, an evil event and group, and
    attempts whose cells are hostile (a duration that is not a number)."""
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    jid = grid.submit(JobSpec(command="echo hi", name="plain"))
    evil_id = "0123456789" + EVIL
    r.copy(keys.rq_job(jid), keys.rq_job(evil_id))
    r.hset(keys.rq_job(evil_id), mapping={"status": "failed"})
    now = grid.broker_time()
    r.zadd(keys.JOBS, {evil_id: now + 1})
    r.zadd(keys.rq_registry("failed", "default"), {evil_id: now})
    r.xadd(keys.EVENTS, {"t": repr(now), "kind": "refused", "job": evil_id, "node": EVIL, "msg": EVIL})
    r.zadd(keys.GROUPS, {evil_id: now})
    r.hset(keys.group(evil_id), mapping=GroupRecord(name=EVIL, size=1, submitted=now, max_parallel=0,
                                                     submitter=EVIL, axes={}).encode())
    r.zadd(keys.group_jobs(evil_id), {evil_id: 0})
    r.rpush(keys.attempts(jid), json.dumps({"node": EVIL, "reason": EVIL, "duration": "[link=x]long[/link]",
                                            "signal": "[bold]9[/bold]"}),
            json.dumps({"node": "n", "duration": 1e400}))
    return jid, evil_id


@pytest.mark.parametrize("args", [("ls",), ("ls", "--state", "failed"), ("events",), ("groups",),
                                  ("show", "{jid}"), ("show", "{evil}"), ("nodes",)])
def test_cli_cells_are_inert(capsys, settings, planted, args):
    jid, evil_id = planted
    code, out, err = call_cli(capsys, *(a.format(jid=jid, evil=evil_id) for a in args))
    assert code == 0, err
    inert(out + err)
    assert "Traceback" not in err and "internal error" not in err


def test_show_survives_a_duration_that_is_not_a_number(capsys, settings, planted):
    jid, _ = planted
    code, out, err = call_cli(capsys, "show", jid)
    assert code == 0, err
    assert "attempts" in out and "internal error" not in err


def test_requeue_error_text_is_inert(capsys, settings, grid, r, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    jid = grid.submit(JobSpec(command="echo hi", name="plain"))
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    meta["params"] = {EVIL * 30: 1}  # a key too long: the refusal quotes the field's path, the key in it
    r.hset(keys.rq_job(jid), mapping={"status": "failed", "meta": json.dumps(meta)})
    code, out, err = call_cli(capsys, "requeue", jid)
    assert code == 1 and "will not requeue" in err and "link=file" in err, err
    inert(out + err)


@pytest.mark.parametrize("args", [("ls",), ("events",), ("groups",), ("show", "{jid}"), ("show", "{evil}")])
def test_cli_on_a_terminal_parses_no_markup_and_passes_no_escape(settings, planted, args):
    jid, evil_id = planted
    code, screen = run_cli_tty(*(a.format(jid=jid, evil=evil_id) for a in args), url=settings.redis_url,
                               columns=200, keep_escapes=True)
    assert code == 0, screen
    # Rich's own colours (SGR) are fine; no OSC (title, hyperlink), no screen clear, no C1.
    assert "\x1b]" not in screen and "\x07" not in screen and "\x1b[2J" not in screen, repr(screen)
    assert "\x9b" not in screen and "\u202e" not in screen and "Traceback" not in screen, repr(screen)
    if args[0] in ("events", "groups"):
        assert "[link=file:///etc/passwd]" in screen  # shown as written, never parsed as markup


OUTPUT = (b"\x1b[31mred\x1b[0m \x1b]52;c;ZXZpbA==\x07clip \x1b]8;;file:///etc/passwd\x1b\\link\x1b]8;;\x1b\\ "
          b"\x1b]0;title\x07\x1b[2J\x1b[10;10H\x1bP+q544e\x1b\\\x1b]52;c;")
"""Colours, then a clipboard write (OSC 52), a hyperlink (OSC 8), a title, a screen clear, cursor
movement, a DCS query, and an OSC 52 cut at the end of a chunk..."""
OUTPUT_REST = b"ZXZpbA==\x07done\n"
"""...ended in the next chunk."""


@pytest.fixture
def logged(grid, r):
    jid = grid.submit(JobSpec(command="echo hi"))
    r.xadd(keys.output(jid), OutputEntry("o", OUTPUT, at=0, ln=0).fields())
    r.xadd(keys.output(jid), OutputEntry("o", OUTPUT_REST, at=len(OUTPUT), ln=0).fields())
    r.xadd(keys.output(jid), OutputEntry("n", b"note \x1b]0;t\x07").fields())
    return jid


def test_logs_on_a_terminal_keeps_colours_and_drops_what_acts_on_the_terminal(settings, logged):
    code, screen = run_cli_tty("logs", logged, url=settings.redis_url, keep_escapes=True)
    assert code == 0, screen
    assert "\x1b[31mred\x1b[0m" in screen and "clip" in screen and "link" in screen and "done" in screen
    for bad in ("\x1b]", "\x07", "\x1bP", "\x1b[2J", "\x1b[10;10H", "ZXZpbA=="):
        assert bad not in screen, (bad, screen)


def test_logs_raw_and_piped_are_the_exact_bytes(settings, logged):
    code, screen = run_cli_tty("logs", "--raw", logged, url=settings.redis_url, keep_escapes=True)
    assert code == 0 and (OUTPUT + OUTPUT_REST).decode() in screen
    piped = run_cli("logs", logged, url=settings.redis_url)
    assert piped.returncode == 0 and piped.stdout == (OUTPUT + OUTPUT_REST).decode()
    assert "\x1b" not in piped.stderr  # the grid's own notes are cleaned: they are not the job's bytes
