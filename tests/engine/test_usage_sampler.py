"""The slot's sampling thread (agent/usage.py) is not woken at each job's start and end, yet a
job that lives past the first sample is sampled: while jobs come, and after a quiet spell in
which the thread went to sleep. In a process of its own, as a slot (the meter makes it a
child subreaper, which a test must not do to pytest)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SAMPLER = textwrap.dedent("""
    import json, subprocess, time
    from agent import usage
    from gridcore.records import Result

    def job(cmd):
        meter = usage.Meter()
        subprocess.run(["sh", "-c", cmd])
        return meter.finish(Result(duration=0.0)).usage.samples

    out = {"first": job("sleep 0.4")}
    for _ in range(50):  # a stream of trivial jobs, each arming and disarming the meter
        job("true")
    out["in_stream"] = job("sleep 0.4")
    time.sleep(usage.KEEP_AWAKE + 0.5)  # the thread sleeps until a job is armed
    out["asleep"] = usage._SAMPLER._wake_at == float("inf")
    out["after_quiet"] = job("sleep 0.4")
    print(json.dumps(out))
""")


def test_jobs_are_sampled_while_they_come_and_after_a_quiet_spell():
    p = subprocess.run([sys.executable, "-c", SAMPLER], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["first"] >= 1 and out["in_stream"] >= 1 and out["after_quiet"] >= 1, out
    assert out["asleep"], out
