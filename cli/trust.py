"""`grid keys`: the operator's signing key and a node's authorized_keys file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography.exceptions import UnsupportedAlgorithm

from cli.errors import CliError
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
