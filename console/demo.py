"""Demo jobs that populate every view on a fresh grid: progress, failure, a long job."""

from __future__ import annotations

from gridcore.models import JobSpec

PROGRESS = (
    "python3 -c \"import sys,time\n"
    "for i in range(101):\n"
    "    sys.stderr.write('\\rtraining %3d%%|%-20s|' % (i, '#' * (i // 5))); sys.stderr.flush()\n"
    "    print('step %d/100 loss %.3f' % (i, 1 / (i + 1)), flush=True); time.sleep(0.3)\n"
    "sys.stderr.write('\\n')\""
)


def demo_specs() -> list[JobSpec]:
    return [
        JobSpec(command=PROGRESS, name="demo: progress bar"),
        JobSpec(command="echo 'reading input.csv'; sleep 2; echo 'no such column: mass' >&2; exit 3",
                name="demo: failing job"),
        JobSpec(command="for i in $(seq 1 600); do echo \"tick $i\"; sleep 1; done", name="demo: long job (cancel me)"),
        JobSpec(command="printf 'hello from the grid on %s\\n' \"$(hostname)\"", name="demo: hello"),
    ]
