"""SAC-N and EDAC for offline RL on the D4RL Gym-MuJoCo datasets, in JAX + Equinox.

An et al. 2021 (arXiv:2110.01548): Soft Actor-Critic whose pessimistic value is the minimum over an
ensemble of N critics (SAC-N); with eta > 0, EDAC's penalty on the similarity of the critics' action
gradients, which needs far fewer critics. The update follows CORL's `sac_n.py` and `edac.py`
(README.md lists each difference). `sac_n_jax_flax.py` is this script in Flax: `diff` the two to
see the framework. The algorithm comes first; below the "run harness" line it becomes a tool.

    python sac_n_jax_eqx.py --config_path configs/halfcheetah.yaml
"""

import csv
import dataclasses
import difflib
import http.client
import io
import json
import math
import os
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
from gymnasium.vector import VectorEnv
from tqdm.auto import tqdm


# --- Config ---
@dataclasses.dataclass(frozen=True)
class Config:
    project: str = "SAC-N-JAX"  # wandb project
    group: str = "SAC-N"  # wandb group
    name: str = "SAC-N"  # wandb run name; env_name and a random id are appended
    hidden_dim: int = 256  # width of the 3 hidden layers of the actor and of each critic
    num_critics: int = 10  # N, the number of critics in the ensemble
    eta: float = 0.0  # weight of EDAC's ensemble diversity term in the critic loss; 0 is SAC-N
    gamma: float = 0.99  # discount factor
    tau: float = 5e-3  # Polyak coefficient of the target critics, applied after every update
    actor_learning_rate: float = 3e-4  # Adam learning rate of the actor
    critic_learning_rate: float = 3e-4  # Adam learning rate of the critics
    alpha_learning_rate: float = 3e-4  # Adam learning rate of log_alpha, the entropy temperature
    max_action: float = 1.0  # actions are tanh-squashed and scaled to [-max_action, max_action]
    env_name: str = "halfcheetah-medium-v2"  # D4RL name, or Minari id (mujoco/hopper/medium-v0)
    dataset_path: Optional[str] = None  # HDF5 file in the D4RL layout to read instead
    eval_env: Optional[str] = None  # gymnasium id to evaluate in; default: env_name's v4 env
    batch_size: int = 256  # transitions per update
    num_epochs: int = 3000  # training epochs
    num_updates_on_epoch: int = 1000  # updates per epoch, all in one jitted call
    eval_episodes: int = 10  # episodes per evaluation
    eval_every: int = 5  # evaluate every `eval_every` epochs (not updates), and after the last
    train_seed: int = 10  # seed of init and batches; seed i of a multi-seed run is train_seed + i
    num_seeds: int = 1  # agents trained at once in one process (vmapped, sharded over devices)
    eval_seed: int = 42  # seed of the evaluation episodes' start states, the same every time
    checkpoints_path: Optional[str] = None  # directory of config, checkpoint and scores.csv
    resume: bool = False  # continue the run saved in checkpoints_path, as if never stopped
    eval_only: bool = False  # only evaluate the agents saved in checkpoints_path


# --- Networks ---
class Batch(NamedTuple):  # transitions, each array with a leading [batch_size] (or dataset) axis
    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_obs: jax.Array
    dones: jax.Array


class Dense(eqx.Module):
    """Flax's Dense (kernel [in_dim, out_dim]; fields in Flax's order, so both files flatten alike)
    with EDAC's init, as CORL's (README.md: CORL's first critic layer differs): an output layer
    U(+-bound); a hidden layer torch's nn.Linear kernel U(+-1/sqrt(fan_in)) and biases 0.1."""

    bias: jax.Array
    kernel: jax.Array

    def __init__(self, key: jax.Array, in_dim: int, out_dim: int, bound: Optional[float] = None):
        kernel_key, bias_key = jax.random.split(key)
        if bound is None:
            self.bias = jnp.full(out_dim, 0.1, jnp.float32)
            bound = 1 / math.sqrt(in_dim)
        else:
            self.bias = jax.random.uniform(bias_key, (out_dim,), minval=-bound, maxval=bound)
        self.kernel = jax.random.uniform(kernel_key, (in_dim, out_dim), minval=-bound, maxval=bound)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel + self.bias


class Actor(eqx.Module):
    hidden: list[Dense]
    mean: Dense
    log_std: Dense

    def __init__(self, key: jax.Array, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        keys = jax.random.split(key, 5)
        dims = [obs_dim, hidden_dim, hidden_dim]
        self.hidden = [Dense(key, dim, hidden_dim) for key, dim in zip(keys, dims)]
        self.mean = Dense(keys[3], hidden_dim, action_dim, bound=1e-3)
        self.log_std = Dense(keys[4], hidden_dim, action_dim, bound=1e-3)

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        mean = self.mean(x)
        log_std = self.log_std(x)
        # clipped as in the EDAC and CORL code, so the policy neither collapses nor explodes
        return mean, jnp.clip(log_std, -5.0, 2.0)


class Critic(eqx.Module):
    hidden: list[Dense]
    output: Dense

    def __init__(self, key: jax.Array, obs_dim: int, action_dim: int, hidden_dim: int) -> None:
        keys = jax.random.split(key, 4)
        dims = [obs_dim + action_dim, hidden_dim, hidden_dim]
        self.hidden = [Dense(key, dim, hidden_dim) for key, dim in zip(keys, dims)]
        self.output = Dense(keys[3], hidden_dim, 1, bound=3e-3)

    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, actions], axis=-1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.output(x).squeeze(-1)


# N critics with their arrays stacked on a leading axis: one batched matmul per layer
ensemble_apply = jax.vmap(Critic.__call__, in_axes=(0, None, None))


# --- Train state ---
class TrainState(eqx.Module):
    """Flax's TrainState as this file uses it: `params` is the network (an eqx.Module), `apply_fn`
    its __call__."""

    step: jax.Array
    apply_fn: Optional[Callable] = eqx.field(static=True)
    params: Any
    tx: optax.GradientTransformation = eqx.field(static=True)
    opt_state: optax.OptState
    target_params: Any = None  # the critic's target network

    @classmethod
    def create(cls, *, params: Any, tx: optax.GradientTransformation, **kwargs: Any) -> Any:
        step = jnp.zeros((), jnp.int32)
        return cls(step=step, params=params, tx=tx, opt_state=tx.init(params), **kwargs)

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
    """One agent per seed, stacked on a leading [num_seeds] axis; seed i starts as a one-seed run
    with train_seed + i."""

    def create(seed):
        key = jax.random.PRNGKey(seed)
        actor_key, critic_key, key = jax.random.split(key, 3)
        actor = TrainState.create(
            apply_fn=Actor.__call__,
            params=Actor(actor_key, obs_dim, action_dim, config.hidden_dim),
            tx=optax.adam(config.actor_learning_rate),
        )
        # N independent critics: the constructor vmapped over N keys (the dims are not mapped)
        critic_keys = jax.random.split(critic_key, config.num_critics)
        critic_params = eqx.filter_vmap(Critic)(critic_keys, obs_dim, action_dim, config.hidden_dim)
        critic = TrainState.create(
            apply_fn=ensemble_apply,
            params=critic_params,
            target_params=jax.tree.map(jnp.copy, critic_params),  # a copy: train_epoch donates
            tx=optax.adam(config.critic_learning_rate),
        )
        log_alpha = TrainState.create(
            apply_fn=None,
            params={"log_alpha": jnp.zeros(())},  # alpha = 1 at the start, as in CORL
            tx=optax.adam(config.alpha_learning_rate),
        )
        return SACNState(actor, critic, log_alpha, key)

    seeds = jnp.arange(config.train_seed, config.train_seed + config.num_seeds)
    return jax.jit(jax.vmap(create))(seeds)


# --- Policy ---
def sample_action(
    noise: jax.Array, mean: jax.Array, log_std: jax.Array, max_action: float
) -> tuple:
    """A reparameterised tanh-Gaussian sample from standard normal noise, and its log-prob."""
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = jax.scipy.stats.norm.logpdf(noise) - log_std
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)): exact and stable, where CORL's
    # log(1 - tanh(u)^2 + 1e-6) saturates; like CORL, the max_action scaling adds no term
    log_det_jacobian = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    log_probs = (gaussian_log_prob - log_det_jacobian).sum(axis=-1)
    return jnp.tanh(pre_tanh) * max_action, log_probs


@jax.jit
def deterministic_action(actor: TrainState, obs: jax.Array, max_action: float) -> jax.Array:
    """The evaluation action tanh(mean) of every seed; obs is [num_seeds, num_envs, obs_dim]."""
    mean, _ = jax.vmap(actor.apply_fn)(actor.params, obs)
    return jnp.tanh(mean) * max_action


# --- Updates ---
def update_alpha(noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple:
    mean, log_std = state.actor.apply_fn(state.actor.params, batch.obs)
    # the actor loss's noise, where CORL draws another sample: the same in expectation
    _, log_probs = sample_action(noise, mean, log_std, config.max_action)
    target_entropy = -batch.actions.shape[-1]  # SAC's heuristic -dim(A), as CORL

    def alpha_loss_fn(params):
        return -(params["log_alpha"] * (log_probs + target_entropy)).mean()

    loss, grads = jax.value_and_grad(alpha_loss_fn)(state.log_alpha.params)
    log_alpha = state.log_alpha.apply_gradients(grads=grads)
    return log_alpha, {"alpha_loss": loss, "alpha": jnp.exp(log_alpha.params["log_alpha"])}


def update_actor(noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple:
    actor, critic = state.actor, state.critic
    alpha = jnp.exp(state.log_alpha.params["log_alpha"])

    def actor_loss_fn(actor_params):
        mean, log_std = actor.apply_fn(actor_params, batch.obs)
        actions, log_probs = sample_action(noise, mean, log_std, config.max_action)
        q_values = critic.apply_fn(critic.params, batch.obs, actions)  # [num_critics, batch_size]
        # the minimum over N critics is SAC-N's pessimism, stronger where the ensemble disagrees
        loss = (alpha * log_probs - q_values.min(axis=0)).mean()
        info = {"actor_loss": loss, "batch_entropy": -log_probs.mean()}
        # population std over the ensemble (0 for N=1); CORL's torch.std is the sample std
        info["q_policy_std"] = q_values.std(axis=0).mean()
        return loss, info

    grads, info = jax.grad(actor_loss_fn, has_aux=True)(actor.params)
    return actor.apply_gradients(grads=grads), info


def diversity_loss(critic_params: Any, critic: TrainState, batch: Batch) -> jax.Array:
    """EDAC's term (CORL's diversity loss): the cosine similarity of two critics' gradients of Q in
    the dataset's action, summed over ordered pairs of distinct critics, batch mean, over N - 1."""

    def summed_q_values(params, actions):  # one critic's, as an ensemble of one
        ensemble_of_one = jax.tree.map(lambda leaf: leaf[None], params)
        return critic.apply_fn(ensemble_of_one, batch.obs, actions).sum()

    # a sample's Q depends on its own action only: one reverse pass gives every sample's gradient
    per_sample_gradients = jax.grad(summed_q_values, argnums=1)
    action_gradients = jax.vmap(per_sample_gradients, in_axes=(0, None))  # over the critics
    grads = action_gradients(critic_params, batch.actions).swapaxes(0, 1)  # [batch, N, action]
    # safe_norm: a zero gradient's norm has gradient 0 (as in torch), where jnp.linalg.norm's is NaN
    norms = optax.safe_norm(grads, 0.0, axis=-1, keepdims=True)
    grads = grads / (norms + 1e-10)  # 1e-10: EDAC's
    similarities = grads @ grads.swapaxes(1, 2)  # [batch_size, num_critics, num_critics]
    num_critics = grads.shape[1]
    distinct_pairs = 1.0 - jnp.eye(num_critics)
    pair_sums = (similarities * distinct_pairs).sum(axis=(1, 2))  # [batch_size]
    return pair_sums.mean() / (num_critics - 1)


def update_critic(noise: jax.Array, state: SACNState, batch: Batch, config: Config) -> tuple:
    actor, critic = state.actor, state.critic
    alpha = jnp.exp(state.log_alpha.params["log_alpha"])
    mean, log_std = actor.apply_fn(actor.params, batch.next_obs)
    next_actions, next_log_probs = sample_action(noise, mean, log_std, config.max_action)
    next_q_values = critic.apply_fn(critic.target_params, batch.next_obs, next_actions)
    # one target for all critics, from the minimum over the target ensemble (the paper's Eq. 3)
    next_values = next_q_values.min(axis=0) - alpha * next_log_probs
    targets = batch.rewards + config.gamma * (1.0 - batch.dones) * next_values

    def critic_loss_fn(critic_params):
        q_values = critic.apply_fn(critic_params, batch.obs, batch.actions)  # [N, batch_size]
        # MSE over the batch, summed over critics (CORL): a critic's gradient does not shrink with N
        td_errors = q_values - targets
        loss = (td_errors**2).mean(axis=1).sum()
        if config.eta == 0:  # SAC-N: EDAC's term is not even traced
            return loss, {"critic_loss": loss}
        diversity = diversity_loss(critic_params, critic, batch)
        loss = loss + config.eta * diversity
        return loss, {"critic_loss": loss, "diversity_loss": diversity}

    grads, info = jax.grad(critic_loss_fn, has_aux=True)(critic.params)
    critic = critic.apply_gradients(grads=grads)
    target_params = optax.incremental_update(critic.params, critic.target_params, config.tau)
    return dataclasses.replace(critic, target_params=target_params), info


# --- Training epoch ---
class UpdateDraws(NamedTuple):  # one update's random numbers; an epoch's have a leading axis
    indices: jax.Array  # [batch_size] the dataset rows of the batch
    policy_noise: jax.Array  # [batch_size, action_dim] standard normal: the policy's actions on obs
    next_noise: jax.Array  # [batch_size, action_dim] standard normal: its actions on next_obs


def draw_epoch(key: jax.Array, dataset: Batch, config: Config) -> UpdateDraws:
    """An epoch's random numbers, drawn before its updates (faster on CPU: benchmarks/README.md)."""
    index_key, policy_key, next_key = jax.random.split(key, 3)
    shape = (config.num_updates_on_epoch, config.batch_size)
    dataset_size = len(dataset.rewards)
    noise_shape = (*shape, dataset.actions.shape[-1])
    return UpdateDraws(
        indices=jax.random.randint(index_key, shape, 0, dataset_size),
        policy_noise=jax.random.normal(policy_key, noise_shape),
        next_noise=jax.random.normal(next_key, noise_shape),
    )


def update_sac_n(state: SACNState, draws: UpdateDraws, dataset: Batch, config: Config) -> tuple:
    batch = jax.tree.map(lambda array: array[draws.indices], dataset)
    # alpha -> actor -> critic, each seeing the updates before it: EDAC's order, as CORL
    log_alpha, alpha_info = update_alpha(draws.policy_noise, state, batch, config)
    state = state._replace(log_alpha=log_alpha)
    actor, actor_info = update_actor(draws.policy_noise, state, batch, config)
    state = state._replace(actor=actor)
    critic, critic_info = update_critic(draws.next_noise, state, batch, config)
    return state._replace(critic=critic), {**alpha_info, **actor_info, **critic_info}


@partial(jax.jit, static_argnames="config", donate_argnames="state")
def train_epoch(state: SACNState, dataset: Batch, config: Config) -> tuple:
    """Every seed's epoch in one compiled call: the metrics are epoch means, [num_seeds] each. The
    dataset is an argument; a captured one would be compiled into the program."""

    def agent_epoch(state):
        key, draws_key, random_key = jax.random.split(state.key, 3)
        draws = draw_epoch(draws_key, dataset, config)
        update = partial(update_sac_n, dataset=dataset, config=config)
        state, infos = jax.lax.scan(update, state, draws)
        metrics = jax.tree.map(jnp.mean, infos)
        # the ensemble's spread on random actions, large where the critics disagree off the data
        obs = dataset.obs[draws.indices[-1]]
        shape = draws.policy_noise.shape[1:]  # [batch_size, action_dim]
        actions = jax.random.uniform(random_key, shape, minval=-1.0) * config.max_action
        q_values = state.critic.apply_fn(state.critic.params, obs, actions)  # [N, batch_size]
        metrics["q_random_std"] = q_values.std(axis=0).mean()
        return state._replace(key=key), metrics

    return jax.vmap(agent_epoch)(state)


def shard_seeds(state: SACNState, dataset: Batch, num_seeds: int) -> tuple:
    """Seeds split evenly over the most devices that divide num_seeds; the dataset copied to all."""
    num_devices = math.gcd(num_seeds, jax.device_count())
    if num_devices == 1:  # a one-device sharding would only change the state's type: a recompile
        return state, dataset
    mesh = jax.sharding.Mesh(jax.devices()[:num_devices], "seeds")
    seed_axis = jax.NamedSharding(mesh, jax.P("seeds"))
    copied = jax.NamedSharding(mesh, jax.P())
    return jax.device_put(state, seed_axis), jax.device_put(dataset, copied)


# ============================ run harness: below this line, the algorithm above becomes a tool


# --- Options ---
def fail(message: str) -> NoReturn:
    raise SystemExit(f"{os.path.basename(__file__)}: error: {' '.join(message.split())}")


def strict(kind: type, value: Any) -> Any:
    """pyrallis's decoder of int, float and bool, without its 3.5 to 3 and maybe to True."""
    if kind is float and type(value) in (int, str):
        value = float(value)  # YAML reads 3e-4 (no dot) as text; float() fails on other text
    if type(value) is not kind:
        raise TypeError(f"not {kind.__name__}")
    return value


for kind in (int, float, bool):
    pyrallis.decode.register(kind, partial(strict, kind))
FIELD_TYPES = Config.__annotations__  # {name: type} of every field


def decode_option(name: str, value: Any, source: str) -> Any:
    if name not in FIELD_TYPES:
        close = difflib.get_close_matches(name, FIELD_TYPES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(f"unknown option '{name}' in {source}; {hint}(see --help)")
    try:
        return pyrallis.decode(FIELD_TYPES[name], value)
    except (TypeError, ValueError):
        kind = FIELD_TYPES[name].__name__
        fail(f"option {name} must be of type {kind}, got '{value}' in {source}")


class OptionParser(pyrallis.argparsing.ArgumentParser):
    """pyrallis's parser (--help shows the Config's comments), strict: exact option names (argparse
    would take --num_critic for --num_critics), values of their field's type, one line per error."""

    def error(self, message: str) -> NoReturn:  # argparse's, e.g. an option without its value
        fail(f"{message} (see --help)")

    def _postprocessing(self, flags: Any) -> Config:
        """The file's values, then the flags' over them, each decoded here to name its source."""
        flags = vars(flags)
        path = flags.pop("config_path", None)
        values = {}
        if path is not None:
            try:
                with open(path) as file:
                    file_values = yaml.safe_load(file)
            except (OSError, yaml.YAMLError) as error:
                fail(f"cannot read config file {path}: {error}")
            if not isinstance(file_values, dict):
                fail(f"config file {path} must be a mapping of option: value, not {file_values!r}")
            for name, value in file_values.items():
                values[name] = decode_option(name, value, path)
        for name, text in flags.items():
            values[name] = decode_option(name, yaml.safe_load(text), "the command line")
        return Config(**values)


def check_config(config: Config) -> None:
    """Every option's range, before any data loads."""

    def require(holds, name, requirement):
        if not holds:
            fail(f"option {name} must be {requirement}, got {getattr(config, name)!r}")

    counts = "hidden_dim num_critics batch_size num_epochs num_updates_on_epoch eval_episodes"
    for name in [*counts.split(), "eval_every", "num_seeds"]:
        require(getattr(config, name) >= 1, name, "at least 1")
    rates = "actor_learning_rate critic_learning_rate alpha_learning_rate"
    for name in [*rates.split(), "max_action"]:
        require(0 < getattr(config, name) < math.inf, name, "positive")
    require(0 < config.tau <= 1, "tau", "in (0, 1]")
    require(0 <= config.gamma <= 1, "gamma", "in [0, 1]")
    require(0 <= config.eta < math.inf, "eta", "at least 0 (0 is SAC-N)")
    # EDAC's term divides by N - 1
    require(config.eta == 0 or config.num_critics > 1, "num_critics", "at least 2 with eta > 0")
    # the seeds are train_seed + i and eval_seed + j; a JAX key would take 2**32 + 10 as 10
    seed_counts = {"train_seed": config.num_seeds, "eval_seed": config.eval_episodes}
    for name, count in seed_counts.items():
        require(0 <= getattr(config, name) <= 2**32 - count, name, f"in [0, 2**32 - {count}]")
    minari = "/" in config.env_name
    d4rl = config.env_name in D4RL_NAMES
    require(d4rl or minari or config.dataset_path, "env_name", "a D4RL name")
    require(config.eval_env in [None, *gym.registry], "eval_env", "a gymnasium id like Hopper-v4")
    domain = config.env_name.split("-")[0]
    require(config.eval_env or minari or domain in D4RL_EVAL_ENV, "eval_env", "set: no D4RL domain")
    path = config.checkpoints_path
    require(path or not (config.resume or config.eval_only), "checkpoints_path", "set to resume")
    require(not os.path.isfile(path or ""), "checkpoints_path", "a directory, not a file")


def parse_config(args: Optional[list[str]] = None) -> Config:
    """Options from a YAML file (--config_path) and --option=value flags over it, checked."""
    config, unknown = OptionParser(Config, allow_abbrev=False).parse_known_args(args)
    if unknown:  # a misspelt option, or a word that is no option: decoding it says so
        name = unknown[0].removeprefix("--").split("=")[0]
        decode_option(name, None, "the command line")
    check_config(config)
    return config


# --- Data ---
# D4RL v2 data was collected in gym's v3 MuJoCo envs; the v4 envs have the same models
D4RL_EVAL_ENV = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
# random and expert returns: D4RL's score is 100 * (return - random) / (expert - random)
D4RL_REF_SCORES = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}
D4RL_LEVELS = "random medium expert medium-replay medium-expert full-replay".split()
D4RL_NAMES = [f"{domain}-{level}-v2" for domain in D4RL_EVAL_ENV for level in D4RL_LEVELS]
# the arrays of a D4RL file and their ranks: [rows, dim] or [rows]
D4RL_ARRAYS = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1}
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"


def d4rl_file(env_name: str) -> str:
    """The file d4rl reads (~/.d4rl/datasets/hopper_medium_replay-v2.hdf5); downloaded if absent."""
    file_name = env_name.replace("-", "_").replace("_v2", "-v2.hdf5")
    directory = os.path.expanduser(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets"))
    path = os.path.join(directory, file_name)
    if not os.path.exists(path):
        url = f"{D4RL_URL}/{file_name}"
        print(f"downloading {url} to {path}")
        try:  # read whole, then written: a failed download leaves no file behind
            with urllib.request.urlopen(url, timeout=60) as response:  # a stalled server times out
                data = response.read()  # fails if fewer bytes come than announced
        # a body cut off mid-chunk raises IncompleteRead, an HTTPException rather than an OSError
        except (OSError, http.client.HTTPException) as error:
            fail(
                f"{path} is missing and downloading {url} failed ({error}): put it there, "
                "or set D4RL_DATASET_DIR"
            )
        write_file(path, lambda file: file.write(data))
    return path


def qlearning_dataset(path: str) -> dict:
    """Transitions as d4rl's `qlearning_dataset` reads them: one per row but the last and those
    flagged `timeouts`, its next_obs the next row's observation."""
    if not os.path.isfile(path):
        fail(f"dataset file {path} does not exist or is a directory")
    try:
        with h5py.File(path, "r") as file:
            data = {key: file[key][()] for key in D4RL_ARRAYS if key in file}
    except (OSError, TypeError, ValueError) as error:  # not HDF5, truncated, unreadable
        fail(f"cannot read {path} as HDF5 ({error}): download it again")
    ranks = {key: np.ndim(array) for key, array in data.items()}
    lengths = {np.shape(array)[:1] for array in data.values()}  # (rows,) of each array
    if ranks != D4RL_ARRAYS or len(lengths) > 1:
        shapes = {key: np.shape(data[key]) if key in data else "missing" for key in D4RL_ARRAYS}
        fail(
            f"{path} is not in the D4RL layout, [rows, dim] observations and actions, [rows] rest: "
            f"{shapes}"
        )
    for key in ["terminals", "timeouts"]:
        if set(np.unique(data[key])) - {0, 1}:
            fail(f"{path} has {key} other than 0 and 1")
    rows = np.flatnonzero(data["timeouts"][:-1] == 0)
    return {
        "obs": data["observations"][rows],
        "actions": data["actions"][rows],
        "rewards": data["rewards"][rows],
        "next_obs": data["observations"][rows + 1],
        "dones": data["terminals"][rows],
    }


def load_minari(dataset_id: str) -> tuple:
    import minari  # only needed for Minari ids

    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # minari raises several kinds for a missing or unreadable dataset
        fail(
            f"cannot load Minari dataset {dataset_id} ({error}); "
            f"get it with `minari download {dataset_id}`"
        )
    episodes = list(dataset.iterate_episodes())

    def stacked(name, rows=slice(None)):
        arrays = [getattr(episode, name)[rows] for episode in episodes]
        return np.concatenate(arrays)

    # every episode's final observation is stored, so no transition is dropped
    transitions = {"obs": stacked("observations", slice(-1)), "actions": stacked("actions")}
    transitions["rewards"] = stacked("rewards")
    transitions["next_obs"] = stacked("observations", slice(1, None))
    transitions["dones"] = stacked("terminations")
    # reference scores are dataset metadata (minari.get_normalized_score reads them there)
    random_score = dataset.storage.metadata.get("ref_min_score", math.nan)
    expert_score = dataset.storage.metadata.get("ref_max_score", math.nan)
    make_env = partial(dataset.recover_environment, eval_env=True)
    return transitions, make_env, (random_score, expert_score)


def on_mujoco_warning(text: str) -> None:
    if "settotalmass" not in text:  # about the models of D4RL's envs: noise, not an error
        print(f"MuJoCo: {text}", file=sys.stderr)


def load_task(config: Config) -> tuple:
    """The dataset on the device, the eval envs (an episode each) and the reference scores."""
    # gymnasium's note on the v4 envs (they are D4RL's), and MuJoCo's warnings without a log file
    warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading")
    mujoco.set_mju_user_warning(on_mujoco_warning)
    if "/" in config.env_name and config.dataset_path is None:
        transitions, make_env, ref_scores = load_minari(config.env_name)
        source = f"Minari dataset {config.env_name}"
    else:
        source = config.dataset_path or d4rl_file(config.env_name)
        transitions = qlearning_dataset(source)
        domain = config.env_name.split("-")[0]
        make_env = partial(gym.make, config.eval_env or D4RL_EVAL_ENV.get(domain))
        ref_scores = D4RL_REF_SCORES.get(domain, (0.0, math.nan))  # none outside D4RL's domains
    num_envs = config.num_seeds * config.eval_episodes
    envs = gym.vector.SyncVectorEnv([make_env] * num_envs)
    dims = [transitions[key].shape[1] for key in ["obs", "actions"]]
    env_dims = [envs.single_observation_space.shape[0], envs.single_action_space.shape[0]]
    if dims != env_dims:
        fail(
            f"{source} has obs/action dims {dims} but eval env {envs.envs[0].spec.id} has "
            f"{env_dims}: check env_name, eval_env"
        )
    for key, array in transitions.items():
        if not np.isfinite(array).all():
            fail(f"{source} has NaN or inf values in {key}")
    size = len(transitions["rewards"])
    if config.batch_size > size:
        fail(f"batch_size {config.batch_size} is larger than the dataset ({size} transitions)")
    outside = np.abs(transitions["actions"]) > config.max_action  # only the critics see them
    if outside.any():
        actions = transitions["actions"]
        print(
            f"warning: {outside.sum()} of {outside.size} action values in {source} are outside "
            f"[-max_action, max_action], in [{actions.min():.3g}, {actions.max():.3g}]: "
            "check max_action",
            file=sys.stderr,
        )
    dataset = jax.tree.map(jnp.float32, Batch(**transitions))  # float32 arrays on the device
    return dataset, envs, ref_scores


# --- Evaluation ---
def evaluate(actor: TrainState, envs: VectorEnv, ref_scores: tuple, config: Config) -> tuple:
    """Metrics, returns and D4RL scores [num_seeds, eval_episodes]: an episode per env, one actor
    call per step for all; env k is seed k // eval_episodes's, reset with eval_seed + episode."""
    seeds = [config.eval_seed + episode for episode in range(config.eval_episodes)]
    obs, _ = envs.reset(seed=seeds * config.num_seeds)
    returns = np.zeros(envs.num_envs)
    done = np.zeros(envs.num_envs, bool)
    while not done.all():
        seed_obs = obs.reshape(config.num_seeds, config.eval_episodes, -1)
        actions = deterministic_action(actor, seed_obs, config.max_action)
        actions = np.asarray(actions).reshape(envs.num_envs, -1)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += np.where(done, 0.0, rewards)  # an ended episode's env starts another one
        done |= terminated | truncated
    returns = returns.reshape(config.num_seeds, config.eval_episodes)
    random_score, expert_score = ref_scores
    scores = 100 * (returns - random_score) / (expert_score - random_score)
    metrics = {"eval/return_mean": returns.mean(), "eval/return_std": returns.std()}
    metrics["eval/normalized_score_mean"] = scores.mean()
    metrics["eval/normalized_score_std"] = scores.std()
    if config.num_seeds > 1:  # each seed's means, and their std: the paper's "mean +- std"
        for index in range(config.num_seeds):
            seed = config.train_seed + index
            metrics[f"eval/seed_{seed}/return_mean"] = returns[index].mean()
            metrics[f"eval/seed_{seed}/normalized_score_mean"] = scores[index].mean()
        metrics["eval/normalized_score_seed_std"] = scores.mean(axis=1).std()
    return metrics, returns, scores


# --- Main ---
SCORE_COLUMNS = "epoch seed train_seconds return_mean return_std score_mean score_std".split()
# what may change when a saved run is resumed: when it ends and how it is evaluated
MAY_CHANGE = "num_epochs eval_episodes eval_every eval_seed checkpoints_path resume eval_only"


def write_file(path: str, write: Callable) -> None:
    """write(file) to a temporary file, renamed once complete: no half-written file, ever."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as file:
            write(file)
        os.replace(path + ".tmp", path)
    except OSError as error:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        fail(f"cannot write {path} ({error}); the run stopped, its last complete files are kept")


def save_checkpoint(directory: str, state: SACNState, run: dict) -> None:
    leaves = jax.device_get(jax.tree.leaves(state))
    path = f"{directory}/checkpoint.npz"
    write_file(path, lambda file: np.savez(file, *leaves, run=json.dumps(run)))


def load_checkpoint(directory: str, template: SACNState) -> tuple[SACNState, dict]:
    path = f"{directory}/checkpoint.npz"
    leaves, treedef = jax.tree.flatten(template)
    try:
        with np.load(path) as data:
            arrays = [data[f"arr_{index}"] for index in range(len(leaves))]
            run = json.loads(str(data["run"]))
    except Exception as error:  # np.load raises many kinds for a damaged file
        fail(f"cannot read checkpoint {path} ({error}): it is damaged or not a checkpoint")
    shapes = [(array.shape, array.dtype) for array in arrays]
    if shapes != [(leaf.shape, leaf.dtype) for leaf in leaves]:
        fail(f"checkpoint {path} does not fit the config: its arrays have other shapes")
    return jax.tree.unflatten(treedef, map(jnp.asarray, arrays)), run


def start_wandb(config: Config, run: dict) -> None:
    # never wait at wandb's login prompt: with no WANDB_MODE and no API key, log offline and say so
    offline = "WANDB_MODE" not in os.environ and not wandb.login(prompt=False, verify=False)
    wandb_run = wandb.init(
        project=config.project,
        group=config.group,
        name=run["name"],
        id=run["wandb_id"],
        resume="allow",
        config=dataclasses.asdict(config),
        mode="offline" if offline else None,
        settings=wandb.Settings(quiet=True),  # no run summary at the end
    )
    if offline:
        upload = f"wandb login; wandb sync {wandb_run.dir.removesuffix('/files')}"
        print(f"wandb: no login, so logging offline; upload with `{upload}`")


def catch_stop_signals() -> list[int]:
    """A list for the first SIGINT or SIGTERM (the run ends after the epoch); a second: at once."""
    stops = []

    def on_signal(number, frame):
        if stops:
            signal.default_int_handler(number, frame)
        stops.append(number)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stops


def check_finite(metrics: dict, config: Config, run: dict) -> None:
    for name, values in metrics.items():
        if not np.isfinite(values).all():
            seed = config.train_seed + np.argmin(np.isfinite(values))  # the first bad one
            saved = os.path.isfile(f"{run['directory']}/checkpoint.npz")
            kept = f"; the last checkpoint is in {run['directory']}" if saved else ""
            fail(f"non-finite {name} at epoch {run['epoch']}, seed {seed}: training stopped{kept}")


def record_scores(returns: np.ndarray, scores: np.ndarray, config: Config, run: dict) -> None:
    """A row per seed in the run's scores, and scores.csv written anew from them."""
    seeds = range(config.train_seed, config.train_seed + config.num_seeds)
    for seed, seed_returns, seed_scores in zip(seeds, returns, scores):
        row = [run["epoch"], seed, round(run["train_seconds"], 2)]
        row += [seed_returns.mean(), seed_returns.std()]
        row += [seed_scores.mean(), seed_scores.std()]
        run["scores"].append(dict(zip(SCORE_COLUMNS, row)))
    text = io.StringIO()
    writer = csv.DictWriter(text, SCORE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(run["scores"])
    table = text.getvalue().encode()
    write_file(f"{run['directory']}/scores.csv", lambda file: file.write(table))


def train(
    config: Config, state: SACNState, dataset: Batch, evaluate_actor: Callable, run: dict
) -> None:
    start_wandb(config, run)
    stops = catch_stop_signals()
    epochs = range(run["epoch"] + 1, config.num_epochs + 1)
    epochs = tqdm(epochs, initial=run["epoch"], total=config.num_epochs)
    for epoch in epochs:
        start = time.perf_counter()
        state, metrics = train_epoch(state, dataset, config)
        metrics = jax.device_get(metrics)  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        run["epoch"] = epoch
        run["train_seconds"] += seconds
        check_finite(metrics, config, run)
        log = jax.tree.map(np.mean, metrics)  # means over seeds
        log["updates_per_second"] = config.num_updates_on_epoch / seconds
        evaluated = epoch % config.eval_every == 0 or epoch == config.num_epochs
        if evaluated:
            eval_metrics, returns, scores = evaluate_actor(state.actor)
            log.update(eval_metrics)
            record_scores(returns, scores, config, run)
            epochs.write(
                f"epoch {epoch}: normalized score {scores.mean():.1f} +- {scores.std():.1f}"
            )
        # after scores.csv: a run that dies between the two writes repeats the epochs since the last
        if config.checkpoints_path and (evaluated or stops):
            save_checkpoint(run["directory"], state, run)
        wandb.log({"epoch": epoch, **log}, step=epoch)
        epochs.set_postfix({"updates/s": f"{log['updates_per_second']:.0f}"})
        if stops and epoch < config.num_epochs:  # a stop during the last epoch finishes the run
            wandb.finish(exit_code=1)
            stop = signal.Signals(stops[0]).name
            fail(f"stopped by {stop} after epoch {epoch}; continue with --resume=true")
    wandb.finish()
    # CORL's two numbers: each seed's last and best score, mean +- std over seeds
    score_means = [row["score_mean"] for row in run["scores"]]
    scores = np.reshape(score_means, (-1, config.num_seeds))  # [evaluations, seeds]
    last = f"last {scores[-1].mean():.1f} +- {scores[-1].std():.1f}"
    best = f"best {scores.max(axis=0).mean():.1f} +- {scores.max(axis=0).std():.1f}"
    summary = f"mean +- std: {last}, {best} (in {run['directory']}/scores.csv)"
    print(f"normalized score over {config.num_seeds} seed(s), {summary}")


def main(config: Config) -> None:
    directory = config.checkpoints_path
    resuming = config.resume or config.eval_only
    in_use = directory and os.path.isdir(directory) and os.listdir(directory)
    if in_use and not resuming:
        fail(
            f"checkpoints_path {directory} is not empty: continue its run with --resume=true, "
            "or pass a fresh one"
        )
    if resuming:
        saved = parse_config([f"--config_path={directory}/config.yaml"])
        fixed = [name for name in FIELD_TYPES if name not in MAY_CHANGE.split()]
        changed = [name for name in fixed if getattr(config, name) != getattr(saved, name)]
        if changed:
            fail(
                f"config differs from the saved run in {directory} in {changed}: "
                "resume with the same values"
            )
    dataset, envs, ref_scores = load_task(config)
    evaluate_actor = partial(evaluate, envs=envs, ref_scores=ref_scores, config=config)
    dims = dataset.obs.shape[1], dataset.actions.shape[1]
    new_state = partial(create_sac_n_state, *dims, config)
    if resuming:
        state, run = load_checkpoint(directory, jax.eval_shape(new_state))
    else:  # what a resumed run needs besides the train state
        state = new_state()
        run_id = os.urandom(4).hex()
        name = f"{config.name}-{config.env_name.replace('/', '-')}-{run_id}"
        # train_seconds: summed over the sessions of a resumed run
        run = {"name": name, "wandb_id": run_id, "epoch": 0, "train_seconds": 0.0, "scores": []}
        if directory:
            write_yaml = partial(pyrallis.dump, config, sort_keys=False, encoding="utf-8")
            write_file(f"{directory}/config.yaml", write_yaml)
    if config.eval_only:  # print the saved agents' evaluation
        for name, value in evaluate_actor(state.actor)[0].items():
            print(f"{name}: {value:.3f}")
        return
    run["directory"] = directory or f"results/{run['name']}"  # of scores.csv, and the checkpoint
    state, dataset = shard_seeds(state, dataset, config.num_seeds)
    train(config, state, dataset, evaluate_actor, run)


if __name__ == "__main__":
    main(parse_config())
