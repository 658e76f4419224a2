"""`grid broker-config`: a hardened Redis/Valkey config for the grid's broker host.

What the grid needs from its broker (ARCHITECTURE.md, "Broker"): every accepted job
written to the AOF within a second, no key ever evicted, a memory limit below the host's,
users from an ACL file (`grid acl --apply` adds the grid's roles), listening on the LAN
address only, and TLS with client certificates where the LAN is shared.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.errors import CliError
from gridcore.units import parse_size

ADMIN_USER = "grid-admin"
"""The broker's administrator in a new ACL file (CONFIG, ACL, `grid doctor`, `grid acl --apply`)."""


def host_memory() -> int:
    """Bytes of memory on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def render(*, bind: list[str], port: int, maxmemory: int, data_dir: str, aclfile: str | None,
           tls_cert: str | None = None, tls_key: str | None = None, tls_ca: str | None = None,
           tls_clients: str = "yes") -> str:
    """The config text (one directive a line, each with why)."""
    tls = bool(tls_cert or tls_key or tls_ca)
    if tls and not (tls_cert and tls_key and tls_ca):
        raise CliError("TLS needs --tls-cert, --tls-key and --tls-ca together", 2)
    lines = [
        "# Science Grid broker: written by `grid broker-config`. Start it with",
        "#   redis-server THIS_FILE   (or valkey-server THIS_FILE)",
        "",
        "# Listen on the LAN address only, where the nodes and operators reach it.",
        f"bind {' '.join(bind)}",
        "protected-mode yes",
    ]
    if tls:
        lines += [
            "# TLS only: the plain-text port is closed.",
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {tls_cert}",
            f"tls-key-file {tls_key}",
            f"tls-ca-cert-file {tls_ca}",
            "# yes: every client shows a certificate from the CA (optional: a password is enough).",
            f"tls-auth-clients {tls_clients}",
            "tls-replication yes",
        ]
    else:
        lines += [f"port {port}"]
    lines += [
        "",
        "# Every accepted job reaches the disk within a second; a restart loses none.",
        f"dir {data_dir}",
        "appendonly yes",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        "",
        "# A full broker refuses writes instead of evicting jobs.",
        f"maxmemory {maxmemory}",
        "maxmemory-policy noeviction",
        "",
        "# Users live in the ACL file: `grid acl --apply` adds operator, viewer and one user per node.",
    ]
    if aclfile:
        lines.append(f"aclfile {aclfile}")
    lines += [
        "",
        "# Dead clients (a node whose cable was pulled) are noticed within a minute.",
        "tcp-keepalive 60",
        "timeout 0",
        "daemonize no",
        'logfile ""',
    ]
    return "\n".join(lines) + "\n"


def init_aclfile(path: Path) -> str:
    """Write a new ACL file: the default user off, an admin with a new password; return it."""
    if path.exists():
        raise CliError(f"{path}: exists already; --init-aclfile only writes a new one", 2)
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("user default off resetchannels -@all\n")
        f.write(f"user {ADMIN_USER} on >{password} ~* &* +@all\n")
    return password


def broker_config(
    bind: Annotated[list[str], typer.Option(help="Address to listen on: the broker host's LAN address (repeatable).")],
    port: Annotated[int, typer.Option(help="Port (the TLS port with --tls-cert).")] = 6379,
    maxmemory: Annotated[Optional[str], typer.Option(
        help='Memory limit, e.g. "8GB" (default: half of this machine\'s memory).')] = None,
    data_dir: Annotated[str, typer.Option("--dir", help="Where the AOF lives.")] = "/var/lib/redis",
    aclfile: Annotated[Optional[str], typer.Option(help="ACL file (users survive a restart).")] = "/etc/redis/users.acl",
    init_acl: Annotated[bool, typer.Option("--init-aclfile", help=(
        f"Also write a new ACL file: default user off, an admin `{ADMIN_USER}` whose password is printed once."))] = False,
    tls_cert: Annotated[Optional[str], typer.Option(help="Server certificate (PEM); with it the broker speaks TLS only.")] = None,
    tls_key: Annotated[Optional[str], typer.Option(help="Server key (PEM).")] = None,
    tls_ca: Annotated[Optional[str], typer.Option(help="CA that signed the client certificates (PEM).")] = None,
    tls_clients: Annotated[str, typer.Option(help="tls-auth-clients: yes (certificates required) or optional.")] = "yes",
) -> None:
    """Print a hardened broker config: AOF everysec, noeviction, a memory limit, an ACL file, TLS if asked."""
    limit = host_memory() // 2
    if maxmemory:
        parsed = parse_size(maxmemory)
        if not parsed:
            raise CliError(f'--maxmemory {maxmemory!r}: not a size like "8GB"', 2)
        limit = parsed
    if tls_clients not in ("yes", "optional"):
        raise CliError("--tls-clients: yes or optional", 2)
    text = render(bind=bind, port=port, maxmemory=limit, data_dir=data_dir, aclfile=aclfile, tls_cert=tls_cert,
                  tls_key=tls_key, tls_ca=tls_ca, tls_clients=tls_clients)
    if init_acl:
        if not aclfile:
            raise CliError("--init-aclfile needs --aclfile", 2)
        password = init_aclfile(Path(aclfile))
        typer.echo(f"grid broker-config: wrote {aclfile}; user {ADMIN_USER} password {password} "
                   "(shown only this once: put it in the admin's config as redis_username / redis_password)", err=True)
    typer.echo(text, nl=False)
