"""The history collector as a daemon (`python -m gridcore.historycollector`): what the embedded
local grid and the systemd unit `grid-history.service` run. It follows the broker's history
stream into the store of the settings (`history_file`) until SIGTERM or SIGINT, then takes what
ended meanwhile and exits. `grid history collect --follow` does the same in a terminal."""

from __future__ import annotations

import logging
import signal
import sys

from gridcore.connection import connect
from gridcore.historystore import HistoryStore, collect, follow
from gridcore.settings import SettingsError, load_settings

log = logging.getLogger("grid.history")


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings()
    except SettingsError as e:
        log.error("%s", e)
        return 2
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    conn = connect(settings)
    problems: list[str] = []

    def said(added: int) -> None:
        for p in problems:
            log.warning("%s", p)
        problems.clear()
        if added:
            log.info("%d attempt(s) added", added)

    with HistoryStore(settings.history_path) as store:
        log.info("collecting into %s", store.path)
        follow(conn, store, lambda: bool(stopping), said, problems)
        said(collect(conn, store, problems))  # what ended while it was stopping
    return 0


if __name__ == "__main__":
    sys.exit(main())
