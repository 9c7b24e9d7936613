"""Speed of one SAC-N update: both scripts' jitted epochs, the Flax update jitted alone in a Python loop, and a
CORL-style PyTorch update (torch_sac_n.py), on synthetic data with D4RL halfcheetah's shapes. Rows are timed in
interleaved rounds; benchmarks/README.md says what each row and column means.

    python benchmarks/bench.py --quick     # paper and small scale, a few minutes on a 2-core CPU
    python benchmarks/bench.py --smoke     # tiny sizes, 1 round: checks that every path runs
"""

import argparse
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

# before jax starts: on a GPU, JAX would otherwise take 75% of its memory and leave little to torch
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCHMARKS_DIR), BENCHMARKS_DIR]  # the scripts, and torch_sac_n.py
import sac_n_jax_eqx as eqx_script  # noqa: E402
import sac_n_jax_flax as flax_script  # noqa: E402

try:  # torch is a benchmark-only dependency (requirements-bench.txt): without it the torch row is left out
    import torch
    from torch_sac_n import TorchSACN, to_torch
except ImportError:
    torch = None

OBS_DIM, ACTION_DIM = 17, 6  # D4RL halfcheetah
FULL_RUN_UPDATES = 3000 * 1000  # the paper's 3000 epochs of 1000 updates


class Scale(NamedTuple):
    num_critics: int
    hidden_dim: int
    batch_size: int


SCALES = {"paper": Scale(10, 256, 256), "small": Scale(2, 64, 256), "tiny": Scale(2, 16, 32)}


class Mode(NamedTuple):
    rounds: int
    updates: int  # updates per timed epoch on a CPU; 10 times as many on an accelerator
    dataset_rows: int
    matmul_size: int  # n of the [n, n] @ [n, n] matmul that measures the peak
    square_matmuls: int  # chained in one timed call; 10 times as many on an accelerator
    scales: str
    pause_s: float  # before every timed epoch (see README: torch's threads keep spinning after their work)


MODES = {
    "full": Mode(5, 100, 1_000_000, 4096, 3, "paper,small", 0.3),
    "quick": Mode(3, 20, 100_000, 2048, 10, "paper,small", 0.3),
    "smoke": Mode(1, 3, 1_000, 128, 10, "tiny", 0.0),
}


class Row(NamedTuple):
    name: str
    run_epoch: Callable[[], Any]  # runs and waits for the device
    work: float  # updates (an update row) or FLOPs (a matmul row) per call


# --- Data ---
def synthetic_transitions(rows: int) -> dict[str, np.ndarray]:
    """Random transitions with halfcheetah's shapes; the update's speed does not depend on the values."""
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(rows, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(rows, ACTION_DIM)).astype(np.float32),
        "rewards": rng.normal(size=rows).astype(np.float32),
        "next_obs": rng.normal(size=(rows, OBS_DIM)).astype(np.float32),
        "dones": (rng.random(rows) < 0.001).astype(np.float32),
    }


def make_config(module: Any, scale: Scale, updates: int) -> Any:
    return module.Config(
        num_critics=scale.num_critics,
        hidden_dim=scale.hidden_dim,
        batch_size=scale.batch_size,
        num_updates_on_epoch=updates,
        num_seeds=1,
    )


# --- Rows ---
def fused_row(name: str, module: Any, config: Any, dataset: Any) -> Row:
    """The script's own jitted epoch, on a state from its own constructor, as its `main` runs it."""
    state = module.create_sac_n_state(OBS_DIM, ACTION_DIM, config)

    def run_epoch() -> None:
        nonlocal state
        state, metrics = module.train_epoch(state, dataset, config)
        jax.block_until_ready((state, metrics))

    return Row(name, run_epoch, config.num_updates_on_epoch)


@partial(jax.jit, static_argnames="config")
def draw_loop_epoch(key: jax.Array, dataset: Any, config: Any) -> tuple[jax.Array, Any]:
    """A new key and one epoch's draws, the random-number work that train_epoch does once per epoch."""
    key, draws_key = jax.random.split(key)
    return key, flax_script.draw_epoch(draws_key, dataset, config)


@partial(jax.jit, static_argnames="config", donate_argnames="agent")
def loop_update(agent: Any, epoch_draws: Any, step: jax.Array, dataset: Any, config: Any) -> tuple[Any, dict]:
    """One update of one agent, on draws `step` of the epoch's draws (indexed here, inside the jit)."""
    draws = jax.tree.map(lambda draw: draw[step], epoch_draws)
    return flax_script.update_sac_n(agent, draws, dataset, config)


def loop_row(config: Any, dataset: Any) -> tuple[Row, float]:
    """The Flax update jitted alone, called K times from Python; and XLA's FLOP count of one update."""
    agent = jax.tree.map(lambda leaf: leaf[0], flax_script.create_sac_n_state(OBS_DIM, ACTION_DIM, config))
    key, epoch_draws = draw_loop_epoch(agent.key, dataset, config)
    steps = [jnp.asarray(step) for step in range(config.num_updates_on_epoch)]  # device scalars, made once
    # compiled once here: a changed argument type would raise instead of silently recompiling
    update = loop_update.lower(agent, epoch_draws, steps[0], dataset, config=config).compile()
    flops = update.cost_analysis()["flops"]  # the slice of the draws adds no FLOPs

    def run_epoch() -> None:
        nonlocal agent, key
        key, epoch_draws = draw_loop_epoch(key, dataset, config)
        for step in steps:
            agent, metrics = update(agent, epoch_draws, step, dataset)
        jax.block_until_ready((agent, metrics))

    return Row("flax loop", run_epoch, config.num_updates_on_epoch), flops


def torch_row(scale: Scale, transitions: dict[str, np.ndarray], updates: int) -> Row:
    """CORL's update in PyTorch: K updates from a Python loop, then `torch.cuda.synchronize` on a GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TorchSACN(OBS_DIM, ACTION_DIM, scale.hidden_dim, scale.num_critics, device=device)
    dataset = to_torch(transitions, device)
    return Row("torch", lambda: model.train_epoch(dataset, scale.batch_size, updates), updates)


def matmul_row(name: str, x_shape: tuple, matmuls: int) -> Row:
    """`matmuls` chained float32 matmuls x @ w, w [..., n, n], in one jitted loop; the row's work is their FLOPs."""
    x_key, w_key = jax.random.split(jax.random.PRNGKey(0))
    x, n = jax.random.normal(x_key, x_shape), x_shape[-1]
    w = jnp.linalg.qr(jax.random.normal(w_key, (*x_shape[:-2], n, n)))[0]  # orthogonal: x keeps its scale

    @jax.jit
    def chain(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, matmuls, lambda _, x: x @ w, x)

    return Row(name, lambda: jax.block_until_ready(chain(x, w)), matmuls * 2 * math.prod(x_shape) * n)


def scale_rows(scale: Scale, mode: Mode, transitions: dict) -> tuple[list[Row], float]:
    """Every row of one scale, and the FLOPs of one update (the Flax update's, credited to every row)."""
    arrays = {key: jnp.asarray(value) for key, value in transitions.items()}  # one copy on the device
    flax_config, flax_dataset = make_config(flax_script, scale, mode.updates), flax_script.Batch(**arrays)
    eqx_config, eqx_dataset = make_config(eqx_script, scale, mode.updates), eqx_script.Batch(**arrays)
    rows = [fused_row("flax fused", flax_script, flax_config, flax_dataset)]
    rows.append(fused_row("eqx fused", eqx_script, eqx_config, eqx_dataset))
    loop, flops = loop_row(flax_config, flax_dataset)
    rows.append(loop)
    if torch is not None:
        rows.append(torch_row(scale, transitions, mode.updates))
    n = mode.matmul_size
    rows.append(matmul_row("square matmul", (n, n), mode.square_matmuls))
    # the update's largest layer: as many matmuls as have the square ones' FLOPs, so both take about as long
    layer_flops = scale.num_critics * scale.batch_size * scale.hidden_dim**2
    layer_matmuls = max(1, round(mode.square_matmuls * n**3 / layer_flops))
    rows.append(matmul_row("layer matmul", (scale.num_critics, scale.batch_size, scale.hidden_dim), layer_matmuls))
    return rows, flops


# --- Timing ---
def time_rounds(rows: list[Row], rounds: int, pause_s: float) -> dict[str, list[float]]:
    """Seconds per call of every row. Round r starts one row further along, so a change in the machine's load
    falls on every row alike; each row is called twice first (compiles, first donation, torch's lazy setup)."""
    for row in rows:
        row.run_epoch()
        row.run_epoch()
    seconds = {row.name: [] for row in rows}
    for round_index in range(rounds):
        for row in rows[round_index % len(rows) :] + rows[: round_index % len(rows)]:
            time.sleep(pause_s)
            start = time.perf_counter()
            row.run_epoch()
            seconds[row.name].append(time.perf_counter() - start)
    return seconds


def rates(rows: list[Row], seconds: dict[str, list[float]]) -> dict[str, list[float]]:
    """Work per second of every call: updates/s for an update row, FLOP/s for a matmul row."""
    return {row.name: [row.work / duration for duration in seconds[row.name]] for row in rows}


# --- Report ---
def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"


def scale_report(name: str, scale: Scale, flops: float, n: int, rows: list[Row], rates_of: dict[str, list]) -> str:
    median = {row: statistics.median(values) for row, values in rates_of.items()}
    square, layer = median["square matmul"], median["layer matmul"]
    lines = [
        f"\n{name} scale: N={scale.num_critics} critics, hidden {scale.hidden_dim}, batch {scale.batch_size}; "
        f"one update {flops / 1e9:.4g} GFLOP (XLA's count of the Flax update, credited to every row)",
        f"{'row':<12}{'updates/s':>11}{'min':>9}{'max':>9}{'GFLOP/s':>9}{'% square mm':>13}{'% layer mm':>12}"
        f"{'3000x1000 run':>15}",
    ]
    for row in [row for row in rows if "matmul" not in row.name]:
        ups, values = median[row.name], rates_of[row.name]
        achieved = ups * flops
        lines.append(
            f"{row.name:<12}{ups:>11.1f}{min(values):>9.1f}{max(values):>9.1f}{achieved / 1e9:>9.1f}"
            f"{100 * achieved / square:>13.1f}{100 * achieved / layer:>12.1f}{duration(FULL_RUN_UPDATES / ups):>15}"
        )
    critics, hidden = scale.num_critics, scale.hidden_dim
    layer_shapes = f"[{critics}, {scale.batch_size}, {hidden}] @ [{critics}, {hidden}, {hidden}]"
    lines.append(
        f"% of matmul peak divides by (medians, same rounds): square [{n}, {n}] @ [{n}, {n}] {square / 1e9:.1f}"
        f" GFLOP/s; layer {layer_shapes} {layer / 1e9:.1f} GFLOP/s"
    )
    lines.append("ratios of medians: " + ", ".join(ratio_texts(median)))
    return "\n".join(lines)


def ratio_texts(median: dict[str, float]) -> list[str]:
    texts = []
    if "torch" in median:
        texts += [f"JAX/PyTorch {median[row] / median['torch']:.2f} ({row})" for row in ("flax fused", "eqx fused")]
    texts.append(f"fused/loop {median['flax fused'] / median['flax loop']:.2f} (flax)")
    texts.append(f"Equinox/Flax {median['eqx fused'] / median['flax fused']:.2f} (fused)")
    return texts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def header(mode_name: str, mode: Mode) -> str:
    device = jax.devices()[0]
    machine = f"{cpu_model()}, {num_cores()} cores; JAX on {jax.device_count()} x {device.device_kind}"
    if torch is not None:
        machine += f"; torch on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
    packages = ["jax", "jaxlib", "flax", "equinox", "optax", "torch"]
    versions = ", ".join(f"{package} {version(package)}" for package in packages if version(package))
    precision = f"float32 matmul precision: jax {jax.config.jax_default_matmul_precision or 'default'}"
    if torch is None:
        threads = "torch not installed: no torch row"
    else:
        threads = f"torch threads {torch.get_num_threads()}"
        precision += f", torch {torch.get_float32_matmul_precision()}"
    return "\n".join(
        [
            f"SAC-N update speed, {time.strftime('%Y-%m-%d %H:%M')}: python {' '.join(sys.argv)}",
            f"machine: {machine}; load average {os.getloadavg()[0]:.2f} at the start",
            f"versions: python {platform.python_version()}, {versions}; {threads}; {precision}",
            f"mode {mode_name}: interleaved rounds {mode.rounds}, updates per timed epoch {mode.updates}, "
            f"{mode.dataset_rows} synthetic transitions (obs {OBS_DIM}, action {ACTION_DIM}), "
            f"{mode.pause_s} s pause before each timed call",
        ]
    )


def parse_args() -> tuple[str, Mode, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 updates, 100k transitions")
    parser.add_argument("--smoke", action="store_true", help="tiny scale, 1 round of 3 updates: every path runs")
    parser.add_argument(
        "--scales", help=f"comma-separated, of {', '.join(SCALES)} (default: paper,small; --smoke tiny)"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 5, --quick 3, --smoke 1)")
    parser.add_argument("--updates", type=int, help="updates per timed epoch (default: 100, --quick 20; x10 on GPU)")
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    scales = (args.scales or mode.scales).split(",")
    if unknown := [name for name in scales if name not in SCALES]:
        parser.error(f"unknown scale(s) {unknown}: choose from {list(SCALES)}")
    if any(value is not None and value < 1 for value in (args.rounds, args.updates)):
        parser.error("--rounds and --updates must be at least 1")
    # an accelerator runs an update in well under a millisecond: longer calls keep the timings above the noise
    factor = 1 if jax.default_backend() == "cpu" or args.smoke else 10
    mode = mode._replace(updates=mode.updates * factor, square_matmuls=mode.square_matmuls * factor)
    return mode_name, mode._replace(rounds=args.rounds or mode.rounds, updates=args.updates or mode.updates), scales


def main() -> None:
    mode_name, mode, scales = parse_args()
    if torch is not None:
        torch.set_num_threads(num_cores())  # the cores this process may use
    print(header(mode_name, mode), flush=True)
    transitions = synthetic_transitions(mode.dataset_rows)
    started = time.perf_counter()
    for name in scales:
        scale = SCALES[name]
        rows, flops = scale_rows(scale, mode, transitions)
        seconds = time_rounds(rows, mode.rounds, mode.pause_s)
        print(scale_report(name, scale, flops, mode.matmul_size, rows, rates(rows, seconds)), flush=True)
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s (with compiles and warm-up)")


if __name__ == "__main__":
    main()
