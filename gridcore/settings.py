"""Settings: defaults < config file (TOML) < GRID_* environment < explicit flags.

Unknown keys in the file or in GRID_* variables are rejected with a message naming them,
because a misspelt `redis_ulr` silently falling back to a default is worse than an error.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

APP_NAME = "science-grid"
ENV_PREFIX = "GRID_"


class SettingsError(Exception):
    """A setting is unknown or has a bad value; the message names it."""


def config_dir() -> Path:
    return Path(os.environ.get("GRID_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("GRID_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


class DeclaredGpu(BaseModel):
    """A GPU declared in the agent config (where NVML can't see it, and in tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    name: str = "declared GPU"
    uuid: str | None = None
    memory_total: int | None = None


class NodePolicy(BaseModel):
    """Limits a node puts on the jobs it accepts, on top of signature checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Empty lists as plain defaults (pydantic copies them per instance): `default_factory=list`
    # has pydantic read the signature of `list`, which compiles the tokenizer's patterns (1 ms of
    # every `grid` command).
    cwd_roots: list[str] = []  # empty = any cwd
    max_timeout: float | None = None
    env_allow: list[str] | None = None  # None = any variable; else the names a job may set


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node_name: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    slots: int | None = None  # None = logical cores
    queues: list[str] = Field(default_factory=lambda: ["default"])
    labels: list[str] = []
    gpus: list[DeclaredGpu] | None = None  # None = detect with NVML; [] = none
    extra_gpus: list[DeclaredGpu] = []
    cpus: int | None = None  # override detected logical cores
    memory: int | None = None  # override detected memory (bytes)
    authorized_keys: str | None = None  # default: <config dir>/authorized_keys
    heartbeat_interval: float = 2.0
    node_timeout: float = 30.0  # heartbeat age after which the node is down
    output_budget: int = 16 * 1024 * 1024  # bytes of output kept in the broker per job
    log_dir: str | None = None  # default: <data dir>/logs
    log_cap: int = 256 * 1024 * 1024  # bytes of full log spooled per job on the node
    log_retention: float = 7 * 24 * 3600.0
    stop_grace: float = 30.0  # warm stop: how long running jobs may finish
    kill_grace: float = 3.0  # TERM -> KILL of a job's process tree
    allow_root: bool = False
    log_level: Annotated[str, StringConstraints(to_upper=True, pattern="^(?i:debug|info|warning|error)$")] = \
        "WARNING"  # INFO: a line per job; the slots log at it too
    metrics_port: int | None = None  # serve Prometheus metrics on this port (None: no endpoint)
    metrics_address: str = "127.0.0.1"  # where the metrics endpoint listens (a LAN address to scrape it)
    policy: NodePolicy = Field(default_factory=NodePolicy)


def account_name() -> str:
    """This process's account name (from the password database: $USER may be unset or wrong)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no entry (containers): what the environment says, else the number
        return os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid{os.getuid()}"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = None  # None = the embedded local grid, if it is up
    redis_username: str | None = None
    redis_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sentinel_master: str | None = None  # with redis+sentinel:// URLs
    key_file: str | None = None  # operator signing key; default <config dir>/keys/id_ed25519
    submitter: str = Field(default_factory=lambda: f"{account_name()}@{socket.gethostname()}")
    default_queue: str = "default"
    result_ttl: int = 7 * 24 * 3600
    history_file: str | None = None  # the history store (SQLite); default <data dir>/history.sqlite3
    envelope_ttl: int = 14 * 24 * 3600  # how long a signed job may wait before it expires
    read_only: bool = False
    agent: AgentSettings = Field(default_factory=AgentSettings)

    @property
    def key_path(self) -> Path:
        return Path(self.key_file) if self.key_file else config_dir() / "keys" / "id_ed25519"

    @property
    def public_key_path(self) -> Path:
        """The signing key's public half (`<key>.pub`): what this user trusts as its own."""
        key = self.key_path
        return key.with_name(key.name + ".pub")

    @property
    def authorized_keys_path(self) -> Path:
        a = self.agent.authorized_keys
        return Path(a) if a else config_dir() / "authorized_keys"

    @property
    def log_dir(self) -> Path:
        return Path(self.agent.log_dir) if self.agent.log_dir else data_dir() / "logs"

    @property
    def history_path(self) -> Path:
        return Path(self.history_file) if self.history_file else data_dir() / "history.sqlite3"


def default_config_path() -> Path:
    return Path(os.environ.get("GRID_CONFIG") or config_dir() / "config.toml")


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    top = set(Settings.model_fields) - {"agent"}
    agent_fields = set(AgentSettings.model_fields)
    out: dict[str, Any] = {}
    # Variables the tools themselves read that are not settings.
    ignored = {"CONFIG", "CONFIG_DIR", "DATA_DIR", "LOCAL_DIR"}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        # GRID_JOB_* and GRID_SWEEP_* describe a job to itself; GRID_TEST_* belong to the test suite.
        if key.upper() in ignored or key.startswith(("job_", "sweep_", "test_")):
            continue
        if key in top:
            out[key] = value
        elif key.startswith("agent_") and key[6:] in agent_fields:
            out.setdefault("agent", {})[key[6:]] = _env_value(AgentSettings, key[6:], value)
        else:
            raise SettingsError(f"unknown environment variable {name} (not a grid setting)")
    return out


def _env_value(model: type[BaseModel], key: str, value: str) -> Any:
    # Lists come as comma-separated values; everything else pydantic coerces from the string.
    annotation = str(model.model_fields[key].annotation)
    if annotation.startswith("list[str]"):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is not None:
            out[k] = v
    return out


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting '{loc}'")
        else:
            parts.append(f"{loc}: {e['msg']}")
    return f"{source}: " + "; ".join(parts)


def load_settings(
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build settings from the config file, the environment and explicit overrides."""
    environ = dict(os.environ if environ is None else environ)
    explicit = config_path is not None
    path = Path(config_path) if explicit else default_config_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise SettingsError(f"{path}: cannot read: {e.strerror}") from None
        try:
            Settings.model_validate(data)
        except ValidationError as e:
            raise SettingsError(_format_error(e, str(path))) from None
    elif explicit:
        raise SettingsError(f"{path}: config file not found")
    data = _merge(data, _from_env(environ))
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise SettingsError(_format_error(e, "settings")) from None
