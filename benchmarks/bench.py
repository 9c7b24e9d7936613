"""Speed of one SAC-N or EDAC update: both scripts' jitted epochs, the Flax update jitted alone in a
Python loop, and a CORL-style PyTorch update (torch_sac_n.py), on synthetic data with D4RL's
halfcheetah or hopper shapes; and SAC-N with hopper's N=500 critics against EDAC with N=50. Rows are
timed in interleaved rounds; benchmarks/README.md says what each row and column means.

    python benchmarks/bench.py --quick     # every scale but the tiny ones, ~3 min on 2 CPU cores
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
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--smoke" in sys.argv[1:]:
    # smoke measures nothing: XLA's cheapest compiles, half the time on a CPU, for slower code
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCHMARKS_DIR), BENCHMARKS_DIR]  # the scripts, and torch_sac_n.py
import sac_n_jax_eqx as eqx_script  # noqa: E402
import sac_n_jax_flax as flax_script  # noqa: E402

try:  # torch is a benchmark-only dependency (requirements-bench.txt): without it no torch rows
    import torch
    from torch_sac_n import TorchSACN, to_torch
except ImportError:
    torch = None

SHAPES = {"halfcheetah": (17, 6), "hopper": (11, 3)}  # D4RL's obs and action dims
FULL_RUN_UPDATES = 3000 * 1000  # the paper's 3000 epochs of 1000 updates


class Setup(NamedTuple):
    """One algorithm at one size."""

    env: str  # whose shapes the data has, a key of SHAPES
    num_critics: int
    hidden_dim: int
    batch_size: int
    eta: float = 0.0  # EDAC's weight; 0 is SAC-N
    update_share: float = 1.0  # of the mode's updates per timed call (a large N runs slowly)

    @property
    def label(self) -> str:
        return f"{'EDAC' if self.eta > 0 else 'SAC-N'} N={self.num_critics}"

    def describe(self, updates: int) -> str:
        obs_dim, action_dim = SHAPES[self.env]
        algorithm = f"EDAC (eta {self.eta})" if self.eta > 0 else "SAC-N"
        return (
            f"{algorithm}, {self.env}'s shapes (obs {obs_dim}, action {action_dim}), "
            f"N={self.num_critics} critics, hidden {self.hidden_dim}, batch {self.batch_size}, "
            f"{updates} update{'s' if updates > 1 else ''} per timed call"
        )


class Scale(NamedTuple):
    main: Setup  # every row: both fused epochs, the loop, torch, the two matmuls
    versus: Optional[Setup] = None  # Flax fused and torch only, for the ratio of per-update times


SCALES = {
    "paper": Scale(Setup("halfcheetah", 10, 256, 256)),
    "small": Scale(Setup("halfcheetah", 2, 64, 256)),
    "edac": Scale(Setup("halfcheetah", 10, 256, 256, eta=1.0, update_share=0.5)),
    # EDAC's hopper ensemble against SAC-N's (the paper's N for hopper-medium), in the same rounds
    "edac-hopper": Scale(
        Setup("hopper", 50, 256, 256, eta=1.0, update_share=0.1),
        versus=Setup("hopper", 500, 256, 256, update_share=0.05),
    ),
    "tiny": Scale(Setup("halfcheetah", 2, 16, 32)),
    # --smoke: every kind of row, SAC-N and EDAC, at sizes that compile and run in seconds
    "edac-tiny": Scale(Setup("hopper", 2, 16, 32, eta=1.0), versus=Setup("hopper", 4, 16, 32)),
}


class Mode(NamedTuple):
    rounds: int
    updates: int  # updates per timed call on a CPU (times a setup's share); 10x on an accelerator
    dataset_rows: int
    matmul_size: int  # n of the [n, n] @ [n, n] matmul that measures the peak
    square_matmuls: int  # chained in one timed call; 10 times as many on an accelerator
    scales: str
    pause_s: float  # before every timed call (see README: torch's threads keep spinning after work)


MODES = {
    "full": Mode(5, 100, 1_000_000, 4096, 3, "paper,small,edac,edac-hopper", 0.3),
    "quick": Mode(3, 20, 100_000, 2048, 10, "paper,small,edac,edac-hopper", 0.3),
    "smoke": Mode(1, 3, 1_000, 128, 10, "edac-tiny", 0.0),
}


class Row(NamedTuple):
    name: str
    run_epoch: Callable[[], Any]  # runs and waits for the device
    work: float  # updates (an update row) or FLOPs (a matmul row) per call
    flops: float = 1.0  # per unit of work: an update's FLOPs (1 for a matmul row)


# --- Data ---
def synthetic_transitions(rows: int, env: str) -> dict[str, np.ndarray]:
    """Random transitions with the env's shapes; the update's speed does not depend on the values."""
    obs_dim, action_dim = SHAPES[env]
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(rows, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(rows, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=rows).astype(np.float32),
        "next_obs": rng.normal(size=(rows, obs_dim)).astype(np.float32),
        "dones": (rng.random(rows) < 0.001).astype(np.float32),
    }


def setup_updates(setup: Setup, mode: Mode) -> int:
    return max(1, round(mode.updates * setup.update_share))


def make_config(module: Any, setup: Setup, updates: int) -> Any:
    return module.Config(
        num_critics=setup.num_critics,
        hidden_dim=setup.hidden_dim,
        batch_size=setup.batch_size,
        eta=setup.eta,
        num_updates_on_epoch=updates,
        num_seeds=1,
    )


# --- Rows ---
def fused_row(name: str, module: Any, config: Any, dataset: Any, state: Any) -> Row:
    """The script's own jitted epoch, on a state from its own constructor, as its `main` runs it."""

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
def loop_update(agent: Any, epoch_draws: Any, step: jax.Array, dataset: Any, config: Any) -> tuple:
    """One update of one agent, on draws `step` of the epoch's draws (indexed here, in the jit)."""
    draws = jax.tree.map(lambda draw: draw[step], epoch_draws)
    return flax_script.update_sac_n(agent, draws, dataset, config)


def compiled_update(agent: Any, dataset: Any, config: Any) -> tuple[Any, Any, Any]:
    """The Flax update compiled for one agent, with the agent's first key and epoch draws. Compiled
    ahead, a changed argument type raises rather than silently compiling again."""
    key, epoch_draws = draw_loop_epoch(agent.key, dataset, config)
    update = loop_update.lower(agent, epoch_draws, jnp.asarray(0), dataset, config=config).compile()
    return update, key, epoch_draws


def update_flops(update: Any) -> float:
    """XLA's FLOP count of one compiled update (the slice of the draws adds none)."""
    return update.cost_analysis()["flops"]


def loop_row(config: Any, dataset: Any, agent: Any) -> tuple[Row, float]:
    """The Flax update jitted alone, called K times from Python; and XLA's FLOPs of one update."""
    update, key, epoch_draws = compiled_update(agent, dataset, config)
    steps = [jnp.asarray(step) for step in range(config.num_updates_on_epoch)]  # made once
    flops = update_flops(update)

    def run_epoch() -> None:
        nonlocal agent, key
        key, epoch_draws = draw_loop_epoch(key, dataset, config)
        for step in steps:
            agent, metrics = update(agent, epoch_draws, step, dataset)
        jax.block_until_ready((agent, metrics))

    return Row("flax loop", run_epoch, config.num_updates_on_epoch, flops), flops


def torch_row(name: str, setup: Setup, transitions: dict, updates: int, flops: float) -> Row:
    """CORL's update in PyTorch: K updates from a Python loop, then a sync on a GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    obs_dim, action_dim = SHAPES[setup.env]
    model = TorchSACN(
        obs_dim, action_dim, setup.hidden_dim, setup.num_critics, device=device, eta=setup.eta
    )
    dataset = to_torch(transitions, device)
    return Row(name, lambda: model.train_epoch(dataset, setup.batch_size, updates), updates, flops)


def matmul_row(name: str, x_shape: tuple, matmuls: int) -> Row:
    """`matmuls` chained float32 matmuls x @ w, w [..., n, n], in one jitted loop; the row's work is
    their FLOPs."""
    x_key, w_key = jax.random.split(jax.random.PRNGKey(0))
    x, n = jax.random.normal(x_key, x_shape), x_shape[-1]
    w = jnp.linalg.qr(jax.random.normal(w_key, (*x_shape[:-2], n, n)))[
        0
    ]  # orthogonal: x keeps scale

    @jax.jit
    def chain(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, matmuls, lambda _, x: x @ w, x)

    flops = matmuls * 2 * math.prod(x_shape) * n
    return Row(name, lambda: jax.block_until_ready(chain(x, w)), flops)


def setup_rows(setup: Setup, mode: Mode, every_row: bool, suffix: str) -> tuple[list[Row], float]:
    """The rows of one setup, and XLA's FLOPs of its Flax update (credited to each of its rows):
    with `every_row` both fused epochs, the loop and torch; else the Flax fused epoch and torch."""
    obs_dim, action_dim = SHAPES[setup.env]
    updates = setup_updates(setup, mode)
    transitions = synthetic_transitions(mode.dataset_rows, setup.env)
    arrays = {key: jnp.asarray(value) for key, value in transitions.items()}  # one device copy
    flax_config, flax_dataset = (
        make_config(flax_script, setup, updates),
        flax_script.Batch(**arrays),
    )
    flax_state = flax_script.create_sac_n_state(obs_dim, action_dim, flax_config)
    # the loop's agent: seed 0 of the same initial state, copied (the fused epoch donates its state)
    agent = jax.tree.map(lambda leaf: jnp.copy(leaf[0]), flax_state)
    rows = [fused_row(f"flax fused{suffix}", flax_script, flax_config, flax_dataset, flax_state)]
    if every_row:
        eqx_config, eqx_dataset = (
            make_config(eqx_script, setup, updates),
            eqx_script.Batch(**arrays),
        )
        eqx_state = eqx_script.create_sac_n_state(obs_dim, action_dim, eqx_config)
        rows.append(fused_row("eqx fused", eqx_script, eqx_config, eqx_dataset, eqx_state))
        loop, flops = loop_row(flax_config, flax_dataset, agent)
        rows.append(loop)
    else:
        flops = update_flops(compiled_update(agent, flax_dataset, flax_config)[0])
    rows = [row._replace(flops=flops) for row in rows]
    if torch is not None:
        rows.append(torch_row(f"torch{suffix}", setup, transitions, updates, flops))
    return rows, flops


def scale_rows(scale: Scale, mode: Mode) -> tuple[list[Row], dict[str, float]]:
    """Every row of one scale, and each setup's FLOPs per update."""
    rows, flops = setup_rows(scale.main, mode, every_row=True, suffix="")
    flops_of = {"main": flops}
    if scale.versus is not None:
        versus_rows, flops_of["versus"] = setup_rows(
            scale.versus, mode, every_row=False, suffix=f" {scale.versus.label}"
        )
        rows += versus_rows
    n = mode.matmul_size
    rows.append(matmul_row("square matmul", (n, n), mode.square_matmuls))
    # the update's largest layer: as many matmuls as have the square ones' FLOPs, so both take
    # about as long
    main = scale.main
    layer_flops = main.num_critics * main.batch_size * main.hidden_dim**2
    layer_matmuls = max(1, round(mode.square_matmuls * n**3 / layer_flops))
    layer_shape = (main.num_critics, main.batch_size, main.hidden_dim)
    rows.append(matmul_row("layer matmul", layer_shape, layer_matmuls))
    return rows, flops_of


# --- Timing ---
def time_rounds(rows: list[Row], rounds: int, pause_s: float) -> dict[str, list[float]]:
    """Seconds per call of every row. Round r starts one row further along, so a change in the
    machine's load falls on every row alike; each row is called twice first (compiles, the first
    donation, torch's lazy set-up)."""
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
    if seconds >= 100 * 3600:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"


def scale_report(
    name: str, scale: Scale, mode: Mode, flops_of: dict, rows: list[Row], rates_of: dict
) -> str:
    median = {row: statistics.median(values) for row, values in rates_of.items()}
    square, layer = median["square matmul"], median["layer matmul"]
    lines = [
        f"\n{name} scale: {scale.main.describe(setup_updates(scale.main, mode))}; one update "
        f"{flops_of['main'] / 1e9:.4g} GFLOP (XLA's count of the Flax update, credited to every row"
        f" of the setup)"
    ]
    if scale.versus is not None:
        lines.append(
            f"against {scale.versus.describe(setup_updates(scale.versus, mode))}; one update "
            f"{flops_of['versus'] / 1e9:.4g} GFLOP (rows marked {scale.versus.label})"
        )
    update_rows = [row for row in rows if "matmul" not in row.name]
    width = max(12, *(len(row.name) + 2 for row in update_rows))
    lines.append(
        f"{'row':<{width}}{'updates/s':>11}{'min':>9}{'max':>9}{'GFLOP/s':>9}{'% square mm':>13}"
        f"{'% layer mm':>12}{'3000x1000 run':>15}"
    )
    for row in update_rows:
        ups, values = median[row.name], rates_of[row.name]
        achieved = ups * row.flops
        lines.append(
            f"{row.name:<{width}}{ups:>11.{precision(ups)}f}{min(values):>9.{precision(ups)}f}"
            f"{max(values):>9.{precision(ups)}f}{achieved / 1e9:>9.1f}{100 * achieved / square:>13.1f}"
            f"{100 * achieved / layer:>12.1f}{duration(FULL_RUN_UPDATES / ups):>15}"
        )
    main, n = scale.main, mode.matmul_size
    critics, hidden = main.num_critics, main.hidden_dim
    layer_shapes = f"[{critics}, {main.batch_size}, {hidden}] @ [{critics}, {hidden}, {hidden}]"
    lines.append(
        f"% of matmul peak divides by (medians, same rounds): square [{n}, {n}] @ [{n}, {n}] "
        f"{square / 1e9:.1f} GFLOP/s; layer {layer_shapes} {layer / 1e9:.1f} GFLOP/s"
    )
    lines.append("ratios of medians: " + ", ".join(ratio_texts(median)))
    if scale.versus is not None:
        lines.append(versus_text(scale, median, flops_of))
    return "\n".join(lines)


def precision(updates_per_second: float) -> int:
    """Digits after the point: 1, or 2 below 10 updates/s (N=500 runs at a fraction of one)."""
    return 1 if updates_per_second >= 10 else 2


def ratio_texts(median: dict[str, float]) -> list[str]:
    texts = []
    if "torch" in median:
        texts += [
            f"JAX/PyTorch {median[row] / median['torch']:.2f} ({row})"
            for row in ("flax fused", "eqx fused")
        ]
    texts.append(f"fused/loop {median['flax fused'] / median['flax loop']:.2f} (flax)")
    texts.append(f"Equinox/Flax {median['eqx fused'] / median['flax fused']:.2f} (fused)")
    return texts


def versus_text(scale: Scale, median: dict[str, float], flops_of: dict[str, float]) -> str:
    """The versus setup's time per update over the main setup's, from the same rounds."""
    main, versus = scale.main.label, scale.versus.label
    texts = [f"{median['flax fused'] / median[f'flax fused {versus}']:.2f} (flax fused)"]
    if "torch" in median:
        texts.append(f"{median['torch'] / median[f'torch {versus}']:.2f} (torch)")
    return (
        f"time per update, {versus} / {main} (ratio of medians, same rounds): {', '.join(texts)}; "
        f"FLOPs per update {flops_of['versus'] / flops_of['main']:.2f}"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next(
                line.split(":", 1)[1].strip() for line in file if line.startswith("model name")
            )
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
    machine = (
        f"{cpu_model()}, {num_cores()} cores; JAX on {jax.device_count()} x {device.device_kind}"
    )
    if torch is not None:
        machine += (
            f"; torch on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
        )
    packages = ["jax", "jaxlib", "flax", "equinox", "optax", "torch"]
    versions = ", ".join(
        f"{package} {version(package)}" for package in packages if version(package)
    )
    precision = (
        f"float32 matmul precision: jax {jax.config.jax_default_matmul_precision or 'default'}"
    )
    if torch is None:
        threads = "torch not installed: no torch rows"
    else:
        threads = f"torch threads {torch.get_num_threads()}"
        precision += f", torch {torch.get_float32_matmul_precision()}"
    return "\n".join(
        [
            f"SAC-N and EDAC update speed, {time.strftime('%Y-%m-%d %H:%M')}: python {' '.join(sys.argv)}",
            f"machine: {machine}; load average {os.getloadavg()[0]:.2f} at the start",
            f"versions: python {platform.python_version()}, {versions}; {threads}; {precision}",
            f"mode {mode_name}: interleaved rounds {mode.rounds}, {mode.updates} updates per timed call "
            f"(times a setup's share), {mode.dataset_rows} synthetic transitions per setup, "
            f"{mode.pause_s} s pause before each timed call"
            + (
                f"; XLA_FLAGS {SMOKE_XLA_FLAGS}: the timings mean nothing"
                if mode_name == "smoke"
                else ""
            ),
        ]
    )


def parse_args() -> tuple[str, Mode, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds of 20 updates (times a setup's share), 100k transitions",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 round of 3 updates: every path runs"
    )
    parser.add_argument(
        "--scales",
        help=f"comma-separated, of {', '.join(SCALES)} (default: {MODES['full'].scales}; "
        f"--smoke {MODES['smoke'].scales})",
    )
    parser.add_argument(
        "--rounds", type=int, help="timed rounds (default: 5, --quick 3, --smoke 1)"
    )
    parser.add_argument(
        "--updates",
        type=int,
        help="updates per timed call before a setup's share (default: 100, --quick 20; x10 on GPU)",
    )
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    scales = (args.scales or mode.scales).split(",")
    if unknown := [name for name in scales if name not in SCALES]:
        parser.error(f"unknown scale(s) {unknown}: choose from {list(SCALES)}")
    if any(value is not None and value < 1 for value in (args.rounds, args.updates)):
        parser.error("--rounds and --updates must be at least 1")
    # an accelerator runs an update in well under a millisecond: longer calls stay above the noise
    factor = 1 if jax.default_backend() == "cpu" or args.smoke else 10
    mode = mode._replace(updates=mode.updates * factor, square_matmuls=mode.square_matmuls * factor)
    mode = mode._replace(rounds=args.rounds or mode.rounds, updates=args.updates or mode.updates)
    return mode_name, mode, scales


def main() -> None:
    mode_name, mode, scales = parse_args()
    if torch is not None:
        # the cores this process may use; smoke's tiny updates gain nothing from threads, and on a
        # busy machine torch's thread pool stalls them (10-100x)
        torch.set_num_threads(1 if mode_name == "smoke" else num_cores())
    print(header(mode_name, mode), flush=True)
    started = time.perf_counter()
    for name in scales:
        scale = SCALES[name]
        rows, flops_of = scale_rows(scale, mode)
        seconds = time_rounds(rows, mode.rounds, mode.pause_s)
        print(scale_report(name, scale, mode, flops_of, rows, rates(rows, seconds)), flush=True)
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s (with compiles and warm-up)")


if __name__ == "__main__":
    main()
