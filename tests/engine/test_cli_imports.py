"""A short `grid` command imports what it uses: a submit is one process among thousands in a
shell loop, and importing the console, RQ or the descriptor format is most of its cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

NOT_FOR_EVERY_COMMAND = ("textual", "rq", "descriptors", "agent", "console", "redis.asyncio.client", "click")
"""Never imported by a short command: the console, RQ, the descriptor format, redis-py's asyncio
client, and click itself (typer vendors its own)."""

NOT_FOR_SUBMIT = (*NOT_FOR_EVERY_COMMAND, "cli.tasks", "cli.doctor", "cryptography.x509", "rich", "cli.tables",
                  "gridcore.efficiency")
"""A submit prints an id and perhaps a note: plain lines (cli/say.py), no Rich; it reads no usage."""

NOT_FOR_LS = (*NOT_FOR_EVERY_COMMAND, "gridcore.placement", "gridcore.efficiency", "gridcore.submission")
"""A listing neither places, nor reads usage, nor submits."""

PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
sys.argv = ["grid", *sys.argv[1:]]
from cli.app import run
run()
"""


def _modules(*args: str, url: str,
             env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "GRID_REDIS_URL": url, **(env or {})}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60)
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("MODULES "))
    return p, set(json.loads(line.removeprefix("MODULES ")))


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_submit_imports_only_what_it_needs(settings, broker):
    p, modules = _modules("submit", "--", "true", url=broker.url)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip()) == 32
    assert "note: no node has joined this grid yet" in p.stderr  # the note too, without Rich
    assert [m for m in NOT_FOR_SUBMIT if _loaded(modules, m)] == []


def test_ls_imports_no_rq_console_or_descriptors(settings, broker):
    p, modules = _modules("ls", "--json", url=broker.url)
    assert p.returncode == 0, p.stderr
    assert [m for m in NOT_FOR_LS if _loaded(modules, m)] == []


def test_a_whole_listing_piped_imports_no_rich(settings, broker):
    # Rich decides only where stdout may be a terminal, or for a note on stderr (more jobs
    # than --limit shows).
    p, modules = _modules("ls", url=broker.url)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ID\tNAME\t")
    assert not _loaded(modules, "rich")
    p, modules = _modules("ls", url=broker.url, env={"FORCE_COLOR": ""})
    assert p.returncode == 0, p.stderr
    assert _loaded(modules, "rich")


def test_help_still_lists_every_command(home):
    p = subprocess.run([sys.executable, "-c", "from cli.app import run; run()", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for command in ("submit", "ls", "keys", "acl", "up", "validate", "doctor", "service"):
        assert command in p.stdout


def test_a_deferred_module_still_works_when_used():
    code = """
import sys
from gridcore.lazy import defer
defer("redis.asyncio")
import redis
assert "redis.asyncio.client" not in sys.modules
from redis.asyncio.client import Pipeline      # a submodule: the package body still waits
import redis.asyncio
assert redis.asyncio.Redis.__name__ == "Redis"  # a name of the package: it loads
assert redis.asyncio.client.Pipeline is Pipeline
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_importing_the_cli_leaves_garbage_collection_as_it_was():
    # cli.app turns collection off while its modules import; a process that imports it (the
    # suite, a script) must get it back as it was, on or off.
    code = """
import gc
was = gc.isenabled()
import cli.app
assert gc.isenabled() == was, (was, gc.isenabled())
"""
    for prefix in ("", "import gc; gc.disable()\n"):
        p = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr


def test_the_cli_imports_are_frozen_before_collection_resumes():
    # The first collection after the imports would walk every object they made (14 ms of a
    # submit); frozen, it walks none of them.
    code = """
import gc
import cli.app
assert gc.isenabled()
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
assert gc.get_count()[0] < 700, gc.get_count()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_command_annotations_are_objects_not_strings():
    # Typer reads a command's annotations at every call: strings it would evaluate each time.
    import inspect

    from cli import app

    for command in (app.main, app.submit, app.ls):
        annotations = inspect.get_annotations(command)
        assert len(annotations) >= 3, command
        assert [name for name, a in annotations.items() if isinstance(a, str)] == [], command


def test_records_build_their_schemas_on_first_use():
    # A command pays for the records it reads or writes, not for all of them; a deferred
    # record still validates (and refuses) as before.
    code = """
from gridcore import records
assert not records.Attempt.__pydantic_complete__
assert not records.Result.__pydantic_complete__
try:
    records.Attempt.decode('{"exit_code": "x"}', "k")
except records.CorruptRecord as e:
    assert "exit_code" in str(e), e
else:
    raise AssertionError("a bad record was accepted")
assert records.Attempt.__pydantic_complete__
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_connecting_reads_no_package_metadata(settings, monkeypatch):
    # redis-py is told its version (CLIENT SETINFO): left to itself it reads the package's
    # metadata at every connection (a scan of the environment's packages).
    import importlib.metadata

    from gridcore.connection import connect

    def no_lookup(name):
        raise AssertionError(f"metadata lookup of {name}")

    monkeypatch.setattr(importlib.metadata, "version", no_lookup)
    client = connect(settings)
    try:
        assert client.ping()
    finally:
        client.close()
