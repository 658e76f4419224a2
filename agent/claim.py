"""Taking a job off a queue so that neither a crash nor a lost reply can lose it.

RQ pops with BLPOP: once the broker has popped a job, it is in no list and no registry until
the slot marks it started, several round trips later. A slot killed in between (its node
powered off), or a reply lost to a broker restart, leaves the job `queued` and nowhere.

So a slot pops and claims in one step: a script moves the first job of its queues into the
node's running hash (`grid:node:<n>:running`, value `claim:<worker>`), where node-loss
recovery finds it and puts it back in line.

An idle slot waits on its pool queue (where plain submissions go) with a BLMOVE that takes the
first job into the node's taking list (`grid:node:<n>:taking`), and the pop script, sent behind
it in the same round trip, claims it from there as soon as the wait ends (the broker runs it
then, even for a slot stopped meanwhile: its claim is the slot's to put back). Taking, not just
watching: a push wakes one waiting slot, not every idle slot of every node (each of which would
run the pop script for nothing, on the same cores as the one that got the job). A job in the
taking list is in no queue for a moment; every slot of the node pops from that list, so a lost
BLMOVE reply (broker restart) or a slot that died there loses nothing: the node's next pop takes
it, a draining node puts it back where it was in its queue, and node-loss recovery does the same
for a dead node. The node queue (placed and pinned jobs) comes before it and is looked at every
time a slot wakes: a placed job nudges an idle slot, and an idle slot wakes every 5 s anyway
(rqadapter/worker.py DEQUEUE_WAKE); a job taken from there sends the taken one back to its queue
rather than keep it waiting on this node.

A job's entry in that hash goes claim -> slot index (started) -> `ended:<worker>` (its end
is recorded, RQ's bookkeeping not yet done) -> gone. Recovery acts on each: a claim goes back
in line, a started job is lost and retried, an ended one gets its bookkeeping finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from agent.lua import Lua
from gridcore import keys
from gridcore.placing import NUDGE, NUDGE_HOPS, NUDGE_PATTERN
from gridcore.priority import PUT_BACK
from gridcore.records import NODE_DRAINING, ActiveEntry, CorruptRecord, RunningEntry, lenient

_GIVE_BACK = PUT_BACK + """
local function hash_read(cmd, key, ...)
  -- A job key of another type (anyone can write one) reads as a missing job, not a script error.
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    if cmd == 'HGETALL' then return {} end
    return {false, false}
  end
  return r
end
local function give_back(taking, job_prefix, queue_prefix, prio_key, nudged)
  local n = 0
  while true do
    local id = redis.call('RPOP', taking)
    if not id then return n end
    if not (nudged and nudged(id)) then
      local h = hash_read('HMGET', job_prefix .. id, 'origin', 'status')
      if h[1] and h[2] == 'queued' then
        put_back(queue_prefix .. h[1], prio_key, id)
        n = n + 1
      end
    end
  end
end
"""
"""Lua: put every job of a taking list back where it was in its queue (ahead of the jobs of
its priority that came after it), in the order it was taken; a job canceled or gone
meanwhile is no longer queued and is dropped. `nudged` (optional): takes a nudge (True), as
the pop does; without it a nudge, no job, is dropped."""

_NUDGES = """
local function nudge_passer(node, pattern, max_hops, queue_prefix, name)
  local passing = {}
  local function nudged(id)
    -- A nudge (placing.NUDGE) is no job: this node's is dropped (its job is in the node queue,
    -- looked at first), another node's goes on to the next slot waiting on that queue (`passed`,
    -- as the script ends: not to this pop).
    local hops, to, q = string.match(id, pattern)
    if not hops then return false end
    hops = tonumber(hops)
    if to ~= node and hops < tonumber(max_hops) then
      passing[#passing + 1] = {queue_prefix .. q, name .. ':' .. (hops + 1) .. ':' .. to .. ':' .. q}
    end
    return true
  end
  local function passed(reply)
    -- pcall: a forged nudge naming a queue key of another type is dropped, not a failed script.
    for _, p in ipairs(passing) do redis.pcall('LPUSH', p[1], p[2]) end
    return reply
  end
  return nudged, passed
end
"""
"""Lua: `nudged(id)` takes a nudge out of what a script moves (True), to be passed on by
`passed(reply)` as the script ends (another node's, within its hops) or dropped (`node`'s own)."""

_POP = _GIVE_BACK + _NUDGES + """
local n = #KEYS - 3
local t = redis.call('TIME')
if ARGV[12] and ARGV[12] ~= '' and redis.pcall('HGET', ARGV[12], 'status') ~= 'finished' then
  -- Sent with a job's END (pop_command): that END left the job's end to RQ's steps (it has
  -- dependents, which those steps release, some maybe ahead of what this would take), or did
  -- not record it. Nothing taken; the slot's own pop comes after those steps.
  return {'', '', {}, t[1], t[2], '', 0, 0, 0}
end
local nudged, passed = nudge_passer(ARGV[7], ARGV[8], ARGV[9], ARGV[6], ARGV[10])
local kind = redis.call('TYPE', KEYS[n + 2])['ok']
if kind ~= 'hash' and kind ~= 'none' then
  -- A writer retyped the node's running hash: every pop would fail on it, each after it took a
  -- job (lost: in no queue, no claim). It holds nothing the grid wrote, so it goes, named in
  -- the quarantine (as gridcore/quarantine.py heal names what it removes).
  redis.call('DEL', KEYS[n + 2])
  redis.pcall('HSET', ARGV[11], KEYS[n + 2], 'a ' .. kind .. ', not the hash the grid keeps there: removed')
end
if redis.call('HGET', KEYS[n + 3], '""" + NODE_DRAINING + """') == '1' then
  -- Jobs back in line; another node's nudge goes on (dropped, its idle slot would sleep on).
  give_back(KEYS[1], ARGV[2], ARGV[6], ARGV[5], nudged)
  return passed({'', '', {}, t[1], t[2], '', 0, 1})
end
local function claimed(q, id)
  -- A started entry (a slot index) means the job runs on this node now: a pushed twin must not
  -- overwrite the running copy's entry (the slot refuses the twin; see pop()).
  local prev = redis.call('HGET', KEYS[n + 2], id)
  if not (prev and string.match(prev, '^%d+$')) then redis.call('HSET', KEYS[n + 2], id, ARGV[1]) end
  -- pcall: grid:priority and grid:active are any agent's to write, of any type (agents heal
  -- them: gridcore/quarantine.py); one retyped must not fail a pop after it took the job.
  redis.pcall('HDEL', ARGV[5], id)
  local active = redis.pcall('HGET', ARGV[3], id)
  if type(active) ~= 'string' then active = '' end
  return {q, id, hash_read('HGETALL', ARGV[2] .. id), t[1], t[2],
          active, redis.call('EXISTS', ARGV[4] .. id), 0}
end
local id = redis.call('LPOP', KEYS[2])
if id then  -- the slot's first queue (its node's) goes first; what a wait took goes back
  give_back(KEYS[1], ARGV[2], ARGV[6], ARGV[5], nudged)
  return passed(claimed(KEYS[2], id))
end
while true do
  id = redis.call('LPOP', KEYS[1])
  if not id then break end
  if not nudged(id) then
    local h = hash_read('HMGET', ARGV[2] .. id, 'origin', 'status')
    if h[1] and h[2] ~= 'canceled' then return passed(claimed(ARGV[6] .. h[1], id)) end
  end
end
for i = 3, n + 1 do
  repeat id = redis.call('LPOP', KEYS[i]) until not id or not nudged(id)
  if id then return passed(claimed(KEYS[i], id)) end
end
-- Nothing taken: how many jobs the node's slots hold (its running hash), for the slot's turn to
-- look (agent/rqadapter/worker.py turn_wait): a 9th field, in this reply only.
return passed({'', '', {}, t[1], t[2], '', 0, 0, redis.call('HLEN', KEYS[n + 2])})
"""
"""Pop and claim: from the slot's first queue (its node's: placed and pinned jobs), else what
the node's waits took (skipping a job canceled or deleted while it lay there, and passing
on another node's nudge; any other is
judged by the slot, as one from a queue: a twin of a running job is refused), else its other
queues in order. A job from the node queue sends what the waits took back to its queue, for
another slot, rather than keep it waiting here. In the same step, read what
the slot's start needs: broker TIME, the node's drain flag (a draining node pops nothing and
gives back what its waits took, passing another node's nudge on), the job's `grid:active` entry (a copy still running
elsewhere?) and its cancel flag; and drop its priority entry (it no longer waits). One round
trip instead of five."""

_POP_SCRIPT = Lua(_POP, resend=False)  # a lost reply: the slot puts its claim back (requeue_own)

DRAINING = "draining"
"""What `GridWorker`'s pop returns while the node is draining: nothing was taken."""


@dataclass(frozen=True)
class Taken:
    """A job the pop script claimed, with what it read about it in the same step."""

    queue_key: str
    job_id: str
    fields: dict[bytes, bytes]  # the job's RQ hash; empty when the record is gone
    active: ActiveEntry | None  # a copy of the job running elsewhere, if any
    canceled: bool


@dataclass(frozen=True)
class Popped:
    """What one pop found: broker TIME (sec, usec), the drain flag, and the job it took if any;
    when it took none, how many jobs the node's slots hold (claimed, running or ending)."""

    time: tuple[int, int]
    draining: bool
    taken: Taken | None
    held: int = 0


_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
_RELEASE_SCRIPT = Lua(_RELEASE)


def marker(worker: str) -> str:
    """The running-hash value of a job `worker` claimed and has not started yet."""
    return RunningEntry("claimed", worker=worker).encode()


def _pop_args(node: str, worker: str, queue_keys: list[str]) -> tuple[list[str], list[Any]]:
    return ([keys.node_taking(node), *queue_keys, keys.node_running(node), keys.node(node)],
            [marker(worker), keys.rq_job_prefix(), keys.ACTIVE, keys.cancel(""), keys.PRIORITY,
             keys.rq_queue_prefix(), node, NUDGE_PATTERN, NUDGE_HOPS, NUDGE, keys.QUARANTINE])


def pop(conn, node: str, worker: str, queue_keys: list[str]) -> Popped:
    """Pop and claim the first job of `queue_keys` (the node queue first) for `worker`."""
    return popped(_POP_SCRIPT(conn, *_pop_args(node, worker, queue_keys)))


def pop_command(node: str, worker: str, queue_keys: list[str], ended: str) -> tuple[Any, ...]:
    """`pop` as a command to send right behind the END of the job `ended` (agent/lua.py
    `Lua.then`), its reply read by `popped`: it takes nothing unless that END recorded the job
    finished (RQ's steps after an END release the job's dependents, which go before what the
    pop would take where their priority says so). The broker answers NOSCRIPT where it does not
    know the script (nothing ran); a reply lost once it was sent leaves a claim the slot puts
    back (requeue_own)."""
    keys_, args = _pop_args(node, worker, queue_keys)
    return ("EVALSHA", _POP_SCRIPT.sha, len(keys_), *keys_, *args, keys.rq_job(ended))


def wait_pop(conn, node: str, worker: str, queue_keys: list[str], pool_key: str, timeout: float) -> Popped:
    """Block until the pool queue `pool_key` has a job, or `timeout` seconds, then pop as `pop`
    does, in one round trip: the pop goes right behind the wait (a BLMOVE into the node's taking
    list), and the broker runs it as soon as the wait ends, a job come or not. Two round trips
    were on the way of every job submitted to an idle grid.

    A lost reply loses nothing, as for either alone: what the wait took is in the taking list,
    and what the pop claimed the slot puts back (requeue_own). A wait the broker refused (its
    pool queue retyped) is raised, unless the pop took a job: that goes first, and the next wait
    meets the error again."""
    came, got = _POP_SCRIPT.after(conn, ("BLMOVE", pool_key, keys.node_taking(node), "LEFT", "RIGHT", timeout),
                                  *_pop_args(node, worker, queue_keys))
    if isinstance(got, redis.ResponseError):
        raise got
    found = popped(got)
    if isinstance(came, redis.ResponseError) and found.taken is None:
        raise came
    return found


def popped(got: Any) -> Popped:
    """What a pop script's reply says."""
    time = (int(got[3]), int(got[4]))
    if int(got[7]) or not got[1]:
        return Popped(time, bool(int(got[7])), None, int(got[8]) if len(got) > 8 else 0)
    job_id = got[1].decode()
    flat = got[2]
    active = lenient(ActiveEntry, got[5] or None, f"{keys.ACTIVE} field {job_id}")
    fields = dict(zip(flat[::2], flat[1::2]))
    if active is None:
        active = started_by(fields)
    return Popped(time, False, Taken(got[0].decode(), job_id, fields, active, bool(int(got[6]))))


def started_by(fields: dict[bytes, bytes]) -> ActiveEntry | None:
    """The second witness of a running copy, for a job without a `grid:active` entry: RQ's own
    record says it was started by a worker. One HDEL of `grid:active` and a push of the id
    would otherwise start a second copy of a running job; the gate refuses the twin while that
    worker is alive (its RQ worker key exists), and a job whose worker died is not held back."""
    worker = fields.get(b"worker_name")
    if fields.get(b"status") != b"started" or not worker or len(worker) > 256:
        return None
    name = worker.decode("utf-8", "replace")
    return ActiveEntry(node=f"worker {name}", slot=0, worker=name, started=0)


_GIVE_BACK_ALL = _GIVE_BACK + _NUDGES + """
local nudged, passed = nudge_passer(ARGV[4], ARGV[5], ARGV[6], ARGV[2], ARGV[7])
return passed(give_back(KEYS[1], ARGV[1], ARGV[2], ARGV[3], nudged))
"""


def give_back(conn, node: str) -> int:
    """Put the jobs a node's slots took off their queues, unclaimed, back where they were in
    their queues (the node is gone); how many went back. Another node's nudge among them goes
    on to the next waiting slot, as a pop passes it on (dropped, that node's idle slot would
    sleep through its placed job until its next wake)."""
    script = conn.register_script(_GIVE_BACK_ALL)
    return int(script(keys=[keys.node_taking(node)],
                      args=[keys.rq_job_prefix(), keys.rq_queue_prefix(), keys.PRIORITY, node,
                            NUDGE_PATTERN, NUDGE_HOPS, NUDGE]))


_HAS = """
local function has(cmd, key, id)
  -- HEXISTS answers 1, LPOS a position (0 too); a key of another type holds nothing.
  local r = redis.pcall(cmd, key, id)
  if cmd == 'LPOS' then return type(r) == 'number' end
  return r == 1
end
"""
"""Lua: whether a hash has a field or a list an item, for keys another node or an operator wrote."""

_GIVE_BACK_CHECKED = _GIVE_BACK + _HAS + """
local function elsewhere(id)
  for i = 6, #ARGV - 1, 2 do
    if has('HEXISTS', ARGV[i], id) or has('LPOS', ARGV[i + 1], id) then return true end
  end
  return false
end
local ids = redis.call('LRANGE', ARGV[5], 0, -1)
if ARGV[4] ~= '1' then redis.call('DEL', ARGV[5]) end
local n = 0
for i = #ids, 1, -1 do
  local id = ids[i]
  local h = hash_read('HMGET', ARGV[1] .. id, 'origin', 'status')
  if h[1] and h[2] == 'queued' and not has('LPOS', ARGV[2] .. h[1], id) and not elsewhere(id) then
    put_back(ARGV[2] .. h[1], ARGV[3], id)
    n = n + 1
  end
end
return n
"""
"""Lua: `give_back`, for a taking list that may be stale (its node was down, and recovery may
have put its jobs back already): only a job still queued, in no queue, and taken or claimed by
no other node goes back. ARGV[4] '1': leave the list as it is (another node's: not ours to
write); ARGV[5] the list (not a KEYS entry: a script's declared keys must be writable by the
caller's ACL user); then the other nodes' running and taking keys, in pairs."""


def give_back_checked(conn, node: str, others, keep: bool) -> int:
    """Put back the jobs a down node's slots took and never claimed, unless that happened already;
    `keep`: the list is another node's (left as it is), else this node's own (emptied)."""
    pairs = [k for n in others if n != node for k in (keys.node_running(n), keys.node_taking(n))]
    script = conn.register_script(_GIVE_BACK_CHECKED)
    return int(script(keys=[], args=[keys.rq_job_prefix(), keys.rq_queue_prefix(), keys.PRIORITY, "1" if keep else "0",
                                     keys.node_taking(node), *pairs]))


def claimed_elsewhere(pipe, job_id: str, node: str, others) -> bool:
    """Whether a node other than `node` has taken or claimed the job (WATCHing what it reads)."""
    for n in others:
        if n == node:
            continue
        pipe.watch(keys.node_running(n), keys.node_taking(n))
        try:
            if pipe.hexists(keys.node_running(n), job_id) or pipe.lpos(keys.node_taking(n), job_id) is not None:
                return True
        except redis.ResponseError:  # a key of another type (an operator's stray write) holds no job
            continue
    return False


_RECONCILE_HELD = _HAS + """
-- KEYS: the node's held hash, its running hash, its node queue, grid:active; ARGV: the node
local ids = redis.pcall('HKEYS', KEYS[1])
if ids.err then return 0 end
local n = 0
for _, id in ipairs(ids) do
  local keep = has('HEXISTS', KEYS[2], id) or has('LPOS', KEYS[3], id)
  if not keep then
    local a = redis.call('HGET', KEYS[4], id)
    if a and #a <= 4096 then
      local ok, e = pcall(cjson.decode, a)
      keep = ok and type(e) == 'table' and e.node == ARGV[1]
    end
  end
  if not keep then
    redis.call('HDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
"""
"""Lua: drop what a node's held hash still holds for jobs no longer its own: none of its running
entries, not in its node queue, and no `grid:active` entry naming it."""


def reconcile_held(conn, node: str) -> int:
    """Drop this node's holds for jobs no longer its own (recovered by other agents while it was
    down or cut off: they may not write its keys); how many were dropped. Every hold is written
    together with its job's running entry, node-queue entry or `grid:active` entry, so this is
    safe while the node's slots run."""
    script = conn.register_script(_RECONCILE_HELD)
    return int(script(keys=[keys.node_held(node), keys.node_running(node),
                            keys.rq_queue(keys.node_queue(node)), keys.ACTIVE], args=[node]))


def release(conn, node: str, job_id: str, value: str) -> None:
    """Drop a job's entry in the node's running hash if it is still `value` (a claim, an end)."""
    _RELEASE_SCRIPT(conn, [keys.node_running(node)], [job_id, value])


_REQUEUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local status = redis.call('HGET', KEYS[2], 'status')
local origin = redis.call('HGET', KEYS[2], 'origin')
if status ~= 'queued' or not origin then return 0 end
local q = ARGV[3] .. origin
if redis.call('LPOS', q, ARGV[1]) then return 0 end
redis.call('LPUSH', q, ARGV[1])
return 1
"""


def requeue(conn, node: str, job_id: str, value: str) -> bool:
    """Put a claimed, never-started job back at the front of its queue (its claimer is gone).

    Only while the claim is still `value` and the job still `queued` and in no queue: safe
    to repeat, and a no-op for a job that started, ended or was put back meanwhile.
    """
    script = conn.register_script(_REQUEUE)
    return bool(script(keys=[keys.node_running(node), keys.rq_job(job_id)],
                       args=[job_id, value, keys.rq_queue_prefix()]))


def requeue_own(conn, node: str, worker: str) -> int:
    """An idle slot's claims are stale (a pop whose reply was lost): put those jobs back."""
    return requeue_claims(conn, node, [worker])


def requeue_claims(conn, node: str, workers: list[str]) -> int:
    """Put back the jobs claimed, not started, by any of `workers` (slots that are idle or gone)."""
    mine = {marker(w).encode(): marker(w) for w in workers}
    stale = [(k.decode(), mine[v]) for k, v in conn.hgetall(keys.node_running(node)).items() if v in mine]
    return sum(requeue(conn, node, jid, m) for jid, m in stale)


_RESTORE_ACTIVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local h = redis.pcall('HMGET', KEYS[2], 'status', 'worker_name')
if h.err then return 0 end
if h[1] ~= 'started' or h[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def restore_active(conn, job_id: str, worker: str, run: Any) -> bool:
    """Put back the `grid:active` entry of a job `worker` runs, if someone deleted it while RQ's
    record still says this worker started it; True if it was put back. A node-loss reclaim
    changes RQ's record in the same step as it drops the entry, so a reclaimed job is never
    restored: only a stray HDEL (which, with a push of the id, would let a twin start) is undone."""
    try:
        entry = ActiveEntry.from_dict(run, f"{keys.rq_job(job_id)} meta run")
    except CorruptRecord:
        return False
    if entry.worker != worker:
        return False
    script = conn.register_script(_RESTORE_ACTIVE)
    return bool(script(keys=[keys.ACTIVE, keys.rq_job(job_id)], args=[job_id, worker, entry.encode()]))

