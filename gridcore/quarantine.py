"""Corrupt broker records set aside: taken out of where they would stop a node, named for the
operator (`grid:quarantine`, shown by `grid nodes` and `grid show`) and reported as a `corrupt` event.

Anyone who can write to the broker can plant a value no agent wrote. A reader that meets one
must neither crash nor trip over it again on every pass: the value is removed from the hash,
set or list it sits in, only if it is still the same value (compare and delete, in one script,
so a legitimate writer racing with it is never undone), and what was wrong is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import redis

from gridcore import keys
from gridcore.events import MAX_EVENTS
from gridcore.records import EventEntry, text
from gridcore.sanitize import clean

MAX_ENTRIES = 1000
"""Quarantine entries kept; past that, corrupt records are still removed and reported by event."""

_SET_ASIDE = """
local kind, removed = ARGV[1], 0
if kind == 'hash' then
  if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then removed = redis.call('HDEL', KEYS[1], ARGV[2]) end
elseif kind == 'set' then
  removed = redis.call('SREM', KEYS[1], ARGV[2])
elseif kind == 'list' then
  removed = redis.call('LREM', KEYS[1], 1, ARGV[2])
end
if removed == 0 then return 0 end
if redis.call('HLEN', KEYS[2]) < tonumber(ARGV[4]) then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', unpack(cjson.decode(ARGV[8])))
return 1
"""


class Quarantine:
    """Sets corrupt records aside on one connection (the script is registered once)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self._script = conn.register_script(_SET_ASIDE)

    def hash_field(self, key: str, field: str | bytes, raw: bytes | None, problem: str, *, job: str | None = None,
                   node: str | None = None) -> bool:
        """Remove `field` of hash `key` if it still holds `raw`; True if it was set aside."""
        return self._set_aside("hash", key, field, raw or b"", problem, job, node)

    def set_member(self, key: str, member: str | bytes, problem: str, *, job: str | None = None,
                   node: str | None = None) -> bool:
        """Remove `member` from set `key`; True if it was set aside."""
        return self._set_aside("set", key, member, b"", problem, job, node)

    def list_item(self, key: str, item: str | bytes, problem: str, *, job: str | None = None,
                  node: str | None = None) -> bool:
        """Remove one `item` from list `key` (a queue); True if it was set aside."""
        return self._set_aside("list", key, item, b"", problem, job, node)

    def _set_aside(self, kind: str, key: str, what: str | bytes, raw: bytes, problem: str, job: str | None,
                   node: str | None) -> bool:
        sec, usec = self.conn.time()
        where = f"{key} {clean(text(what), 256)}"
        entry = EventEntry(time=sec + usec / 1e6, kind="corrupt", job=job, node=node,
                           message=clean(f"{where}: {problem}", 1000))
        fields = [x for kv in entry.fields().items() for x in (kv[0], kv[1])]
        return bool(self._script(keys=[key, keys.QUARANTINE, keys.EVENTS], args=[
            kind, what, raw, MAX_ENTRIES, where, clean(problem, 1000), MAX_EVENTS, json.dumps(fields)]))


def entries(conn: redis.Redis, prefix: str = "") -> list[str]:
    """What the quarantine holds about keys starting with `prefix`, one line each (bounded)."""
    out = []
    for k, v in sorted(conn.hgetall(keys.QUARANTINE).items()):
        where = text(k)
        if where.startswith(prefix):
            out.append(f"quarantined {clean(where, 300)}: {clean(text(v), 500)}")
    return out


def about(conn: redis.Redis, job_id: str) -> list[str]:
    """What the quarantine holds about one job (its id in the key, field or member), a line each."""
    return [line for line in entries(conn) if job_id in line]


SHARED_TYPES = {
    keys.QUARANTINE: "hash", keys.EVENTS: "stream", keys.ACTIVE: "hash", keys.PRIORITY: "hash", keys.WHY: "hash",
    keys.HISTORY: "stream", keys.PLACE_WAKES: "stream", keys.GRID_ID: "string", keys.WRITE_PROBE: "string",
}
"""The keys every agent's ACL user may write that belong to no node and no job, with the type the
grid keeps in each. One `SET grid:priority x` from any node would otherwise fail every script and
pipeline that touches one of them, on every node (pops, starts, ends, submits); held in the
quarantine first and events second, as `heal` reports into them."""

_HEAL = """
local out = {}
local function spoiled(key, t, want)
  if t ~= want then return t end
  if t == 'stream' then
    -- A stream whose last id has the largest time takes no more XADD *: one XADD with an
    -- explicit id of 2^64-1 from any writer would fail every later wake, event or end.
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' and string.sub(info[j + 1], 1, 21) == '18446744073709551615-' then
        return 'stream with its ids used up'
      end
    end
  end
  return nil
end
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  local why = t ~= 'none' and spoiled(KEYS[i], t, ARGV[i])
  if why then
    redis.call('DEL', KEYS[i])
    out[#out + 1] = KEYS[i]
    out[#out + 1] = why
  end
end
return out
"""


def queue_heal(pipe) -> None:
    """`heal`'s script on the caller's pipeline (the agent's heartbeat); its reply goes to `heal`."""
    pipe.eval(_HEAL, len(SHARED_TYPES), *SHARED_TYPES, *SHARED_TYPES.values())


def heal(conn: redis.Redis, reply=None, types: Mapping[str, str] = SHARED_TYPES) -> list[str]:
    """Remove each shared key (`types`: SHARED_TYPES, or keys of one sweep that every agent may
    write) that holds another type than the grid's (nothing the grid wrote is in it), or a stream
    whose ids are used up (it takes nothing more). Each is named in the quarantine and by a
    `corrupt` event; returns them. `reply`: what `queue_heal` got on a pipeline (an error in it
    is raised here), else run now."""
    if isinstance(reply, Exception):
        raise reply
    got = reply if reply is not None else conn.eval(_HEAL, len(types), *types, *types.values())
    found = [(text(k), text(t)) for k, t in zip(got[::2], got[1::2])]
    if found:
        sec, usec = conn.time()
        with conn.pipeline(transaction=False) as pipe:
            for key, kind in found:
                what = kind if " " in kind else f"a {kind}, not the {types[key]} the grid keeps there"
                problem = f"{what}: removed"
                pipe.hset(keys.QUARANTINE, key, problem)
                entry = EventEntry(time=sec + usec / 1e6, kind="corrupt", job=None, node=None, message=clean(f"{key}: {problem}", 1000))
                pipe.xadd(keys.EVENTS, entry.fields(), maxlen=MAX_EVENTS, approximate=True)
            pipe.execute(raise_on_error=False)  # a writer racing this heal: reported at the next one
    return [key for key, _ in found]
