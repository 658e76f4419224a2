"""`grid doctor`'s checks of the broker: version, persistence, eviction, memory, ACL users, TLS.

Each check reads what the broker says about itself and returns findings; a check the
broker won't answer (CONFIG and ACL are admin commands) says so and how to run it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import redis

from gridcore import acl, keys

MIN_VERSION = {"redis": (7, 0), "valkey": (7, 2)}
"""Oldest broker release the grid supports (ARCHITECTURE.md)."""
MEMORY_HEADROOM = 0.8
"""Fraction of maxmemory past which the broker is about to refuse writes."""
CONFIG_KEYS = ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory", "aclfile", "bind", "port", "tls-port",
               "tls-auth-clients")
"""The broker settings the doctor reads."""


@dataclass(frozen=True)
class Finding:
    """One thing the doctor checked: ok, warn or problem, what it saw, and the fix in one line."""

    check: str
    level: str  # ok | warn | problem
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def warn(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "warn", message, fix)


def problem(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "problem", message, fix)


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _release(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_version(info: dict) -> list[Finding]:
    """Redis >= 7.0 or Valkey >= 7.2."""
    kind = "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    version = _text(info.get(f"{kind}_version") or info.get("redis_version") or "?")
    if _release(version)[:2] < MIN_VERSION[kind]:
        need = ".".join(map(str, MIN_VERSION[kind]))
        return [problem("broker.version", f"{kind} {version} is older than the {need} the grid needs",
                        f"upgrade the broker host's {kind} to {need} or newer")]
    return [ok("broker.version", f"{kind} {version}")]


def read_config(conn: redis.Redis) -> dict[str, str] | None:
    """The broker settings the doctor checks, or None when CONFIG is denied to this user."""
    out: dict[str, str] = {}
    try:
        for name in CONFIG_KEYS:
            out.update({_text(k): _text(v) for k, v in conn.config_get(name).items()})
    except redis.ResponseError:
        return None
    return out


def check_config(cfg: dict[str, str], info: dict) -> list[Finding]:
    """AOF and fsync, eviction policy, the memory limit and its headroom, the ACL file."""
    out = []
    if cfg.get("appendonly") != "yes":
        out.append(problem("broker.aof", "appendonly is off: a broker restart loses every accepted job since the last snapshot",
                           "CONFIG SET appendonly yes, and `appendonly yes` in the config (grid broker-config)"))
    elif cfg.get("appendfsync") not in ("everysec", "always"):
        out.append(problem("broker.fsync", f"appendfsync is {cfg.get('appendfsync')}: a crash loses what the OS had not written",
                           "CONFIG SET appendfsync everysec, and the same in the config"))
    else:
        out.append(ok("broker.aof", f"appendonly yes, appendfsync {cfg.get('appendfsync')}"))
    if info.get("aof_last_write_status", "ok") != "ok":
        out.append(problem("broker.aof", "the last AOF write failed: the broker refuses writes",
                           "free disk space in the broker's dir, then check its log"))
    policy = cfg.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        out.append(problem("broker.eviction", f"maxmemory-policy is {policy}: a full broker deletes jobs",
                           "CONFIG SET maxmemory-policy noeviction, and the same in the config"))
    else:
        out.append(ok("broker.eviction", "maxmemory-policy noeviction"))
    out += check_memory(int(cfg.get("maxmemory") or 0), info)
    if not cfg.get("aclfile"):
        out.append(warn("broker.aclfile", "no aclfile: ACL users (grid acl --apply) are lost when the broker restarts",
                        "add `aclfile /etc/redis/users.acl` to the config (grid broker-config) and restart it"))
    bind = cfg.get("bind", "").split()
    if any(a in ("*", "0.0.0.0", "::", "-::*") for a in bind):
        out.append(warn("broker.bind", f"listens on every interface ({' '.join(bind)})",
                        "bind the LAN address only: `bind 10.0.0.5` (grid broker-config --bind)"))
    return out


def check_memory(maxmemory: int, info: dict) -> list[Finding]:
    """A memory limit below the host's, and room left under it."""
    used = int(info.get("used_memory") or 0)
    total = int(info.get("total_system_memory") or 0)
    if not maxmemory:
        return [warn("broker.memory", f"no maxmemory: the broker grows until the host's OOM killer ends it ({used} bytes now)",
                     "set maxmemory to about half the host's memory (grid broker-config --maxmemory)")]
    if total and maxmemory > total:
        return [warn("broker.memory", f"maxmemory {maxmemory} is more than the host's {total} bytes",
                     "set maxmemory below the host's memory")]
    if used > MEMORY_HEADROOM * maxmemory:
        return [problem("broker.memory", f"{used} of {maxmemory} bytes used: writes are refused once it is full",
                        "raise maxmemory, or lower result_ttl so finished jobs expire sooner")]
    return [ok("broker.memory", f"{used} of {maxmemory} bytes used")]


def check_acl(conn: redis.Redis, nodes: list[str]) -> list[Finding]:
    """The default user, the grid's users, and what each may do (ACL DRYRUN)."""
    try:
        listing = [_text(x) for x in conn.execute_command("ACL", "LIST")]
    except redis.ResponseError:
        return [warn("acl", "ACL LIST is denied to this user: users not checked",
                     "run grid doctor with the broker's admin user (redis_username)")]
    out = []
    users = {line.split()[1]: line for line in listing if line.startswith("user ")}
    default = users.get("default", "")
    if " on " in default + " " and "nopass" in default:
        out.append(problem("acl.default", "the default user needs no password: anyone on the LAN can run anything",
                           "`user default off` in the ACL file (grid broker-config --init-aclfile), then ACL LOAD"))
    expected = acl.users(n for n in nodes if acl.NODE_NAME.fullmatch(n))
    missing = [u.name for u in expected if u.name not in users]
    if missing:
        out.append(warn("acl.users", f"no ACL user {', '.join(missing)}: those roles share a more powerful login",
                        "grid acl --apply --node NODE... (as the admin user)"))
    for u in expected:
        if u.name in users:
            out += _probe(conn, u, nodes)
    if not out:
        out.append(ok("acl", "default user locked; every role has its user"))
    return out


def _probes(user: acl.AclUser, nodes: list[str]) -> list[tuple[list[str], bool]]:
    """(command, should be allowed) pairs that tell whether a user has its role's rights."""
    other = next((n for n in nodes if n != user.node), "some-other-node")
    if user.role == "viewer":
        return [(["HGET", keys.node(other), "slots"], True), (["SET", keys.GRID_ID, "x"], False),
                (["CONFIG", "GET", "maxmemory"], False)]
    if user.role == "operator":
        return [(["HSET", keys.node(other), "draining", "1"], True), (["CONFIG", "GET", "maxmemory"], False),
                (["FLUSHALL"], False), (["ACL", "LIST"], False)]
    # An agent user made before agents stopped writing other nodes' keys can still write their holds.
    return [(["HSET", keys.node(user.node), "slots", "1"], True), (["HSET", keys.node(other), "slots", "1"], False),
            (["HSET", keys.node_held(other), "j", "{}"], False), (["ZADD", keys.NODES, "NX", "1", user.node], True),
            (["CONFIG", "GET", "maxmemory"], False)]


def _probe(conn: redis.Redis, user: acl.AclUser, nodes: list[str]) -> list[Finding]:
    wrong = []
    for cmd, allowed in _probes(user, nodes):
        try:
            reply = _text(conn.execute_command("ACL", "DRYRUN", user.name, *cmd))
        except redis.ResponseError as e:
            reply = str(e)
        if (reply == "OK") != allowed:
            wrong.append(f"{'cannot' if allowed else 'can'} {' '.join(cmd[:2])}")
    if not wrong:
        return [ok(f"acl.{user.name}", f"{user.role}: may do what its role needs and no more")]
    node = f" --node {user.node}" if user.node else ""
    return [problem(f"acl.{user.name}", f"{user.name} {'; '.join(wrong)}",
                    f"grid acl --apply --role {user.role}{node} (resets its rules)")]


def check_tls(url: str, cfg: dict[str, str] | None) -> list[Finding]:
    """Plain text across the LAN, or a plain-text port left open beside TLS."""
    parsed = urlparse(url)
    host = parsed.netloc.rpartition("@")[2].split(",")[0].rpartition(":")[0] or parsed.netloc.rpartition("@")[2]
    host = host.strip("[]")
    out = []
    if parsed.scheme in ("redis", "sentinel") and not _loopback(host):
        out.append(warn("tls", f"{parsed.scheme}:// to {host}: passwords and jobs cross the LAN in clear",
                        "serve TLS (grid broker-config --tls-cert ...) and use rediss:// with ssl_* settings"))
    if cfg is not None and cfg.get("tls-port", "0") != "0":
        if cfg.get("port", "0") != "0":
            out.append(warn("tls", f"TLS on port {cfg['tls-port']}, but plain port {cfg['port']} is open too",
                            "`port 0` in the broker's config"))
        if cfg.get("tls-auth-clients") == "no":
            out.append(warn("tls", "tls-auth-clients no: clients need no certificate",
                            "`tls-auth-clients yes` and a client certificate per tool (ssl_certfile)"))
    if not out:
        out.append(ok("tls", "TLS" if parsed.scheme == "rediss" else "broker on this machine"))
    return out


def _loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
