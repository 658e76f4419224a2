"""`Grid.wait` is woken by a job's end event, and still reads the states when no event comes.

The poll interval is set far beyond the test's timeout where the event must do the waking: a
waiter that only polled would return at its timeout with the job still queued.
"""

from __future__ import annotations

import threading
import time

import redis

from gridcore import events, keys, waiting
from gridcore.client import Grid
from gridcore.models import JobSpec, JobState

NEVER = 3600.0


def _end_later(r, jid: str, *, event: bool = True, status_after_event: bool = False) -> threading.Thread:
    def end() -> None:
        time.sleep(0.2)  # the waiter is blocked by now (if not, it sees the end on its first read)
        with r.pipeline() as pipe:
            if event:
                events.emit(pipe, time.time(), "finished", job=jid, message="exit code 0")
            if not status_after_event:
                pipe.hset(keys.rq_job(jid), "status", "finished")
            pipe.execute()
        if status_after_event:  # RQ's bookkeeping a moment after the grid's end record
            time.sleep(0.05)
            r.hset(keys.rq_job(jid), "status", "finished")

    t = threading.Thread(target=end, daemon=True)
    t.start()
    return t


def test_an_end_event_wakes_the_waiter(grid, r):
    other, jid = grid.submit(JobSpec(command="true")), grid.submit(JobSpec(command="true"))
    with r.pipeline() as pipe:  # an event of another job does not end this wait
        events.emit(pipe, time.time(), "finished", job=other)
        pipe.execute()
    t = _end_later(r, jid)
    assert grid.wait([jid], timeout=60, poll=NEVER) == {jid: JobState.FINISHED}
    t.join()


def test_a_status_that_follows_its_end_event_is_seen(grid, r):
    jid = grid.submit(JobSpec(command="true"))
    t = _end_later(r, jid, status_after_event=True)
    assert grid.wait([jid], timeout=60, poll=NEVER) == {jid: JobState.FINISHED}
    t.join()


def test_an_end_without_an_event_is_seen_by_the_poll(grid, r):
    jid = grid.submit(JobSpec(command="true"))
    t = _end_later(r, jid, event=False)
    assert grid.wait([jid], timeout=60, poll=0.05) == {jid: JobState.FINISHED}
    t.join()


def test_timeout_returns_the_states_as_they_are(grid):
    jid = grid.submit(JobSpec(command="true"))
    assert grid.wait([jid], timeout=0.1, poll=NEVER) == {jid: JobState.QUEUED}


def _hgets(r) -> int:
    return int(r.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))


def test_events_that_end_none_of_many_jobs_do_not_make_the_waiter_read_again(grid, r):
    """Every event of the grid wakes a waiter's XREAD: reading the states of many jobs again for
    each (a busy grid's every start and end, and the jobs' own starts) was a round trip and a
    read of every state per event, on the same cores as the jobs being waited for. They are read
    at the start and once an end event of one of them came: however many events came between."""
    other = grid.submit(JobSpec(command="true"))
    ids = [grid.submit(JobSpec(command="true")) for _ in range(waiting.FEW + 1)]

    def busy_then_end() -> None:
        time.sleep(0.2)  # the waiter is blocked by now
        for kind, job in [("started", ids[0])] + [("finished", other)] * 10:
            with r.pipeline() as pipe:
                events.emit(pipe, time.time(), kind, job=job)
                pipe.execute()
            time.sleep(0.02)  # one wake each
        with r.pipeline() as pipe:
            for jid in ids:
                events.emit(pipe, time.time(), "finished", job=jid, message="exit code 0")
                pipe.hset(keys.rq_job(jid), "status", "finished")
            pipe.execute()

    r.config_resetstat()
    t = threading.Thread(target=busy_then_end, daemon=True)
    t.start()
    assert grid.wait(ids, timeout=60, poll=NEVER) == {jid: JobState.FINISHED for jid in ids}
    t.join()
    assert _hgets(r) == 2 * len(ids)


def _counted_sends(monkeypatch) -> list[int]:
    """Round trips this thread sends from now on (one per pipeline or command)."""
    waiter = threading.get_ident()
    sent: list[int] = []
    send = redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        if threading.get_ident() == waiter:
            sent.append(1)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    return sent


def test_a_few_jobs_end_is_seen_in_the_round_trip_its_event_ends(grid, r, monkeypatch, settings):
    """The states of a few jobs are sent with the waiter's blocking XREAD, queued behind it on
    the connection: the broker reads them as soon as an event wakes it, so an end is seen in
    the round trip its event ends, not one more after it (the last one of every `grid wait`).
    Two round trips in all for a waiter that did not submit them: the first states with the
    newest event id, then the wait."""
    jid = grid.submit(JobSpec(command="true"))
    sent = _counted_sends(monkeypatch)
    t = _end_later(r, jid)
    assert Grid(r, settings).wait([jid], timeout=60, poll=NEVER) == {jid: JobState.FINISHED}
    t.join()
    assert len(sent) == 2


def test_a_wait_right_after_its_submission_reads_on_from_its_event(grid, r, monkeypatch):
    """The Grid that submitted the jobs knows the last event its submission wrote, in the step
    that queued them: its wait starts its blocking read there, with no first read (a round trip
    on the cores the job is being started on). One round trip in all."""
    jid = grid.submit(JobSpec(command="true"))
    sent = _counted_sends(monkeypatch)
    t = _end_later(r, jid)
    assert grid.wait([jid], timeout=60, poll=NEVER) == {jid: JobState.FINISHED}
    t.join()
    assert len(sent) == 1


def test_an_end_before_the_wait_after_its_submission_is_seen_at_once(grid, r):
    ids = grid.submit_many([JobSpec(command="true") for _ in range(3)])
    with r.pipeline() as pipe:
        for jid in ids:
            events.emit(pipe, time.time(), "finished", job=jid, message="exit code 0")
            pipe.hset(keys.rq_job(jid), "status", "finished")
        pipe.execute()
    t0 = time.monotonic()
    assert grid.wait(ids, timeout=60, poll=NEVER) == dict.fromkeys(ids, JobState.FINISHED)
    assert time.monotonic() - t0 < 5


def test_a_wait_without_time_after_its_submission_reads_the_states(grid, r):
    """No waiting at all (timeout 0, `grid wait`'s look at the states): the states as they are,
    read, not as the submission left them."""
    jid = grid.submit(JobSpec(command="true"))
    r.hset(keys.rq_job(jid), "status", "finished")  # no event: only a read sees it
    assert grid.wait([jid], timeout=0) == {jid: JobState.FINISHED}


def test_only_the_jobs_of_the_last_submission_skip_the_first_read(grid, r, monkeypatch):
    """A job of an earlier submission may have ended before the last one's event: its wait
    reads the states first (a round trip of its own, then the blocking read)."""
    first = grid.submit(JobSpec(command="true"))
    r.hset(keys.rq_job(first), "status", "finished")  # no event: only a read sees it
    second = grid.submit(JobSpec(command="true"))
    sent = _counted_sends(monkeypatch)
    assert grid.wait([first, second], timeout=0.2, poll=NEVER) == {first: JobState.FINISHED,
                                                                  second: JobState.QUEUED}
    assert len(sent) == 2
