"""`grid-agent`: the node daemon's entry point (options -> settings -> Agent.run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import redis
import typer

from gridcore.connection import BrokerError, describe_error
from gridcore.settings import SettingsError, load_settings

# Plain help like `grid --help` (no boxes, no colour markup).
app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Run this machine as a Science Grid node.")


@app.command()
def main(
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML).")] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Broker URL (redis://, rediss://).")] = None,
    node: Annotated[Optional[str], typer.Option(help="Node name (default: host name).")] = None,
    slots: Annotated[Optional[int], typer.Option(help="Worker slots (default: logical cores).")] = None,
    queue: Annotated[Optional[list[str]], typer.Option(help="Queue to serve (repeatable).")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="Node label (repeatable).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Same as --log-level INFO.")] = False,
    log_level: Annotated[Optional[str], typer.Option(
        help="DEBUG, INFO (a line per job), WARNING or ERROR; default agent.log_level (WARNING).")] = None,
) -> None:
    """Publish inventory and heartbeats, and run jobs in worker slots."""
    from agent import logsetup
    from agent.daemon import Agent, AgentError

    level = log_level or ("INFO" if verbose else None)
    agent_over = {k: v for k, v in {"node_name": node, "slots": slots, "queues": queue, "labels": label,
                                    "log_level": level}.items() if v}
    try:
        settings = load_settings(config, overrides={"redis_url": redis_url, "agent": agent_over})
        logsetup.configure(settings.agent.log_level)
        agent = Agent(settings)
        code = agent.run()
    except (SettingsError, AgentError, BrokerError) as e:
        typer.echo(f"grid-agent: {e}", err=True)
        raise typer.Exit(2) from None
    except redis.RedisError as e:
        typer.echo(f"grid-agent: {describe_error(e, settings.redis_url)}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def run() -> None:
    app(prog_name="grid-agent")


if __name__ == "__main__":
    sys.exit(run())
