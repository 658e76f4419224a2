"""Every Redis key and channel the grid writes, in one place.

RQ owns its own `rq:*` keys (jobs, queues, registries, workers); everything the grid adds
lives under `grid:`. Builders take plain strings and return `str` keys.
"""

from __future__ import annotations

PREFIX = "grid"

GRID_PATTERN = f"{PREFIX}:*"
"""Pattern matching every key the grid writes (ACL rules)."""

SECRET_PREFIX = "gridsecret"
"""Keys the viewer role must not read (job env values): outside `grid:*` on purpose, so the
viewer's ACL patterns (`grid:*`, `rq:*`) never match them (gridcore/acl.py)."""

SECRET_PATTERN = f"{SECRET_PREFIX}:*"
"""Pattern matching every secret key (ACL rules: operator and agents, never the viewer)."""

RUNNER_FUNC = "agent.runner.run_task"
"""The only job function an agent will execute; anything else is refused before import."""

GRID_ID = f"{PREFIX}:id"
"""String: this grid's random identity, set by the first agent (scopes process markers)."""

NODES = f"{PREFIX}:nodes"
"""Sorted set: the registry of node names -> last heartbeat (broker time). Any agent may ZADD to
it, so only the names are believed: a node's liveness is the `beat` field of its own hash, which
that node alone writes (the score is kept, and read, for agents of earlier versions only)."""

EVENTS = f"{PREFIX}:events"
"""Stream of grid events (submitted, started, finished, failed, canceled, node up/down...)."""

JOBS = f"{PREFIX}:jobs"
"""Sorted set: every job id -> submit time (broker time); the newest-first index for paging."""

JOB_IDS = f"{PREFIX}:ids"
"""Sorted set, every score 0: every job id, in byte order, so a short id finds its jobs (ZRANGEBYLEX)."""

GROUPS = f"{PREFIX}:groups"
"""Sorted set: group (sweep) id -> submit time."""

QUEUES = f"{PREFIX}:queues"
"""Set of queue names the grid has ever routed to (RQ's own rq:queues forgets empty ones)."""

ACTIVE = f"{PREFIX}:active"
"""Hash: running job id -> JSON {node, slot, worker, started}; the source for node-loss sweeps."""

PRIORITY = f"{PREFIX}:priority"
"""Hash: waiting job id -> its priority, for jobs other than priority 0 (gridcore/priority.py)."""

WRITE_PROBE = f"{PREFIX}:write-probe"
"""Never written: a script's first write is an empty SETRANGE of it, so a broker refusing
writes (OOM, MISCONF, READONLY) fails the script before it changed anything (agent/guarded.py)."""

NONCES = f"{PREFIX}:nonces"
"""Prefix for replay-protection keys: one `grid:nonces:<nonce>` per executed envelope."""

HISTORY = f"{PREFIX}:history"
"""Stream, capped: one records.FinishedEntry per ended attempt, written with the end; `grid history
collect` copies it to the append-only store that outlives `result_ttl` (gridcore/history.py)."""


def node(name: str) -> str:
    """Hash: a node's inventory, live load, heartbeat (`beat`, broker time) and flags (draining)."""
    return f"{PREFIX}:node:{name}"


def node_jobs(name: str) -> str:
    """Sorted set: job ids that ran on a node -> start time (broker time)."""
    return f"{PREFIX}:node:{name}:jobs"


def node_running(name: str) -> str:
    """Hash: job id -> its records.RunningEntry (claimed, started on a slot, ended), while on a node."""
    return f"{PREFIX}:node:{name}:running"


def node_taking(name: str) -> str:
    """List: job ids an idle slot of a node took off its pool queue and has not claimed yet."""
    return f"{PREFIX}:node:{name}:taking"


def node_queue(name: str) -> str:
    """RQ queue name (not a key) for jobs pinned to one node."""
    return f"node.{name}"


def output(job_id: str) -> str:
    """Stream of a job's live output chunks and its end marker."""
    return f"{PREFIX}:out:{job_id}"


def result(job_id: str) -> str:
    """String: the job's small JSON result record (exit code, signal, tails, times...)."""
    return f"{PREFIX}:result:{job_id}"


def attempts(job_id: str) -> str:
    """List: one JSON record per finished attempt (node, exit code, reason)."""
    return f"{PREFIX}:attempts:{job_id}"


def cancel(job_id: str) -> str:
    """String flag: cancel requested for a job (read by the runner each heartbeat): the operator's
    signed statement (records.CancelProof), or "1" from a client without a key; it stays with a
    canceled job's record, for requeue's rules (gridcore/cancelproof.py)."""
    return f"{PREFIX}:cancel:{job_id}"


def secret_env(job_id: str) -> str:
    """String: a job's sealed env values (records.SecretEnv), whose digest its envelope signs
    (gridcore/secretenv.py); lives as long as the job's record. Not readable by the viewer."""
    return f"{SECRET_PREFIX}:env:{job_id}"


def nonce(value: str) -> str:
    """String: marks a signed envelope's nonce as used."""
    return f"{NONCES}:{value}"


def queue_jobs(queue: str) -> str:
    """Sorted set: job ids submitted to a queue -> submit time (broker time); pages `grid ls --queue`."""
    return f"{PREFIX}:queue:{queue}:jobs"


def group(group_id: str) -> str:
    """Hash: a sweep group's metadata (name, size, parameters, max_parallel)."""
    return f"{PREFIX}:group:{group_id}"


def group_jobs(group_id: str) -> str:
    """Sorted set: job ids of one group -> cell index."""
    return f"{PREFIX}:group:{group_id}:jobs"


def group_usage(group_id: str, figure: str) -> str:
    """Sorted set: job ids of one group's measured cells -> one figure of their last attempt
    (gridcore/efficiency.py FIGURES), for the sweep's median and max."""
    return f"{PREFIX}:group:{group_id}:usage:{figure}"


def group_slots(group_id: str) -> str:
    """Set: job ids of a throttled group that currently hold one of its max_parallel slots."""
    return f"{PREFIX}:group:{group_id}:slots"


# RQ's own keys, derived from RQ's own constants and templates, so a change in RQ shows up
# here only. RQ is imported on first use: commands that never touch an RQ key start faster.
# The job and queue prefixes, which a submit and a listing use, are RQ's constants written out
# (tests/test_private_api.py holds them equal to RQ's): importing RQ is most of a short command.

RQ_JOB_PREFIX = "rq:job:"
"""RQ's `Job.redis_job_namespace_prefix`."""

RQ_QUEUE_PREFIX = "rq:queue:"
"""RQ's `Queue.redis_queue_namespace_prefix`."""

RQ_QUEUES = "rq:queues"
"""RQ's `Queue.redis_queues_keys`: the set of its queues' keys."""


def rq_job(job_id: str) -> str:
    """RQ's job hash."""
    return RQ_JOB_PREFIX + job_id


def rq_job_prefix() -> str:
    """What RQ puts before a job id to make its hash's key (for scripts that build keys)."""
    return RQ_JOB_PREFIX


def rq_dependents(job_id: str) -> str:
    """RQ's set of job ids waiting on this job."""
    from rq.job import Job

    return Job.dependents_key_for(job_id)


def rq_dependencies(job_id: str) -> str:
    """RQ's set of job ids this job waits on (RQ's own spelling, double colon included)."""
    from rq.job import Job

    return f"{Job.redis_job_namespace_prefix}:{job_id}:dependencies"


def rq_queue(queue: str) -> str:
    """RQ's list of queued job ids."""
    return rq_queue_prefix() + queue


def rq_queue_prefix() -> str:
    """What RQ puts before a queue name to make its list's key."""
    return RQ_QUEUE_PREFIX


def rq_intermediate(queue: str) -> str:
    """RQ's list of a queue's jobs that a worker popped and has not started yet."""
    from rq.intermediate_queue import IntermediateQueue

    return IntermediateQueue.get_intermediate_queue_key(rq_queue(queue))


def rq_queues() -> str:
    """RQ's set of queue keys."""
    return RQ_QUEUES


def rq_workers() -> str:
    """RQ's set of registered worker keys."""
    from rq.worker_registration import REDIS_WORKER_KEYS

    return REDIS_WORKER_KEYS


def rq_worker(name: str) -> str:
    """RQ's hash of one worker (exists while the worker is alive)."""
    from rq.worker import Worker

    return Worker.redis_worker_namespace_prefix + name


def rq_executions(job_id: str) -> str:
    """RQ's sorted set of one job's executions (ids scored by expiry)."""
    from rq.executions import ExecutionRegistry

    return ExecutionRegistry.key_template.format(job_id)


def rq_results(job_id: str) -> str:
    """RQ's stream of one job's results (newest last, a few kept)."""
    from rq.results import Result

    return Result.get_key(job_id)


def rq_workers_of(queue: str) -> str:
    """RQ's set of worker keys listening on a queue."""
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    return WORKERS_BY_QUEUE_KEY % queue


def rq_registry(state: str, queue: str) -> str:
    """RQ's registry sorted set holding a queue's jobs in one state (not `queued`)."""
    from rq.registry import (
        CanceledJobRegistry,
        DeferredJobRegistry,
        FailedJobRegistry,
        FinishedJobRegistry,
        ScheduledJobRegistry,
        StartedJobRegistry,
    )

    cls = {
        "running": StartedJobRegistry,
        "finished": FinishedJobRegistry,
        "failed": FailedJobRegistry,
        "waiting": DeferredJobRegistry,
        "scheduled": ScheduledJobRegistry,
        "canceled": CanceledJobRegistry,
    }[state]
    return cls.key_template.format(queue)


def rq_pattern() -> str:
    """Pattern matching every key RQ writes (its namespace is the first part of its job keys)."""
    from rq.job import Job

    return Job.redis_job_namespace_prefix.split(":")[0] + ":*"


def rq_pubsub(worker: str) -> str:
    """RQ's pub/sub channel of one worker (stop-job commands); a pattern when `worker` has a `*`."""
    from rq.command import PUBSUB_CHANNEL_TEMPLATE

    return PUBSUB_CHANNEL_TEMPLATE % worker


def reclaim_lock(node_name: str) -> str:
    """String lock: one agent at a time reclaims a down node's jobs."""
    return f"{PREFIX}:lock:reclaim:{node_name}"


def node_pubkey(name: str) -> str:
    """String: the public line of a node's own key, as the node published it (operators pin it)."""
    return f"{PREFIX}:node:{name}:key"


def node_held(name: str) -> str:
    """Hash: job id -> JSON of the cpus, memory and GPU indices it holds on the node."""
    return f"{PREFIX}:node:{name}:held"


PENDING_QUEUE = "grid.pending"
"""RQ queue (no slot listens) where jobs wait for placement: resources, priority, throttles."""

NEGOTIATOR_LOCK = f"{PREFIX}:lock:negotiator"
"""String lock: one pass at a time of the placers that place onto any node (run as operator);
an agent's pass, onto its own node only, takes `placing_lock(node)` instead."""


def placing_lock(name: str) -> str:
    """String lock: one placement pass at a time onto a node (its agent places onto itself only)."""
    return f"{PREFIX}:node:{name}:placing"

PLACE_WAKES = f"{PREFIX}:placement:wakes"
"""Stream (capped): an entry whenever a job gives back what it held, naming the node it held
resources on (`node`) and whether any node may now place (`any`: a sweep's throttle slot, a
node back in service). Every agent's placement loop reads it, so one entry wakes every agent
it concerns: the node whose resources came back, every node for a throttle slot."""

PLACE_WAKES_CAP = 1000
"""Entries the wake stream keeps (approximately): a loop that fell further behind wakes anyway."""

WHY = f"{PREFIX}:why"
"""Hash: pending job id -> why it is not placed yet (per node, plain words)."""

QUARANTINE = f"{PREFIX}:quarantine"
"""Hash: "<key>" or "<key> <field or member>" of a corrupt record set aside -> what was wrong
(gridcore/quarantine.py); bounded in entries, each a line."""
