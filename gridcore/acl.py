"""Redis ACL users for the grid's roles: operator, agent (one per node) and viewer.

Key patterns are built from `gridcore.keys`, so a key added there is either covered here or
visibly missing. What each role may do:

- viewer: read commands only, on `grid:*` and `rq:*`; no channels. `gridtui --read-only`.
  Not `gridsecret:*`: jobs' env values live there (gridcore/secretenv.py).
- operator: read and write `grid:*`, `rq:*` and `gridsecret:*`, publish RQ's stop-job commands; no admin
  commands (ACL, CONFIG, FLUSH*, KEYS, DEBUG, ...).
- agent <node>: read everything of the grid; write its own node's keys (`grid:node:<node>` and
  `grid:node:<node>:*`: inventory, heartbeat, reservations (GPUs held among them), running and taking lists, its
  placement lock), the per-job keys (output, results, attempts, cancel flags, replay counters, env values:
  a node reads them to run a job, and ends their life with the job's),
  RQ's keys (job records, queues, registries, workers: an RQ worker writes all of them), and the
  coordination keys that belong to no node (events, history, active jobs, priorities, placement
  reasons and wake-ups, sweep slots and usage, reclaim locks, the quarantine, the write probe).
  The registry of node names (`grid:nodes`) it may only add to (ZADD, through an ACL selector);
  nothing but a name is believed from it. It cannot write any key of another node: it places
  jobs onto its own node only, and recovers a dead node's jobs through job and RQ keys alone,
  leaving the dead node's own keys for it to reconcile when it comes back. It holds no signing
  key, so it cannot make any node run anything; it can still write the job-level and RQ keys of
  any job (requeue, cancel or fail another node's jobs: denial of service, never a forged run).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from gridcore import keys

ROLES = ("operator", "agent", "viewer")
"""The roles `grid acl` knows, in the order it prints them."""

USER_PREFIX = "grid-"
"""Default prefix of the ACL user names (grid-operator, grid-viewer, grid-agent-<node>)."""

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""Node names an ACL can name exactly: no glob characters, no ':' that would nest keys."""

CONNECTION = (
    "+ping", "+hello", "+auth", "+select", "+echo", "+reset", "+time",
    # INFO is "dangerous" to Redis, but RQ reads the server version with it on every enqueue.
    "+info",
    "+client|setname", "+client|getname", "+client|id", "+client|info",
)
"""Commands every role needs to connect and to read broker time (after `-@dangerous`)."""

# `-function`: the grid loads no Redis Functions, and FUNCTION FLUSH/DELETE would break other users.
SCRIPTS = ("+eval", "+evalsha", "+script|load", "+script|exists")
"""RQ's Lua scripts (scheduler locks, unique enqueue); ACLs still check the keys they touch."""

ANY = "*"


class AclError(Exception):
    """A bad node name, password or role; the message names it."""


@dataclass(frozen=True)
class AclUser:
    """One ACL user: its name, role and rules (everything after the password)."""

    name: str
    role: str
    node: str | None
    rules: tuple[str, ...]

    def setuser_args(self, password: str | None) -> list[str]:
        """Arguments of ACL SETUSER; with no password the user exists but cannot log in."""
        args = [self.name, "reset", "on"]
        if password is not None:
            args.append(">" + password)
        return args + list(self.rules)

    def line(self, password: str | None = None) -> str:
        """The ACL SETUSER command as text; a given password appears only as its SHA-256."""
        args = [self.name, "reset", "on"]
        if password is not None:
            args.append("#" + hashlib.sha256(password.encode()).hexdigest())
        # A selector holds a space: quoted, as redis-cli reads one argument.
        return "ACL SETUSER " + " ".join(f'"{a}"' if " " in a else a for a in args + list(self.rules))


def viewer_rules() -> tuple[str, ...]:
    return ("+@read", "-@dangerous", *CONNECTION, "%R~" + keys.GRID_PATTERN, "%R~" + keys.rq_pattern(), "resetchannels")


def operator_rules() -> tuple[str, ...]:
    return (
        "+@read", "+@write", "+@transaction", "-@dangerous", "-function", *CONNECTION, *SCRIPTS, "+publish",
        "~" + keys.GRID_PATTERN, "~" + keys.rq_pattern(), "~" + keys.SECRET_PATTERN,
        "resetchannels", "&" + keys.rq_pubsub("*"),
    )


def agent_write_keys(node: str) -> tuple[str, ...]:
    """Grid key patterns an agent for `node` writes (read-write); it reads all of `grid:*`."""
    check_node(node)
    own = (keys.node(node), keys.node(node) + ":*")
    # Shared by all agents and per no node: another node's keys are in none of these patterns.
    coordination = (
        keys.group_slots(ANY), keys.group_usage(ANY, ANY),
        keys.EVENTS, keys.HISTORY, keys.ACTIVE, keys.GRID_ID, keys.WHY, keys.PRIORITY,
        keys.PLACE_WAKES, keys.reclaim_lock(ANY), keys.QUARANTINE, keys.WRITE_PROBE,
    )
    per_job = (keys.output(ANY), keys.result(ANY), keys.attempts(ANY), keys.cancel(ANY), keys.nonce(ANY),
               keys.secret_env(ANY))
    return own + coordination + per_job


REGISTRY = f"(~{keys.NODES} +zadd)"
"""ACL selector: an agent adds its name to the registry of nodes and can do nothing else to it
(no ZREM, DEL, ZINCRBY, ZPOPMIN: it cannot make another node vanish from the list)."""


def agent_rules(node: str) -> tuple[str, ...]:
    # One pattern must carry both read and write for read-modify commands (INCR, HINCRBY...).
    writable = tuple("~" + p for p in agent_write_keys(node))
    return (
        "+@read", "+@write", "+@transaction", "-@dangerous", "-function", *CONNECTION, *SCRIPTS,
        "+subscribe", "+unsubscribe",
        "~" + keys.rq_pattern(), "%R~" + keys.GRID_PATTERN, *writable,
        # RQ workers listen on rq:pubsub:<worker name>; the agent names its workers <node>.<id>.<slot>.
        "resetchannels", "&" + keys.rq_pubsub(f"{node}.*"),
        REGISTRY,
    )


def check_node(node: str) -> str:
    if not NODE_NAME.fullmatch(node):
        raise AclError(f"node name {node!r} can't be used in an ACL (letters, digits, '.', '_', '-' only)")
    return node


def users(nodes: Iterable[str] = (), roles: Iterable[str] = ROLES, prefix: str = USER_PREFIX) -> list[AclUser]:
    """The users for the given roles; the agent role gives one user per node."""
    out: list[AclUser] = []
    roles = list(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise AclError(f"unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
    for role in ROLES:
        if role not in roles:
            continue
        if role == "agent":
            out += [AclUser(f"{prefix}agent-{check_node(n)}", "agent", n, agent_rules(n)) for n in nodes]
        elif role == "operator":
            out.append(AclUser(f"{prefix}operator", "operator", None, operator_rules()))
        else:
            out.append(AclUser(f"{prefix}viewer", "viewer", None, viewer_rules()))
    return out


def generate_password() -> str:
    return secrets.token_urlsafe(24)


def apply(conn: redis.Redis, accounts: Iterable[AclUser], passwords: Mapping[str, str] | None = None) -> dict[str, str]:
    """Install the users (replacing same-named ones); return name -> password (given or generated)."""
    passwords = dict(passwords or {})
    out: dict[str, str] = {}
    for u in accounts:
        pw = passwords.get(u.name) or generate_password()
        if any(c.isspace() for c in pw):
            raise AclError(f"password for {u.name} contains whitespace")
        conn.execute_command("ACL", "SETUSER", *u.setuser_args(pw))
        out[u.name] = pw
    return out


def persist(conn: redis.Redis) -> str | None:
    """ACL SAVE, so the users survive a restart; return why not when the server can't."""
    try:
        conn.execute_command("ACL", "SAVE")
        return None
    except redis.ResponseError as e:
        return str(e)
