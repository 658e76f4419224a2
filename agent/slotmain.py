"""The entry point of a slot process (`python -m agent.slotmain`): one process the agent
supervises, running one GridWorker.

The agent passes the settings as JSON on stdin (the broker password stays out of `ps`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys

from agent import logsetup, runner, usage
from agent.pulse import ORPHANED, PING_TIMEOUT, PulseWatch, silence_limit
from agent.verify import Gatekeeper
from agent.rqadapter.worker import GridWorker
from gridcore import keys
from gridcore.connection import connect
from gridcore.settings import Settings
from gridcore.signing import AuthorizedKeys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """If the agent dies (even by SIGKILL), this slot gets a cold stop."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    except OSError:
        pass  # not Linux: the next agent incarnation reaps us instead
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grid-agent-slot")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--scheduler", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the worker installs its handlers
    die_with_parent(args.parent)
    usage.become_subreaper()  # a job's escaped children become ours, found at its end (agent/runner.py)
    data = json.loads(sys.stdin.read())
    settings = Settings.model_validate(data["settings"])
    marker_env = data["marker_env"]
    logsetup.configure(settings.agent.log_level, who=f"slot{args.slot}")
    conn = connect(settings)
    node = settings.agent.node_name
    queues = [keys.node_queue(node)] + [q for q in settings.agent.queues if q != keys.node_queue(node)]
    gate = Gatekeeper(conn, AuthorizedKeys(settings.authorized_keys_path), settings.agent)
    worker = GridWorker(
        queues, connection=conn, name=args.name, node=node, slot=args.slot, settings=settings, gate=gate,
        marker_env=marker_env, capacity=data.get("capacity"), slots=int(data.get("slots") or 1),
    )
    if "pulse_fd" in data:
        node_cfg = settings.agent
        watch = PulseWatch(int(data["pulse_fd"]), silence_limit(node_cfg.heartbeat_interval, node_cfg.node_timeout),
                           connect(settings, socket_timeout=PING_TIMEOUT),
                           lambda: worker.performer.cancel(ORPHANED))
        worker.performer.orphaned = watch.orphaned
        watch.start()
    try:
        worker.work(logging_level=logsetup.rq_level(settings.agent.log_level), with_scheduler=args.scheduler)
    finally:
        runner.close_cgroups()
    return 0


if __name__ == "__main__":
    sys.exit(main())
