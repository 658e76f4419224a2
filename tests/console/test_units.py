"""Pure parts of the console: sanitizing, progress parsing, the output buffer, filters, the form."""

from __future__ import annotations

import pytest
from rich.text import Text

from console import progress
from gridcore.jobfilter import FilterError, JobFilter, parse
from console.output import OutputBuffer
from console.sanitize import MAX_LINE, clean, clean_line, text
from console.screens.submit import parse_timeout, validate
from console.widgets.table import Column, fit_columns
from gridcore.models import JobState


# ---- sanitize ---------------------------------------------------------------------------

def test_escape_sequences_and_controls_are_removed():
    evil = "ok\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x07\x08\x7f\x9b1;1H\u202eevil"
    assert clean(evil) == "okredevil"


def test_markup_is_never_interpreted():
    t = text("[bold red]not bold[/] [link=http://x]y[/link]")
    assert isinstance(t, Text)
    assert t.plain == "[bold red]not bold[/] [link=http://x]y[/link]"
    assert not t.spans


def test_absurd_sizes_are_truncated():
    assert len(clean("x" * 10_000_000)) == 200
    line = clean_line("y" * (MAX_LINE + 50))
    assert line.endswith("[+50 chars]")


def test_newlines_in_fields_become_spaces():
    assert clean("a\nb\rc\td") == "a b c   d"


# ---- progress ---------------------------------------------------------------------------

@pytest.mark.parametrize("line,value", [
    ("42%", 0.42),
    ("processing ... 99.5 %", 0.995),
    (" 42%|████▏     | 42/100 [00:01<00:02, 30.1it/s]", 0.42),
    ("step 420/1000 loss=0.1", 0.42),
    ("Epoch 3/10", 0.3),
    ("batch: 5 / 50", 0.1),
    ("|█████     | 50/200 [00:01<00:03]", 0.25),
])
def test_progress_forms(line, value):
    assert progress.latest(line) == pytest.approx(value)


@pytest.mark.parametrize("line", ["2024/01/02 started", "see a/b", "300%", "step 5/0", "no numbers"])
def test_progress_false_positives(line):
    assert progress.latest(line) is None


def test_latest_progress_wins_across_redraws_and_streams():
    out = "step 1/10\r 20%|##|\r 30%|###|"
    assert progress.latest(out) == pytest.approx(0.3)
    chunks = [("stdout", b"step 1/4\n"), ("stderr", b"\r 50%|"), ("stderr", b"#####|"), ("stdout", b"log\n")]
    assert progress.latest_of_chunks(chunks) == pytest.approx(0.5)
    assert progress.label(0.421) == "42%"
    assert progress.label(None) == ""


# ---- output buffer ----------------------------------------------------------------------

def test_carriage_return_redraws_the_line_in_place():
    b = OutputBuffer()
    b.feed("stderr", b"\r 10%|#")
    b.feed("stderr", b"   |\r 20%|##  |")
    assert b.lines == []
    assert b.partials == [("stderr", " 20%|##  |")]
    b.feed("stderr", b"\r100%|####|\n")
    assert b.lines == [("stderr", "100%|####|")]
    assert b.partials == []


def test_stdout_and_stderr_stay_apart():
    b = OutputBuffer()
    b.feed("stdout", b"out-a ")
    b.feed("stderr", b"err\n")
    b.feed("stdout", b"out-b\r\n")
    assert b.lines == [("stderr", "err"), ("stdout", "out-a out-b")]


def test_utf8_split_across_chunks_and_invalid_bytes():
    b = OutputBuffer()
    snow = "☃".encode()
    b.feed("stdout", b"a" + snow[:1])
    b.feed("stdout", snow[1:] + b"\xff\xfe b\n")
    assert b.lines == [("stdout", "a☃\ufffd\ufffd b")]


def test_escape_split_across_chunks_is_never_shown():
    b = OutputBuffer()
    b.feed("stdout", b"red:\x1b[3")
    b.feed("stdout", b"1mX\x1b]0;title\x07\n")
    assert b.lines == [("stdout", "red:X")]


def test_max_lines_trims_and_counts():
    b = OutputBuffer(max_lines=100)
    b.feed("stdout", b"".join(b"line %d\n" % i for i in range(1000)))
    assert 100 <= len(b.lines) <= 110
    assert b.trimmed + len(b.lines) == 1000
    assert b.lines[-1] == ("stdout", "line 999")


def test_finish_flushes_partial_lines():
    b = OutputBuffer()
    b.feed("stdout", b"no newline at end")
    b.finish()
    b.note("end of output: exit code 0")
    assert b.lines == [("stdout", "no newline at end"), ("note", "end of output: exit code 0")]


# ---- filters and the submit form --------------------------------------------------------

def test_filter_parse_and_cycle():
    f = parse("state:failed queue:gpu node:a train big")
    assert f == JobFilter(state=JobState.FAILED, queue="gpu", node="a", text="train big")
    assert parse(f.describe()) == f
    with pytest.raises(FilterError):
        parse("state:sleeping")
    assert JobFilter().next_state().state is JobState.RUNNING


def test_submit_validation():
    spec, errors = validate({"command": "echo hi", "name": "", "queue": "", "timeout": "5m", "retries": "2"})
    assert errors == {} and spec.command == "echo hi" and spec.timeout == 300 and spec.retries == 2
    assert spec.queue == "default"
    _, errors = validate({"command": " ", "queue": "bad queue", "timeout": "soon", "retries": "-1"})
    assert set(errors) == {"command", "queue", "timeout", "retries"}
    assert parse_timeout("") is None and parse_timeout("2h") == 7200
    with pytest.raises(ValueError):
        parse_timeout("0")


def test_columns_drop_by_priority():
    cols = [Column("a", "a", 10, 0), Column("b", "b", 10, 2), Column("c", "c", 10, 1, flex=True)]
    assert [c.key for c in fit_columns(cols, 100)] == ["a", "b", "c"]
    fitted = fit_columns(cols, 25)
    assert [c.key for c in fitted] == ["a", "c"]
    assert sum(c.width + 2 for c in fitted) == 25
