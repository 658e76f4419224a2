"""Commands recorded on a pipeline, run by one Lua script only if its guard holds.

A job's start and end each touch a dozen keys: RQ's own records (written by RQ's methods,
which take a pipeline) and the grid's. As separate calls, or WATCH + read + MULTI, that is
many round trips per job, and a slot's throughput on trivial jobs is bounded by them. Here
RQ's methods and ours queue onto an ordinary pipeline that is never executed; its commands
travel as the arguments of one script, which first checks its guard (the node has room and
the envelope is not replayed; this slot still owns the job) and then runs them. A script
runs atomically, so the guard and the writes are one step, as a WATCH transaction would be.
Also here: the other scripts that write an attempt's records only while this slot owns it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import redis

from agent.lua import Lua
from agent.verify import REFUND_FN
from gridcore import keys
from gridcore.records import OWNER_FN
from gridcore.reservations import RESERVE_FN

UNPACK_AT_ONCE = 4000
"""Numbers the recorded commands' reader unpacks in one call (Lua's C stack holds 8,000 values)."""

RUN_FN = """
local function run_recorded(i)
  -- A write that changes nothing, first: a broker refusing writes (out of memory,
  -- a failed save, a replica) fails the script here, before any recorded command ran; once
  -- it passed, the broker lets the script's writes through to the end.
  local probe = redis.pcall('SETRANGE', '""" + keys.WRITE_PROBE + """', 0, '')
  if type(probe) == 'table' and probe.err then
    if not string.find(probe.err, 'WRONGTYPE', 1, true) then error(probe) end
    -- Never written by the grid: a writer's value of another type goes (no probe this once;
    -- a DEL first would pass as the script's first write and let it past a full broker).
    redis.call('DEL', '""" + keys.WRITE_PROBE + """')
  end
  local errs, lens, blob, pos = {}, ARGV[i], ARGV[i + 1], 1
  -- Every number in one unpack, not a call each (a start or an end has a few hundred): the
  -- calls cost a script more than its commands. In parts past what one call may return.
  local count, nums = #lens / 4, nil
  if count <= """ + str(UNPACK_AT_ONCE) + """ then
    nums = {struct.unpack('<' .. string.rep('I4', count), lens)}
  else
    nums = {}
    local at, got = 1, 0
    while got < count do
      local take = math.min(count - got, """ + str(UNPACK_AT_ONCE) + """)
      local part = {struct.unpack('<' .. string.rep('I4', take), lens, at)}
      at = part[take + 1]
      for j = 1, take do nums[got + j] = part[j] end
      got = got + take
    end
  end
  local ncmd = nums[1]
  local k = ncmd + 2  -- the first argument's length
  for c = 1, ncmd do
    local cmd = {}
    for a = 1, nums[c + 1] do
      local n = nums[k]
      k = k + 1
      cmd[a] = string.sub(blob, pos, pos + n - 1)
      pos = pos + n
    end
    local r = redis.pcall(unpack(cmd))
    if type(r) == 'table' and r.err then errs[#errs + 1] = r.err end
  end
  return errs
end
"""
"""Lua: run the recorded commands packed into ARGV[i] (the numbers, as little-endian 32-bit
integers: command count, each command's argc, then every argument's length; decimal text
cost the slot more to write than its commands cost to record) and ARGV[i + 1] (the
arguments, concatenated).
Two script arguments instead of one per command argument: redis-py's per-argument packing
was the largest single cost of a slot's start and end. A failing command is reported, not
fatal: the rest still run, as in MULTI/EXEC; a broker that refuses writes fails it whole."""

START = Lua(RESERVE_FN + RUN_FN + """
-- KEYS: node's held hash, the envelope's nonce counter, the job's cancel flag, its RQ hash
-- ARGV: job id, cpus, memory, gpus (JSON), node cpus, node memory, held entry,
--       nonce expiry (unix s), max attempts, spent mark, then the recorded start (2 args)
local status = redis.call('HGET', KEYS[4], 'status')
local canceled = redis.call('EXISTS', KEYS[3])  -- the start writes no cancel flag: read once
if canceled == 1 and status == 'canceled' then
  return {-2, 0, {}, 1}  -- canceled before it started: its canceler recorded that (gridcore/cancel.py)
end
if status ~= 'queued' then
  -- No longer waiting: recovery put this claim back in line while the node was cut off, and
  -- another node runs it, or ran it to its end. Not this slot's to start, nor to refuse.
  return {-3, 0, {}, 0}
end
if reserve(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) == 0 then
  return {0, 0, {}, 0}
end
local used = redis.call('INCR', KEYS[2])
redis.call('EXPIREAT', KEYS[2], ARGV[8])
if used > tonumber(ARGV[10]) or used > tonumber(ARGV[9]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {-1, used, {}, 0}
end
return {1, used, run_recorded(11), canceled}
""", resend=False)  # a lost reply: the slot hands the job back (JobAttempt.give_back_unstarted)
"""Reserve the job's resources, count the attempt, and start it: all or nothing. Also says
whether the job's cancel flag is set, read in the same atomic step as the start. A job whose
cancel flag is set is not started at all (nothing written): it never runs; nor is one that no
longer waits (taken up elsewhere since this slot claimed it)."""

END = Lua(OWNER_FN + RUN_FN + """
-- KEYS: grid:active, the job's RQ hash, its RQ dependents set, its attempts list,
--       the queue of jobs waiting for placement, the placement wake stream
-- ARGV: job id, this slot's worker name, the wake entry's two fields and values
--       (gridcore/reservations.py wake_entry; all '' for no wake), then the recorded end (2 args)
if owner_of(KEYS[1], ARGV[1]) ~= ARGV[2] then
  return {0, redis.call('LINDEX', KEYS[4], -1) or ''}
end
if redis.call('HGET', KEYS[2], 'status') ~= 'started' or redis.call('SCARD', KEYS[3]) > 0 then
  return {2, ''}
end
local errs = run_recorded(7)
if ARGV[3] ~= '' then
  -- Only a job waiting for placement can use what this end gave back. A submitter places
  -- what fits in one script too, so a job it could not place is in the queue by now.
  -- A queue of another type (anyone may write one) wakes the loops as before.
  local waiting = redis.pcall('LLEN', KEYS[5])
  if type(waiting) ~= 'number' or waiting > 0 then
    local r = redis.pcall('XADD', KEYS[6], 'MAXLEN', '~', '""" + str(keys.PLACE_WAKES_CAP) + """', '*',
                          ARGV[3], ARGV[4], ARGV[5], ARGV[6])
    if type(r) == 'table' and r.err then errs[#errs + 1] = r.err end
  end
end
return {1, errs}
""")
"""Record a job's end while this slot still owns it and nothing waits on it in RQ; wake the
placement loops it concerns only if a job waits for placement."""


def recorder(conn: redis.Redis) -> redis.client.Pipeline:
    """A pipeline to queue commands on; it is read by `packed`, never executed."""
    return conn.pipeline(transaction=True)


def packed(conn: redis.Redis, pipe: redis.client.Pipeline) -> list[Any]:
    """The pipeline's queued commands as the two script arguments RUN_FN reads."""
    encoder = conn.get_encoder()
    encode, charset, handling = encoder.encode, encoder.encoding, encoder.encoding_errors
    stack = pipe.command_stack
    # Every argument in one flat pass, not a pass per command: a start or an end records a few
    # dozen commands, and the per-command steps cost more than their few arguments. The
    # common types inline, as redis-py's encode writes them (it checks each against five types).
    parts = [a.encode(charset, handling) if type(a) is str else a if type(a) is bytes
             else repr(a).encode() if type(a) is int or type(a) is float else encode(a)
             for args, _options in stack for a in args]
    nums = [len(stack), *[len(args) for args, _options in stack], *map(len, parts)]
    pipe.reset()
    return [struct.pack(f"<{len(nums)}I", *nums), b"".join(parts)]


def errors(reply: Sequence[Any]) -> list[str]:
    """The error replies of the recorded commands a script ran."""
    return [e.decode(errors="replace") if isinstance(e, bytes) else str(e) for e in reply]


MOVE_WAITING = Lua(RUN_FN + """
-- KEYS: the queue the job waits in; ARGV: job id, then the recorded move (2 args)
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  return {0, {}}  -- taken off it since it was read (a slot of its node): not this move's
end
return {1, run_recorded(2)}
""")
"""Move a waiting job (agent/recovery.py replace_queued): the recorded commands, its removal
from the queue first, run only while it still waits there, in the step that checks it; else a
slot that took it meanwhile would run it while it also waits for placement elsewhere."""


REQUEUE_UNSTARTED = Lua(OWNER_FN + REFUND_FN + """
-- KEYS: the job's queue, its RQ hash, the node's running hash, grid:active, RQ's taken list
--       of the queue, the node's held hash, the queue's started registry; and, when this
--       slot sent the job's start and its reply was lost, the envelope's nonce counter
-- ARGV: job id, its started-registry member ('' none), this slot's worker name,
--       '1' to give back what it holds on the node, this slot's claim, and with the 8th key
--       the counter's expiry (agent/verify.py nonce_expiry)
local id = ARGV[1]
local owner = owner_of(KEYS[4], id)
local unrefunded = ''  -- why the count could not go back (a retyped counter), reported by the slot
if owner ~= nil then
  if owner ~= ARGV[3] then
    -- Another slot runs this job: ours was a second copy; only our claim goes.
    if redis.call('HGET', KEYS[3], id) == ARGV[5] then redis.call('HDEL', KEYS[3], id) end
    return {0, ''}
  end
  redis.call('HDEL', KEYS[4], id)
  if KEYS[8] then
    -- The start whose reply was lost ran (it wrote this slot's entry): it counted an attempt
    -- of the envelope, and the command never ran (the slot never learned it may spawn it).
    -- The count goes back with the entry, once (a repeat finds no entry), as a hand-back of
    -- an unrun command gives it back (agent/verify.py refund).
    unrefunded = refund(KEYS[8], ARGV[6]) or ''
  end
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[7], ARGV[2]) end
redis.call('HDEL', KEYS[3], id)
redis.call('LREM', KEYS[5], 0, id)
if ARGV[4] == '1' then redis.call('HDEL', KEYS[6], id) end
local status = redis.call('HGET', KEYS[2], 'status')
if (status ~= 'queued' and status ~= 'started') or redis.call('LPOS', KEYS[1], id) then return {0, unrefunded} end
redis.call('HSET', KEYS[2], 'status', 'queued')
redis.call('LPUSH', KEYS[1], id)
return {1, unrefunded}
""")
"""Put a dequeued job that never started back at the front of its queue, once, undoing what
its start had already written (started registry, running-here entries). Safe to repeat.
Replies {1 if it went back else 0, why its count could not be given back ('' if it was or
none was due)}."""
