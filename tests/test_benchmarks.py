"""`python benchmarks/bench.py --smoke` runs every kind of row at tiny sizes: both scripts' fused
epochs, the Flax loop and the PyTorch baseline on EDAC, and the Flax fused epoch and PyTorch on SAC-N
in the same rounds. Run here, it keeps the benchmark from breaking silently when the scripts or the
baseline change (about 20 s on 2 CPU cores)."""

import os
import re
import subprocess
import sys

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench.py"
)
# the rows of --smoke's one scale, edac-tiny: EDAC with N=2 against SAC-N with N=4
ROWS = ["flax fused", "eqx fused", "flax loop", "torch", "flax fused SAC-N N=4", "torch SAC-N N=4"]


def test_bench_smoke_prints_every_row(tmp_path: str) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    command = [sys.executable, BENCH, "--smoke"]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert "edac-tiny scale: EDAC (eta 1.0), hopper's shapes" in output, output
    assert "against SAC-N, hopper's shapes" in output, output
    for name in ROWS:  # the row's name, then its finite updates/s
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d+\s", output, re.MULTILINE), (name, output)
    for line in [
        "% of matmul peak divides by",
        "ratios of medians: JAX/PyTorch",
        "time per update, SAC-N N=4 / EDAC N=2 (ratio of medians, same rounds)",
        "benchmark took",
    ]:
        assert line in output, (line, output)
    assert not re.search(r"\b(nan|inf)\b", output), output
