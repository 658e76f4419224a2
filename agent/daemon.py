"""grid-agent: inventory, heartbeat, node-loss sweeps, and supervision of the worker slots.

First SIGTERM (or Ctrl-C) is a warm stop: slots take nothing new and running jobs get
`stop_grace` seconds to finish, then are killed and handed back. A second one is a cold stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import psutil
import redis

from agent import cgroup, claim, metrics, proctree, recovery
from agent.inventory import Nvml, live_load, static_inventory
from agent.negotiator import Negotiator
from agent.outage import OUTAGE_ERRORS, retyped
from agent.slotnames import slot_name
from agent.pulse import Pulse, silence_limit
from agent.wakeup import Wakeup
from gridcore import events, keys, nodekeys, quarantine
from gridcore.connection import connect, resolve_url
from gridcore.records import NODE_DRAINING, NODE_SLOTS, CorruptRecord, Inventory, Load, NodeRecord
from gridcore.settings import Settings, data_dir
from gridcore.version import package_version

log = logging.getLogger("grid.agent")

SLOT_RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)
"""Seconds before restarting a slot that died, by how many times it died in a row."""
SLOT_STABLE = 60.0
"""Seconds a slot must have run for its next death to count as a first one again."""
BROKER_SOCKET_TIMEOUT = 10.0
"""Seconds the agent waits on one broker reply, so a cut network can't freeze supervision."""


BEAT_FIELDS = ("load", NODE_SLOTS, "hb_interval", "node_timeout", "agent_pid", "agent_id", "hostname", "queues",
               "version")
"""The node hash's fields an ordinary heartbeat rewrites, besides `beat`."""

BEAT = """
-- KEYS: the node's hash. ARGV: its fields (name, value, ...). The beat is the broker's time, as
-- `sec.usec`; the time and the beat before it are returned.
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local prev = redis.call('HGET', KEYS[1], 'beat')
redis.call('HSET', KEYS[1], 'beat', now, unpack(ARGV))
return {t[1], t[2], prev or ''}
"""
"""Write an ordinary heartbeat's fields, its beat at the broker's time."""
SCORE_SLACK = 1.0
"""Seconds the node registry's score, written in the beat's round trip from the last beat's time
and the time since, may be off the beat's own before it is written again (a clock step)."""


class AgentError(Exception):
    """The agent cannot start; the message says why."""




class SlotProcess:
    """The agent's handle on one slot process (agent/slotmain.py), which it spawns and restarts."""

    def __init__(self, index: int, name: str):
        self.index = index
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.deaths = 0
        self.restart_at = 0.0
        self.spawned_at = 0.0
        self.dead_name: str | None = None  # a slot that died with jobs still to recover


class Agent:
    def __init__(self, settings: Settings):
        url, password = resolve_url(settings)
        self.settings = settings.model_copy(update={"redis_url": url, "redis_password": password})
        self.cfg = self.settings.agent
        self.node = self.cfg.node_name
        self.agent_id = uuid.uuid4().hex[:12]
        self.conn = connect(self.settings, socket_timeout=BROKER_SOCKET_TIMEOUT)
        self.nvml = Nvml()
        self.slots: list[SlotProcess] = []
        self.stopping = False
        self.cold = False
        self.stop_deadline: float | None = None
        self.inventory = Inventory()
        # Two grids (brokers) on one machine may both have a node of this name: scope by grid.
        self.grid_id = grid_identity(self.conn, self.node, url)
        self.marker_env = {
            proctree.ENV_GRID: self.grid_id,
            proctree.ENV_NODE: self.node,
            proctree.ENV_AGENT: self.agent_id,
            proctree.ENV_AGENT_PID: str(os.getpid()),
        }
        self.last_sweep = 0.0
        self.negotiator = Negotiator(self.conn, owner=f"{self.node}.{self.agent_id}", node=self.node)
        self.placing: threading.Event | None = None  # set: the placement loop stops
        self.broker_down_since: float | None = None
        self.watch = recovery.NodeWatch()
        self.witness: nodekeys.NodeSigner | None = None  # the node's key, once the agent has started
        self.last_beat_ok: float | None = None  # monotonic time of the last heartbeat that got through
        self.broker_run_id: str | None = None
        self.ready = False
        self.republish = False  # after an outage: the broker may have lost the node hash (no AOF)
        self.pulse = Pulse()  # stamped by the main loop; slots that find it stale stop (agent/pulse.py)
        self._beat_anchor = (0.0, 0.0)  # the last beat's broker time, and the monotonic time it was read

    # ---- start --------------------------------------------------------------------------

    def preflight(self) -> None:
        if os.geteuid() == 0 and not self.cfg.allow_root:
            raise AgentError(
                "refusing to run jobs as root: run grid-agent as an ordinary user, "
                "or set agent.allow_root = true in the config if you really mean it"
            )
        self.conn.ping()
        self._check_broker_config()

    def _check_broker_config(self) -> None:
        try:
            cfg = self.conn.config_get("maxmemory-policy")
            aof = self.conn.config_get("appendonly")
            fsync = self.conn.config_get("appendfsync")
        except redis.ResponseError:
            return  # CONFIG is often disabled for non-admin users: nothing to check
        # redis-py decodes CONFIG GET replies itself, whatever decode_responses says.
        cfg = {_text(k): _text(v) for k, v in {**cfg, **aof, **fsync}.items()}
        if cfg.get("maxmemory-policy", "noeviction") != "noeviction":
            log.warning("broker maxmemory-policy is %s; the grid expects noeviction (jobs could be evicted)",
                        cfg["maxmemory-policy"])
        if cfg.get("appendonly") != "yes":
            log.warning("broker appendonly is off; a broker restart can lose accepted jobs")
        elif cfg.get("appendfsync") not in ("everysec", "always"):
            log.warning("broker appendfsync is %s; a broker crash can lose what the OS had not written "
                        "(the grid expects everysec)", cfg.get("appendfsync"))

    def reap_earlier_incarnations(self) -> int:
        """Kill whatever an earlier agent for this node left running (slots and job trees)."""
        mine = {proctree.ENV_GRID: self.grid_id, proctree.ENV_NODE: self.node}
        leftovers = proctree.tagged(mine, exclude={proctree.ENV_AGENT: self.agent_id})
        if not leftovers:
            return 0
        pids = set()
        for p in leftovers:
            try:
                pids.add(int(p.environ().get(proctree.ENV_AGENT_PID, "0")))
            except (psutil.Error, ValueError):
                continue
        for pid in pids:
            if pid and pid != os.getpid() and _is_live_agent(pid):
                raise AgentError(f"another grid-agent for node {self.node!r} is running (pid {pid})")
        killed = 0
        for agent_id in {p.environ().get(proctree.ENV_AGENT) for p in leftovers if p.is_running()}:
            n, survivors = proctree.kill_tree(None, None, {**mine, proctree.ENV_AGENT: agent_id},
                                              grace=self.cfg.kill_grace)
            killed += n
            if survivors:
                log.error("could not kill processes of an earlier incarnation: %s", survivors)
        log.warning("killed %d process(es) left by an earlier incarnation on %s", killed, self.node)
        return killed

    def start(self) -> None:
        self.preflight()
        if self.cfg.metrics_port:  # before any slot: the slots inherit where to record
            try:
                metrics.start(self.conn, self.node, self.agent_id, self.cfg.metrics_port, self.cfg.metrics_address,
                              data_dir())
            except OSError as e:
                where = f"{self.cfg.metrics_address}:{self.cfg.metrics_port}"
                raise AgentError(f"metrics on {where}: {e.strerror}") from None
        if cgroup.adopt_v2():  # before any slot exists: only a cgroup the agent has to itself
            log.info("cgroup v2: job memory groups enabled (agent moved into %s)", cgroup.AGENT_LEAF)
        self.reap_earlier_incarnations()
        cgroup.remove_left_groups(self.node, self.agent_id)
        self.heal()
        now = self.broker_time()
        # Made at the node's first start; it signs the lost records of every job this agent reclaims.
        self.witness = nodekeys.NodeSigner(self.node, nodekeys.node_key(self.node))
        lost = recovery.reclaim(self.conn, self.node, now, f"node lost: agent on {self.node} restarted",
                                self.settings.result_ttl, witness=self.witness)
        if lost:
            log.warning("marked %d job(s) of the earlier incarnation lost", len(lost))
        self.reconcile()
        self.read_inventory()
        nodekeys.publish(self.conn, self.node, self.witness.key)
        n = self.cfg.slots or self.inventory.cpus
        if n > self.inventory.cpus:
            log.warning("%d slots but %d CPUs (agent.cpus): each plain job holds one CPU, so at most %d run at "
                        "once and the other slots wait for room; set agent.cpus to oversubscribe",
                        n, self.inventory.cpus, self.inventory.cpus)
        self.slots = [SlotProcess(i, slot_name(self.node, self.agent_id, i)) for i in range(n)]
        self.heartbeat(first=True)
        self.placing = self.negotiator.start(self.cfg.heartbeat_interval)  # its own thread: placement at event speed
        for s in self.slots:
            self.spawn(s)
        self.wait_slots_registered()
        self.ready = True
        self.conn.hset(keys.node(self.node), mapping=_pick(NodeRecord(ready=str(os.getpid())), "ready"))

    def read_inventory(self) -> None:
        """What this node has (detected, or declared in the config), as its hash publishes it."""
        try:
            self.inventory = Inventory.from_dict(static_inventory(self.cfg, self.nvml), "this node's inventory")
        except CorruptRecord as e:
            raise AgentError(f"{e} (check the agent config's cpus, memory and gpus)") from None

    def wait_slots_registered(self, timeout: float = 60.0) -> None:
        """'ready' means every slot is a registered RQ worker listening on its queues."""
        deadline = time.monotonic() + timeout
        wanted = {keys.rq_worker(s.name).encode() for s in self.slots}
        while time.monotonic() < deadline:
            if wanted <= self.conn.smembers(keys.rq_workers()):
                return
            if any(s.proc.poll() is not None for s in self.slots):
                raise AgentError("a worker slot exited during start; see the log above")
            self.pulse.stamp()
            time.sleep(0.05)
        raise AgentError(f"worker slots did not register within {timeout:g}s")

    # ---- slots --------------------------------------------------------------------------

    def spawn(self, slot: SlotProcess) -> None:
        env = dict(os.environ)
        env.update(self.marker_env)
        args = [sys.executable, "-m", "agent.slotmain", "--slot", str(slot.index), "--name", slot.name,
                "--parent", str(os.getpid())]
        if slot.index == 0:
            args.append("--scheduler")  # RQ's scheduler moves retries with backoff back in line
        self.pulse.stamp()
        slot.proc = subprocess.Popen(args, stdin=subprocess.PIPE, env=env, pass_fds=(self.pulse.fd,))
        slot.spawned_at = time.monotonic()
        capacity = {"cpus": self.inventory.cpus, "memory": self.inventory.memory_total,
                    "gpus": [g.index for g in self.inventory.gpus]}
        payload = {"settings": self.settings.model_dump(mode="json"), "marker_env": self.marker_env,
                   "capacity": capacity, "pulse_fd": self.pulse.fd, "slots": len(self.slots)}
        slot.proc.stdin.write(json.dumps(payload).encode())
        slot.proc.stdin.close()

    def supervise(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.dead_name and self.broker_down_since is None:
                self.recover_slot(s)
            if s.proc is None or s.proc.poll() is None:
                continue
            if self.stopping:
                continue
            if s.restart_at == 0.0:
                s.dead_name = s.name
                if now - s.spawned_at > SLOT_STABLE:
                    s.deaths = 0  # it had been running fine: a fresh death, not a crash loop
                s.deaths += 1
                delay = SLOT_RESTART_BACKOFF[min(s.deaths - 1, len(SLOT_RESTART_BACKOFF) - 1)]
                log.warning("slot %d exited with %s; restarting in %ss", s.index, s.proc.returncode, delay)
                s.restart_at = now + delay
            elif now >= s.restart_at and self.broker_down_since is None:
                # A slot cannot register while the broker is away: it restarts once it is back.
                s.restart_at = 0.0
                s.name = slot_name(self.node, self.agent_id, s.index, s.deaths)
                self.spawn(s)

    def recover_slot(self, s: SlotProcess) -> None:
        """A slot died under a live agent: kill what it ran and reclaim it, as for a lost node."""
        try:
            ids = recovery.jobs_of(self.conn, self.node, s.dead_name)
            # What the dead slot started, only: a rerun of the same job by another slot of
            # this node (after a sweep reclaimed it) carries the same job id.
            mine = {proctree.ENV_NODE: self.node, proctree.ENV_AGENT: self.agent_id, proctree.ENV_WORKER: s.dead_name}
            for jid in ids:
                proctree.kill_tree(None, None, {**mine, proctree.ENV_JOB: jid}, grace=self.cfg.kill_grace)
            cgroup.remove_left_groups(self.node, self.agent_id, s.dead_name)
            if ids:
                recovery.reclaim(self.conn, self.node, self.broker_time(),
                                 f"node lost: worker slot {s.index} on {self.node} died", self.settings.result_ttl,
                                 worker=s.dead_name, witness=self.witness)
                log.warning("slot %d died holding job(s) %s: reclaimed", s.index, ", ".join(ids))
            s.dead_name = None
        except OUTAGE_ERRORS:
            pass  # tried again on the next round
        except redis.RedisError as e:  # a record it tripped over must not take the daemon down
            log.warning("recovering slot %d's jobs: %s (tried again)", s.index, e)
            if retyped(e):
                self.heal()

    def signal_slots(self, sig: int) -> None:
        for s in self.slots:
            if s.proc and s.proc.poll() is None:
                try:
                    s.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def all_slots_exited(self) -> bool:
        return all(s.proc is None or s.proc.poll() is not None for s in self.slots)

    # ---- heartbeat ----------------------------------------------------------------------

    def broker_time(self) -> float:
        sec, usec = self.conn.time()
        return sec + usec / 1e6

    def node_record(self, started: float | None = None, beat: float | None = None) -> NodeRecord:
        """This node's hash as the agent publishes it (without `draining`, which operators set)."""
        load = lenient_load(live_load(self.nvml))
        return NodeRecord(inventory=self.inventory, load=load, slots=len(self.slots),
                          hb_interval=self.cfg.heartbeat_interval, node_timeout=self.cfg.node_timeout,
                          agent_pid=os.getpid(), agent_id=self.agent_id, hostname=socket.gethostname(),
                          queues=tuple(self.cfg.queues), started=started, ready=str(os.getpid()) if self.ready else "",
                          version=package_version(), beat=beat)

    def heal(self, reply=None) -> None:
        """Remove a shared key another node's user retyped (gridcore/quarantine.py), before it stops
        this node's pops, starts and ends, and every other node's; `reply`: the heartbeat's heal."""
        try:
            if healed := quarantine.heal(self.conn, reply):
                log.warning("removed shared key(s) of the wrong type (quarantined): %s", ", ".join(healed))
        except redis.ResponseError as e:  # an ACL user from an older `grid acl`: the heartbeat goes on
            log.warning("could not check the shared keys' types: %s", e)

    def heartbeat(self, first: bool = False) -> None:
        reads = None
        if first or self.republish:
            now, back = self._full_heartbeat(first)
        else:
            now, back, reads = self._beat()
        if back:
            self.reconcile()  # cut off, not restarted: other agents may have recovered its jobs
        self.republish = False
        mono = time.monotonic()
        gap = max(2 * self.cfg.heartbeat_interval + 1, self.cfg.node_timeout / 2)
        if self.last_beat_ok is not None and mono - self.last_beat_ok > gap:
            # This agent itself was cut off or frozen: what it saw of others meanwhile is void.
            self.watch.reset()
        self.last_beat_ok = mono
        if now - self.last_sweep >= self.sweep_every():
            self.last_sweep = now
            server, registry = reads or (None, None)
            self._note_broker_restart(server)
            recovery.sweep_down_nodes(self.conn, self.node, now, self.cfg.node_timeout, self.settings.result_ttl,
                                      watch=self.watch, witness=self.witness, registry=registry)

    def sweep_every(self) -> float:
        """Seconds between two node-loss sweeps (of the broker's time)."""
        return max(self.cfg.node_timeout / 3, self.cfg.heartbeat_interval)

    def _full_heartbeat(self, first: bool) -> tuple[float, bool]:
        """The first heartbeat, or one after an outage: every field, in two round trips."""
        with self.conn.pipeline(transaction=False) as pipe:  # one round trip for the three
            pipe.time()
            pipe.hget(keys.node(self.node), "beat")
            quarantine.queue_heal(pipe)
            replies = pipe.execute(raise_on_error=False)
        for x in replies[:2]:
            if isinstance(x, Exception):
                raise x
        (sec, usec), last = replies[:2]
        self.heal(replies[2])
        now = sec + usec / 1e6
        self._beat_anchor = (now, time.monotonic())
        prev = _float(last)
        record = self.node_record(started=now if first else None, beat=now)
        names = ["load", NODE_SLOTS, "hb_interval", "node_timeout", "agent_pid", "agent_id", "hostname", "queues",
                 "version", "beat"]
        if first:
            names += ["inventory", "started", "ready"]
        elif self.republish:
            names += ["inventory", "ready"]
        fields = _pick(record, *names)
        back = not first and prev is not None and now - prev > self.cfg.node_timeout
        with self.conn.pipeline(transaction=False) as pipe:
            # The registry names the node (any agent may add to it); its heartbeat is `beat`. The
            # score is kept fresh for agents of earlier versions, which read it (rolling upgrade).
            pipe.zadd(keys.NODES, {self.node: now})
            pipe.hset(keys.node(self.node), mapping=fields)
            if first or self.republish:
                pipe.hsetnx(keys.node(self.node), NODE_DRAINING, "0")
            if first:
                kind = "node_joined" if prev is None else "node_back"
                events.emit(pipe, now, kind, node=self.node,
                            message=f"{len(self.slots)} slots, {len(self.inventory.gpus)} GPUs")
            elif back:
                events.emit(pipe, now, "node_back", node=self.node, message=f"after {now - prev:.0f}s silent")
            pipe.execute()
        return now, back

    def _beat(self) -> tuple[float, bool, tuple | None]:
        """An ordinary heartbeat, in one round trip: the shared keys healed, then the beat written
        at the broker's time by one script (BEAT). Every round trip is a wake of the broker and
        of this loop, most of an idle node's cost: so when a node-loss sweep is due, what it
        reads first (the broker's run id, the registry of nodes) is read in this round trip too,
        and returned (else None)."""
        fields = _pick(self.node_record(), *BEAT_FIELDS)
        # The registry's score is read by agents of earlier versions only (rolling upgrade); an
        # agent may ZADD it and no more (gridcore/acl.py), so it is no script's key: it is written
        # alongside, from the last beat's broker time and the time since, and again if that was off.
        anchor, at = self._beat_anchor
        guess = anchor + time.monotonic() - at
        with self.conn.pipeline(transaction=False) as pipe:
            quarantine.queue_heal(pipe)
            pipe.eval(BEAT, 1, keys.node(self.node), *(x for kv in fields.items() for x in kv))
            pipe.zadd(keys.NODES, {self.node: guess})
            sweep = guess - self.last_sweep >= self.sweep_every()
            if sweep:
                pipe.info("server")
                pipe.zrange(keys.NODES, 0, -1, withscores=True)
            healed, beat, scored, *reads = pipe.execute(raise_on_error=False)
        for x in (beat, scored):
            if isinstance(x, Exception):
                raise x
        self.heal(healed)
        sec, usec, last = beat
        now = int(sec) + int(usec) / 1e6
        self._beat_anchor = (now, time.monotonic())
        prev = _float(last or None)
        back = prev is not None and now - prev > self.cfg.node_timeout
        if back or abs(now - guess) > SCORE_SLACK:
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.NODES, {self.node: now})
                if back:
                    events.emit(pipe, now, "node_back", node=self.node, message=f"after {now - prev:.0f}s silent")
                pipe.execute()
        return now, back, tuple(reads) if reads else None

    def reconcile(self) -> None:
        """Drop from this node's keys what other agents recovered while it was down or cut off."""
        back, dropped = recovery.reconcile_own(self.conn, self.node)
        if back or dropped:
            log.warning("back after being counted down: %d job(s) taken but not claimed put back in line, "
                        "%d hold(s) of jobs recovered elsewhere dropped", back, dropped)

    def _note_broker_restart(self, server: dict | Exception | None = None) -> None:
        """A restarted broker means every node missed heartbeats: watch them all afresh.
        `server`: the broker's INFO server as the heartbeat read it (None: read it now)."""
        try:
            if server is None:
                server = self.conn.info("server")
            elif isinstance(server, Exception):
                raise server
            run_id = _text(server.get("run_id") or "")
        except redis.ResponseError:
            return  # INFO denied by ACL: the heartbeat-gap and outage checks still apply
        if self.broker_run_id is not None and run_id != self.broker_run_id:
            log.warning("the broker restarted; giving every node %ss to heartbeat again", self.cfg.node_timeout)
            self.watch.reset()
        self.broker_run_id = run_id

    # ---- main loop ----------------------------------------------------------------------

    def request_stop(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.cfg.stop_grace
            log.warning("warm stop: finishing running jobs for up to %ss (agent.stop_grace; signal again to stop now)",
                        self.cfg.stop_grace)
            self.signal_slots(signal.SIGTERM)
        else:
            self.cold_stop()

    def cold_stop(self) -> None:
        if not self.cold:
            self.cold = True
            log.warning("cold stop: killing running jobs and handing them back")
            self.signal_slots(signal.SIGUSR1)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        wakeup = Wakeup()  # before the slots exist: a slot that dies at once still wakes the loop
        self.start()
        interval = self.cfg.heartbeat_interval
        # The slots count the agent gone once its pulse is older than this (agent/pulse.py);
        # stamping four times within it keeps them well clear of their closer look at half of it.
        stamp_every = silence_limit(interval, self.cfg.node_timeout) / 4
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                try:
                    self.heartbeat()
                    if self.broker_down_since is not None:
                        log.warning("broker is back after %.0fs", now - self.broker_down_since)
                        self.broker_down_since = None
                        self.broker_back()
                except OUTAGE_ERRORS as e:
                    self.watch.reset()
                    if self.broker_down_since is None:
                        self.broker_down_since = now
                        self.republish = True
                        log.error("broker unreachable (%s); running jobs go on, retrying", e)
                except redis.RedisError:
                    log.exception("heartbeat failed")  # a bad reply must not take the node's jobs down
                except Exception:  # noqa: BLE001 - nor may any broker content a sweep trips over: logged
                    log.exception("heartbeat pass failed")
            self.supervise()
            self.pulse.stamp()  # the loop went round: its heartbeat got through or the broker is away
            if self.stopping:
                if self.stop_deadline is not None and now >= self.stop_deadline:
                    self.cold_stop()
                if self.all_slots_exited():
                    break
            wakeup.wait(self.next_due(next_beat, stamp_every) - time.monotonic())
        wakeup.close()
        self.leave()
        return 0

    def next_due(self, next_beat: float, stamp_every: float) -> float:
        """When the main loop has something to do next, short of a signal (a slot exiting, a
        stop request): the heartbeat, the pulse, a slot's restart or recovery, the cold stop.
        A restart that cannot happen now (stopping, broker away) is no reason to wake: the
        loop would spin; the broker's return is seen by a heartbeat, which wakes it anyway."""
        now = time.monotonic()
        due = min(next_beat, now + stamp_every)
        if not self.stopping and self.broker_down_since is None:
            for s in self.slots:
                if s.restart_at > now:
                    due = min(due, s.restart_at)
                if s.dead_name:
                    due = min(due, now + 1.0)  # its recovery is tried again until done
        if self.stopping and self.stop_deadline is not None and not self.cold:
            due = min(due, self.stop_deadline)
        return due

    def broker_back(self) -> None:
        """Slots that died while the broker was away restart now, without crash-loop backoff."""
        now = time.monotonic()
        for s in self.slots:
            if s.restart_at:
                s.restart_at = now
                s.deaths = 0

    def leave(self) -> None:
        if self.placing is not None:
            self.placing.set()
        try:
            # Every slot has exited, so what their waits took and no pop claimed (a slot
            # stopped cold right after its BLMOVE) is in no queue: put it back now rather than
            # leave it to another node's loss sweep, or to this node's restart.
            if n := claim.give_back(self.conn, self.node):
                log.info("gave back %d job(s) taken but not started", n)
            # And what their pops claimed and no slot put back (one killed while its pop's reply
            # was on its way, or that exited while the broker was away).
            if n := claim.requeue_claims(self.conn, self.node, [s.name for s in self.slots]):
                log.info("put back %d job(s) claimed but not started", n)
            now = self.broker_time()
            with self.conn.pipeline(transaction=False) as pipe:
                # An orderly exit is not a node loss: the heartbeat aged past the timeout.
                aged = now - self.cfg.node_timeout - 1
                pipe.hset(keys.node(self.node), mapping=_pick(NodeRecord(beat=aged), "ready", NODE_SLOTS, "beat"))
                pipe.zadd(keys.NODES, {self.node: aged})
                events.emit(pipe, now, "node_left", node=self.node, message="agent stopped")
                pipe.execute()
        except redis.RedisError as e:
            log.error("could not record the agent's exit: %s", e)


GRID_ID_SHAPE = re.compile(r"[0-9A-Za-z_-]{1,64}")
"""What a grid id may look like (it goes into every job process's environment)."""


def grid_identity(conn: redis.Redis, node: str, broker: str) -> str:
    """The grid id this node marks its processes with: the one it saw first on the broker at URL
    `broker`, kept on its own disk (`<data dir>/nodes/<node>/grid_id-<hash of the URL>`). Any
    agent's user may rewrite `grid:id`; a node that took it afresh at each start would, after
    such a rewrite, no longer find what its earlier incarnation left running (a stale copy of a
    job, alive beside its rerun). Kept per broker: a machine whose node of one name serves two
    grids (a lab's and its own `grid up`) must not mark both with one id (each agent would take
    the other's jobs for leftovers of its own)."""
    tag = hashlib.sha256(broker.encode()).hexdigest()[:16]
    path = data_dir() / "nodes" / node / f"grid_id-{tag}"
    try:
        kept = path.read_text().strip()
        if GRID_ID_SHAPE.fullmatch(kept):
            return kept
    except FileNotFoundError:
        pass
    try:
        conn.set(keys.GRID_ID, uuid.uuid4().hex, nx=True)
        value = _text(conn.get(keys.GRID_ID) or b"")
    except redis.ResponseError:  # another type (healed at the first heartbeat): this node's own
        value = ""
    if not GRID_ID_SHAPE.fullmatch(value):
        value = uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(value + "\n")
    return value


def _pick(record: NodeRecord, *names: str) -> dict[str, str]:
    fields = record.encode()
    return {n: fields[n] for n in names}


def lenient_load(data: dict) -> Load:
    """The live load as a record; a reading out of range is logged and published empty."""
    try:
        return Load.from_dict(data, "this node's load")
    except CorruptRecord as e:
        log.warning("%s", e)
        return Load()


def _float(v: bytes | None) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _is_live_agent(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE and any("agent" in a for a in p.cmdline())
    except psutil.Error:
        return False
