"""The seed scaffold's job function, kept verbatim in spirit as the throughput baseline."""

import subprocess


def run_shell_task(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"exit_code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
