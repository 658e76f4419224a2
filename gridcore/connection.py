"""The one place that turns settings into a Redis connection."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel

from gridcore.settings import Settings, data_dir


class BrokerError(Exception):
    """The broker can't be reached or refused us; the message says which and where."""


BROKER_FAILURES: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ResponseError, BrokerError, OSError,
)
"""Errors that say the broker, not the caller, failed a request: unreachable, timed out, or it
refused the command (an ACL, a script error); what `describe_error` puts in words."""


def local_state_path() -> Path:
    """Where `grid up` records the embedded grid's URL, password and pids."""
    return data_dir() / "local" / "state.json"


def read_local_state() -> dict | None:
    try:
        return json.loads(local_state_path().read_text())
    except (OSError, ValueError):
        return None


def resolve_url(settings: Settings) -> tuple[str, str | None]:
    """The broker URL and password to use: configured, else the embedded local grid's."""
    if settings.redis_url:
        return settings.redis_url, settings.redis_password
    state = read_local_state()
    if state and state.get("url"):
        return state["url"], settings.redis_password or state.get("password")
    raise BrokerError(
        "no broker configured: set GRID_REDIS_URL (or redis_url in the config file), "
        "or start the embedded local grid with `grid up`"
    )


def connect(settings: Settings, *, url: str | None = None, socket_timeout: float | None = None) -> redis.Redis:
    """A Redis client (bytes responses, as RQ requires) for redis://, rediss:// or sentinel://."""
    if url is None:
        url, password = resolve_url(settings)
    else:
        password = settings.redis_password
    kwargs: dict = {
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout,
        "health_check_interval": 15,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }
    kwargs.update(_driver_info())
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if password:
        kwargs["password"] = password
    parsed = urlparse(url)
    if parsed.scheme == "rediss":
        kwargs["ssl_ca_certs"] = settings.ssl_ca_certs
        kwargs["ssl_certfile"] = settings.ssl_certfile
        kwargs["ssl_keyfile"] = settings.ssl_keyfile
        # Explicit: redis-py versions this project allows (redis>=5) default to not checking the
        # broker's name against its certificate, which lets any CA-signed host pose as the broker.
        kwargs["ssl_cert_reqs"] = "required"
        kwargs["ssl_check_hostname"] = True
    if parsed.scheme == "sentinel":
        # sentinel://host1:26379,host2:26379/mastername
        hosts = []
        for part in parsed.netloc.split("@")[-1].split(","):
            host, _, port = part.partition(":")
            hosts.append((host, int(port or 26379)))
        master = parsed.path.strip("/") or settings.sentinel_master
        if not master:
            raise BrokerError(f"{url}: sentinel URL needs a master name (sentinel://host:port/master)")
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_connect_timeout": 5}, **kwargs)
        return sentinel.master_for(master)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise BrokerError(f"{url}: unsupported broker URL scheme {parsed.scheme!r} (use redis://, rediss:// or sentinel://)")
    return redis.Redis.from_url(url, **kwargs)


def _driver_info() -> dict:
    """The version redis-py tells the broker (CLIENT SETINFO), given: left out, redis-py reads it
    from the installed package's metadata at every connection (importlib.metadata and a scan of
    the environment's packages, at every short `grid` command)."""
    info = getattr(redis, "DriverInfo", None)  # redis-py 7+; before, a lib_version argument
    return {"driver_info": info(lib_version=redis.__version__)} if info else {"lib_version": redis.__version__}


KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 30_000}
"""TCP settings that notice a silently dead link (cut cable, peer gone) in about 30 seconds,
instead of the system default of hours, even on a connection blocked in BLPOP."""


def keepalive_options() -> dict[int, int]:
    import socket

    return {getattr(socket, k): v for k, v in KEEPALIVE.items() if hasattr(socket, k)}


def describe_error(exc: Exception, url: str | None = None) -> str:
    """A one-line, human message for a broker failure."""
    where = f" at {redact(url)}" if url else ""
    if isinstance(exc, redis.AuthenticationError):
        return f"broker{where} refused the credentials: {exc}"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"broker{where} denied the command (ACL): {exc}"
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach the broker{where}: {exc}"
    if isinstance(exc, redis.TimeoutError):
        return f"the broker{where} timed out: {exc}"
    return f"broker error{where}: {exc}"


def redact(url: str | None) -> str:
    if not url:
        return ""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url
