"""SAC-N for offline RL on the D4RL Gym-MuJoCo datasets, in JAX + Equinox: Soft Actor-Critic whose pessimistic value
is the minimum over an ensemble of N critics (An et al. 2021, arXiv:2110.01548). The update follows CORL's `sac_n.py`
(README.md lists each difference); `sac_n_jax_flax.py` is this script in Flax: `diff` the two to see the framework.

    python sac_n_jax_eqx.py --config_path configs/halfcheetah.yaml
"""

import dataclasses
import difflib
import json
import math
import os
import re
import signal
import sys
import time
import urllib.request
import warnings
from functools import partial
from typing import Any, Callable, NamedTuple, NoReturn, Optional

import equinox as eqx
import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import optax
import pyrallis
import wandb
import yaml
from tqdm.auto import trange


# --- Config ---
@dataclasses.dataclass(frozen=True)
class Config:
    project: str = "SAC-N-JAX"  # wandb project name
    group: str = "SAC-N"  # wandb group name
    name: str = "SAC-N"  # wandb run name prefix; env_name and a short random id are appended at run time
    hidden_dim: int = 256  # width of every hidden layer of the actor and of each critic (3 hidden layers each)
    num_critics: int = 10  # N: number of critics in the Q-ensemble
    gamma: float = 0.99  # discount factor
    tau: float = 5e-3  # Polyak coefficient of the target critics, applied after every update
    actor_learning_rate: float = 3e-4  # Adam learning rate of the actor
    critic_learning_rate: float = 3e-4  # Adam learning rate of the critics
    alpha_learning_rate: float = 3e-4  # Adam learning rate of log_alpha, the log of the entropy temperature
    max_action: float = 1.0  # actions are tanh-squashed and scaled to [-max_action, max_action]
    env_name: str = "halfcheetah-medium-v2"  # D4RL name, or Minari id (mujoco/halfcheetah/medium-v0)
    dataset_path: Optional[str] = None  # HDF5 file in the D4RL layout to read instead of the one env_name names
    eval_env: Optional[str] = None  # gymnasium id of the evaluation env; default: the v4 env of env_name's domain
    batch_size: int = 256  # transitions per gradient update
    num_epochs: int = 3000  # training epochs
    num_updates_on_epoch: int = 1000  # gradient updates per epoch (all of them run inside one jitted call)
    eval_episodes: int = 10  # episodes per evaluation
    eval_every: int = 5  # evaluate every `eval_every` epochs (not updates), and after the last epoch
    train_seed: int = 10  # seed of network init and batch sampling; seed i of a multi-seed run uses train_seed + i
    num_seeds: int = 1  # independent agents trained at once in one process (vmapped, sharded over devices)
    eval_seed: int = 42  # seed of the evaluation episodes' start states (the same at every evaluation)
    checkpoints_path: Optional[str] = None  # directory of config, checkpoints, scores.csv; null: results/<run name>
    resume: bool = False  # continue the run saved in checkpoints_path, in its wandb run, as if never stopped
    eval_only: bool = False  # only evaluate the agents saved in checkpoints_path, then exit


FIELD_TYPES = {field.name: field.type for field in dataclasses.fields(Config)}
# what a command-line string or YAML value of each type must look like: pyrallis alone reads 3.5 as 3, maybe as true
PATTERNS = {int: r"[+-]?\d+", float: r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", bool: r"(?i)true|false"}
READERS = {int: int, float: float, bool: lambda text: text.lower() == "true"}
COUNTS = ["hidden_dim", "num_critics", "batch_size", "num_epochs", "num_updates_on_epoch", "eval_episodes"]
POSITIVE = ["tau", "actor_learning_rate", "critic_learning_rate", "alpha_learning_rate", "max_action"]
# (option, holds(value, config), what the option must be): the checks of a config, before any data loads
OPTION_CHECKS = [
    *((name, lambda value, config: value >= 1, "at least 1") for name in [*COUNTS, "eval_every", "num_seeds"]),
    *((name, lambda value, config: 0 < value < math.inf, "positive") for name in POSITIVE),
    ("gamma", lambda value, config: 0 <= value <= 1, "in [0, 1]"),
    ("tau", lambda value, config: value <= 1, "at most 1"),
    ("train_seed", lambda value, config: 0 <= value <= 2**32 - config.num_seeds, "in [0, 2**32 - num_seeds]"),
    ("eval_seed", lambda value, config: 0 <= value <= 2**32 - config.eval_episodes, "in [0, 2**32 - eval_episodes]"),
    ("env_name", lambda value, config: value in D4RL_NAMES or "/" in value or config.dataset_path, "a D4RL name"),
    ("eval_env", lambda value, config: value is None or value in gym.registry, "a gymnasium id such as Hopper-v4"),
    ("eval_env", lambda value, config: value or "/" in config.env_name or d4rl_domain(config), "set: no D4RL domain"),
    ("checkpoints_path", lambda value, config: value or not (config.resume or config.eval_only), "set to resume"),
    ("checkpoints_path", lambda value, config: not (value and os.path.isfile(value)), "a directory, not a file"),
]


def fail(message: str) -> NoReturn:
    raise SystemExit(f"{os.path.basename(__file__)}: error: {' '.join(message.split())}")


def parse_value(name: Any, value: Any, source: str) -> Any:
    """A command-line string or YAML value as its field's type; exact names (argparse takes --num_critic=5)."""
    kind, text = FIELD_TYPES.get(name), json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    if kind is None:
        close = difflib.get_close_matches(str(name), FIELD_TYPES, n=1)
        fail(f"unknown option '{name}' in {source}; {f'did you mean {close[0]!r}? ' if close else ''}(see --help)")
    if not re.fullmatch(PATTERNS.get(kind, ".*"), text):
        fail(f"option {name} must be of type {kind.__name__}, got '{text}' in {source}")
    return None if kind is not str and text == "null" else READERS.get(kind, str)(text)


def parse_config(args: Optional[list[str]] = None) -> Config:
    """An optional YAML file (--config_path), overridden by --option=value or --option value flags."""
    args = sys.argv[1:] if args is None else list(args)
    if "-h" in args or "--help" in args:  # pyrallis prints every field with its comment
        pyrallis.argparsing.ArgumentParser(config_class=Config).parse_args(["--help"])
    flags = {}
    while args:  # a word that is no --option becomes an unknown option below
        name, has_value, value = args.pop(0).removeprefix("--").partition("=")
        flags[name] = value if has_value or not args else args.pop(0)
    path = flags.pop("config_path", None)
    try:
        with open(path or os.devnull) as file:
            values = yaml.safe_load(file) if path else {}
    except (OSError, yaml.YAMLError) as error:
        fail(f"cannot read config file {path}: {error}")
    if not isinstance(values, dict):
        fail(f"config file {path} must be a mapping of option: value, not {values!r}")
    values = {name: parse_value(name, value, path) for name, value in values.items()}
    values.update({name: parse_value(name, value, "the command line") for name, value in flags.items()})
    config = Config(**values)
    for name, holds, requirement in OPTION_CHECKS:
        if not holds(getattr(config, name), config):
            fail(f"option {name} must be {requirement}, got {getattr(config, name)!r}")
    return config


# --- Data ---
class Batch(NamedTuple):
    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_obs: jax.Array
    dones: jax.Array


# D4RL v2 data was collected in gym's v3 MuJoCo envs; the v4 envs have the same models on current bindings
D4RL_EVAL_ENV = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
# the returns of a random and an expert policy, for D4RL's score 100 * (return - random) / (expert - random)
D4RL_REF_SCORES = {"halfcheetah": (-280.178953, 12135), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}
D4RL_LEVELS = ["random", "medium", "expert", "medium-replay", "medium-expert", "full-replay"]
D4RL_NAMES = [f"{domain}-{level}-v2" for domain in D4RL_EVAL_ENV for level in D4RL_LEVELS]
D4RL_KEYS = ["observations", "actions", "rewards", "terminals", "timeouts"]


def d4rl_domain(config: Config) -> Optional[str]:
    return next((domain for domain in D4RL_EVAL_ENV if config.env_name.startswith(f"{domain}-")), None)


def qlearning_dataset(path: str) -> dict[str, np.ndarray]:
    """Transitions as d4rl's `qlearning_dataset`: next_obs is the next row; the last and `timeouts` rows are dropped."""
    if not os.path.isfile(path):
        fail(f"dataset file {path} {'is a directory' if os.path.isdir(path) else 'does not exist'}")
    try:
        with h5py.File(path, "r") as file:
            data = {key: np.asarray(file[key]) for key in D4RL_KEYS if key in file}
    except (OSError, TypeError, ValueError) as error:  # not HDF5, truncated, unreadable
        fail(f"cannot read {path} as HDF5 ({error}): download it again")
    shapes = {key: data[key].shape if key in data else "missing" for key in D4RL_KEYS}
    ranks = [len(shape) if key in data else 0 for key, shape in shapes.items()]
    if ranks != [2, 2, 1, 1, 1] or len({shape[0] for shape in shapes.values()}) > 1:
        fail(f"{path} is not in the D4RL layout, [rows, dim] observations and actions, [rows] rest: it has {shapes}")
    if flags := [key for key in ["terminals", "timeouts"] if not np.isin(data[key], (0, 1)).all()]:
        fail(f"{path} has {flags} other than 0 and 1")
    keep = ~data["timeouts"][:-1].astype(bool)
    names = {"obs": "observations", "actions": "actions", "rewards": "rewards", "dones": "terminals"}
    return {**{name: data[key][:-1][keep] for name, key in names.items()}, "next_obs": data["observations"][1:][keep]}


def load_minari(dataset_id: str) -> tuple[dict[str, np.ndarray], Callable[[], gym.Env], tuple[float, float]]:
    import minari  # only needed for Minari ids

    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # minari raises several kinds for a missing or unreadable dataset
        fail(f"cannot load Minari dataset {dataset_id} ({error}); get it with `minari download {dataset_id}`")
    episodes = list(dataset.iterate_episodes())

    def stacked(name: str, rows: slice = slice(None)) -> np.ndarray:
        return np.concatenate([getattr(episode, name)[rows] for episode in episodes])

    # every episode's final observation is stored, so no transition is dropped
    transitions = {"obs": stacked("observations", slice(-1)), "next_obs": stacked("observations", slice(1, None))}
    transitions.update(actions=stacked("actions"), rewards=stacked("rewards"), dones=stacked("terminations"))
    # reference scores are dataset metadata (where minari.get_normalized_score reads them), NaN if absent
    ref_scores = (dataset.storage.metadata.get(f"ref_{end}_score", math.nan) for end in ("min", "max"))
    return transitions, lambda: dataset.recover_environment(eval_env=True), tuple(ref_scores)


def load_task(config: Config) -> tuple[Batch, Callable[[], gym.Env], tuple[float, float]]:
    """The dataset on the device, the eval env's constructor and the reference scores, or one line on what is wrong."""
    # known noise, not errors: gymnasium's v4 note (v4 is D4RL's models) and MuJoCo's on settotalmass (and its log file)
    warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading")
    mujoco.set_mju_user_warning(lambda text: "settotalmass" in text or print(f"MuJoCo: {text}", file=sys.stderr))
    if minari := "/" in config.env_name and config.dataset_path is None:
        transitions, make_env, ref_scores = load_minari(config.env_name)
    else:
        # the file d4rl itself reads, e.g. ~/.d4rl/datasets/halfcheetah_medium_replay-v2.hdf5
        file_name = config.env_name.replace("-", "_").replace("_v2", "-v2.hdf5")
        dataset_dir = os.path.expanduser(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets"))
        path = config.dataset_path or os.path.join(dataset_dir, file_name)
        if config.dataset_path is None and not os.path.exists(path):
            url = f"http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{file_name}"
            print(f"downloading {url} to {path}")
            try:  # to a temporary name, then renamed: an interrupted download leaves no corrupt file
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(urllib.request.urlretrieve(url, path + ".part")[0], path)
            except OSError as error:  # urllib's URLError is an OSError
                fail(f"{path} is missing and downloading {url} failed ({error}): put it there, or set D4RL_DATASET_DIR")
        domain = d4rl_domain(config)  # no reference scores outside the three D4RL domains
        make_env, ref_scores = partial(gym.make, config.eval_env or D4RL_EVAL_ENV[domain]), D4RL_REF_SCORES.get(domain)
        transitions, ref_scores = qlearning_dataset(path), ref_scores or (0.0, math.nan)
    source, env = f"Minari dataset {config.env_name}" if minari else path, make_env()
    dims, env_dims = [transitions["obs"].shape[1], transitions["actions"].shape[1]], [*env.observation_space.shape]
    if dims != (env_dims := env_dims + [*env.action_space.shape]):
        fail(f"{source} has obs/action dims {dims} but eval env {env.spec.id} has {env_dims}: check env_name, eval_env")
    if not_finite := [key for key, array in transitions.items() if not np.isfinite(array).all()]:
        fail(f"{source} has NaN or inf values in {not_finite}")
    if config.batch_size > len(transitions["rewards"]):
        fail(f"batch_size {config.batch_size} is larger than the dataset ({len(transitions['rewards'])} transitions)")
    if (outside := np.abs(actions := transitions["actions"]) > config.max_action).any():  # only the critic sees them
        where = f"{outside.sum()} of {outside.size} action values in {source} are outside [-max_action, max_action]"
        print(f"warning: {where}, in [{actions.min():.3g}, {actions.max():.3g}]: check max_action", file=sys.stderr)
    return Batch(**{key: jnp.asarray(value, jnp.float32) for key, value in transitions.items()}), make_env, ref_scores


# --- Networks ---
def uniform_init(bound: float) -> Callable:
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# EDAC's init in the actor and every critic layer: hidden kernels U(+-1/sqrt(fan_in)) (torch's nn.Linear), hidden
# biases 0.1, small uniform output layers. CORL's critic differs in its first layer: its VectorizedLinear holds
# [in, out] weights, so torch takes fan_in = hidden_dim there, U(+-1/16) at 256.
torch_kernel_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
hidden_bias_init = jax.nn.initializers.constant(0.1)


class Dense(eqx.Module):
    """Flax's Dense (kernel [in_dim, out_dim], fields in Flax's order: both files flatten alike), EDAC's init."""

    bias: jax.Array
    kernel: jax.Array

    def __init__(self, key: jax.Array, in_dim: int, out_dim: int, bound: Optional[float] = None) -> None:
        kernel_init, bias_init = (uniform_init(bound),) * 2 if bound else (torch_kernel_init, hidden_bias_init)
        kernel_key, bias_key = jax.random.split(key)
        self.bias, self.kernel = bias_init(bias_key, (out_dim,)), kernel_init(kernel_key, (in_dim, out_dim))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel + self.bias


class Actor(eqx.Module):
    hidden: list[Dense]
    mean: Dense
    log_std: Dense

    def __init__(self, key: jax.Array, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        keys = jax.random.split(key, 5)
        self.hidden = [Dense(key, dim, hidden_dim) for key, dim in zip(keys, [obs_dim, hidden_dim, hidden_dim])]
        self.mean, self.log_std = (Dense(key, hidden_dim, action_dim, bound=1e-3) for key in keys[3:])

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        # clipped as in the EDAC and CORL code, so the policy neither collapses nor explodes
        return self.mean(x), jnp.clip(self.log_std(x), -5.0, 2.0)


class Critic(eqx.Module):
    hidden: list[Dense]
    output: Dense

    def __init__(self, key: jax.Array, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        keys, dims = jax.random.split(key, 4), [obs_dim + action_dim, hidden_dim, hidden_dim]
        self.hidden = [Dense(key, dim, hidden_dim) for key, dim in zip(keys, dims)]
        self.output = Dense(keys[3], hidden_dim, 1, bound=3e-3)

    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, actions], axis=-1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.output(x).squeeze(-1)


# N critics with their arrays stacked on a leading axis: one batched matmul per layer, Q-values [num_critics, batch]
ensemble_apply = jax.vmap(Critic.__call__, in_axes=(0, None, None))


# --- Train state ---
class TrainState(eqx.Module):
    """Flax's TrainState as this file uses it; `params` is the network (an eqx.Module), `apply_fn` its __call__."""

    step: jax.Array
    apply_fn: Optional[Callable] = eqx.field(static=True)
    params: Any
    tx: optax.GradientTransformation = eqx.field(static=True)
    opt_state: optax.OptState
    target_params: Any = None  # the critic's target network

    @classmethod
    def create(cls, *, params: Any, tx: optax.GradientTransformation, **kwargs: Any) -> Any:
        return cls(step=jnp.array(0), params=params, tx=tx, opt_state=tx.init(params), **kwargs)

    def apply_gradients(self, *, grads: Any) -> Any:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return dataclasses.replace(self, step=self.step + 1, params=params, opt_state=opt_state)


class SACNState(NamedTuple):
    actor: TrainState
    critic: TrainState
    log_alpha: TrainState  # the log of the entropy temperature alpha, and its optimizer
    key: jax.Array


def create_sac_n_state(obs_dim: int, action_dim: int, config: Config) -> SACNState:
    """One agent per seed, stacked on a leading [num_seeds] axis; seed i starts as a run with train_seed + i."""

    def create(seed: jax.Array) -> SACNState:
        actor_key, critic_key, key = jax.random.split(jax.random.PRNGKey(seed), 3)
        actor_params = Actor(actor_key, obs_dim, action_dim, config.hidden_dim)
        # N independent critics: the constructor vmapped over N keys (the dims are not mapped)
        critic_keys = jax.random.split(critic_key, config.num_critics)
        critic_params = eqx.filter_vmap(Critic)(critic_keys, obs_dim, action_dim, config.hidden_dim)
        actor_tx, critic_tx = optax.adam(config.actor_learning_rate), optax.adam(config.critic_learning_rate)
        actor = TrainState.create(apply_fn=Actor.__call__, params=actor_params, tx=actor_tx)
        target = jax.tree.map(jnp.copy, critic_params)  # a copy: train_epoch donates its state's buffers
        critic = TrainState.create(apply_fn=ensemble_apply, params=critic_params, target_params=target, tx=critic_tx)
        # log_alpha starts at 0 (alpha = 1), as in CORL
        alpha_tx, log_alpha = optax.adam(config.alpha_learning_rate), {"log_alpha": jnp.array(0.0)}
        log_alpha = TrainState.create(apply_fn=None, params=log_alpha, tx=alpha_tx)
        return SACNState(actor, critic, log_alpha, key)

    state = jax.jit(jax.vmap(create))(jnp.arange(config.train_seed, config.train_seed + config.num_seeds))
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, leaf.dtype), state)  # strong dtypes: one compile per run


# --- Policy ---
def sample_action(noise: jax.Array, mean: jax.Array, log_std: jax.Array, max_action: float) -> tuple:
    """A reparameterised tanh-Gaussian sample from standard normal `noise`, scaled to max_action, and its log-prob."""
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)): exact and stable, where CORL's
    # log(1 - tanh(u)^2 + 1e-6) saturates; like CORL, the max_action scaling adds no term
    log_det_jacobian = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    log_probs = (gaussian_log_prob - log_det_jacobian).sum(axis=-1)
    return jnp.tanh(pre_tanh) * max_action, log_probs


# --- Updates ---
def update_alpha(policy_noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple[TrainState, dict]:
    mean, log_std = state.actor.apply_fn(state.actor.params, batch.obs)
    # the actor update's sample, where CORL draws another: the same in expectation, and one actor pass serves both
    _, log_probs = sample_action(policy_noise, mean, log_std, config.max_action)
    target_entropy = -batch.actions.shape[-1]  # SAC's heuristic -dim(A), as CORL

    def alpha_loss_fn(params: dict[str, jax.Array]) -> jax.Array:
        return -(params["log_alpha"] * (log_probs + target_entropy)).mean()

    loss, grads = jax.value_and_grad(alpha_loss_fn)(state.log_alpha.params)
    log_alpha = state.log_alpha.apply_gradients(grads=grads)
    return log_alpha, {"alpha_loss": loss, "alpha": jnp.exp(log_alpha.params["log_alpha"])}


def update_actor(policy_noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple[TrainState, dict]:
    actor, critic, alpha = state.actor, state.critic, jnp.exp(state.log_alpha.params["log_alpha"])

    def actor_loss_fn(actor_params: Any) -> tuple[jax.Array, dict]:
        mean, log_std = actor.apply_fn(actor_params, batch.obs)
        actions, log_probs = sample_action(policy_noise, mean, log_std, config.max_action)
        q_values = critic.apply_fn(critic.params, batch.obs, actions)  # [num_critics, batch_size]
        # the minimum over N critics is SAC-N's pessimism, stronger where the ensemble disagrees
        loss = (alpha * log_probs - q_values.min(axis=0)).mean()
        # population std over the ensemble (0 for N=1); CORL's torch.std is the sample std
        info = {"actor_loss": loss, "batch_entropy": -log_probs.mean(), "q_policy_std": q_values.std(axis=0).mean()}
        return loss, info

    grads, info = jax.grad(actor_loss_fn, has_aux=True)(actor.params)
    return actor.apply_gradients(grads=grads), info


def update_critic(next_noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple[TrainState, dict]:
    actor, critic, alpha = state.actor, state.critic, jnp.exp(state.log_alpha.params["log_alpha"])
    mean, log_std = actor.apply_fn(actor.params, batch.next_obs)
    next_actions, next_log_probs = sample_action(next_noise, mean, log_std, config.max_action)
    next_q_values = critic.apply_fn(critic.target_params, batch.next_obs, next_actions)  # [num_critics, batch_size]
    # one target for all critics, from the minimum over the target ensemble (the paper's Eq. 3)
    next_values = next_q_values.min(axis=0) - alpha * next_log_probs
    targets = batch.rewards + config.gamma * (1.0 - batch.dones) * next_values

    def critic_loss_fn(critic_params: Any) -> jax.Array:
        q_values = critic.apply_fn(critic_params, batch.obs, batch.actions)  # [num_critics, batch_size]
        # MSE over the batch, summed over critics (CORL): each critic's gradient does not shrink with N
        return ((q_values - targets) ** 2).mean(axis=1).sum()

    loss, grads = jax.value_and_grad(critic_loss_fn)(critic.params)
    critic = critic.apply_gradients(grads=grads)
    target_params = optax.incremental_update(critic.params, critic.target_params, config.tau)  # Polyak averaging
    return dataclasses.replace(critic, target_params=target_params), {"critic_loss": loss}


# --- Training epoch ---
class UpdateDraws(NamedTuple):  # the random numbers of one update; an epoch's on a leading [num_updates_on_epoch] axis
    indices: jax.Array  # [batch_size] the dataset rows of the batch
    policy_noise: jax.Array  # [batch_size, action_dim] standard normal: the policy's actions on obs
    next_noise: jax.Array  # [batch_size, action_dim] standard normal: its actions on next_obs


def draw_epoch(key: jax.Array, dataset: Batch, config: Config) -> UpdateDraws:
    """Every update's random numbers of an epoch, before the update loop (faster, benchmarks/README.md): 13 MB."""
    index_key, policy_key, next_key = jax.random.split(key, 3)
    shape = (config.num_updates_on_epoch, config.batch_size)
    return UpdateDraws(
        indices=jax.random.randint(index_key, shape, 0, dataset.rewards.shape[0]),
        policy_noise=jax.random.normal(policy_key, (*shape, dataset.actions.shape[-1])),
        next_noise=jax.random.normal(next_key, (*shape, dataset.actions.shape[-1])),
    )


def update_sac_n(state: SACNState, draws: UpdateDraws, dataset: Batch, config: Config) -> tuple[SACNState, dict]:
    batch = jax.tree.map(lambda array: array[draws.indices], dataset)
    # alpha -> actor -> critic, each seeing the updates before it: EDAC's order, better than critic first (CORL)
    log_alpha, alpha_info = update_alpha(draws.policy_noise, state, batch, config)
    state = state._replace(log_alpha=log_alpha)
    actor, actor_info = update_actor(draws.policy_noise, state, batch, config)
    state = state._replace(actor=actor)
    critic, critic_info = update_critic(draws.next_noise, state, batch, config)
    return state._replace(critic=critic), {**alpha_info, **actor_info, **critic_info}


@partial(jax.jit, static_argnames="config", donate_argnames="state")
def train_epoch(state: SACNState, dataset: Batch, config: Config) -> tuple[SACNState, dict]:
    """Every seed's epoch in one compiled call; the dataset is an argument (a captured one would be compiled in)."""

    def agent_epoch(state: SACNState) -> tuple[SACNState, dict]:
        key, draws_key, random_key = jax.random.split(state.key, 3)
        epoch_draws = draw_epoch(draws_key, dataset, config)
        state, infos = jax.lax.scan(partial(update_sac_n, dataset=dataset, config=config), state, epoch_draws)
        # the ensemble's spread on random actions, large where the critics disagree off the data, on one batch
        obs, shape = dataset.obs[epoch_draws.indices[-1]], epoch_draws.policy_noise.shape[1:]
        random_actions = jax.random.uniform(random_key, shape, minval=-config.max_action, maxval=config.max_action)
        q_values = state.critic.apply_fn(state.critic.params, obs, random_actions)  # [num_critics, batch_size]
        return state._replace(key=key), {**jax.tree.map(jnp.mean, infos), "q_random_std": q_values.std(0).mean()}

    return jax.vmap(agent_epoch)(state)


def shard_seeds(state: SACNState, dataset: Batch, num_seeds: int) -> tuple[SACNState, Batch]:
    """Split the seed axis over the devices (one seed group per GPU); every device holds the dataset."""
    num_devices = math.gcd(num_seeds, jax.device_count())
    if num_devices == 1:  # a one-device sharding would only change the state's type and recompile the epoch
        return state, dataset
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("seeds",))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds")))
    return state, jax.device_put(dataset, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


# --- Evaluation ---
@jax.jit
def deterministic_action(actor: TrainState, obs: jax.Array, max_action: float) -> jax.Array:
    """Every seed's tanh(mean) action; obs is [num_seeds, num_envs, obs_dim]."""
    mean, _ = jax.vmap(actor.apply_fn)(actor.params, obs)
    return jnp.tanh(mean) * max_action


def evaluate(actor: TrainState, envs: list, ref_scores: tuple, config: Config) -> tuple[dict, np.ndarray, np.ndarray]:
    """One episode per env, envs[i][j] for seed i, all stepped in lockstep (the actor runs once per step) and every
    seed from the same start states: the metrics, and the returns and D4RL scores [num_seeds, num_episodes]."""
    obs = np.stack([[env.reset(seed=config.eval_seed + index)[0] for index, env in enumerate(row)] for row in envs])
    returns, done = np.zeros(obs.shape[:2]), np.zeros(obs.shape[:2], dtype=bool)
    while not done.all():
        actions = np.asarray(deterministic_action(actor, obs, config.max_action))
        for i, j in zip(*np.nonzero(~done)):
            obs[i, j], reward, terminated, truncated, _ = envs[i][j].step(actions[i, j])
            returns[i, j] += reward
            done[i, j] = terminated or truncated
    scores = 100 * (returns - ref_scores[0]) / (ref_scores[1] - ref_scores[0])
    metrics = {"eval/return_mean": returns.mean(), "eval/return_std": returns.std()}
    metrics.update({"eval/normalized_score_mean": scores.mean(), "eval/normalized_score_std": scores.std()})
    if config.num_seeds > 1:  # each seed's means, and their std: the paper's "mean +- std over seeds"
        seeds = range(config.train_seed, config.train_seed + config.num_seeds)
        metrics |= {f"eval/seed_{seed}/return_mean": value for seed, value in zip(seeds, returns.mean(axis=1))}
        metrics |= {f"eval/seed_{seed}/normalized_score_mean": value for seed, value in zip(seeds, scores.mean(axis=1))}
        metrics["eval/normalized_score_seed_std"] = scores.mean(axis=1).std()
    return metrics, returns, scores


# --- Main ---
def write_file(path: str, content: Any) -> None:
    """Bytes, or what content(file) writes, via a temporary file: a kill or a full disk leaves no half-written file."""
    try:
        with open(path + ".tmp", "wb") as file:
            content(file) if callable(content) else file.write(content)
        os.replace(path + ".tmp", path)
    except OSError as error:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        fail(f"cannot write {path} ({error}); the run stopped, its last complete files are kept")


def save_checkpoint(directory: str, state: SACNState, run: dict) -> None:
    leaves = jax.device_get(jax.tree.leaves(state))
    write_file(f"{directory}/checkpoint.npz", lambda file: np.savez(file, *leaves, run=json.dumps(run)))


def load_checkpoint(directory: str, template: SACNState) -> tuple[SACNState, dict]:
    path, (template_leaves, treedef) = f"{directory}/checkpoint.npz", jax.tree.flatten(template)
    try:
        with np.load(path) as data:
            leaves, run = [data[f"arr_{index}"] for index in range(len(template_leaves))], json.loads(str(data["run"]))
    except Exception as error:  # np.load raises many kinds for a damaged file
        fail(f"cannot read checkpoint {path} ({error}): it is damaged or not a checkpoint; resume from a copy")
    if [(leaf.shape, leaf.dtype) for leaf in leaves] != [(leaf.shape, leaf.dtype) for leaf in template_leaves]:
        fail(f"checkpoint {path} does not fit the config: its arrays have other shapes than this config's state")
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves]), run


def train(config: Config, state: SACNState, dataset: Batch, eval_envs: list, ref_scores: tuple, run: dict) -> None:
    seeds = list(range(config.train_seed, config.train_seed + config.num_seeds))
    if config.eval_only:  # print the saved agents' evaluation
        metrics = evaluate(state.actor, eval_envs, ref_scores, config)[0]
        return print("\n".join(f"{name}: {value:.3f}" for name, value in metrics.items()))
    os.makedirs(directory := config.checkpoints_path or f"results/{run['name']}", exist_ok=True)
    if not config.resume and config.checkpoints_path:
        write_file(f"{directory}/config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).encode())
    # never wait at wandb's login prompt: with no WANDB_MODE and no API key, log offline and say so
    offline = "WANDB_MODE" not in os.environ and not wandb.login(prompt=False, verify=False)
    wandb_args = {"project": config.project, "group": config.group, "name": run["name"], "id": run["wandb_id"]}
    wandb_args.update(resume="allow", config=dataclasses.asdict(config), mode="offline" if offline else None)
    wandb_run = wandb.init(**wandb_args, settings=wandb.Settings(quiet=True))  # quiet: no run summary at the end
    if offline:
        print(f"wandb: no login, so logging offline; upload with `wandb login; wandb sync {wandb_run.dir[:-6]}`")
    stops = []  # SIGINT/SIGTERM: finish the epoch, checkpoint and exit; a second one stops at once
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *args: signal.default_int_handler(*args) if stops else stops.append(args[0]))
    epochs = trange(run["epoch"] + 1, config.num_epochs + 1, initial=run["epoch"], total=config.num_epochs)
    for epoch in epochs:
        start = time.perf_counter()
        state, metrics = train_epoch(state, dataset, config)
        metrics = jax.device_get(metrics)  # the one host sync of the epoch: [num_seeds] per metric
        run.update(epoch=epoch, train_seconds=run["train_seconds"] + time.perf_counter() - start)
        if bad := [(name, seeds[i]) for name, values in metrics.items() for i in np.flatnonzero(~np.isfinite(values))]:
            kept = f"; the last checkpoint is in {directory}" if os.path.isfile(f"{directory}/checkpoint.npz") else ""
            fail(f"non-finite {bad[0][0]} at epoch {epoch}, seed {bad[0][1]}: training stopped{kept}")
        log = {name: values.mean() for name, values in metrics.items()}  # means over seeds
        log["updates_per_second"] = config.num_updates_on_epoch / (time.perf_counter() - start)  # with the compile
        if evaluated := epoch % config.eval_every == 0 or epoch == config.num_epochs:
            eval_log, returns, scores = evaluate(state.actor, eval_envs, ref_scores, config)
            stats = np.stack([returns.mean(1), returns.std(1), scores.mean(1), scores.std(1)], axis=1).tolist()
            run["scores"] += [[epoch, seed, round(run["train_seconds"], 2), *row] for seed, row in zip(seeds, stats)]
            rows = ["epoch,seed,train_seconds,return_mean,return_std,score_mean,score_std"]
            rows += [",".join(map(str, row)) for row in run["scores"]]
            write_file(f"{directory}/scores.csv", "\n".join(rows + [""]).encode())
            log.update(eval_log)
            epochs.write(f"epoch {epoch}: normalized score {scores.mean():.1f} +- {scores.std():.1f} over all episodes")
        # after scores.csv: a run that dies between the two writes repeats the epochs after its checkpoint
        if config.checkpoints_path and (evaluated or stops):
            save_checkpoint(directory, state, run)
        wandb.log({"epoch": epoch, **log}, step=epoch)
        epochs.set_postfix({"updates/s": f"{log['updates_per_second']:.0f}"})
        if stops and epoch < config.num_epochs:  # a stop during the last epoch finishes the run
            wandb.finish(exit_code=1)
            fail(f"stopped by {signal.Signals(stops[0]).name} after epoch {epoch}; continue with --resume=true")
    wandb.finish()
    by_seed = [[row[5] for row in run["scores"] if row[1] == seed] for seed in seeds]
    last, best = np.array([scores[-1] for scores in by_seed]), np.array([max(scores) for scores in by_seed])
    summary = f"last {last.mean():.1f} +- {last.std():.1f}, best {best.mean():.1f} +- {best.std():.1f}"
    print(f"normalized score over {len(seeds)} seed(s), mean +- std: {summary} (in {directory}/scores.csv)")


def main(config: Config) -> None:
    directory, resuming = config.checkpoints_path, config.resume or config.eval_only
    if directory and not resuming and os.path.isdir(directory) and os.listdir(directory):
        fail(f"checkpoints_path {directory} is not empty: continue its run with --resume=true, or pass a fresh one")
    if resuming:  # the saved run's hyperparameters; only when it ends and how it is evaluated may change
        saved = parse_config([f"--config_path={directory}/config.yaml"])
        may_change = "num_epochs resume eval_only checkpoints_path eval_episodes eval_every eval_seed".split()
        changed = [key for key in FIELD_TYPES if getattr(saved, key) != getattr(config, key)]
        if changed := [key for key in changed if key not in may_change]:
            fail(f"config differs from the saved run in {directory} in {changed}: resume with the same values")
    dataset, make_eval_env, ref_scores = load_task(config)
    eval_envs = [[make_eval_env() for _ in range(config.eval_episodes)] for _ in range(config.num_seeds)]
    new_state = partial(create_sac_n_state, dataset.obs.shape[1], dataset.actions.shape[1], config)
    if resuming:
        state, run = load_checkpoint(directory, jax.eval_shape(new_state))
    else:  # what a resumed run needs besides the train state; train_seconds: summed over resumed sessions
        run_id = os.urandom(4).hex()
        run = {"name": f"{config.name}-{config.env_name.replace('/', '-')}-{run_id}", "wandb_id": run_id, "epoch": 0}
        state, run = new_state(), {**run, "train_seconds": 0.0, "scores": []}
    train(config, *shard_seeds(state, dataset, config.num_seeds), eval_envs, ref_scores, run)


if __name__ == "__main__":
    main(parse_config())
