"""The scripts run as a user runs them: subprocesses in a scratch directory, and their scores.csv."""

import csv
import os
import subprocess
import sys
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["sac_n_jax_flax.py", "sac_n_jax_eqx.py"]


def start_script(
    script: str, args: list[str], cwd, env: Optional[dict] = None, **extra: str
) -> subprocess.Popen:
    """`python script args...` in `cwd` (so nothing lands in the repo), in `env` (default: this one with wandb
    disabled) plus `extra`."""
    env = {**({**os.environ, "WANDB_MODE": "disabled"} if env is None else env), **extra}
    command = [sys.executable, os.path.join(REPO_ROOT, script), *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def read_scores(path) -> list[dict]:
    """The rows of a run's scores.csv, numbers as floats (epoch and seed as ints)."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [
        {
            key: int(value) if key in ("epoch", "seed") else float(value)
            for key, value in row.items()
        }
        for row in rows
    ]
