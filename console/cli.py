"""`gridtui`: parse options, connect, hand over to `make_app(settings, grid)`."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from gridcore.settings import SettingsError, data_dir, load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gridtui", description="Keyboard-driven console for the Science Grid.")
    p.add_argument("--redis-url", help="broker URL (redis://, rediss://, sentinel://); default from config")
    p.add_argument("--config", help="config file (TOML); default the user config")
    p.add_argument("--local", action="store_true", help="use the embedded local grid, starting it if needed")
    p.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    p.add_argument("--mouse", action="store_true", help="enable the mouse (off by default for slow links)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between polls (default 1.0)")
    args = p.parse_args(argv)
    if not 0.05 <= args.poll_interval <= 3600:
        p.error("--poll-interval must be between 0.05 and 3600 seconds")
    return args


def _log_to_file() -> str:
    """Everything logged goes to a file: the terminal belongs to the UI."""
    path = data_dir() / "gridtui.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_path = _log_to_file()
    overrides: dict = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.read_only:
        overrides["read_only"] = True
    notices: list[str] = []
    try:
        settings = load_settings(args.config, overrides=overrides)
        if args.local:
            settings, notices = _local(settings)
        from gridcore.client import Grid
        from gridcore.connection import BrokerError, connect

        try:
            grid = Grid(connect(settings), settings)
        except BrokerError as e:
            print(f"gridtui: {e}", file=sys.stderr)
            return 2
    except SettingsError as e:
        print(f"gridtui: {e}", file=sys.stderr)
        return 2
    except LocalGridError as e:
        print(f"gridtui: {e}", file=sys.stderr)
        return 2

    from console.app import make_app

    app = make_app(settings, grid, poll_interval=args.poll_interval,
                   where="local grid" if args.local else None, notices=notices)
    # An unreachable broker is not fatal: the app shows a banner and keeps retrying.
    app.run(mouse=args.mouse)
    if app.fatal:
        print(f"gridtui: stopped by an unexpected error: {app.fatal}\n  details: {log_path}", file=sys.stderr)
        return 1
    if args.local:
        print(still_running(app.grid), file=sys.stderr)
    return app.return_code or 0


def still_running(grid) -> str:
    """What quitting the console leaves running on the local grid, and how to stop it."""
    from gridcore import localgrid

    st = localgrid.status()
    if not st["broker"] or not st["broker"]["alive"]:
        return "gridtui: the local grid is stopped (`grid up` starts it)"
    try:
        counts = grid.queues()
        jobs = f"; {sum(q.running for q in counts)} job(s) running, {sum(q.queued for q in counts)} queued"
    except Exception:  # noqa: BLE001 - the summary must not fail the exit
        jobs = ""
    agents = ", ".join(f"agent pid {a['pid']}" for a in st["agents"] if a["alive"]) or "no agent"
    said = (f"gridtui: the local grid is still running (broker pid {st['broker']['pid']}, {agents}{jobs}). "
            f"Stop it with `grid down`: {localgrid.down_words(localgrid.stop_grace(grid.settings))}.")
    return textwrap.fill(said, width=78, subsequent_indent="  ", break_on_hyphens=False)


class LocalGridError(Exception):
    pass


def _local(settings):
    """Settings that find the embedded local grid through its state file (started if it isn't
    running, and followed if it restarts on another port), and what to tell the user about it."""
    try:
        from gridcore import localgrid
    except ImportError:
        raise LocalGridError("this build has no embedded local grid (gridcore.localgrid is missing)") from None
    try:
        info = localgrid.ensure_up(settings)
    except Exception as e:  # noqa: BLE001 - any start failure is reported in one line
        raise LocalGridError(f"could not start the local grid: {e}") from None
    notices = [localgrid.ROOT_NOTE] if info.get("running_as_root") else []
    return settings.model_copy(update={"redis_url": None, "redis_password": None}), notices


def run() -> int:
    """Console-script entry point (`gridtui`)."""
    return main()
