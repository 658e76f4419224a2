"""RQ's Job, read within bounds: the class every grid reader of an RQ job record through RQ uses."""

from __future__ import annotations

from typing import Any

from rq.job import Job

from gridcore import keys
from gridcore.records.rqhash import bounded_data


class BoundedJob(Job):
    """An RQ Job whose `data` and `exc_info` are checked against their bounds before RQ inflates
    them: a zlib bomb is a CorruptRecord, not hundreds of megabytes (gridcore/records/rqhash.py)."""

    def restore(self, raw_data: Any) -> Any:
        # `data` inflated once, here: compressing it again for RQ to inflate cost a job's start
        # more than the rest of RQ's restore.
        fields, data = bounded_data(raw_data, keys.rq_job(self.id))
        restored = super().restore(fields)
        if data is not None:
            self.data = data  # RQ's setter: the payload is decoded from it on first use
        return restored
