"""The node's meter on its own (agent/usage.py), in a process of its own as a slot is: it
becomes a child subreaper, which a test must not do to pytest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from agent.usage import Gpus

METER = textwrap.dedent("""
    import json, subprocess, sys, types
    from agent.usage import Meter, is_zombie
    from gridcore.records import Result

    class FakeNvml:  # NVML's calls as pynvml names them, for one GPU holding the job's 2 GiB
        def nvmlDeviceGetHandleByIndex(self, i):
            return i
        def nvmlDeviceGetComputeRunningProcesses(self, h):
            return [types.SimpleNamespace(pid=p, usedGpuMemory=2 << 30) for p in meter.job_pids()[:1]] + [
                types.SimpleNamespace(pid=1, usedGpuMemory=5 << 30)]  # someone else's
        def nvmlDeviceGetUtilizationRates(self, h):
            return types.SimpleNamespace(gpu=60)

    gpus = json.loads(sys.argv[1])
    meter = Meter(gpus, nv=FakeNvml() if gpus else None, first=0.1)
    # A child that leaves a grandchild behind (never waited for) burning CPU, then exits.
    subprocess.run(["sh", "-c", "(python3 -c 'import time\\nwhile time.process_time() < 0.6: pass' &); sleep 0.3"])
    import time
    while not all(is_zombie(p) for p in meter.job_pids()):  # the orphan runs on, re-parented here
        time.sleep(0.05)
    print(meter.finish(Result(duration=1.0)).usage.model_dump_json())
""")


def _meter(gpus: list[int]) -> dict:
    p = subprocess.run([sys.executable, "-c", METER, json.dumps(gpus)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_an_orphans_cpu_counts_and_gpu_figures_come_from_nvml():
    u = _meter([0])
    assert 0.6 <= u["cpu_user"] + u["cpu_system"] <= 0.75, u  # the orphan's 0.6 s, reaped by the meter
    assert u["gpu_memory_peak"] == 2 << 30 and u["gpu_utilization"] == 60.0 and u["samples"] >= 2
    assert u["memory_source"] == "sampled" and u["memory_peak"] > 0 and u["wall"] == 1.0


def test_no_nvml_means_no_gpu_figures():
    u = _meter([])
    assert u["gpu_memory_peak"] is None and u["gpu_utilization"] is None
    gone = Gpus([0, 1], None)  # NVML missing: nothing asked, nothing made up
    gone.sample({1, 2})
    assert gone.memory_peak is None and gone.utilization is None
