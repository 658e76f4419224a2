"""`grid acl`: Redis ACL users for operators, agents (one per node) and viewers."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from cli.errors import CliError
from gridcore import acl
from gridcore.connection import connect
from gridcore.settings import load_settings

app = typer.Typer(add_completion=False, rich_markup_mode=None,
                  help="Print (or install) Redis ACL users for the grid's roles.")


def _passwords(pairs: list[str] | None, names: set[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, sep, secret = p.partition("=")
        if not sep or not secret:
            raise CliError(f"--password {p.split('=')[0]!r}: expected USER=SECRET", 2)
        if name not in names:
            raise CliError(f"--password: no user {name!r} here (users: {', '.join(sorted(names))})", 2)
        out[name] = secret
    return out


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    node: Annotated[Optional[list[str]], typer.Option(help="Node to make an agent user for (repeatable).")] = None,
    role: Annotated[Optional[list[str]], typer.Option(help="Only these roles: operator, agent, viewer.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Install the users on the broker and print their passwords.")] = False,
    password: Annotated[Optional[list[str]], typer.Option(help="USER=SECRET instead of a generated password.")] = None,
    prefix: Annotated[str, typer.Option(help="Prefix of the user names.")] = acl.USER_PREFIX,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Without --apply, print one ACL SETUSER line per user (no passwords: add them, or use --apply)."""
    try:
        accounts = acl.users(node or [], role or acl.ROLES, prefix)
    except acl.AclError as e:
        raise CliError(str(e), 2) from None
    given = _passwords(password, {u.name for u in accounts})
    if (role is None or "agent" in role) and not node:
        typer.echo("grid acl: no --node given, so no agent users", err=True)
    if not apply:
        if as_json:
            typer.echo(json.dumps([{"name": u.name, "role": u.role, "node": u.node, "command": u.line(given.get(u.name))}
                                   for u in accounts], indent=2))
        else:
            for u in accounts:
                typer.echo(u.line(given.get(u.name)))
        return
    settings = ctx.obj.settings if hasattr(ctx.obj, "settings") else load_settings()
    conn = connect(settings)
    try:
        creds = acl.apply(conn, accounts, given)
    except acl.AclError as e:
        raise CliError(str(e), 2) from None
    why_not = acl.persist(conn)
    if as_json:
        typer.echo(json.dumps([{"name": u.name, "role": u.role, "node": u.node, "password": creds[u.name]}
                               for u in accounts], indent=2))
    else:
        for u in accounts:
            typer.echo(f"{u.name}\t{u.role}\t{creds[u.name]}")
    typer.echo("grid acl: passwords are shown only this once; put them in each tool's config "
               "(redis_username, redis_password)", err=True)
    if why_not:
        typer.echo(f"grid acl: users are live but not saved on the broker ({why_not.splitlines()[0]})", err=True)
