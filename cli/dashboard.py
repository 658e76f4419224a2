"""`grid dashboard`: the seed's web dashboard (rq-dashboard) against the grid's broker.

It runs with whatever user the config names (make it the viewer: `grid acl` prints one, and
the viewer can read everything and change nothing) and RQ's JSON serializer, the only one
grid jobs use. The broker URL and password reach it through its environment, not its
command line (`ps` shows command lines to everyone).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Annotated
from urllib.parse import quote, urlencode, urlparse, urlunparse

import typer

from cli import render
from cli.errors import CliError
from gridcore.connection import resolve_url
from gridcore.settings import Settings


def dashboard_url(settings: Settings) -> str:
    """The broker URL rq-dashboard understands: credentials and TLS files inside it."""
    url, password = resolve_url(settings)
    p = urlparse(url)
    scheme = "redis+sentinel" if p.scheme == "sentinel" else p.scheme
    hosts = p.netloc.rpartition("@")[2]
    auth = ""
    if settings.redis_username or password:
        auth = quote(settings.redis_username or "", safe="") + (":" + quote(password, safe="") if password else "")
        auth += "@"
    query = p.query
    if p.scheme == "rediss":
        tls = {k: v for k, v in (("ssl_ca_certs", settings.ssl_ca_certs), ("ssl_certfile", settings.ssl_certfile),
                                 ("ssl_keyfile", settings.ssl_keyfile)) if v}
        query = "&".join(x for x in (query, urlencode(tls)) if x)
    path = p.path if p.scheme != "sentinel" else f"/{(p.path.strip('/') or settings.sentinel_master or '')}"
    return urlunparse((scheme, auth + hosts, path, "", query, ""))


def dashboard(ctx: typer.Context,
              port: Annotated[int, typer.Option(help="Port of the web page.")] = 9181,
              bind: Annotated[str, typer.Option(help="Address the page listens on.")] = "127.0.0.1") -> None:
    """Serve rq-dashboard (pip install 'science-grid[dashboard]') on the grid's broker, JSON serializer."""
    if importlib.util.find_spec("rq_dashboard") is None:
        raise CliError("rq-dashboard is not installed: pip install 'science-grid[dashboard]'", 1)
    settings: Settings = ctx.obj.settings
    if not settings.redis_username:
        render.err("note: no redis_username: the dashboard gets full access; give it the viewer user (grid acl)")
    env = {**os.environ, "RQ_DASHBOARD_REDIS_URL": dashboard_url(settings)}
    render.echo(f"grid dashboard: http://{bind}:{port}/ (Ctrl-C stops it)")
    code = subprocess.call([sys.executable, "-m", "rq_dashboard", "--json", "--bind", bind, "--port", str(port),
                            "--disable-delete"], env=env)
    if code not in (0, -2, 130):
        raise typer.Exit(code)
