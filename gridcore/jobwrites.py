"""A submission's per-job writes (each job's RQ hash and its `submitted` event) as one script call.

As pipeline commands, each job was an HSET of a score of fields and an XADD, and redis-py packs
every argument of every command one by one, then reads back a QUEUED reply for each: that was
the largest part of a bulk submission's time per job after signing. Here the batch's fields
travel as the arguments of one script (the shared ones once, each job's own packed into two
strings, as agent/guarded.py packs a slot's start and end), which writes exactly the same
hashes and events. It is queued in the caller's transaction, with the batch's indexes.
"""

from __future__ import annotations

from typing import Any

from gridcore import keys
from gridcore.events import MAX_EVENTS
from gridcore.records import EventEntry

WRITE_JOBS = """
-- ARGV: job hash key prefix, event stream, its approximate length; then three lists, each its
--       length and its items: the hash arguments every job shares (field, value, ...), the names
--       of the fields each job has its own values of, and the event's fields (field, value,
--       ...: its 'job' and 'msg' are each job's own); then the numbers and the blob. For each
--       job: its id, how many own values it has (of the first names, in order), those values,
--       whether it has an event (1 or 0) and if so its message; the numbers are each part's
--       length, or the count, or the flag.
local prefix, stream, maxlen = ARGV[1], ARGV[2], ARGV[3]
local a = 4
local function list()
  local n, t = tonumber(ARGV[a]), {}
  for i = 1, n do t[i] = ARGV[a + i] end
  a = a + n + 1
  return t
end
local shared, names, event = list(), list(), list()
local nums = {}
for x in string.gmatch(ARGV[a], '%d+') do nums[#nums + 1] = tonumber(x) end
local blob, k, pos = ARGV[a + 1], 1, 1
local function take()
  local s = string.sub(blob, pos, pos + nums[k] - 1)
  pos = pos + nums[k]; k = k + 1
  return s
end
local e, jobat, msgat = {stream, 'MAXLEN', '~', maxlen, '*'}, 0, 0
for i = 1, #event do
  e[5 + i] = event[i]
  if i % 2 == 1 and event[i] == 'job' then jobat = 6 + i end
  if i % 2 == 1 and event[i] == 'msg' then msgat = 6 + i end
end
-- pcall: a job whose write fails (its key retyped by a broker writer) leaves the others
-- written, as in the MULTI of one command each; the first error is the script's reply.
local ns, failed, last = #shared, nil, 1
local function run(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err and not failed then failed = r end
  return r
end
while k <= #nums do
  local id = take()
  local h = {unpack(shared)}
  local n = nums[k]; k = k + 1
  for i = 1, n do
    h[ns + 2 * i - 1] = names[i]
    h[ns + 2 * i] = take()
  end
  run('HSET', prefix .. id, unpack(h))
  local has_event = nums[k]; k = k + 1
  if has_event == 1 then
    e[jobat] = id
    e[msgat] = take()
    local eid = run('XADD', unpack(e))
    if type(eid) == 'string' then last = eid end
  end
end
if failed then return failed end
return last
"""
"""Write each packed job's hash (the shared fields and its own) and append its event; reply the
last event's id (1: none), which a waiter for these jobs reads on from (gridcore/waiting.py)."""


def _bytes(v: Any) -> bytes:
    """A field's value as the broker stores it (what redis-py's encoder makes of it)."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bool | float):
        return repr(v).encode()
    if isinstance(v, int):
        return str(v).encode()
    raise TypeError(f"a job field of type {type(v).__name__}")


class JobWrites:
    """The hashes and events of one transaction's jobs: `add` each, then `write` them in one call.

    `shared`: the hash fields every job has the same value of; `names`: those each job has its
    own value of, in the order `add` gets them (a job may have the first ones only); `event`:
    the event every job gets, but for its `job` and `msg`."""

    def __init__(self, shared: dict[str, Any], names: tuple[str, ...], event: EventEntry):
        self.names = names
        self.head = [2 * len(shared), *(_bytes(x) for kv in shared.items() for x in kv), len(names), *names]
        fields = event.fields()
        self.head += [2 * len(fields), *(x for kv in fields.items() for x in kv)]
        self.reset()

    def reset(self) -> None:
        self.nums: list[int] = []
        self.parts: list[bytes] = []
        self.count = 0

    def add(self, job_id: str, fields: dict[str, Any], event: EventEntry | None) -> None:
        """Job `job_id`'s hash, the shared fields and its own `fields` (named as `names` are, in
        that order); and its event, if it has one (only its `job` and `msg` are its own)."""
        n = len(fields)
        if tuple(fields) != self.names[:n] or (event is not None and event.job != job_id):
            raise ValueError(f"job {job_id}: fields {tuple(fields)} are not the batch's {self.names}")
        nums, parts = self.nums, self.parts
        b = job_id.encode()
        nums.append(len(b))
        parts.append(b)
        nums.append(n)
        for value in fields.values():
            v = _bytes(value)
            nums.append(len(v))
            parts.append(v)
        if event is None:
            nums.append(0)
        else:
            m = event.fields()["msg"].encode()
            nums.append(1)
            nums.append(len(m))
            parts.append(m)
        self.count += 1

    def write(self, pipe) -> int | None:
        """The script call, in `pipe`; then none are left. Its place in the pipeline's replies."""
        if not self.count:
            return None
        at = len(pipe.command_stack)
        pipe.eval(WRITE_JOBS, 0, keys.rq_job_prefix(), keys.EVENTS, MAX_EVENTS, *self.head,
                  ",".join(map(str, self.nums)), b"".join(self.parts))
        self.reset()
        return at
