"""RQ's Job, read within bounds: the class every grid reader of an RQ job record through RQ uses."""

from __future__ import annotations

from typing import Any

from rq.job import Job

from gridcore import keys
from gridcore.records.rqhash import bounded_fields


class BoundedJob(Job):
    """An RQ Job whose `data` and `exc_info` are checked against their bounds before RQ inflates
    them: a zlib bomb is a CorruptRecord, not hundreds of megabytes (gridcore/records/rqhash.py)."""

    def restore(self, raw_data: Any) -> Any:
        return super().restore(bounded_fields(raw_data, keys.rq_job(self.id)))
