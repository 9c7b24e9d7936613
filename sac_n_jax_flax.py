"""SAC-N for offline RL on D4RL Gym-MuJoCo datasets, in JAX + Flax.

SAC-N is Soft Actor-Critic with an ensemble of N critics whose minimum is the
pessimistic value estimate (An et al. 2021, "Uncertainty-Based Offline
Reinforcement Learning with Diversified Q-Ensemble", arXiv:2110.01548).
Hyperparameters and implementation choices follow CORL's `sac_n.py`, which
produced the public baseline numbers.

One file, not a library: config, data, networks, updates, the jitted training
epoch, evaluation and logging are all here. `sac_n_jax_eqx.py` is the same
script written in Equinox; `diff` the two to see only framework changes.

    python sac_n_jax_flax.py --config_path configs/halfcheetah.yaml
"""

import csv
import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pyrallis
import wandb
from flax.training.train_state import TrainState
from tqdm.auto import tqdm, trange

# --- Config ---


@dataclass(frozen=True)
class Config:
    # wandb project name
    project: str = "SAC-N-JAX"
    # wandb group name
    group: str = "SAC-N"
    # wandb run name prefix; env_name and a short random id are appended at run time
    name: str = "SAC-N"
    # width of every hidden layer of the actor and of each critic (3 hidden layers each)
    hidden_dim: int = 256
    # N: number of critics in the Q-ensemble
    num_critics: int = 10
    # discount factor
    gamma: float = 0.99
    # Polyak coefficient of the target critics, applied after every update
    tau: float = 5e-3
    # Adam learning rate of the actor
    actor_learning_rate: float = 3e-4
    # Adam learning rate of the critics
    critic_learning_rate: float = 3e-4
    # Adam learning rate of log_alpha, the log of the entropy temperature
    alpha_learning_rate: float = 3e-4
    # actions are tanh-squashed and scaled to [-max_action, max_action]
    max_action: float = 1.0
    # D4RL name (halfcheetah-medium-v2, ...) or Minari id (mujoco/halfcheetah/medium-v0)
    env_name: str = "halfcheetah-medium-v2"
    # optional HDF5 file in the D4RL layout, read instead of the file env_name names
    dataset_path: Optional[str] = None
    # gymnasium id of the evaluation env; default: the v4 env of env_name's domain
    eval_env: Optional[str] = None
    # transitions per gradient update
    batch_size: int = 256
    # training epochs
    num_epochs: int = 3000
    # gradient updates per epoch (all of them run inside one jitted call)
    num_updates_on_epoch: int = 1000
    # episodes per evaluation
    eval_episodes: int = 10
    # evaluate every `eval_every` epochs (not updates), and after the last epoch
    eval_every: int = 5
    # seed of network init and batch sampling; seed i of a multi-seed run uses train_seed + i
    train_seed: int = 10
    # independent agents trained at once in one process (vmapped, sharded over devices)
    num_seeds: int = 1
    # true: all seeds' updates run as one batched (vmapped) program, the fastest, and seed i equals a single-seed
    # run up to float32 rounding; false: the epoch runs the seeds one after another (lax.map) on one device,
    # seed i bit for bit a single-seed run (XLA compiles a batched seed axis with other operand orders and fusions)
    batch_seeds: bool = True
    # seed of the evaluation episodes' start states (the same at every evaluation)
    eval_seed: int = 42
    # directory for the config, checkpoints and scores.csv; null: no checkpoints, scores in results/<run name>
    checkpoints_path: Optional[str] = None
    # continue the run saved in checkpoints_path, in the same wandb run, exactly as if never stopped
    resume: bool = False
    # only evaluate the agents saved in checkpoints_path, then exit
    eval_only: bool = False


def fail(message: str) -> None:
    """Stop the run with one readable line (no traceback)."""
    raise SystemExit(f"{os.path.basename(__file__)}: error: {message}")


def check_option_names(names: list[str], source: str) -> None:
    """Reject unknown names: a typo must not silently become another field."""
    fields = {field.name for field in dataclasses.fields(Config)}
    for name in names:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            fail(f"unknown option '{name}' in {source}; {hint}(see --help for all options)")


def parse_config(args: Optional[list[str]] = None) -> Config:
    args = sys.argv[1:] if args is None else args
    flags = [arg[2:].split("=")[0] for arg in args if arg.startswith("--")]
    check_option_names([flag for flag in flags if flag not in ("config_path", "help")], "the command line")
    for index, arg in enumerate(args):
        if arg.startswith("--config_path"):
            path = arg.split("=", 1)[1] if "=" in arg else args[index + 1]
            if not os.path.isfile(path):
                fail(f"config file {path} does not exist")
            with open(path) as file:
                check_option_names(list(pyrallis.cfgparsing.load_config(file) or {}), path)
    # pyrallis accepts abbreviations (--num_critic=5 would set num_critics): switch them off
    parser = pyrallis.argparsing.ArgumentParser(config_class=Config, allow_abbrev=False)
    config = parser.parse_args(args)
    check_config(config)
    return config


def check_config(config: Config) -> None:
    positive = [
        "hidden_dim",
        "num_critics",
        "batch_size",
        "num_updates_on_epoch",
        "eval_episodes",
        "eval_every",
        "num_seeds",
    ]
    for name in positive:
        if getattr(config, name) < 1:
            fail(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.num_epochs < 0:
        fail(f"num_epochs must be at least 0, got {config.num_epochs}")
    if not 0.0 <= config.gamma <= 1.0 or not 0.0 < config.tau <= 1.0:
        fail(f"need 0 <= gamma <= 1 and 0 < tau <= 1, got gamma={config.gamma}, tau={config.tau}")
    if (config.resume or config.eval_only) and config.checkpoints_path is None:
        fail("resume and eval_only read the run in checkpoints_path: set --checkpoints_path")


# --- Data ---


class Batch(NamedTuple):
    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_obs: jax.Array
    dones: jax.Array


# D4RL's normalised score: 100 * (return - random) / (expert - random), per domain
D4RL_REF_MIN_SCORE = {"halfcheetah": -280.178953, "hopper": -20.272305, "walker2d": 1.629008}
D4RL_REF_MAX_SCORE = {"halfcheetah": 12135.0, "hopper": 3234.3, "walker2d": 4592.3}
# D4RL v2 data was collected in gym's v3 MuJoCo envs; the v4 envs have the same models on current bindings
D4RL_EVAL_ENV = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
D4RL_LEVELS = ["random", "medium", "expert", "medium-replay", "medium-expert", "full-replay"]
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{}"


class Task(NamedTuple):
    """What the dataset defines besides its transitions."""

    make_eval_env: Callable[[], gym.Env]
    ref_min_score: float
    ref_max_score: float


def d4rl_path(env_name: str) -> str:
    """The file d4rl itself would read, e.g. ~/.d4rl/datasets/halfcheetah_medium_replay-v2.hdf5."""
    domain, level = env_name.removesuffix("-v2").split("-", 1)
    dataset_dir = os.environ.get("D4RL_DATASET_DIR", os.path.expanduser("~/.d4rl/datasets"))
    return os.path.join(dataset_dir, f"{domain}_{level.replace('-', '_')}-v2.hdf5")


def download(url: str, path: str) -> None:
    """Download to a temporary name, then rename: an interrupted download leaves no corrupt file."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            size = int(response.headers.get("Content-Length", 0)) or None
            with open(path + ".part", "wb") as file, tqdm(total=size, unit="B", unit_scale=True, desc=url) as bar:
                while chunk := response.read(1 << 20):
                    bar.update(file.write(chunk))
    except (urllib.error.URLError, OSError) as error:
        fail(
            f"dataset file {path} is missing and downloading {url} failed ({error}); "
            f"download it where you can and place it at {path} (or set D4RL_DATASET_DIR, or pass --dataset_path)"
        )
    os.replace(path + ".part", path)


def qlearning_dataset(path: str) -> dict[str, np.ndarray]:
    """Transitions exactly as d4rl's `qlearning_dataset`: next_obs is the following row,
    the last row and rows flagged `timeouts` are dropped, dones = terminals."""
    keys = ["observations", "actions", "rewards", "terminals", "timeouts"]
    with h5py.File(path, "r") as file:
        missing = [key for key in keys if key not in file]
        if missing:
            fail(f"{path} lacks {missing}: a D4RL-layout HDF5 needs the datasets {keys}")
        data = {key: file[key][()] for key in keys}
    keep = ~data["timeouts"][:-1].astype(bool)
    return {
        "obs": data["observations"][:-1][keep],
        "actions": data["actions"][:-1][keep],
        "rewards": data["rewards"][:-1][keep],
        "next_obs": data["observations"][1:][keep],
        "dones": data["terminals"][:-1][keep],
    }


def load_minari(dataset_id: str) -> tuple[dict[str, np.ndarray], Task]:
    import minari  # only needed for Minari ids

    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:
        fail(f"cannot load Minari dataset {dataset_id} ({error}); get it with `minari download {dataset_id}`")
    # Minari stores every episode's final observation, so no transition is dropped
    episodes = list(dataset.iterate_episodes())
    transitions = {
        "obs": np.concatenate([episode.observations[:-1] for episode in episodes]),
        "actions": np.concatenate([episode.actions for episode in episodes]),
        "rewards": np.concatenate([episode.rewards for episode in episodes]),
        "next_obs": np.concatenate([episode.observations[1:] for episode in episodes]),
        "dones": np.concatenate([episode.terminations for episode in episodes]),
    }
    # reference scores are dataset metadata (where minari.get_normalized_score reads them), NaN if absent
    metadata = dataset.storage.metadata
    ref_scores = (metadata.get("ref_min_score", float("nan")), metadata.get("ref_max_score", float("nan")))
    return transitions, Task(lambda: dataset.recover_environment(eval_env=True), *ref_scores)


def load_task(config: Config) -> tuple[dict[str, np.ndarray], Task]:
    """The transitions (host arrays) and the eval env and reference scores of config.env_name."""
    if "/" in config.env_name and config.dataset_path is None:
        return load_minari(config.env_name)
    domain = config.env_name.split("-")[0]
    eval_env = config.eval_env or D4RL_EVAL_ENV.get(domain)
    if eval_env is None:
        fail(f"no default eval env for env_name {config.env_name}: set --eval_env (a gymnasium id)")
    if config.dataset_path is not None:
        path = config.dataset_path
        if not os.path.isfile(path):
            fail(f"dataset_path {path} does not exist")
    else:
        if config.env_name not in [f"{d}-{level}-v2" for d in D4RL_EVAL_ENV for level in D4RL_LEVELS]:
            fail(f"unknown D4RL dataset {config.env_name}: use e.g. halfcheetah-medium-v2, or set --dataset_path")
        path = d4rl_path(config.env_name)
        if not os.path.isfile(path):
            download(D4RL_URL.format(os.path.basename(path)), path)
    nan = float("nan")  # datasets outside the three D4RL domains have no reference scores
    task = Task(partial(gym.make, eval_env), D4RL_REF_MIN_SCORE.get(domain, nan), D4RL_REF_MAX_SCORE.get(domain, nan))
    return qlearning_dataset(path), task


def check_dataset(transitions: dict[str, np.ndarray], env: gym.Env, config: Config) -> None:
    """Fail before any compile if the data cannot train an agent for `env`."""
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    dataset_size, dataset_obs_dim = transitions["obs"].shape
    dataset_action_dim = transitions["actions"].shape[1]
    if (dataset_obs_dim, dataset_action_dim) != (obs_dim, action_dim):
        fail(
            f"dataset has obs/action dims {dataset_obs_dim}/{dataset_action_dim} but eval env "
            f"{env.spec.id} has {obs_dim}/{action_dim}: check env_name, dataset_path and eval_env"
        )
    if config.batch_size > dataset_size:
        fail(f"batch_size {config.batch_size} is larger than the dataset ({dataset_size} transitions)")


def to_device(transitions: dict[str, np.ndarray]) -> Batch:
    return Batch(**{key: jnp.asarray(value, dtype=jnp.float32) for key, value in transitions.items()})


def take_rows(dataset: Batch, indices: jax.Array) -> Batch:
    return jax.tree.map(lambda array: array[indices], dataset)


def sample_batch(key: jax.Array, dataset: Batch, batch_size: int) -> Batch:
    return take_rows(dataset, jax.random.randint(key, (batch_size,), 0, dataset.rewards.shape[0]))


# --- Networks ---


def uniform_init(bound: float) -> Callable:
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# PyTorch's default Linear init, U(+-1/sqrt(fan_in)), as the EDAC and CORL code use
torch_kernel_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# EDAC's init: hidden biases 0.1, small uniform output layers
hidden_bias_init = jax.nn.initializers.constant(0.1)


class Actor(nn.Module):
    action_dim: int
    hidden_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for _ in range(3):
            x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=torch_kernel_init, bias_init=hidden_bias_init)(x))
        mean = nn.Dense(self.action_dim, kernel_init=uniform_init(1e-3), bias_init=uniform_init(1e-3))(x)
        log_std = nn.Dense(self.action_dim, kernel_init=uniform_init(1e-3), bias_init=uniform_init(1e-3))(x)
        # clipped as in the EDAC and CORL code, so the policy neither collapses nor explodes
        return mean, jnp.clip(log_std, -5.0, 2.0)


class Critic(nn.Module):
    hidden_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, actions], axis=-1)
        for _ in range(3):
            x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=torch_kernel_init, bias_init=hidden_bias_init)(x))
        q_values = nn.Dense(1, kernel_init=uniform_init(3e-3), bias_init=uniform_init(3e-3))(x)
        return q_values.squeeze(-1)


class EnsembleCritic(nn.Module):
    """N independent critics with stacked parameters: one batched matmul per layer."""

    hidden_dim: int
    num_critics: int

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden_dim)(obs, actions)  # [num_critics, batch_size]


# --- Train state ---


class CriticTrainState(TrainState):
    target_params: Any


def create_train_states(key: jax.Array, obs_dim: int, action_dim: int, config: Config) -> tuple:
    actor_key, critic_key = jax.random.split(key)
    obs, actions = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_module = Actor(action_dim, config.hidden_dim)
    actor = TrainState.create(
        apply_fn=actor_module.apply,
        params=actor_module.init(actor_key, obs),
        tx=optax.adam(config.actor_learning_rate),
    )
    critic_module = EnsembleCritic(config.hidden_dim, config.num_critics)
    critic_params = critic_module.init(critic_key, obs, actions)
    critic = CriticTrainState.create(
        apply_fn=critic_module.apply,
        params=critic_params,
        # a copy, not an alias: train_epoch donates the buffers of its state
        target_params=jax.tree.map(jnp.copy, critic_params),
        tx=optax.adam(config.critic_learning_rate),
    )
    # log_alpha starts at 0 (alpha = 1), as in CORL
    alpha = TrainState.create(
        apply_fn=None, params={"log_alpha": jnp.array(0.0)}, tx=optax.adam(config.alpha_learning_rate)
    )
    return actor, critic, alpha


# --- Policy ---


def sample_action(noise: jax.Array, mean: jax.Array, log_std: jax.Array, max_action: float) -> tuple:
    """Reparameterised tanh-Gaussian sample from standard normal `noise` (shaped as `mean`), scaled to
    [-max_action, max_action], and its log-prob."""
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)): exact and stable, where CORL's
    # log(1 - tanh(u)^2 + 1e-6) saturates; like CORL, the max_action scaling adds no term
    log_det_jacobian = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    log_probs = (gaussian_log_prob - log_det_jacobian).sum(axis=-1)
    return jnp.tanh(pre_tanh) * max_action, log_probs


# --- Updates ---


def update_alpha(
    noise: jax.Array, actor: TrainState, alpha: TrainState, batch: Batch, max_action: float
) -> tuple[TrainState, dict[str, jax.Array]]:
    mean, log_std = actor.apply_fn(actor.params, batch.obs)
    # the actor update's noise: both losses see one policy sample, and XLA merges the two identical
    # actor forward passes into one (the compiled update has as many matmuls without this one)
    _, log_probs = sample_action(noise, mean, log_std, max_action)
    target_entropy = -batch.actions.shape[-1]

    def alpha_loss_fn(alpha_params: dict[str, jax.Array]) -> jax.Array:
        return -(alpha_params["log_alpha"] * (log_probs + target_entropy)).mean()

    loss, grads = jax.value_and_grad(alpha_loss_fn)(alpha.params)
    alpha = alpha.apply_gradients(grads=grads)
    return alpha, {"alpha_loss": loss, "alpha": jnp.exp(alpha.params["log_alpha"])}


def update_actor(
    noise: jax.Array, actor: TrainState, critic: CriticTrainState, alpha: jax.Array, batch: Batch, max_action: float
) -> tuple[TrainState, dict[str, jax.Array]]:
    def actor_loss_fn(actor_params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        mean, log_std = actor.apply_fn(actor_params, batch.obs)
        actions, log_probs = sample_action(noise, mean, log_std, max_action)
        q_values = critic.apply_fn(critic.params, batch.obs, actions)  # [num_critics, batch_size]
        loss = (alpha * log_probs - q_values.min(axis=0)).mean()
        # population std over the ensemble (0 for N=1); CORL's torch.std is the sample std
        info = {"actor_loss": loss, "batch_entropy": -log_probs.mean(), "q_policy_std": q_values.std(axis=0).mean()}
        return loss, info

    grads, info = jax.grad(actor_loss_fn, has_aux=True)(actor.params)
    return actor.apply_gradients(grads=grads), info


def update_critic(
    next_noise: jax.Array,
    actor: TrainState,
    critic: CriticTrainState,
    alpha: jax.Array,
    batch: Batch,
    gamma: float,
    max_action: float,
) -> tuple[CriticTrainState, dict[str, jax.Array]]:
    mean, log_std = actor.apply_fn(actor.params, batch.next_obs)
    next_actions, next_log_probs = sample_action(next_noise, mean, log_std, max_action)
    next_q_values = critic.apply_fn(critic.target_params, batch.next_obs, next_actions)  # [num_critics, batch_size]
    next_values = next_q_values.min(axis=0) - alpha * next_log_probs
    targets = batch.rewards + gamma * (1.0 - batch.dones) * next_values

    def critic_loss_fn(critic_params: Any) -> jax.Array:
        q_values = critic.apply_fn(critic_params, batch.obs, batch.actions)  # [num_critics, batch_size]
        # MSE over the batch, summed over critics (CORL): each critic's gradient does not shrink with N
        return ((q_values - targets) ** 2).mean(axis=1).sum()

    loss, grads = jax.value_and_grad(critic_loss_fn)(critic.params)
    return critic.apply_gradients(grads=grads), {"critic_loss": loss}


def update_target(critic: CriticTrainState, tau: float) -> CriticTrainState:
    return critic.replace(target_params=optax.incremental_update(critic.params, critic.target_params, tau))


def random_action_q_std(key: jax.Array, critic: CriticTrainState, batch: Batch, max_action: float) -> jax.Array:
    """Ensemble spread on uniform random actions: large when the critics disagree off the data."""
    actions = jax.random.uniform(key, batch.actions.shape, minval=-max_action, maxval=max_action)
    return critic.apply_fn(critic.params, batch.obs, actions).std(axis=0).mean()  # [num_critics, batch_size] -> ()


# --- Training epoch ---


class SACNState(NamedTuple):
    actor: TrainState
    critic: CriticTrainState
    alpha: TrainState
    key: jax.Array


class UpdateNoise(NamedTuple):
    """The random numbers of one update (stacked on a leading [num_updates_on_epoch] axis for an epoch)."""

    indices: jax.Array  # [batch_size] the dataset rows of the batch
    policy_noise: jax.Array  # [batch_size, action_dim] standard normal: the policy's actions on obs
    next_noise: jax.Array  # [batch_size, action_dim] standard normal: its actions on next_obs


def draw_epoch_noise(key: jax.Array, dataset: Batch, config: Config) -> UpdateNoise:
    """Every update's random numbers for one epoch, in three calls before the update loop rather than
    a few inside each update: on a CPU, XLA runs each threefry call as a rolled loop of small kernels,
    two thirds of the kernels of a small-network update (README.md, "Speed"). Memory: (1 + 2 *
    action_dim) * batch_size * num_updates_on_epoch numbers per seed, 13 MB for halfcheetah's defaults."""
    index_key, policy_key, next_key = jax.random.split(key, 3)
    shape = (config.num_updates_on_epoch, config.batch_size)
    noise_shape = (*shape, dataset.actions.shape[-1])
    return UpdateNoise(
        indices=jax.random.randint(index_key, shape, 0, dataset.rewards.shape[0]),
        policy_noise=jax.random.normal(policy_key, noise_shape),
        next_noise=jax.random.normal(next_key, noise_shape),
    )


def create_sac_n_state(obs_dim: int, action_dim: int, config: Config) -> SACNState:
    """One agent per seed, stacked on a leading [num_seeds] axis. Seed i starts from
    train_seed + i, bit for bit as a single-seed run with that train_seed (see batch_seeds)."""

    def create(seed: jax.Array) -> SACNState:
        init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
        return SACNState(*create_train_states(init_key, obs_dim, action_dim, config), train_key)

    state = jax.vmap(create)(jnp.arange(config.train_seed, config.train_seed + config.num_seeds))
    # strong dtypes only: a weakly typed leaf (the step counters start as Python ints) comes back
    # from the first epoch strongly typed, and the changed argument types would recompile the epoch
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, leaf.dtype), state)


def update_sac_n(
    state: SACNState, dataset: Batch, noise: UpdateNoise, config: Config
) -> tuple[SACNState, dict[str, jax.Array]]:
    batch = take_rows(dataset, noise.indices)
    # CORL's order, alpha -> actor -> critic, which it found better than critic -> actor -> alpha
    alpha, alpha_info = update_alpha(noise.policy_noise, state.actor, state.alpha, batch, config.max_action)
    alpha_value = jnp.exp(alpha.params["log_alpha"])
    actor, actor_info = update_actor(
        noise.policy_noise, state.actor, state.critic, alpha_value, batch, config.max_action
    )
    critic, critic_info = update_critic(
        noise.next_noise, actor, state.critic, alpha_value, batch, config.gamma, config.max_action
    )
    critic = update_target(critic, config.tau)
    return SACNState(actor, critic, alpha, state.key), {**alpha_info, **actor_info, **critic_info}


def scan_updates(state: SACNState, dataset: Batch, config: Config) -> tuple[SACNState, dict[str, jax.Array]]:
    """One agent's epoch: `config.num_updates_on_epoch` updates in one loop; metrics are epoch means."""
    key, noise_key, batch_key, random_key = jax.random.split(state.key, 4)
    epoch_noise = draw_epoch_noise(noise_key, dataset, config)
    state, infos = jax.lax.scan(lambda state, noise: update_sac_n(state, dataset, noise, config), state, epoch_noise)
    metrics = jax.tree.map(jnp.mean, infos)
    batch = sample_batch(batch_key, dataset, config.batch_size)
    # a diagnostic, so one batch per epoch rather than a critic pass in every update
    metrics["q_random_std"] = random_action_q_std(random_key, state.critic, batch, config.max_action)
    return state._replace(key=key), metrics


@partial(jax.jit, static_argnames="config", donate_argnames="state")
def train_epoch(state: SACNState, dataset: Batch, config: Config) -> tuple[SACNState, dict[str, jax.Array]]:
    """An epoch of every seed's agent in one compiled call, vmapped over the seed axis (or, with
    batch_seeds=false, looped over it: each seed then runs the single-seed program); the dataset is an
    argument (a captured array would be baked into the program) shared by all seeds."""
    seed_epoch = partial(scan_updates, dataset=dataset, config=config)
    if config.batch_seeds and config.num_seeds > 1:
        return jax.vmap(seed_epoch)(state)
    # one seed loops once too: a single-seed run is then the very program each seed of batch_seeds=false runs
    return jax.lax.map(seed_epoch, state)


def shard_seeds(state: SACNState, dataset: Batch, num_seeds: int) -> tuple[SACNState, Batch]:
    """Split the seed axis over the devices (one seed group per GPU); every device holds the dataset."""
    num_devices = math.gcd(num_seeds, jax.device_count())
    if num_devices == 1:  # XLA would return the state unsharded, and the next epoch would recompile
        return state, dataset
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("seeds",))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds")))
    dataset = jax.device_put(dataset, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return state, dataset


# --- Evaluation ---


@jax.jit
def deterministic_action(actor: TrainState, obs: jax.Array, max_action: float) -> jax.Array:
    """Every seed's tanh(mean) action; obs is [num_seeds, num_envs, obs_dim]."""
    mean, _ = jax.vmap(actor.apply_fn)(actor.params, obs)
    return jnp.tanh(mean) * max_action


def evaluate(actor: TrainState, envs: list[list[gym.Env]], seed: int, max_action: float) -> np.ndarray:
    """One episode per env, envs[i][j] for seed i's agent; all are stepped in lockstep so the actor
    runs once per step, and every seed sees the same start states. Returns [num_seeds, num_episodes]."""
    obs = np.stack([[env.reset(seed=seed + index)[0] for index, env in enumerate(row)] for row in envs])
    returns, done = np.zeros(obs.shape[:2]), np.zeros(obs.shape[:2], dtype=bool)
    while not done.all():
        actions = np.asarray(deterministic_action(actor, obs, max_action))
        for i, j in zip(*np.nonzero(~done)):
            obs[i, j], reward, terminated, truncated, _ = envs[i][j].step(actions[i, j])
            returns[i, j] += reward
            done[i, j] = terminated or truncated
    return returns


def normalized_score(returns: np.ndarray, task: Task) -> np.ndarray:
    return 100 * (returns - task.ref_min_score) / (task.ref_max_score - task.ref_min_score)


def eval_metrics(returns: np.ndarray, task: Task, seeds: list[int]) -> dict[str, float]:
    """Means and stds over all episodes of all seeds; with several seeds, also each seed's
    scores and the std of the seed means (the paper's "mean +- std over seeds")."""
    scores = normalized_score(returns, task)
    metrics = {
        "eval/return_mean": returns.mean(),
        "eval/return_std": returns.std(),
        "eval/normalized_score_mean": scores.mean(),
        "eval/normalized_score_std": scores.std(),
    }
    if len(seeds) > 1:
        metrics["eval/normalized_score_seed_std"] = scores.mean(axis=1).std()
        for seed, seed_returns, seed_scores in zip(seeds, returns, scores):
            metrics[f"eval/seed_{seed}/return_mean"] = seed_returns.mean()
            metrics[f"eval/seed_{seed}/normalized_score_mean"] = seed_scores.mean()
    return metrics


# --- Checkpoints and results ---


@dataclass
class RunInfo:
    """What a resumed run needs besides the train state."""

    name: str
    wandb_id: str
    epoch: int = 0
    # seconds spent training, summed over resumed sessions: the x-axis of score vs wall-clock plots
    train_seconds: float = 0.0


def save_checkpoint(directory: str, state: SACNState, run: RunInfo) -> None:
    """Every array of the train state (parameters, optimizer states, RNG keys) and the run info,
    written to a temporary name then renamed, so a kill mid-write never corrupts the last good one."""
    path = os.path.join(directory, "checkpoint.npz")
    with open(path + ".tmp", "wb") as file:
        np.savez(file, *jax.device_get(jax.tree.leaves(state)), run=json.dumps(dataclasses.asdict(run)))
    os.replace(path + ".tmp", path)


def load_checkpoint(directory: str, template: SACNState) -> tuple[SACNState, RunInfo]:
    """The train state saved in `directory`, shaped like `template` (a freshly made state)."""
    path = os.path.join(directory, "checkpoint.npz")
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}: train with --checkpoints_path={directory} first")
    template_leaves, treedef = jax.tree.flatten(template)
    with np.load(path) as data:
        leaves = [data[f"arr_{index}"] for index in range(len(template_leaves))]
        run = RunInfo(**json.loads(str(data["run"])))
    for leaf, template_leaf in zip(leaves, template_leaves):
        if leaf.shape != template_leaf.shape:
            fail(f"checkpoint {path} does not match the config: array shape {leaf.shape}, want {template_leaf.shape}")
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves]), run


def check_resumable(config: Config) -> None:
    """Resuming with other hyperparameters would silently splice two different runs."""
    path = os.path.join(config.checkpoints_path, "config.yaml")
    if not os.path.isfile(path):
        fail(f"no saved run in {config.checkpoints_path} (no config.yaml): train with --checkpoints_path first")
    with open(path) as file:
        saved = pyrallis.cfgparsing.load_config(file)
    # what only changes when the run ends or how it is evaluated
    may_change = {"num_epochs", "resume", "eval_only", "checkpoints_path", "eval_episodes", "eval_every", "eval_seed"}
    changed = [name for name, value in dataclasses.asdict(config).items() if name not in may_change]
    changed = [name for name in changed if saved.get(name) != getattr(config, name)]
    if changed:
        fail(
            f"config differs from the saved run in {config.checkpoints_path} in {changed}: resume with the same values"
        )


def append_scores(path: str, run: RunInfo, seeds: list[int], returns: np.ndarray, task: Task) -> None:
    """One CSV row per seed and evaluation: the results of a run without wandb."""
    scores = normalized_score(returns, task)
    new_file = not os.path.isfile(path)
    with open(path, "a", newline="") as file:
        writer = csv.writer(file)
        if new_file:
            writer.writerow(["epoch", "seed", "train_seconds", "return_mean", "return_std", "score_mean", "score_std"])
        for seed, seed_returns, seed_scores in zip(seeds, returns, scores):
            writer.writerow(
                [run.epoch, seed, f"{run.train_seconds:.2f}", seed_returns.mean(), seed_returns.std()]
                + [seed_scores.mean(), seed_scores.std()]
            )


def summarize_scores(path: str) -> str:
    """CORL's two numbers: the last and the best normalised score, mean +- std over seeds."""
    with open(path) as file:
        rows = list(csv.DictReader(file))
    by_seed: dict[str, list[float]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], []).append(float(row["score_mean"]))
    last = np.array([scores[-1] for scores in by_seed.values()])
    best = np.array([max(scores) for scores in by_seed.values()])
    return (
        f"normalized score over {len(by_seed)} seed(s): last {last.mean():.1f} +- {last.std():.1f}, "
        f"best {best.mean():.1f} +- {best.std():.1f} (scores in {path})"
    )


# --- Main ---


class StopRequest:
    """SIGINT/SIGTERM become a flag read after each epoch, so the run checkpoints before it exits."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, self.request)

    def request(self, signal_number: int, frame: Any) -> None:
        if self.signal_name is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signal_number).name


def check_finite(metrics: dict[str, np.ndarray], epoch: int, seeds: list[int], config: Config) -> None:
    for name, values in metrics.items():
        bad_seeds = [seed for seed, value in zip(seeds, values) if not np.isfinite(value)]
        if bad_seeds:
            kept = f"; the last good checkpoint is in {config.checkpoints_path}" if config.checkpoints_path else ""
            fail(f"non-finite {name} at epoch {epoch}, seed {bad_seeds[0]}: training stopped{kept}")


def train(config: Config, state: SACNState, dataset: Batch, task: Task, eval_envs: list, run: RunInfo) -> None:
    results_dir = config.checkpoints_path or os.path.join("results", run.name)
    os.makedirs(results_dir, exist_ok=True)
    if config.checkpoints_path is not None:
        with open(os.path.join(config.checkpoints_path, "config.yaml"), "w") as file:
            pyrallis.dump(dataclasses.replace(config, resume=False), file)
    wandb.init(
        project=config.project,
        group=config.group,
        name=run.name,
        id=run.wandb_id,
        resume="allow",
        config=dataclasses.asdict(config),
    )
    stop, seeds = StopRequest(), list(range(config.train_seed, config.train_seed + config.num_seeds))
    progress = trange(run.epoch + 1, config.num_epochs + 1, initial=run.epoch, total=config.num_epochs, desc=run.name)
    postfix: dict[str, str] = {}
    for epoch in progress:
        start = time.perf_counter()
        state, metrics = train_epoch(state, dataset, config)
        metrics = jax.device_get(metrics)  # the one host sync of the epoch: [num_seeds] per metric
        seconds = time.perf_counter() - start
        check_finite(metrics, epoch, seeds, config)
        run.epoch, run.train_seconds = epoch, run.train_seconds + seconds
        log = {name: values.mean() for name, values in metrics.items()}  # means over seeds
        log["updates_per_second"] = config.num_updates_on_epoch / seconds  # the first epoch includes the compile
        if epoch % config.eval_every == 0 or epoch == config.num_epochs:
            returns = evaluate(state.actor, eval_envs, config.eval_seed, config.max_action)
            log.update(eval_metrics(returns, task, seeds))
            append_scores(os.path.join(results_dir, "scores.csv"), run, seeds, returns, task)
            postfix["score"] = f"{log['eval/normalized_score_mean']:.1f}"
        if config.checkpoints_path is not None and (
            epoch == config.num_epochs or "score" in postfix or stop.signal_name
        ):
            save_checkpoint(config.checkpoints_path, state, run)
        wandb.log({"epoch": epoch, **log}, step=epoch)
        postfix["updates/s"] = f"{log['updates_per_second']:.0f}"
        progress.set_postfix(postfix)
        if stop.signal_name is not None:
            wandb.finish(exit_code=1)
            fail(f"stopped by {stop.signal_name} after epoch {epoch}; continue with --resume=true")
    wandb.finish()
    print(summarize_scores(os.path.join(results_dir, "scores.csv")))


def main(config: Config) -> None:
    transitions, task = load_task(config)
    eval_envs = [[task.make_eval_env() for _ in range(config.eval_episodes)] for _ in range(config.num_seeds)]
    check_dataset(transitions, eval_envs[0][0], config)
    dataset = to_device(transitions)
    del transitions  # the device copy is all that training reads; free the host copy
    state = create_sac_n_state(dataset.obs.shape[1], dataset.actions.shape[1], config)
    run_id = uuid.uuid4().hex[:8]
    run = RunInfo(name=f"{config.name}-{config.env_name}-{run_id}", wandb_id=run_id)
    if config.resume or config.eval_only:
        check_resumable(config)
        state, run = load_checkpoint(config.checkpoints_path, state)
    # lax.map runs the seeds one after another: a split seed axis would not run in parallel
    state, dataset = shard_seeds(state, dataset, config.num_seeds if config.batch_seeds else 1)
    if config.eval_only:
        seeds = list(range(config.train_seed, config.train_seed + config.num_seeds))
        returns = evaluate(state.actor, eval_envs, config.eval_seed, config.max_action)
        for name, value in eval_metrics(returns, task, seeds).items():
            print(f"{name}: {value:.3f}")
        return
    train(config, state, dataset, task, eval_envs, run)


if __name__ == "__main__":
    main(parse_config())
