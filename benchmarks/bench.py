"""Speed benchmark of the SAC-N scripts, side by side with a PyTorch version of the same update.

    python benchmarks/bench.py                  # paper, small and N=50 scales, eval, data loading
    python benchmarks/bench.py --quick          # paper and small scale, fewer repeats
    python benchmarks/bench.py --smoke          # tiny sizes, one repeat: does every path still run?
    python benchmarks/bench.py --large          # also N=200 and N=500 (slow on a CPU)
    python benchmarks/bench.py --profile --prototypes   # where the time goes, and measured speed-ups

It imports sac_n_jax_flax.py and sac_n_jax_eqx.py as modules and times their own
functions on synthetic data of D4RL halfcheetah's shape. Every variant of one scale
is timed in the same rounds (round r times one epoch of each variant, in an order
that rotates between rounds), so a change in machine load hits all of them alike;
the tables report medians and ratios of medians. Results go to <out>.json (every
timing, the machine, the versions) and <out>.csv (one row per table row).
See benchmarks/README.md for what each number means.
"""

import argparse
import csv
import dataclasses
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from typing import Any, Callable, Optional

# on a GPU, JAX would otherwise reserve 75% of its memory at start and leave torch the rest
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.dirname(os.path.abspath(__file__))]  # the scripts are not a package

from hlo_ops import count_ops  # noqa: E402

OBS_DIM, ACTION_DIM = 17, 6  # D4RL halfcheetah
SCRIPTS = {"flax": "sac_n_jax_flax", "eqx": "sac_n_jax_eqx"}


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    num_critics: int
    hidden_dim: int
    batch_size: int
    # updates per timed epoch, and how many timed rounds
    updates: int
    repeats: int
    # time the jitted-update Python loop and the vmapped multi-seed epoch too (not at large N: minutes each)
    loop: bool = True


def scales_for(args: argparse.Namespace) -> list[Scale]:
    if args.smoke:
        return [Scale("smoke", 2, 16, 32, 2, 1)]
    updates, repeats = args.updates or (20 if args.quick else 50), args.repeats or (3 if args.quick else 5)
    scales = [Scale("paper", 10, 256, 256, updates, repeats), Scale("small", 2, 64, 256, updates, repeats)]
    if not args.quick:
        scales.append(Scale("N=50", 50, 256, 256, max(2, updates // 10), repeats, loop=False))
    if args.large:
        scales += [Scale(f"N={n}", n, 256, 256, 2, 2, loop=False) for n in (200, 500)]
    return [scale for scale in scales if args.scales is None or scale.name in args.scales.split(",")]


# --- Machine ---


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def version(package: str) -> Optional[str]:
    try:
        return importlib.import_module(package).__version__
    except Exception:
        return None


def machine_info(torch: Any) -> dict:
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": num_cores(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(device) for device in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
        "flax": version("flax"),
        "equinox": version("equinox"),
        "optax": version("optax"),
        "numpy": np.__version__,
        "persistent_compilation_cache": jax.config.jax_compilation_cache_dir,
        # on GPUs JAX's default float32 matmul precision may use TF32, torch's ("highest") does not
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    if torch is not None:
        info.update(
            torch=torch.__version__, torch_device=str(torch_device(torch)), torch_threads=torch.get_num_threads()
        )
        info["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
        if torch.cuda.is_available():
            info["torch_cuda_device"] = torch.cuda.get_device_name()
    return info


def torch_device(torch: Any) -> Any:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- Compile events ---


class CompileLog:
    """JAX's own compile-time events (tracing, lowering, XLA compile), counted per call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **_: self.events.append((name, secs)))

    def since(self, start: int) -> dict[str, float]:
        new = self.events[start:]
        return {
            "compiles": sum(name.endswith("backend_compile_duration") for name, _ in new),
            "compile_s": sum(secs for name, secs in new if name.endswith("backend_compile_duration")),
            "trace_lower_s": sum(secs for name, secs in new if not name.endswith("backend_compile_duration")),
        }


COMPILE_LOG = CompileLog()
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f} s] {message}", flush=True)


# --- Scripts and data ---


def import_scripts(names: list[str], skipped: list[str]) -> dict[str, Any]:
    modules = {}
    for name in names:
        try:
            modules[name] = importlib.import_module(SCRIPTS[name])
        except Exception as error:  # a script that does not import yet: skip its rows, say why
            skipped.append(f"{SCRIPTS[name]}.py: not benchmarked ({type(error).__name__}: {error})")
    return modules


def make_config(module: Any, scale: Scale, **fields: Any) -> Any:
    """The script's Config with the scale's sizes; fields the script lacks are left out."""
    values = dict(num_critics=scale.num_critics, hidden_dim=scale.hidden_dim, batch_size=scale.batch_size)
    values.update(num_updates_on_epoch=scale.updates, **fields)
    names = {field.name for field in dataclasses.fields(module.Config)}
    return dataclasses.replace(module.Config(), **{key: value for key, value in values.items() if key in names})


def synthetic_transitions(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random transitions with halfcheetah's shapes and dtypes (values do not change the speed)."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((size, OBS_DIM), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(size, dtype=np.float32),
        "next_obs": rng.standard_normal((size, OBS_DIM), dtype=np.float32),
        "dones": (rng.random(size) < 1e-3).astype(np.float32),
    }


def has_seed_axis(module: Any) -> bool:
    """Scripts with `create_sac_n_state` keep a leading [num_seeds] axis on the whole train state."""
    return hasattr(module, "create_sac_n_state")


def make_state(module: Any, config: Any) -> Any:
    """The train state exactly as the script's main makes it."""
    if has_seed_axis(module):
        return module.create_sac_n_state(OBS_DIM, ACTION_DIM, config)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.train_seed))
    return module.SACNState(*module.create_train_states(init_key, OBS_DIM, ACTION_DIM, config), train_key)


def single_agent(module: Any, state: Any) -> Any:
    """One agent's state, the argument of update_sac_n."""
    return jax.tree.map(lambda leaf: leaf[0], state) if has_seed_axis(module) else state


def strong_types(tree: Any) -> Any:
    """The same arrays without weak types, so the first update does not change the argument types
    (a weakly typed `jnp.array(0.0)` becomes strongly typed after one Adam step: a second compile)."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype), tree)


def update_step(module: Any, state: Any, dataset: Any, epoch_noise: Any, step: jax.Array, config: Any) -> tuple:
    """update_sac_n on the random numbers of update `step` of an epoch (sliced inside the jit)."""
    return module.update_sac_n(state, dataset, jax.tree.map(lambda array: array[step], epoch_noise), config)


class CompiledUpdate:
    """update_sac_n jitted alone (state donated, as train_epoch donates it) and compiled once for one
    agent's strongly typed state: its executable runs the Python loop, its HLO gives the FLOP and
    launch counts. Calling the executable dispatches as calling the jitted function does. Each call
    takes the epoch's random numbers (`draw_epoch_noise`, one jitted call per epoch) and its update's
    index, a device scalar, so the loop does the same random-number work as `train_epoch`."""

    def __init__(self, module: Any, config: Any, dataset: Any):
        self.state = strong_types(single_agent(module, make_state(module, config)))
        start = len(COMPILE_LOG.events)
        self.draw_noise = (
            jax.jit(module.draw_epoch_noise, static_argnames="config").lower(self.state.key, dataset, config).compile()
        )
        epoch_noise = self.draw_noise(self.state.key, dataset)
        self.steps = [jnp.asarray(step, jnp.int32) for step in range(config.num_updates_on_epoch)]
        jitted = jax.jit(partial(update_step, module), static_argnames="config", donate_argnames="state")
        self.executable = jitted.lower(self.state, dataset, epoch_noise, self.steps[0], config).compile()
        self.compile_info = COMPILE_LOG.since(start)

    def cost(self) -> dict:
        if not hasattr(self, "_cost"):
            self._cost = {
                "xla_flops": xla_flops(self.executable),
                "hlo_ops_per_update": count_ops(self.executable.as_text()),
            }
        return self._cost


# --- Variants: each runs one epoch of `updates` updates and waits for the result ---


class Variant:
    def __init__(self, name: str, framework: str, run_epoch: Callable[[], None], agents: int = 1):
        self.name, self.framework, self.run_epoch, self.agents = name, framework, run_epoch, agents
        self.times: list[float] = []
        # compiles before and during the warm-up; XLA launches per update of its compiled program
        self.compiles = {"compiles": 0, "compile_s": 0.0, "trace_lower_s": 0.0}
        self.launches_per_update: Optional[float] = None
        self.weak_leaves: list[str] = []
        self.flops_per_epoch: Optional[float] = None  # probes only

    def count_compiles(self, start: int) -> None:
        for key, value in COMPILE_LOG.since(start).items():
            self.compiles[key] += value

    def inspect(self, jitted: Any, args: tuple, updates: int) -> None:
        """Compile `jitted` for `args` ahead of the first call (the call reuses the executable) and
        count its XLA launches per update."""
        start = len(COMPILE_LOG.events)
        self.launches_per_update = epoch_hlo_ops(jitted, args, updates)["launches"]
        self.count_compiles(start)

    def warm_up(self, min_calls: int = 2, max_calls: int = 4) -> None:
        """Call until a call compiles nothing, at least twice (a script whose argument types change
        after the first update compiles again)."""
        start = len(COMPILE_LOG.events)
        for calls in range(1, max_calls + 1):
            before = len(COMPILE_LOG.events)
            self.run_epoch()
            if calls >= min_calls and not COMPILE_LOG.since(before)["compiles"]:
                break
        self.count_compiles(start)
        self.compiles["warm_up_calls"] = calls

    def time_epoch(self) -> None:
        start = time.perf_counter()
        self.run_epoch()
        self.times.append(time.perf_counter() - start)


def weak_leaves(tree: Any) -> list[str]:
    """Paths of weakly typed arrays: their type can change after an update, and the jit with it."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) for path, leaf in leaves if getattr(leaf, "weak_type", False)]


def fused_variant(module: Any, framework: str, config: Any, dataset: Any) -> Variant:
    """The script's train_epoch as its main calls it: state as created, one call per epoch."""
    box = {"state": make_state(module, config)}

    def run_epoch() -> None:
        box["state"], metrics = module.train_epoch(box["state"], dataset, config)
        jax.block_until_ready((box["state"], metrics))

    variant = Variant(f"{framework} fused", framework, run_epoch, agents=getattr(config, "num_seeds", 1))
    variant.weak_leaves = weak_leaves(box["state"])
    variant.inspect(module.train_epoch, (box["state"], dataset, config), config.num_updates_on_epoch)
    return variant


def loop_variant(update: CompiledUpdate, framework: str, config: Any, dataset: Any) -> Variant:
    """The jitted update_sac_n called `num_updates_on_epoch` times from Python; one wait at the end."""
    box = {"state": update.state, "key": jax.random.PRNGKey(config.train_seed)}

    def run_epoch() -> None:
        state = box["state"]
        box["key"], noise_key = jax.random.split(box["key"])
        epoch_noise = update.draw_noise(noise_key, dataset)
        for step in update.steps:
            state, info = update.executable(state, dataset, epoch_noise, step)
        box["state"] = jax.block_until_ready(state)

    variant = Variant(f"{framework} loop", framework, run_epoch)
    variant.compiles.update(update.compile_info)
    variant.launches_per_update = update.cost()["hlo_ops_per_update"]["launches"]
    return variant


def torch_variant(torch: Any, scale: Scale, transitions: dict[str, np.ndarray]) -> Variant:
    from torch_sac_n import TorchSACN, to_torch

    device = torch_device(torch)
    dataset = to_torch(transitions, device)
    agent = TorchSACN(OBS_DIM, ACTION_DIM, scale.hidden_dim, scale.num_critics, device)
    return Variant("torch", "torch", lambda: agent.train_epoch(dataset, scale.batch_size, scale.updates))


# --- FLOPs and the machine's matmul throughput ---


def matmul_probes(size: int, torch: Any) -> list[Variant]:
    """float32 [size, size] @ [size, size] in jax (and torch): the machine's matmul FLOP/s, timed in
    the same rounds as the variants, so the peak a row is held to saw the same machine load."""
    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    probes = [Variant("probe: jax matmul", "probe", lambda: matmul(a, b).block_until_ready())]
    if torch is not None:
        device = torch_device(torch)
        x, y = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

        def torch_matmul() -> None:
            torch.mm(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()

        probes.append(Variant("probe: torch matmul", "probe", torch_matmul))
    for probe in probes:
        probe.flops_per_epoch = 2.0 * size**3
    return probes


def layer_probe(scale: Scale) -> Variant:
    """The update's own largest matmul, [N, batch, hidden] @ [N, hidden, hidden], 50 in a row in one
    jitted loop: what matmuls of that shape reach alone, one after another (the update can beat it
    when XLA runs independent matmuls side by side)."""
    n, batch, hidden = scale.num_critics, scale.batch_size, scale.hidden_dim
    x = jnp.ones((n, batch, hidden)) / hidden
    w = jax.random.normal(jax.random.PRNGKey(0), (n, hidden, hidden)) / hidden

    @jax.jit
    def chain(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, 50, lambda _, x: jnp.einsum("nbi,nio->nbo", x, w), x)

    probe = Variant("probe: layer matmul", "probe", lambda: chain(x, w).block_until_ready())
    probe.flops_per_epoch = 50 * 2.0 * n * batch * hidden * hidden
    return probe


def probe_gflops(probe: Variant) -> float:
    return probe.flops_per_epoch / statistics.median(probe.times) / 1e9


def peak_of(probes: list[Variant], size: int) -> dict:
    peak = {"size": size, **{probe.name.split()[1] + "_gflops": probe_gflops(probe) for probe in probes}}
    peak["peak_gflops"] = max(value for key, value in peak.items() if key.endswith("gflops"))
    return peak


def analytic_matmul_flops(scale: Scale) -> float:
    """Multiply-adds x 2 of the matmuls of one update, counted by hand.

    A dense layer costs 2*in*out per sample forward, the same again for the weight gradient and
    for the input gradient (not needed for the first layer when its input is data). Per update:
    alpha: actor forward on obs; actor: actor forward + backward (weight and input grads), N
    critics forward + input-gradient backward (through all layers: the actions enter at layer 1);
    critic: actor forward on next_obs, N target critics forward, N critics forward + weight grads
    + input grads of layers 2.., all on `batch_size` samples."""
    h, n = scale.hidden_dim, scale.num_critics
    actor_layers = [(OBS_DIM, h), (h, h), (h, h), (h, 2 * ACTION_DIM)]  # mean and log_std heads as one
    critic_layers = [(OBS_DIM + ACTION_DIM, h), (h, h), (h, h), (h, 1)]
    actor_fwd = sum(2 * a * b for a, b in actor_layers)
    critic_fwd = sum(2 * a * b for a, b in critic_layers)
    first_actor, first_critic = 2 * OBS_DIM * h, 2 * (OBS_DIM + ACTION_DIM) * h
    alpha = actor_fwd
    actor = actor_fwd + (2 * actor_fwd - first_actor) + n * 2 * critic_fwd
    critic = actor_fwd + n * critic_fwd + n * critic_fwd + n * (2 * critic_fwd - first_critic)
    return float(scale.batch_size * (alpha + actor + critic))


def xla_flops(compiled: Any) -> Optional[float]:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


# --- Throughput ---


def time_interleaved(variants: list[Variant], repeats: int, settle_s: float = 0.3) -> None:
    """Round r times one epoch of every variant, starting one further along each round. A pause
    before each epoch lets the previous one's threads go idle (torch's OpenMP threads spin-wait
    for a while after each op, which would slow whatever runs next on a small machine)."""
    for variant in variants:
        variant.warm_up(min_calls=1 if variant.framework == "torch" else 2)
        compiles = variant.compiles
        log(f"  warmed up {variant.name}: {compiles['compiles']} compiles, {compiles['compile_s']:.1f} s")
    for round_index in range(repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            time.sleep(settle_s)
            variant.time_epoch()


def summarize(variant: Variant, scale: Scale, flops: float, peak_gflops: float) -> dict:
    median = statistics.median(variant.times)
    updates_per_second = variant.agents * scale.updates / median
    gflops = flops * updates_per_second / 1e9
    return {
        "section": "throughput",
        "scale": scale.name,
        "num_critics": scale.num_critics,
        "hidden_dim": scale.hidden_dim,
        "batch_size": scale.batch_size,
        "variant": variant.name,
        "agents": variant.agents,
        "updates_per_epoch": scale.updates,
        "repeats": len(variant.times),
        "epoch_s_median": median,
        "epoch_s_min": min(variant.times),
        "epoch_s_max": max(variant.times),
        "updates_per_s": updates_per_second,
        "gflop_per_s": gflops,
        "percent_of_peak": 100 * gflops / peak_gflops,
        "launches_per_update": variant.launches_per_update,
        "compiles": variant.compiles["compiles"],
        "compile_s": variant.compiles["compile_s"],
        "trace_lower_s": variant.compiles["trace_lower_s"],
        "epoch_times_s": variant.times,
        "weak_leaves_of_initial_state": variant.weak_leaves,
    }


def run_scale(scale: Scale, modules: dict, torch: Any, args: argparse.Namespace, out: dict) -> None:
    log(
        f"scale {scale.name}: N={scale.num_critics} hidden={scale.hidden_dim} batch={scale.batch_size}, "
        f"{scale.repeats} rounds of {scale.updates} updates"
    )
    transitions = synthetic_transitions(args.dataset_size)
    info: dict = {"scale": dataclasses.asdict(scale), "analytic_matmul_flops": analytic_matmul_flops(scale)}
    variants, datasets = [], {}
    for framework, module in modules.items():
        config = make_config(module, scale)
        datasets[framework] = dataset = module.to_device(transitions)
        update = CompiledUpdate(module, config, dataset)
        info[f"{framework}_update"] = update.cost()
        log(f"  compiled one {framework} update: {update.compile_info['compile_s']:.1f} s")
        variants.append(fused_variant(module, framework, config, dataset))
        if scale.loop:
            variants.append(loop_variant(update, framework, config, dataset))
        if scale.loop and args.num_seeds > 1 and has_seed_axis(module):
            for batch_seeds in (True, False):
                seeds_config = make_config(module, scale, num_seeds=args.num_seeds, batch_seeds=batch_seeds)
                variant = fused_variant(module, framework, seeds_config, dataset)
                variant.name = f"{framework} fused x{args.num_seeds} seeds" + ("" if batch_seeds else " lax.map")
                variants.append(variant)
    if torch is not None:
        variants.append(torch_variant(torch, scale, transitions))
    reference = next((info[f"{name}_update"]["xla_flops"] for name in modules), None)
    info["flops_per_update"] = flops = reference or info["analytic_matmul_flops"]
    probes, layer = matmul_probes(args.matmul_size, torch), layer_probe(scale)
    time_interleaved(variants + probes + [layer], scale.repeats)
    info["peak"], info["layer_matmul_gflops"] = peak_of(probes, args.matmul_size), probe_gflops(layer)
    info["rows"] = [summarize(variant, scale, flops, info["peak"]["peak_gflops"]) for variant in variants]
    # where the backend tracks it (GPUs): the most device memory in use so far in this process
    info["jax_device_peak_bytes_so_far"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    if torch is not None and torch.cuda.is_available():
        info["torch_cuda_max_allocated_bytes_so_far"] = torch.cuda.max_memory_allocated()
    out["scales"].append(info)
    del variants, datasets
    gc.collect()


def ratios(scale_info: dict) -> list[dict]:
    """fused / python loop, jax / torch and eqx / flax, as ratios of median updates per second."""
    rows = {row["variant"]: row["updates_per_s"] for row in scale_info["rows"]}
    pairs = [(f"{fw} fused", f"{fw} loop") for fw in SCRIPTS] + [(f"{fw} fused", "torch") for fw in SCRIPTS]
    pairs += [("eqx fused", "flax fused"), ("eqx loop", "flax loop")]
    return [
        {"scale": scale_info["scale"]["name"], "ratio": f"{a} / {b}", "value": rows[a] / rows[b]}
        for a, b in pairs
        if a in rows and b in rows
    ]


# --- Evaluation ---


def time_evaluation(module: Any, framework: str, args: argparse.Namespace) -> dict:
    """evaluate() of the script: `episodes` HalfCheetah-v4 episodes in lockstep with a tiny actor,
    split into the env steps alone (random actions) and the actor calls alone."""
    import gymnasium as gym

    episodes, steps = (2, 20) if args.smoke else (10, 1000)
    config = make_config(module, Scale("tiny", 1, 16, 32, 1, 1))
    state = make_state(module, config)
    start = time.perf_counter()
    envs = [gym.make("HalfCheetah-v4", max_episode_steps=steps) for _ in range(episodes)]
    make_s = time.perf_counter() - start
    obs = np.zeros((episodes, OBS_DIM), np.float32)
    env_grid, obs = ([envs], obs[None]) if has_seed_axis(module) else (envs, obs)
    np.asarray(module.deterministic_action(state.actor, obs, 1.0))  # compile outside the timing
    start = time.perf_counter()
    returns = module.evaluate(state.actor, env_grid, 0, 1.0)
    evaluate_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        np.asarray(module.deterministic_action(state.actor, obs, 1.0))
    actor_s = time.perf_counter() - start
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, ACTION_DIM))
    for index, env in enumerate(envs):
        env.reset(seed=index)
    start = time.perf_counter()
    for step in range(steps):
        for env in envs:
            env.step(actions[step])
    env_s = time.perf_counter() - start
    return {
        "framework": framework,
        "episodes": episodes,
        "steps_per_episode": steps,
        "returns_shape": list(np.shape(returns)),
        "make_envs_s": make_s,
        "evaluate_s": evaluate_s,
        "env_steps_only_s": env_s,
        "actor_calls_only_s": actor_s,
        "env_steps_per_s": episodes * steps / evaluate_s,
    }


# --- Dataset loading (in a fresh process, so its peak memory is the loading's alone) ---


def write_d4rl_file(path: str, rows: int, seed: int = 0) -> None:
    """A D4RL-layout HDF5 with random contents: 1000-step episodes, ending in `timeouts`."""
    import h5py

    rng = np.random.default_rng(seed)
    chunk = 200_000
    with h5py.File(path, "w") as file:
        columns = {"observations": (OBS_DIM,), "actions": (ACTION_DIM,), "rewards": ()}
        datasets = {key: file.create_dataset(key, (rows, *shape), np.float32) for key, shape in columns.items()}
        flags = {key: file.create_dataset(key, (rows,), bool) for key in ("terminals", "timeouts")}
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            for key, shape in columns.items():
                datasets[key][start:stop] = rng.standard_normal((stop - start, *shape), dtype=np.float32)
            flags["terminals"][start:stop] = rng.random(stop - start) < 1e-4
            flags["timeouts"][start:stop] = np.arange(start, stop) % 1000 == 999


def rss_bytes(field: str) -> Optional[int]:
    """VmRSS (now) or VmHWM (peak) of this process from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def load_worker(path: str, module_name: str) -> None:
    """Run in a child process: time qlearning_dataset + to_device, print one JSON line. The peak is
    VmHWM reset just before the load (ru_maxrss cannot be reset, and a child may inherit its parent's)."""
    module = importlib.import_module(module_name)
    jax.block_until_ready(jnp.zeros(1))  # start the backend before the baseline
    rss_before, peak_reset = rss_bytes("VmRSS"), reset_peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    transitions = module.qlearning_dataset(path)
    load_s = time.perf_counter() - start
    dataset = jax.block_until_ready(module.to_device(transitions))
    to_device_s = time.perf_counter() - start - load_s
    _, host_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    device_stats = jax.devices()[0].memory_stats() or {}
    result = {
        "module": module_name,
        "transitions": int(dataset.rewards.shape[0]),
        "qlearning_dataset_s": load_s,
        "to_device_s": to_device_s,
        "host_bytes": sum(value.nbytes for value in transitions.values()),
        "device_bytes": sum(array.nbytes for array in jax.tree.leaves(dataset)),
        "tracemalloc_peak_bytes": host_peak,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_bytes("VmRSS"),
        "rss_peak_bytes": rss_bytes("VmHWM") if peak_reset else None,
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes_in_use": device_stats.get("peak_bytes_in_use"),
    }
    print(json.dumps(result))


def time_loading(module_name: str, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "halfcheetah_random_layout-v2.hdf5")
        start = time.perf_counter()
        write_d4rl_file(path, rows)
        write_s = time.perf_counter() - start
        command = [sys.executable, os.path.abspath(__file__), "--load-worker", path, "--load-module", module_name]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError(f"load worker failed: {result.stderr[-2000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"rows": rows, "write_file_s": write_s, **measured}


# --- Profile: where an update's time goes ---


def epoch_hlo_ops(epoch: Any, args: tuple, updates: int) -> dict:
    """Launch counts of a jitted epoch of `updates` updates, per update."""
    counts = count_ops(epoch.lower(*args).compile().as_text())
    return {"launches": counts["launches"] / updates, "matmul": counts["matmul"] / updates, "per_epoch": counts}


def run_profile(scale: Scale, module: Any, framework: str, args: argparse.Namespace) -> dict:
    """The update split into its parts, each in its own jitted scan, timed interleaved with the whole."""
    from proto_sac_n import part_epochs

    config = make_config(module, scale)
    dataset = module.to_device(synthetic_transitions(args.dataset_size))
    state = strong_types(single_agent(module, make_state(module, config)))
    parts = part_epochs(module, config, state)
    whole_epoch, whole_state = parts["whole update"]
    script_args = (make_state(module, config), dataset, config)
    hlo_ops = {
        "train_epoch": epoch_hlo_ops(module.train_epoch, script_args, config.num_updates_on_epoch),
        "whole update loop (no seed vmap)": epoch_hlo_ops(
            whole_epoch, (whole_state, state, dataset), config.num_updates_on_epoch
        ),
    }
    variants = []
    for name, (epoch, initial) in parts.items():
        box = {"carry": initial}

        def run_epoch(epoch: Callable = epoch, box: dict = box) -> None:
            box["carry"] = jax.block_until_ready(epoch(box["carry"], state, dataset))

        variants.append(Variant(name, framework, run_epoch))
    time_interleaved(variants, scale.repeats)
    seconds = {variant.name: statistics.median(variant.times) / scale.updates for variant in variants}
    return {"scale": scale.name, "framework": framework, "seconds_per_update": seconds, "epoch_hlo_ops": hlo_ops}


def run_prototypes(scale: Scale, module: Any, args: argparse.Namespace, torch: Any, flops: float) -> dict:
    """Prototype speed-ups of the Flax update (benchmarks/proto_sac_n.py), timed against the script."""
    from proto_sac_n import PROTOTYPES, prototype_epoch

    config = make_config(module, scale)
    dataset = module.to_device(synthetic_transitions(args.dataset_size))
    variants = [fused_variant(module, "flax", config, dataset)]
    for proto in PROTOTYPES:
        state = single_agent(module, make_state(module, config))
        epoch, state, data = prototype_epoch(module, proto, config, state, dataset)
        box = {"state": state}

        def run_epoch(epoch: Callable = epoch, box: dict = box, data: Any = data) -> None:
            box["state"], metrics = jax.block_until_ready(epoch(box["state"], data))

        variant = Variant(f"proto: {proto.name}", "flax", run_epoch)
        variant.inspect(epoch, (state, data), config.num_updates_on_epoch)
        variants.append(variant)
    probes = matmul_probes(args.matmul_size, torch)
    time_interleaved(variants + probes, scale.repeats)
    peak = peak_of(probes, args.matmul_size)
    rows = [summarize(variant, scale, flops, peak["peak_gflops"]) for variant in variants]
    for row in rows:
        row["section"] = "prototypes"
    return {"scale": scale.name, "rows": rows, "peak": peak}


def check_prototypes(module: Any) -> dict:
    """Each prototype's largest parameter difference from update_sac_n after one update (small sizes)."""
    from proto_sac_n import PROTOTYPES, check_equivalent

    config = make_config(module, Scale("check", 3, 32, 64, 1, 1))
    state = single_agent(module, make_state(module, config))
    dataset = module.to_device(synthetic_transitions(1000))
    return {proto.name: check_equivalent(module, proto, config, state, dataset) for proto in PROTOTYPES}


# --- Output ---


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns])
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


THROUGHPUT_COLUMNS = [
    ("scale", "scale", ""),
    ("num_critics", "N", "d"),
    ("hidden_dim", "hidden", "d"),
    ("batch_size", "batch", "d"),
    ("variant", "variant", ""),
    ("updates_per_epoch", "K", "d"),
    ("epoch_s_median", "epoch s", ".3f"),
    ("epoch_s_min", "min", ".3f"),
    ("epoch_s_max", "max", ".3f"),
    ("updates_per_s", "updates/s", ".1f"),
    ("gflop_per_s", "GFLOP/s", ".2f"),
    ("percent_of_peak", "% peak", ".1f"),
    ("launches_per_update", "launches", ".0f"),
    ("compiles", "compiles", "d"),
    ("trace_lower_s", "trace s", ".1f"),
    ("compile_s", "compile s", ".1f"),
]


def header(out: dict) -> str:
    machine = out["machine"]
    lines = [
        f"SAC-N benchmark, {machine['date_utc']}, mode {out['settings']['mode']}",
        f"machine: {machine['cpu']}, {machine['cores']} cores, load average at start "
        + ", ".join(f"{load:.1f}" for load in machine["load_average_at_start"]),
        f"jax {machine['jax']} on {machine['jax_backend']} ({machine['jax_device_kind']}), flax {machine['flax']}, "
        f"equinox {machine['equinox']}, optax {machine['optax']}, python {machine['python']}",
    ]
    if "torch" in machine:
        lines.append(f"torch {machine['torch']} on {machine['torch_device']}, {machine['torch_threads']} threads")
    size = out["settings"]["matmul_size"]
    lines.append(
        f"'% peak' = the update's XLA FLOPs x updates/s / the best float32 {size}x{size} matmul FLOP/s (jax or "
        "torch), timed in the same rounds as the scale's variants"
    )
    return "\n".join(lines)


def mib(value: Optional[float]) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"


def report(out: dict) -> str:
    parts = [header(out)]
    rows = [row for scale in out["scales"] for row in scale["rows"]]
    parts += [
        "",
        "Throughput (median of interleaved rounds; updates/s counts agent updates):",
        format_table(rows, THROUGHPUT_COLUMNS),
    ]
    for row in rows:
        if "fused" in row["variant"] and (row["compiles"] or 0) > 1:
            parts.append(
                f"note: {row['variant']} [{row['scale']}] compiled {row['compiles']} times ({row['compile_s']:.0f} s) "
                "before its argument types settled; weakly typed leaves of the initial state: "
                + ", ".join(row["weak_leaves_of_initial_state"])
            )
    parts += [
        "",
        "Ratios of median updates/s:",
        format_table(out["ratios"], [("scale", "scale", ""), ("ratio", "ratio", ""), ("value", "value", ".2f")]),
    ]
    flops_rows = []
    for scale in out["scales"]:
        row = {
            "scale": scale["scale"]["name"],
            "analytic": scale["analytic_matmul_flops"] / 1e9,
            "layer": scale["layer_matmul_gflops"],
            **{key: value for key, value in scale["peak"].items() if key.endswith("gflops")},
        }
        for name in SCRIPTS:
            if f"{name}_update" in scale:
                update = scale[f"{name}_update"]
                row[f"{name}_xla"] = (update["xla_flops"] or float("nan")) / 1e9
                row[f"{name}_launches"] = update["hlo_ops_per_update"]["launches"]
                row[f"{name}_matmuls"] = update["hlo_ops_per_update"]["matmul"]
        flops_rows.append(row)
    parts += [
        "",
        "One update: GFLOP (XLA's count; analytic = matmuls only) and XLA launches (matmuls among them); "
        "matmul GFLOP/s timed in the scale's rounds: square (the peak) and the update's [N,batch,hidden] x "
        "[N,hidden,hidden] alone (layer):",
        format_table(
            flops_rows,
            [
                ("scale", "scale", ""),
                ("flax_xla", "flax GFLOP", ".3f"),
                ("eqx_xla", "eqx GFLOP", ".3f"),
                ("analytic", "analytic", ".3f"),
                ("flax_launches", "flax launches", "d"),
                ("flax_matmuls", "matmuls", "d"),
                ("eqx_launches", "eqx launches", "d"),
                ("jax_gflops", "jax matmul", ".1f"),
                ("torch_gflops", "torch matmul", ".1f"),
                ("layer", "layer", ".1f"),
            ],
        ),
    ]
    if out.get("evaluation"):
        parts += [
            "",
            "Evaluation (evaluate() with a 16-unit actor):",
            format_table(
                out["evaluation"],
                [
                    ("framework", "script", ""),
                    ("episodes", "episodes", "d"),
                    ("steps_per_episode", "steps", "d"),
                    ("make_envs_s", "make envs s", ".2f"),
                    ("evaluate_s", "evaluate s", ".2f"),
                    ("env_steps_only_s", "env steps only s", ".2f"),
                    ("actor_calls_only_s", "actor calls only s", ".2f"),
                ],
            ),
        ]
    if out.get("loading"):
        load = out["loading"]
        parts += [
            "",
            f"Dataset loading ({load['rows']} rows, D4RL layout, {load['module']}.qlearning_dataset + "
            f"to_device, in a fresh process): qlearning_dataset {load['qlearning_dataset_s']:.2f} s, "
            f"to_device {load['to_device_s']:.2f} s; arrays {load['host_bytes'] / 2**20:.0f} MiB host, "
            f"{load['device_bytes'] / 2**20:.0f} MiB device; peak numpy (tracemalloc) "
            f"{load['tracemalloc_peak_bytes'] / 2**20:.0f} MiB; process RSS {mib(load['rss_before_bytes'])} before, "
            f"{mib(load['rss_peak_bytes'])} peak, {mib(load['rss_after_bytes'])} after"
            + (
                f"; device peak {load['device_peak_bytes_in_use'] / 2**20:.0f} MiB"
                if load.get("device_peak_bytes_in_use")
                else ""
            ),
        ]
    for profile in out.get("profile", []):
        total = profile["seconds_per_update"].get("whole update")
        lines = [
            f"  {name:<24} {1e3 * seconds:8.3f} ms/update" + (f"  ({100 * seconds / total:3.0f}%)" if total else "")
            for name, seconds in profile["seconds_per_update"].items()
        ]
        lines += [
            f"  {name}: {ops['launches']:.0f} XLA launches per update, {ops['matmul']:.0f} of them matmuls; "
            + ", ".join(
                f"{op} {count / profile_updates(profile):.0f}"
                for op, count in list(ops["per_epoch"]["by_opcode"].items())[:6]
            )
            for name, ops in profile["epoch_hlo_ops"].items()
        ]
        parts += [
            "",
            f"Profile [{profile['scale']}, {profile['framework']}]: the update and its parts, each part alone in a "
            "jitted loop over the epoch's drawn batches and noise (no seed vmap):",
            *lines,
        ]
    for proto in out.get("prototypes", []):
        parts += [
            "",
            f"Prototypes [{proto['scale']}] (benchmarks/proto_sac_n.py, NOT the scripts' code):",
            format_table(proto["rows"], THROUGHPUT_COLUMNS[4:]),
        ]
    if out.get("prototype_checks"):
        checks = [
            f"{name}: {'other random numbers' if diff is None else f'{diff:.1e}'}"
            for name, diff in out["prototype_checks"].items()
        ]
        parts += [
            "",
            "Prototype check, largest parameter difference from update_sac_n after one update:",
            *[f"  {check}" for check in checks],
        ]
    if out["skipped"]:
        parts += ["", *[f"skipped: {message}" for message in out["skipped"]]]
    return "\n".join(parts)


def profile_updates(profile: dict) -> float:
    ops = next(iter(profile["epoch_hlo_ops"].values()))
    return ops["per_epoch"]["launches"] / ops["launches"]


def write_csv(path: str, out: dict) -> None:
    rows = [row for scale in out["scales"] for row in scale["rows"]]
    rows += [row for proto in out.get("prototypes", []) for row in proto["rows"]]
    rows += [
        {"section": "ratio", "scale": row["scale"], "variant": row["ratio"], "value": row["value"]}
        for row in out["ratios"]
    ]
    for evaluation in out.get("evaluation", []):
        for key in ("make_envs_s", "evaluate_s", "env_steps_only_s", "actor_calls_only_s"):
            rows.append(
                {"section": "evaluation", "variant": evaluation["framework"], "metric": key, "value": evaluation[key]}
            )
    for key, value in out.get("loading", {}).items():
        if isinstance(value, (int, float)):
            rows.append({"section": "loading", "variant": out["loading"]["module"], "metric": key, "value": value})
    columns = ["section"] + [key for key, _, _ in THROUGHPUT_COLUMNS] + ["agents", "repeats", "metric", "value"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --- Main ---


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="paper and small scale, 3 rounds of 20 updates")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one round: checks that every path runs")
    parser.add_argument("--large", action="store_true", help="add N=200 and N=500 (2 rounds of 2 updates)")
    parser.add_argument("--profile", action="store_true", help="time the parts of the update, count XLA launches")
    parser.add_argument("--prototypes", action="store_true", help="time the prototype speed-ups of proto_sac_n.py")
    parser.add_argument("--out", default="results/bench", help="writes OUT.json and OUT.csv")
    parser.add_argument("--scales", help="comma-separated subset of the mode's scales, e.g. small or paper,N=50")
    parser.add_argument("--frameworks", default="flax,eqx,torch", help="comma-separated subset of flax,eqx,torch")
    parser.add_argument("--updates", type=int, help="updates per timed epoch (default 50; --quick 20)")
    parser.add_argument("--repeats", type=int, help="timed rounds per scale (default 5; --quick 3)")
    parser.add_argument("--dataset-size", type=int, help="synthetic transitions (default 1M; --quick 100k)")
    parser.add_argument("--num-seeds", type=int, default=1, help="also time train_epoch with this many seeds")
    parser.add_argument("--torch-threads", type=int, help="torch CPU threads (default: the cores this process has)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--no-load", action="store_true", help="skip the dataset loading timing")
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    parser.add_argument("--load-module", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.matmul_size = 256 if args.smoke else 2048 if args.quick else 4096
    if args.dataset_size is None:
        args.dataset_size = 2_000 if args.smoke else 100_000 if args.quick else 1_000_000
    return args


def import_torch(args: argparse.Namespace, skipped: list[str]) -> Any:
    if "torch" not in args.frameworks.split(","):
        return None
    try:
        import torch
    except ImportError:
        skipped.append("torch rows: torch is not installed (pip install -r requirements-bench.txt)")
        return None
    torch.set_num_threads(args.torch_threads or num_cores())
    return torch


def main() -> None:
    args = parse_args()
    if args.load_worker:
        load_worker(args.load_worker, args.load_module)
        return
    skipped: list[str] = []
    frameworks = [name for name in args.frameworks.split(",") if name in SCRIPTS]
    modules = import_scripts(frameworks, skipped)
    torch = import_torch(args, skipped)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out: dict = {"machine": machine_info(torch), "settings": {**vars(args), "mode": mode}, "skipped": skipped}
    log(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores")
    out["scales"] = []
    for scale in scales_for(args):
        run_scale(scale, modules, torch, args, out)
    out["ratios"] = [row for scale in out["scales"] for row in ratios(scale)]
    if not args.no_eval:
        log("evaluation")
        out["evaluation"] = [time_evaluation(module, name, args) for name, module in modules.items()]
    if not args.no_load and modules:
        log("dataset loading")
        out["loading"] = time_loading(SCRIPTS[next(iter(modules))], 20_000 if args.smoke else 2_000_000)
    profile_scales = [scale for scale in scales_for(args) if scale.loop]
    if args.profile:
        log("profile")
        out["profile"] = [
            run_profile(scale, module, name, args) for scale in profile_scales for name, module in modules.items()
        ]
    if args.prototypes and "flax" in modules:
        log("prototypes")
        flops = {scale["scale"]["name"]: scale["flops_per_update"] for scale in out["scales"]}
        out["prototype_checks"] = check_prototypes(modules["flax"])
        out["prototypes"] = [
            run_prototypes(scale, modules["flax"], args, torch, flops[scale.name]) for scale in profile_scales
        ]
    out["machine"]["load_average_at_end"] = os.getloadavg()
    text = report(out)
    print("\n" + text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as file:
        json.dump(out, file, indent=1, default=float)
    write_csv(args.out + ".csv", out)
    print(f"\nwrote {args.out}.json and {args.out}.csv")


if __name__ == "__main__":
    main()
