"""GridJob: the RQ job class every agent uses, which never imports or calls what a record names.

RQ resolves a job's callbacks with `import_attribute` and sends its webhooks from many places
besides running the job: registry cleanup of "abandoned" jobs (every worker's maintenance),
the intermediate-queue sweep, retries. A job record is written by whoever can write to the
broker, so on a grid node all of that is off. The Gatekeeper still refuses any job that names
callbacks or webhooks; this class makes sure no other RQ code path acts on them.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job


class GridJob(Job):
    """An RQ Job whose function, callbacks and webhooks are never resolved or invoked."""

    @property
    def func(self) -> Any:
        # The grid runner is called by the slot with a verified envelope, never through RQ.
        raise RuntimeError(f"job {self.id}: an agent never imports a job's function")

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never: a webhook URL in a job record would make nodes send requests for strangers."""
