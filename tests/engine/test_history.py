"""The history that outlives result_ttl: the stream written at each end, the collector's store,
`grid history export`, `grid ls --history`, `grid show` past the broker, and `grid usage`."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gridcore import history, keys
from gridcore.historyexport import COLUMNS, LIST_COLUMNS, flat
from gridcore.historystore import HistoryStore, collect
from gridcore.models import JobSpec, JobState
from gridcore.records import FinishedEntry, ResourcesRecord, Usage
from tests.support.cli import call_cli
from tests.support.records import finished_entry, put_finished

GiB = 2**30


def _three(r):
    entries = [
        finished_entry("job-a1"),
        finished_entry("job-b2", submitter="bob@ws2", node="node-b", end=1700.0, outcome="failed", exit_code=3,
                       reason="exit code 3", reason_kind="exit", requested=ResourcesRecord(gpus=2, labels=["gpu", "big"]),
                       gpus=["0", "1"], usage=Usage(wall=1800.0, cpu_user=3600.0, memory_peak=4 * GiB,
                                                  gpu_memory_peak=GiB, gpu_utilization=55.0)),
        finished_entry("job-c3", outcome="lost", usage=None, reason="node node-a stopped heartbeating",
                       reason_kind="lost", duration=None, start=1500.0, end=1800.0, attempt="lost@1800.000000"),
    ]
    put_finished(r, *entries)
    return entries


def test_collect_is_idempotent_across_restarts_and_repeats(r, tmp_path):
    entries = _three(r)
    path = tmp_path / "h.sqlite3"
    with HistoryStore(path) as store:
        assert collect(r, store) == 3
        assert collect(r, store) == 0
    # A new collector on the same file resumes at its position; an entry written twice (a repeated end)
    # and a store whose position was lost both keep one row per attempt.
    put_finished(r, entries[0], finished_entry("job-d4"))
    with HistoryStore(path) as store:
        assert collect(r, store) == 1
        store.db.execute("DELETE FROM position")
        assert collect(r, store) == 0
        assert store.count() == 4
        kept = {e.job_id: e for e in store.since(0)}
        assert sorted(kept) == ["job-a1", "job-b2", "job-c3", "job-d4"] and kept["job-b2"] == entries[1]


def test_a_corrupt_stream_entry_is_named_and_passed_over(r, tmp_path):
    r.xadd(keys.HISTORY, {"r": "{not json"})
    put_finished(r, finished_entry("job-a1"))
    problems: list[str] = []
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        assert collect(r, store, problems) == 1
        assert len(problems) == 1 and keys.HISTORY in problems[0]
        assert collect(r, store, problems) == 0 and len(problems) == 1  # not read again


def test_usage_totals_are_the_sums_over_the_attempts(r, settings, capsys):
    _three(r)
    code, out, err = call_cli(capsys, "--redis-url", settings.redis_url, "usage", "--since", "all", "--json")
    assert code == 0, err
    total = json.loads(out)["total"]
    assert total["jobs"] == 3 and total["attempts"] == 3
    assert total["cpu_hours"] == pytest.approx((900 + 3600) / 3600)
    assert total["gpu_hours"] == pytest.approx(2 * 1800 / 3600)
    assert total["memory_gib_hours"] == pytest.approx(1 * 600 / 3600 + 4 * 1800 / 3600)
    assert total["wall_hours"] == pytest.approx((600 + 1800 + 300) / 3600)
    assert total["unmeasured"] == 1
    assert total["failures"] == {"exit": 1, "lost": 1}
    code, out, _ = call_cli(capsys, "--redis-url", settings.redis_url, "usage", "--since", "all", "--by", "label",
                            "--json")
    rows = {row["key"]: row for row in json.loads(out)["rows"]}
    # A job with two labels counts under each.
    assert set(rows) == {"gpu", "big", "(none)"} and rows["gpu"]["gpu_hours"] == pytest.approx(1.0)
    assert rows["(none)"]["jobs"] == 2
    code, out, _ = call_cli(capsys, "--redis-url", settings.redis_url, "usage", "--since", "all", "--by", "user",
                            "--json")
    rows = {row["key"]: row for row in json.loads(out)["rows"]}
    assert rows["alice"]["jobs"] == 2 and rows["bob"]["cpu_hours"] == pytest.approx(1.0)
    assert sum(row["cpu_hours"] for row in rows.values()) == pytest.approx(total["cpu_hours"])
    # Entries older than --since are left out (the broker's time is now, these ended in 1970).
    code, out, _ = call_cli(capsys, "--redis-url", settings.redis_url, "usage", "--since", "30d", "--json")
    assert json.loads(out)["total"]["attempts"] == 0
    code, out, err = call_cli(capsys, "--redis-url", settings.redis_url, "usage", "--by", "colour")
    assert code == 2 and "--by 'colour'" in err


def test_export_formats_round_trip(r, settings, capsys, tmp_path):
    entries = _three(r)
    code, out, err = call_cli(capsys, "--redis-url", settings.redis_url, "history", "export", "--since", "all")
    assert code == 0, err
    assert [FinishedEntry.decode(line, "export") for line in out.splitlines()] == entries
    code, out, err = call_cli(capsys, "--redis-url", settings.redis_url, "history", "export", "--since", "all",
                              "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and list(rows[0]) == list(COLUMNS)
    for row, e in zip(rows, entries, strict=True):
        want = flat(e)
        for c in COLUMNS:
            v = want[c]
            shown = ";".join(v) if c in LIST_COLUMNS else "" if v is None else str(v)
            assert row[c] == shown, c
    target = tmp_path / "h.parquet"
    args = ("--redis-url", settings.redis_url, "history", "export", "--since", "all", "--format", "parquet",
            "-o", str(target))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        code, _, err = call_cli(capsys, *args)
        assert code == 2 and "needs pyarrow" in err and not target.exists()
        return
    code, _, err = call_cli(capsys, *args)
    assert code == 0, err
    assert pq.read_table(target).to_pylist() == [flat(e) for e in entries]


def test_a_job_past_result_ttl_is_kept_by_the_history(r, settings, grid, agents, capsys):
    """One real run through an agent: its end reaches the history stream with the end itself; once
    the broker forgets the job, `grid show` and `grid ls --history` still find it, and usage counts it."""
    planted = _three(r)
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="exit 4", name="forgotten"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FAILED
    ran = [e for e in history.since(r, 0) if e.job_id == jid]
    assert len(ran) == 1 and ran[0].outcome == "failed" and ran[0].exit_code == 4 and ran[0].node == "node-a"
    assert ran[0].name == "forgotten" and ran[0].submitter == "tester@suite" and ran[0].end >= ran[0].start
    url = ("--redis-url", settings.redis_url)
    code, out, err = call_cli(capsys, *url, "history", "collect")
    assert code == 0 and out.startswith("4 attempt(s) added"), err
    # result_ttl passed: the broker no longer holds the job.
    r.delete(keys.rq_job(jid), keys.result(jid), keys.attempts(jid), keys.output(jid))
    assert not grid.exists(jid)
    code, out, err = call_cli(capsys, *url, "show", jid[:10], "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == jid and shown["state"] == "failed" and shown["exit_code"] == 4
    assert shown["name"] == "forgotten" and len(shown["attempts"]) == 1
    code, out, err = call_cli(capsys, *url, "ls", "--history", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["total"] == 4 and listed["jobs"][0]["id"] == jid
    code, out, _ = call_cli(capsys, *url, "ls", "--history", "--state", "failed", "--node", "node-a", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [jid, "job-c3"]
    code, out, _ = call_cli(capsys, *url, "usage", "--since", "all", "--by", "node", "--json")
    report = json.loads(out)
    assert report["total"]["jobs"] == 4 and report["total"]["failures"] == {"exit": 2, "lost": 1}
    walls = sum(e.usage.wall if e.usage and e.usage.wall is not None else (e.duration or e.end - e.start)
                for e in [*planted, ran[0]])
    assert report["total"]["wall_hours"] == pytest.approx(walls / 3600)
    code, _, err = call_cli(capsys, *url, "show", "nosuchjob1")
    assert code == 2 and "history" in err


def test_service_install_history_adds_the_collector_unit(tmp_path, home, capsys):
    code, out, err = call_cli(capsys, "service", "install", "--dry-run", "--history", "--redis-url",
                              "redis://broker.lab:6379/0", "--config", str(tmp_path / "etc" / "config.toml"),
                              "--data-dir", str(tmp_path / "var"), "--unit-dir", str(tmp_path / "units"),
                              "--user", "grid-test-user")
    assert code == 0, err
    assert f"would write {tmp_path / 'units' / 'grid-history.service'}" in out
    assert " -m gridcore.historycollector" in out and f"Environment=GRID_DATA_DIR={tmp_path / 'var'}" in out
    assert "would run: systemctl enable --now grid-history.service" in out


def test_jobs_that_end_without_running_are_in_the_history(r, grid):
    """A job canceled while it waits, and its dependent failed for it, end too: the history has both."""
    parent = grid.submit(JobSpec(command="true", name="parent"))
    child = grid.submit(JobSpec(command="true", name="child", after=(parent,)))
    assert grid.cancel(parent, wait=0) is JobState.CANCELED
    ended = {e.job_id: e for e in history.since(r, 0)}
    assert ended[parent].outcome == "canceled" and ended[parent].name == "parent"
    assert ended[child].outcome == "failed" and ended[child].reason_kind == "dependency"
    assert ended[child].submitter == "tester@suite" and ended[child].start is None


def test_reads_take_the_store_and_what_it_has_not_collected_yet_once_each(r, settings, capsys):
    put_finished(r, finished_entry("job-a1"), finished_entry("job-b2"))
    url = ("--redis-url", settings.redis_url)
    assert call_cli(capsys, *url, "history", "collect")[0] == 0
    put_finished(r, finished_entry("job-c3"), finished_entry("job-a1", attempt="run-2", end=1900.0))
    code, out, err = call_cli(capsys, *url, "usage", "--since", "all", "--json")
    assert code == 0, err
    total = json.loads(out)["total"]
    assert (total["jobs"], total["attempts"]) == (3, 4)
    code, out, err = call_cli(capsys, *url, "ls", "--history", "--json")
    listed = json.loads(out)
    assert listed["total"] == 3 and [j["id"] for j in listed["jobs"]][0] == "job-a1"
    assert len(listed["jobs"][0]["attempts"]) == 2


def test_the_history_is_read_while_the_broker_is_away(r, settings, capsys):
    from tests.support.brokers import free_port

    _three(r)
    assert call_cli(capsys, "--redis-url", settings.redis_url, "history", "collect")[0] == 0
    away = ("--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = call_cli(capsys, *away, "usage", "--since", "all", "--json")
    assert code == 0 and json.loads(out)["total"]["jobs"] == 3
    assert "reading the history store alone" in err
    code, out, err = call_cli(capsys, *away, "ls", "--history", "--json")
    assert code == 0 and json.loads(out)["total"] == 3
    code, out, err = call_cli(capsys, *away, "ls", "--json")  # the broker's own listing needs the broker
    assert code == 1


def test_an_end_without_usage_figures_keeps_its_cgroup_peak():
    from gridcore.records import JobMeta, Result

    meta = JobMeta(name="n", command="c" * 5000, submitter="carol@h", queue="q")
    plain = history.entry("j1", meta, Result(node="a", end=10.0, exit_code=0), "finished")
    assert plain.usage is None and plain.attempt == "finished@10.000000" and len(plain.command) == history.COMMAND_KEPT
    peak = history.entry("j1", meta, Result(node="a", end=10.0, duration=4.0, memory_peak=5 * GiB, run_id="r1"), "failed")
    assert peak.attempt == "r1" and peak.usage == Usage(wall=4.0, memory_peak=5 * GiB, memory_source="cgroup")


def test_a_store_that_is_not_a_database_is_one_line(r, settings, capsys, home):
    (home / "data" / "history.sqlite3").write_text("not a database, just text\n" * 100)
    code, _, err = call_cli(capsys, "--redis-url", settings.redis_url, "history", "collect")
    assert code == 1 and err.startswith("grid: history store ") and "Traceback" not in err
