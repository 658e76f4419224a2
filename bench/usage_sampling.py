"""Benchmark: what sampling a running job's process tree costs (agent/usage.py's Meter).

    .venv/bin/python bench/usage_sampling.py [--seconds 60] [--procs 1 50 200]

For each tree size, this process plays a slot: it starts a Meter, then a job of that many
sleeping processes, and after `--seconds` reports the sampler thread's own CPU time per second
of the job (the share of one core it cost), its samples, and the peak it measured. The
sampler backs off from every 0.5 s to every 2 s after its first ten samples at each interval,
so a longer run shows the steady cost. The last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.usage import Meter  # noqa: E402 - after the path is set
from gridcore.records import Result  # noqa: E402


def one(procs: int, seconds: float) -> dict:
    meter = Meter()
    job = subprocess.Popen(["sh", "-c", f"for i in $(seq 1 {procs}); do sleep {seconds + 5} & done; wait"],
                           start_new_session=True)
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    os.killpg(job.pid, 15)
    job.wait()
    usage = meter.finish(Result(duration=wall)).usage
    return {"procs": procs, "seconds": round(wall, 1), "samples": meter.samples,
            "sampler_cpu_s": round(meter.sampler_cpu, 4), "core_share_pct": round(100 * meter.sampler_cpu / wall, 3),
            "memory_peak": usage.memory_peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 50, 200])
    args = ap.parse_args()
    rows = [one(n, args.seconds) for n in args.procs]
    for r in rows:
        print(f"{r['procs']:>4} processes, {r['seconds']:.0f}s: {r['samples']} samples, sampler "
              f"{r['sampler_cpu_s']:.3f}s CPU = {r['core_share_pct']:.3f}% of a core")
    print(json.dumps({"usage_sampling": rows}))


if __name__ == "__main__":
    main()
