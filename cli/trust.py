"""`grid keys`: the operator's signing key and a node's authorized_keys file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from cryptography.exceptions import UnsupportedAlgorithm

from cli import render
from cli.errors import CliError
from gridcore import keys, nodekeys
from gridcore.settings import Settings, load_settings
from gridcore.signing import AuthorizedKeys, SigningError, fingerprint, generate_key, load_private_key, public_line

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Make the operator's signing key; manage which keys a node accepts.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.obj
    return obj.settings if hasattr(obj, "settings") else load_settings()


def _key_text(arg: str) -> str:
    """A public key line given inline or as a file holding exactly one."""
    text = arg.strip()
    if not text.startswith("ssh-"):
        path = Path(arg).expanduser()
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        except FileNotFoundError:
            raise CliError(f"{arg}: neither an ssh-ed25519 public key nor a file", 2) from None
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{arg}: cannot read: {getattr(e, 'strerror', None) or e}", 2) from None
        if len(lines) != 1:
            raise CliError(f"{arg}: expected one public key line, found {len(lines)}", 2)
        text = lines[0]
    return text


def _comment(pub: Path) -> str:
    """The comment of a .pub file written by `grid keys init`, if it is there."""
    try:
        parts = pub.read_text().split(None, 2)
    except OSError:
        return ""
    return parts[2].strip() if len(parts) > 2 else ""


@app.command()
def init(
    ctx: typer.Context,
    authorize: Annotated[bool, typer.Option("--authorize", help="Also accept this key on this machine's agent.")] = False,
) -> None:
    """Make the operator signing key (Ed25519, OpenSSH format) and print its public line."""
    s = _settings(ctx)
    key = generate_key(s.key_path, s.submitter)  # refuses to overwrite (SigningError -> exit 2)
    line = public_line(key.public_key(), s.submitter)
    if authorize:
        AuthorizedKeys(s.authorized_keys_path).authorize(line)
    typer.echo(line)


@app.command()
def show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the operator key's public line (give it to each node's `grid keys authorize`)."""
    s = _settings(ctx)
    key = load_private_key(s.key_path)
    line = public_line(key.public_key(), _comment(Path(str(s.key_path) + ".pub")) or s.submitter)
    if as_json:
        fp = fingerprint(key.public_key())
        typer.echo(json.dumps({"public": line, "fingerprint": fp, "path": str(s.key_path)}))
    else:
        typer.echo(line)


@app.command("authorize")
def authorize_cmd(ctx: typer.Context,
                  words: Annotated[list[str], typer.Argument(help="Public key line or .pub file.")]) -> None:
    """Let jobs signed by this key run on this node."""
    s = _settings(ctx)
    key = " ".join(words)  # an unquoted key line arrives as several words
    try:
        fp = AuthorizedKeys(s.authorized_keys_path).authorize(_key_text(key))
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CliError(f"{key[:60]}: not an ssh-ed25519 public key ({e})", 2) from None
    typer.echo(f"authorized {fp} in {s.authorized_keys_path}")


@app.command()
def revoke(ctx: typer.Context,
           words: Annotated[list[str], typer.Argument(help="Fingerprint (SHA256:...), public key line or .pub file.")]
           ) -> None:
    """Refuse jobs signed by this key from now on (kept as an @revoked line)."""
    s = _settings(ctx)
    key = " ".join(words)
    target = key.strip() if key.strip().startswith("SHA256:") else _key_text(key)
    try:
        fp = AuthorizedKeys(s.authorized_keys_path).revoke(target)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CliError(f"{key[:60]}: not a key fingerprint or ssh-ed25519 public key ({e})", 2) from None
    except SigningError as e:
        raise CliError(str(e), 2) from None
    typer.echo(f"revoked {fp} in {s.authorized_keys_path}")


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The keys this node accepts, and those it refuses."""
    s = _settings(ctx)
    entries = AuthorizedKeys(s.authorized_keys_path).entries()
    if as_json:
        typer.echo(json.dumps([{"fingerprint": fp, "comment": c, "revoked": r} for fp, c, r in entries]))
        return
    if not entries:
        typer.echo(f"no keys in {s.authorized_keys_path}", err=True)
    for fp, comment, revoked in entries:
        typer.echo(f"{fp}\t{'revoked' if revoked else 'authorized'}\t{comment}".rstrip())


# ---- node keys: trust from nodes to operators (gridcore/nodekeys.py) -------------------------


def _grid(ctx: typer.Context):
    from cli.context import shared

    return shared(ctx).grid


@app.command("node-key")
def node_key_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """On a node: its own key's public line and fingerprint (compare with `grid keys nodes`)."""
    s = _settings(ctx)
    node = s.agent.node_name
    path = nodekeys.node_key_path(node)
    try:
        key = load_private_key(path)
    except SigningError as e:
        raise CliError(f"{e} (grid-agent makes it at its first start)", 1) from None
    fp = fingerprint(key.public_key())
    if as_json:
        typer.echo(json.dumps({"node": node, "fingerprint": fp, "path": str(path)}))
    else:
        typer.echo(f"{node}\t{fp}\t{path}")


def _node_rows(ctx: typer.Context) -> list[dict[str, str]]:
    grid = _grid(ctx)
    known = nodekeys.KnownNodes().entries()
    names = sorted({n.decode(errors="replace") for n in grid.redis.zrange(keys.NODES, 0, -1)} | set(known))
    rows = []
    for node in names:
        pub = nodekeys.published(grid.redis, node)
        pinned = known.get(node)
        fp = fingerprint(pub) if pub is not None else ""
        if pinned is None:
            state = "not pinned" if pub is not None else "no key published"
        elif pub is None or fingerprint(pinned) == fp:
            state = "pinned"
        else:
            state = f"CHANGED (pinned {fingerprint(pinned)})"
        rows.append({"node": node, "fingerprint": fp, "state": state})
    return rows


@app.command("nodes")
def nodes_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each node's published key, and whether you pinned it (`grid keys pin NODE`)."""
    rows = _node_rows(ctx)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no nodes on this grid, and none pinned", err=True)
    for r in rows:
        typer.echo(f"{render.clean(r['node'], 100)}\t{r['fingerprint'] or '-'}\t{render.clean(r['state'], 200)}")


@app.command("pin")
def pin_cmd(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name.")],
            expect: Annotated[Optional[str], typer.Option("--fingerprint", help="Pin only if the published "
                              "key has this fingerprint (from `grid keys node-key` on the node).")] = None) -> None:
    """Trust the key NODE published (first use), as `ssh` pins a host key; prints its fingerprint."""
    pub = nodekeys.published(_grid(ctx).redis, node)
    if pub is None:
        raise CliError(f"node {render.clean(node, 100)} has published no key (is its grid-agent started?)", 1)
    fp = fingerprint(pub)
    if expect is not None and expect.strip() != fp:
        raise CliError(f"node {render.clean(node, 100)} published {fp}, not {render.clean(expect, 100)}: not pinned", 1)
    known = nodekeys.KnownNodes()
    before = known.entries().get(node)
    known.pin(node, pub)
    what = "re-pinned" if before is not None and fingerprint(before) != fp else "pinned"
    typer.echo(f"{what} {render.clean(node, 100)} {fp} in {known.path}"
               + ("" if expect else " (check it against `grid keys node-key` on the node)"))


@app.command("unpin")
def unpin_cmd(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node name.")]) -> None:
    """Stop trusting NODE's key: its records show as unpinned."""
    known = nodekeys.KnownNodes()
    if not known.unpin(node):
        raise CliError(f"node {render.clean(node, 100)} is not pinned in {known.path}", 1)
    typer.echo(f"unpinned {render.clean(node, 100)} in {known.path}")
