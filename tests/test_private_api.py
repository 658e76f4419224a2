"""The private members of RQ and Textual the grid relies on still exist.

agent/rqadapter/ overrides and calls RQ internals, and console/widgets/table.py overrides
DataTable's cell rendering. A release that renames one of them would not break an import: an
override would silently stop being called (GridJob's would stop refusing callbacks) or a call
would fail mid-job. So each is named here, and the test fails naming the member and its user.
rq is pinned to the series tested (~=3.0.0); run this after changing a pin.
"""

from __future__ import annotations

import inspect

import pytest
import rq
import textual
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.results import Result as RQResult
from rq.scheduler import RQScheduler
from rq.worker import SimpleWorker
from textual.widgets import DataTable

WORKER = "agent/rqadapter/worker.py"
BOOK = "agent/rqadapter/book.py"
JOBS = "agent/rqadapter/jobs.py"
SCHEDULER = "agent/rqadapter/scheduler.py"
TABLE = "console/widgets/table.py"

RQ_CLASS_MEMBERS = [
    # GridWorker's overrides: a renamed hook would no longer be called.
    (SimpleWorker, "_install_signal_handlers", WORKER),
    (SimpleWorker, "_pubsub_exception_handler", WORKER),
    (SimpleWorker, "_start_scheduler", WORKER),
    (SimpleWorker, "dequeue_job_and_maintain_ttl", WORKER),
    (SimpleWorker, "execute_job", WORKER),
    (SimpleWorker, "clean_registries", WORKER),
    (SimpleWorker, "run_maintenance_tasks", WORKER),
    (SimpleWorker, "check_for_suspension", WORKER),
    (SimpleWorker, "kill_horse", WORKER),
    (SimpleWorker, "request_stop_execution", WORKER),
    (SimpleWorker, "heartbeat", WORKER),
    (SimpleWorker, "set_state", WORKER),
    (SimpleWorker, "register_death", WORKER),
    (SimpleWorker, "unsubscribe", WORKER),
    (SimpleWorker, "dequeue_timeout", WORKER),
    (SimpleWorker, "should_run_maintenance_tasks", WORKER),
    (SimpleWorker, "reorder_queues", WORKER),
    # What the RQBook calls on the worker.
    (SimpleWorker, "get_heartbeat_ttl", BOOK),
    (SimpleWorker, "maintain_heartbeats", BOOK),
    (SimpleWorker, "increment_successful_job_count", BOOK),
    (SimpleWorker, "increment_failed_job_count", BOOK),
    (SimpleWorker, "increment_total_working_time", BOOK),
    (Queue, "_fetch_dequeued_job", JOBS),
    (Queue, "from_queue_key", WORKER),
    (Queue, "intermediate_queue_key", BOOK),
    (Queue, "enqueue_dependents", BOOK),
    (Job, "_handle_failure", BOOK),
    (Job, "restore", JOBS),
    (Job, "get_retry_interval", BOOK),
    (Queue, "schedule_job", BOOK),
    (Queue, "_enqueue_job", BOOK),
    (Job, "cleanup", BOOK),
    (Job, "get_result_ttl", BOOK),
    # GridJob's overrides: if RQ renamed these, a record's callbacks and webhooks would run.
    (Job, "func", JOBS),
    (Job, "success_callback", JOBS),
    (Job, "failure_callback", JOBS),
    (Job, "stopped_callback", JOBS),
    (Job, "send_webhooks", JOBS),
    (Execution, "create", BOOK),
    (Execution, "delete", BOOK),
    (Execution, "composite_key", BOOK),
    # RQ's Execution.create and Result.create, written by the book itself (agent/rqadapter/book.py).
    (Execution, "serialize", BOOK),
    (Execution, "key", BOOK),
    (Execution, "worker_executions_key", BOOK),
    (ExecutionRegistry, "key_template", "gridcore/keys.py"),
    (RQResult, "serialize", BOOK),
    (RQResult, "save", BOOK),
    (RQResult, "get_key", "gridcore/keys.py"),
    (RQScheduler, "enqueue_scheduled_jobs", SCHEDULER),
    (RQScheduler, "prepare_registries", SCHEDULER),
    (RQScheduler, "acquire_locks", WORKER),
]
"""(class, member, the module that relies on it)."""

RQ_INSTANCE_MEMBERS = {
    "worker": [("_stop_requested", WORKER), ("_state", WORKER), ("_ordered_queues", WORKER),
               ("executions", BOOK), ("last_cleaned_at", WORKER), ("death_penalty_class", WORKER)],
    "job": [("_result", BOOK), ("_status", BOOK), ("enqueue_at_front_on_retry", BOOK), ("_instance", JOBS), ("_success_callback_name", JOBS),
            ("_failure_callback_name", JOBS), ("_stopped_callback_name", JOBS)],
    "scheduler": [("_scheduled_job_registries", SCHEDULER), ("_acquired_locks", SCHEDULER),
                  ("_process", WORKER)],
}
"""Members RQ sets in its constructors, by the object that has them."""

TEXTUAL_CLASS_MEMBERS = ["_render_cell", "_clear_caches", "notify_style_update"]
TEXTUAL_INSTANCE_MEMBERS = ["_data", "_row_locations", "_column_locations", "_show_hover_cursor",
                            "_pseudo_class_state"]


def require(obj, name: str, owner: str, user: str, version: str) -> None:
    """Fail, naming the member, its owner and who relies on it, unless `obj` has `name`."""
    assert hasattr(obj, name), (f"{owner} has no member {name!r} ({version}); {user} relies on it: "
                                "adapt it before moving the pin")


@pytest.mark.parametrize(("cls", "name", "user"), RQ_CLASS_MEMBERS,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in RQ_CLASS_MEMBERS])
def test_rq_class_member_exists(cls, name, user):
    require(cls, name, f"rq's {cls.__name__}", user, f"rq {rq.__version__}")


@pytest.fixture
def rq_objects(r):
    queue = Queue("private-api", connection=r)
    return {
        "worker": SimpleWorker([queue], connection=r, name="private-api-probe"),
        "job": Job("private-api-probe", connection=r),
        "scheduler": RQScheduler([queue], connection=r),
    }


@pytest.mark.parametrize(("kind", "name", "user"),
                         [(k, n, u) for k, members in RQ_INSTANCE_MEMBERS.items() for n, u in members],
                         ids=[f"{k}.{n}" for k, members in RQ_INSTANCE_MEMBERS.items() for n, _ in members])
def test_rq_instance_member_exists(rq_objects, kind, name, user):
    obj = rq_objects[kind]
    require(obj, name, f"an rq {type(obj).__name__}", user, f"rq {rq.__version__}")


@pytest.mark.parametrize("name", TEXTUAL_CLASS_MEMBERS)
def test_textual_datatable_method_exists(name):
    require(DataTable, name, "Textual's DataTable", TABLE, f"textual {textual.__version__}")


@pytest.mark.parametrize("name", TEXTUAL_INSTANCE_MEMBERS)
def test_textual_datatable_attribute_exists(name):
    table = DataTable()
    require(table, name, "a Textual DataTable", TABLE, f"textual {textual.__version__}")
    if name in ("_row_locations", "_column_locations"):
        require(getattr(table, name), "get_key", f"DataTable.{name}", TABLE, f"textual {textual.__version__}")


def test_a_missing_member_fails_naming_it():
    class OlderJob:
        pass

    with pytest.raises(AssertionError) as e:
        require(OlderJob, "_handle_success", "rq's Job", BOOK, "rq 9.9")
    assert "'_handle_success'" in str(e.value) and BOOK in str(e.value) and "rq 9.9" in str(e.value)


RQ_CALL_KEYWORDS = [
    (Execution.__init__, "Execution", ("id", "job_id", "connection", "worker_name")),
]
"""RQ's constructors and methods the book calls by keyword, with the keywords it passes."""


@pytest.mark.parametrize(("fn", "what", "names"), RQ_CALL_KEYWORDS, ids=[w for _, w, _ in RQ_CALL_KEYWORDS])
def test_rq_calls_take_the_keywords_the_book_passes(fn, what, names):
    params = inspect.signature(fn).parameters
    missing = [n for n in names if n not in params]
    assert not missing, f"rq {rq.__version__}'s {what} takes no {missing}; {BOOK} passes them"
