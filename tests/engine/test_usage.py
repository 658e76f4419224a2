"""What a job used, measured by its node: jobs with footprints they report themselves.

Each job prints what it knows of itself (its own maxrss, CPU time from os.times, bytes it
wrote); the node's figures must agree within 10%.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from agent.usage import io_accounting
from console.screens.submit import load_descriptor
from gridcore.models import JobSpec, JobState, Resources
from tests.chaos.conftest import have_job_cgroups
from tests.support.records import get_result

MB = 1 << 20


def _py(src: str) -> tuple[str, ...]:
    return ("python3", "-c", textwrap.dedent(src))


# ~300 MB touched page by page, held over several samples; 8 MB written and synced. It prints
# its maxrss and its anonymous resident memory (RssAnon) at the peak.
BIG = _py("""
    import json, os, resource, sys, time
    b = bytearray(300 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    with open(sys.argv[1], "wb") as f:
        f.write(os.urandom(8 << 20)); f.flush(); os.fsync(f.fileno())
    with open("/proc/self/status") as f:
        anon = next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    time.sleep(1.6)
    print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "anon": anon}))
""")

# A child the job never waits for: double-forked away in a session of its own, burning ~2
# CPU-seconds; the job's shell only polls for the file the child writes when done.
BURNER = textwrap.dedent("""
    import json, os, sys, time
    while time.process_time() < 2.0:
        pass
    t = os.times()
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump({"cpu": t.user + t.system}, f)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
""")

# A forked tree: three children each holding 60 MB (their resident size at that point summed
# with the parent's) and burning 0.5 CPU-s, all waited for.
TREE = _py("""
    import json, os, time
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    rd, wr = os.pipe()
    kids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            b = bytearray(60 << 20)
            for i in range(0, len(b), 4096):
                b[i] = 1
            os.write(wr, b"%d\\n" % rss())
            t0 = time.process_time()
            while time.process_time() - t0 < 0.5:
                pass
            time.sleep(1.6)
            os._exit(0)
        kids.append(pid)
    os.close(wr)
    for pid in kids:
        os.waitpid(pid, 0)
    with os.fdopen(rd) as f:
        held = sum(int(line) for line in f)
    t = os.times()
    print(json.dumps({"cpu": t.user + t.system + t.children_user + t.children_system, "memory": rss() + held}))
""")


def _close(measured: float, known: float, share: float = 0.10) -> bool:
    return abs(measured - known) <= share * known


def test_usage_of_jobs_with_known_footprints(agents, grid, r, tmp_path):
    agents("node-a", slots=3)
    done = tmp_path / "burned.json"
    written = tmp_path / "written.bin"
    big = grid.submit(JobSpec(argv=(*BIG, str(written)), resources=Resources(cpus=1)))
    burn = grid.submit(JobSpec(
        command=f"(setsid python3 -c '{BURNER}' {done} &); while [ ! -e {done} ]; do sleep 0.2; done",
        resources=Resources(cpus=1)))
    tree = grid.submit(JobSpec(argv=TREE, resources=Resources(cpus=2)))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"tasks": [{"name": "sq", "sweep": {"n": [8, 24]},
                                            "command": "python3 -c 'import time; b = bytearray({n} << 20); b[::4096] = b\"x\" * (len(b) // 4096); time.sleep(0.8)'"}]}))
    sub, problems = load_descriptor(str(sweep))
    assert sub is not None, problems
    cells = grid.submit_many(list(sub.specs), job_ids=sub.job_ids, groups=sub.groups)
    states = grid.wait([big, burn, tree, *cells], timeout=90)
    assert all(s is JobState.FINISHED for s in states.values()), states
    # Each cell's figures went into its sweep's, as its end was recorded.
    (group,) = grid.groups()
    assert group["usage"]["memory"]["cells"] == 2 and group["usage"]["memory"]["max"] > 24 * MB

    u = get_result(r, big).usage
    known = json.loads(grid.get(big).stdout)
    assert u.memory_source == "sampled" and _close(u.memory_peak, known["maxrss"]), (u, known)
    assert u.samples >= 2 and u.wall > 1.6
    if io_accounting():  # the kernel counts block IO per task here
        assert _close(u.io_write, 8 * MB), u
    else:
        assert u.io_write is None

    u = get_result(r, burn).usage
    known = json.loads(done.read_text())
    assert _close(u.cpu_user + u.cpu_system, known["cpu"]), (u, known)

    u = get_result(r, tree).usage
    known = json.loads(grid.get(tree).stdout)
    assert _close(u.cpu_user + u.cpu_system, known["cpu"]), (u, known)
    assert u.memory_source == "sampled" and _close(u.memory_peak, known["memory"]), (u, known)
    # The same figures in the job's view and its attempt record.
    assert grid.get(tree).usage["memory_peak"] == u.memory_peak
    assert grid.get(tree).attempts[-1]["usage"]["cpu_user"] == u.cpu_user


@pytest.mark.skipif(have_job_cgroups() is not None, reason=f"no job memory cgroups: {have_job_cgroups()}")
def test_usage_from_the_cgroup_and_of_an_oom_kill(agents, grid, r, tmp_path):
    agents("node-a", slots=2)
    limit = 96 * MB
    hog = "python3 -c \"b = []\nwhile True: b.append(bytearray(8 << 20))\""
    oom = grid.submit(JobSpec(command=hog, resources=Resources(memory=limit)))
    fits = grid.submit(JobSpec(argv=BIG[:2] + (BIG[2].replace("300 << 20", "40 << 20").replace("8 << 20", "0"),
                                                str(tmp_path / "w")),
                               resources=Resources(memory=4 * limit)))
    states = grid.wait([oom, fits], timeout=60)
    assert states[oom] is JobState.FAILED and states[fits] is JobState.FINISHED
    rec = get_result(r, oom)
    assert rec.reason_kind == "oom" and rec.usage.memory_source == "cgroup"
    assert 0.9 * limit <= rec.usage.memory_peak <= limit
    u = get_result(r, fits).usage
    known = json.loads(grid.get(fits).stdout)
    # A cgroup is charged for the pages its processes brought in, not for shared libraries
    # already in memory: its peak is the job's own (anonymous) memory.
    assert u.memory_source == "cgroup" and _close(u.memory_peak, known["anon"]), (u, known)
