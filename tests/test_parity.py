"""The Flax and Equinox scripts train the same model: same init distributions, and from the same
parameters and keys the same outputs, losses, gradients and updated parameters. Tiny sizes, CPU.

    python -m pytest tests/test_parity.py -q   (add -s to see the numbers as well)
"""

import dataclasses
import difflib
import math
import re
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sac_n_jax_eqx as eqx_script  # noqa: E402
import sac_n_jax_flax as flax_script  # noqa: E402

OBS_DIM, ACTION_DIM = 5, 3
SIZES = {"hidden_dim": 16, "num_critics": 4, "batch_size": 8, "num_updates_on_epoch": 3}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
# `diff sac_n_jax_flax.py sac_n_jax_eqx.py | grep -c '^[<>]'` must stay under this (STYLE.md)
MAX_CHANGED_LINES = 150
# the sections where the two files may differ; every other section must be the same text
FRAMEWORK_SECTIONS = {"Networks", "Train state", "Updates", "Evaluation"}


# --- Parameter conversion ---


def flax_dense_layers(params: dict) -> list[dict]:
    """Flax's auto-named layers in creation order: Dense_0, Dense_1, ... (under VmapCritic_0 for the ensemble)."""
    layers = params["params"]
    layers = layers.get("VmapCritic_0", layers)
    return [layers[f"Dense_{index}"] for index in range(len(layers))]


def eqx_dense_layers(network: eqx.Module) -> list:
    """The Equinox layers in the same order as flax_dense_layers."""
    if isinstance(network, eqx_script.EnsembleCritic):
        return [*network.critics.hidden, network.critics.output]
    return [*network.hidden, network.mean, network.log_std]


def to_eqx(flax_params: dict, network: eqx.Module) -> eqx.Module:
    """`network` with Flax's arrays, layer by layer (Dense_i -> the i-th Equinox Dense). Works for any
    params-shaped tree (parameters, gradients, Adam moments) and any leading axes (ensemble, seeds).
    The arrays are copied: train_epoch donates its state's buffers."""
    arrays = [jnp.copy(layer[name]) for layer in flax_dense_layers(flax_params) for name in ("kernel", "bias")]

    def where(network: eqx.Module) -> list:
        return [array for layer in eqx_dense_layers(network) for array in (layer.kernel, layer.bias)]

    assert [array.shape for array in arrays] == [array.shape for array in where(network)]
    return eqx.tree_at(where, network, arrays)


def to_eqx_state(flax_state: flax_script.SACNState, eqx_state: eqx_script.SACNState) -> eqx_script.SACNState:
    """`eqx_state` (made by the Equinox file, for its structure) with every array of `flax_state`."""

    def convert(flax_train_state: Any, eqx_train_state: Any, convert_params: Callable) -> Any:
        adam, *rest = flax_train_state.opt_state  # (ScaleByAdamState, EmptyState)
        adam = adam._replace(count=jnp.copy(adam.count), mu=convert_params(adam.mu), nu=convert_params(adam.nu))
        params = convert_params(flax_train_state.params)
        return eqx_train_state.replace(step=jnp.array(flax_train_state.step), params=params, opt_state=(adam, *rest))

    actor = convert(flax_state.actor, eqx_state.actor, lambda params: to_eqx(params, eqx_state.actor.params))
    critic = convert(flax_state.critic, eqx_state.critic, lambda params: to_eqx(params, eqx_state.critic.params))
    critic = critic.replace(target_params=to_eqx(flax_state.critic.target_params, eqx_state.critic.target_params))
    alpha = convert(flax_state.alpha, eqx_state.alpha, lambda params: jax.tree.map(jnp.copy, params))
    return eqx_script.SACNState(actor, critic, alpha, jnp.copy(flax_state.key))


def assert_close(flax_tree: Any, eqx_tree: Any, what: str) -> None:
    flax_leaves, eqx_leaves = jax.tree.leaves(flax_tree), jax.tree.leaves(eqx_tree)
    assert len(flax_leaves) == len(eqx_leaves), what
    for flax_leaf, eqx_leaf in zip(flax_leaves, eqx_leaves):
        np.testing.assert_allclose(np.asarray(eqx_leaf), np.asarray(flax_leaf), err_msg=what, **TOLERANCE)


def assert_same_states(flax_state: flax_script.SACNState, eqx_state: eqx_script.SACNState) -> None:
    """Actor, critic, target critic and log_alpha, and the actor's and critic's Adam moments."""
    for name in ("actor", "critic"):
        flax_train_state, eqx_train_state = getattr(flax_state, name), getattr(eqx_state, name)
        network = eqx_train_state.params
        assert_close(to_eqx(flax_train_state.params, network), network, f"{name} params")
        flax_adam, eqx_adam = flax_train_state.opt_state[0], eqx_train_state.opt_state[0]
        assert_close(to_eqx(flax_adam.mu, network), eqx_adam.mu, f"{name} Adam mu")
        assert_close(to_eqx(flax_adam.nu, network), eqx_adam.nu, f"{name} Adam nu")
        np.testing.assert_array_equal(np.asarray(eqx_train_state.step), np.asarray(flax_train_state.step))
    network = eqx_state.critic.target_params
    assert_close(to_eqx(flax_state.critic.target_params, network), network, "target critic params")
    assert_close(flax_state.alpha.params, eqx_state.alpha.params, "log_alpha")
    np.testing.assert_array_equal(jax.random.key_data(eqx_state.key), jax.random.key_data(flax_state.key))


# --- Fixtures ---


def configs(**changes: Any) -> tuple:
    return flax_script.Config(**SIZES, **changes), eqx_script.Config(**SIZES, **changes)


# the scripts' own functions, compiled: one compile is faster than running them op by op
@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def create_train_states(script: ModuleType, config: Any, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM) -> tuple:
    return script.create_train_states(jax.random.PRNGKey(0), obs_dim, action_dim, config)


@partial(jax.jit, static_argnums=(0, 1))
def create_sac_n_state(script: ModuleType, config: Any) -> Any:
    return script.create_sac_n_state(OBS_DIM, ACTION_DIM, config)


@pytest.fixture(scope="module")
def states() -> tuple:
    """A Flax SACNState and an Equinox one holding the same parameters and key."""
    key = jax.random.PRNGKey(1)
    flax_state = flax_script.SACNState(*create_train_states(flax_script, configs()[0]), key)
    eqx_state = eqx_script.SACNState(*create_train_states(eqx_script, configs()[1]), key)
    return flax_state, to_eqx_state(flax_state, eqx_state)


def make_batch(key: jax.Array, size: int) -> flax_script.Batch:
    obs_key, action_key, reward_key, next_obs_key, done_key = jax.random.split(key, 5)
    return flax_script.Batch(
        obs=jax.random.normal(obs_key, (size, OBS_DIM)),
        actions=jax.random.uniform(action_key, (size, ACTION_DIM), minval=-1.0, maxval=1.0),
        rewards=jax.random.normal(reward_key, (size,)),
        next_obs=jax.random.normal(next_obs_key, (size, OBS_DIM)),
        dones=jax.random.bernoulli(done_key, 0.2, (size,)).astype(jnp.float32),
    )


def recording_tx() -> optax.GradientTransformation:
    """An optimizer that leaves the parameters as they are and keeps the gradient as its state, so
    `apply_gradients` hands back exactly the gradient the update function computed."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def one_update_noise(key: jax.Array, dataset: flax_script.Batch) -> flax_script.UpdateNoise:
    """The first update's random numbers of an epoch, as the Flax script draws them (both scripts
    draw the same: a test below checks their whole epochs)."""
    epoch_noise = flax_script.draw_epoch_noise(key, dataset, configs()[0])
    return jax.tree.map(lambda array: array[0], epoch_noise)


def recording(train_state: Any) -> Any:
    return train_state.replace(tx=recording_tx(), opt_state=recording_tx().init(train_state.params))


# --- Outputs, losses, gradients, updates ---


@jax.jit
def flax_outputs(state: flax_script.SACNState, batch: flax_script.Batch, noise: jax.Array) -> tuple:
    q_values = state.critic.apply_fn(state.critic.params, batch.obs, batch.actions)
    mean, log_std = state.actor.apply_fn(state.actor.params, batch.obs)
    return q_values, (mean, log_std), flax_script.sample_action(noise, mean, log_std, 1.0)


@jax.jit
def eqx_outputs(state: eqx_script.SACNState, batch: flax_script.Batch, noise: jax.Array) -> tuple:
    q_values = state.critic.params(batch.obs, batch.actions)
    mean, log_std = state.actor.params(batch.obs)
    return q_values, (mean, log_std), eqx_script.sample_action(noise, mean, log_std, 1.0)


def test_networks_give_the_same_outputs(states: tuple) -> None:
    batch = make_batch(jax.random.PRNGKey(2), SIZES["batch_size"])
    noise = jax.random.normal(jax.random.PRNGKey(3), batch.actions.shape)
    flax_q, flax_actor, flax_sample = flax_outputs(states[0], batch, noise)
    eqx_q, eqx_actor, eqx_sample = eqx_outputs(states[1], batch, noise)
    assert eqx_q.shape == (SIZES["num_critics"], SIZES["batch_size"])
    assert_close(flax_q, eqx_q, "Q-values")
    assert_close(flax_actor, eqx_actor, "actor mean and log_std")
    assert_close(flax_sample, eqx_sample, "sampled actions and log-probs")


@partial(jax.jit, static_argnums=0)
def losses_and_gradients(
    script: ModuleType, state: Any, batch: flax_script.Batch, noise: flax_script.UpdateNoise, alpha: float
) -> tuple:
    """Each update function's metrics, and the gradient it applied (caught by a recording optimizer)."""
    alpha_state, alpha_info = script.update_alpha(noise.policy_noise, state.actor, recording(state.alpha), batch, 1.0)
    actor, actor_info = script.update_actor(noise.policy_noise, recording(state.actor), state.critic, alpha, batch, 1.0)
    critic, critic_info = script.update_critic(
        noise.next_noise, state.actor, recording(state.critic), alpha, batch, 0.99, 1.0
    )
    return {**alpha_info, **actor_info, **critic_info}, (alpha_state.opt_state, actor.opt_state, critic.opt_state)


def test_losses_and_gradients_match(states: tuple) -> None:
    flax_state, eqx_state = states
    batch = make_batch(jax.random.PRNGKey(2), SIZES["batch_size"])
    noise = one_update_noise(jax.random.PRNGKey(3), batch)
    flax_info, (flax_alpha, flax_actor, flax_critic) = losses_and_gradients(flax_script, flax_state, batch, noise, 0.7)
    eqx_info, (eqx_alpha, eqx_actor, eqx_critic) = losses_and_gradients(eqx_script, eqx_state, batch, noise, 0.7)
    assert flax_info.keys() == eqx_info.keys()
    assert_close(flax_info, eqx_info, "alpha, actor and critic losses")
    assert_close(flax_alpha, eqx_alpha, "alpha gradient")
    assert_close(to_eqx(flax_actor, eqx_state.actor.params), eqx_actor, "actor gradient")
    assert_close(to_eqx(flax_critic, eqx_state.critic.params), eqx_critic, "critic gradient")
    # not trivially equal: every parameter array gets a gradient that is not zero
    for gradient in (eqx_alpha, eqx_actor, eqx_critic):
        assert all(np.abs(np.asarray(leaf)).max() > 0 for leaf in jax.tree.leaves(gradient))


def test_one_update_gives_the_same_parameters(states: tuple) -> None:
    flax_config, eqx_config = configs()
    dataset = make_batch(jax.random.PRNGKey(2), 64)
    noise = one_update_noise(jax.random.PRNGKey(3), dataset)
    flax_state, flax_info = jax.jit(flax_script.update_sac_n, static_argnums=3)(states[0], dataset, noise, flax_config)
    eqx_state, eqx_info = jax.jit(eqx_script.update_sac_n, static_argnums=3)(states[1], dataset, noise, eqx_config)
    assert flax_info.keys() == eqx_info.keys()
    assert_close(flax_info, eqx_info, "update_sac_n metrics")
    assert_same_states(flax_state, eqx_state)


def test_train_epoch_gives_the_same_parameters() -> None:
    """Two seeds (vmapped), three updates each, in the jitted epoch of each file."""
    flax_config, eqx_config = configs(num_seeds=2)
    flax_state = create_sac_n_state(flax_script, flax_config)
    eqx_state = to_eqx_state(flax_state, create_sac_n_state(eqx_script, eqx_config))
    dataset = make_batch(jax.random.PRNGKey(2), 64)
    flax_state, flax_metrics = flax_script.train_epoch(flax_state, dataset, flax_config)
    eqx_state, eqx_metrics = eqx_script.train_epoch(eqx_state, dataset, eqx_config)
    assert flax_metrics.keys() == eqx_metrics.keys()
    assert_close(flax_metrics, eqx_metrics, "train_epoch metrics")
    assert_same_states(flax_state, eqx_state)
    obs = jax.random.normal(jax.random.PRNGKey(3), (2, 4, OBS_DIM))  # [num_seeds, num_envs, obs_dim]
    flax_actions = flax_script.deterministic_action(flax_state.actor, obs, 1.0)
    assert_close(flax_actions, eqx_script.deterministic_action(eqx_state.actor, obs, 1.0), "evaluation actions")


# --- Initialisation ---


def init_layers(script: ModuleType, config: Any) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(kernel, bias) of every layer of the actor and the critic ensemble, in the same order for both files."""
    actor, critic, _ = create_train_states(script, config, 17, 6)
    if script is flax_script:
        networks = {"actor": flax_dense_layers(actor.params), "critic": flax_dense_layers(critic.params)}
        networks = {name: [(layer["kernel"], layer["bias"]) for layer in layers] for name, layers in networks.items()}
    else:
        networks = {"actor": eqx_dense_layers(actor.params), "critic": eqx_dense_layers(critic.params)}
        networks = {name: [(layer.kernel, layer.bias) for layer in layers] for name, layers in networks.items()}
    return jax.tree.map(np.asarray, networks)


@pytest.mark.parametrize("script", [flax_script, eqx_script], ids=["flax", "eqx"])
def test_initialisation_distributions(script: ModuleType) -> None:
    """EDAC's init in both files: hidden kernels U(+-1/sqrt(fan_in)) and biases 0.1, actor heads
    U(+-1e-3), critic output U(+-3e-3); hidden 256, so a layer's max |kernel| comes close to its bound."""
    config = script.Config(hidden_dim=256, num_critics=4)
    layers = init_layers(script, config)
    expected = {
        "actor": ["hidden"] * 3 + [1e-3, 1e-3],
        "critic": ["hidden"] * 3 + [3e-3],
    }
    for name, bounds in expected.items():
        assert len(layers[name]) == len(bounds), name
        for index, ((kernel, bias), bound) in enumerate(zip(layers[name], bounds)):
            where = f"{script.__name__} {name} layer {index}"
            if bound == "hidden":
                bound = 1 / math.sqrt(kernel.shape[-2])  # fan_in
                np.testing.assert_array_equal(bias, np.float32(0.1), err_msg=where)
            else:
                assert np.abs(bias).max() <= bound and np.unique(bias).size == bias.size, where
            assert 0.98 * bound <= np.abs(kernel).max() <= bound, where
            # uniform: mean 0, std bound / sqrt(3)
            assert abs(kernel.mean()) < 0.1 * bound, where
            assert abs(kernel.std() / (bound / math.sqrt(3)) - 1) < 0.1, where
    # each critic of the ensemble is initialised independently
    for index, (kernel, _) in enumerate(layers["critic"]):
        assert kernel.shape[0] == config.num_critics
        members = kernel.reshape(config.num_critics, -1)
        for i in range(config.num_critics):
            for j in range(i):
                assert not np.allclose(members[i], members[j]), f"{script.__name__} critics {i}, {j} layer {index}"
    (mean_kernel, _), (log_std_kernel, _) = layers["actor"][3:]
    assert not np.allclose(mean_kernel, log_std_kernel)


def test_target_critic_starts_as_a_copy() -> None:
    for script, config in zip((flax_script, eqx_script), configs()):
        _, critic, _ = create_train_states(script, config)
        assert_close(critic.params, critic.target_params, f"{script.__name__} target critic")


# --- Checkpoints and configs ---


def test_checkpoints_are_interchangeable(tmp_path: Path) -> None:
    """Both files flatten their train state to the same list of arrays, so a checkpoint written by
    either loads in the other, and the Equinox states need no change to the checkpoint functions."""
    flax_config, eqx_config = configs(num_seeds=2)
    flax_state = create_sac_n_state(flax_script, flax_config)
    eqx_template = create_sac_n_state(eqx_script, eqx_config)
    run = eqx_script.RunInfo(name="parity", wandb_id="parity", epoch=3)
    flax_script.save_checkpoint(str(tmp_path), flax_state, run)
    eqx_state, loaded_run = eqx_script.load_checkpoint(str(tmp_path), eqx_template)
    assert dataclasses.asdict(loaded_run) == dataclasses.asdict(run)
    assert_same_states(flax_state, eqx_state)
    eqx_script.save_checkpoint(str(tmp_path), eqx_state, run)
    eqx_again, _ = eqx_script.load_checkpoint(str(tmp_path), eqx_template)
    assert jax.tree.structure(eqx_again) == jax.tree.structure(eqx_template)
    assert_close(eqx_state, eqx_again, "Equinox checkpoint round trip")


# the Config classes are the same text (test_shared_sections_are_the_same_text): one D4RL file stands for all
CONFIG_FILES = [*sorted(ROOT.glob("configs/*.yaml")), *sorted(ROOT.glob("configs/d4rl/*.yaml"))[:1]]


@pytest.mark.parametrize("path", [str(path) for path in CONFIG_FILES if path.name != "sweep.yaml"])
def test_config_files_work_for_both(path: str) -> None:
    flax_config = flax_script.parse_config(["--config_path", path])
    eqx_config = eqx_script.parse_config(["--config_path", path])
    assert dataclasses.asdict(flax_config) == dataclasses.asdict(eqx_config)


# --- The diff between the two files ---


def read_script(name: str) -> list[str]:
    return (ROOT / name).read_text().splitlines()


def changed_lines() -> int:
    """What `diff sac_n_jax_flax.py sac_n_jax_eqx.py | grep -c '^[<>]'` counts. Without autojunk,
    which treats frequent lines (blank ones) as junk, difflib aligns the files as GNU diff does."""
    matcher = difflib.SequenceMatcher(
        None, read_script("sac_n_jax_flax.py"), read_script("sac_n_jax_eqx.py"), autojunk=False
    )
    return sum(i2 - i1 + j2 - j1 for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def sections(lines: list[str]) -> dict[str, str]:
    """The text of each `# --- Name ---` section; the docstring and imports are the section ''."""
    text, name = {"": []}, ""
    for line in lines:
        match = re.fullmatch(r"# --- (.+) ---", line)
        if match:
            name = match.group(1)
            text[name] = []
        text[name].append(line)
    return {name: "\n".join(section) for name, section in text.items()}


def test_diff_stays_small(capsys: pytest.CaptureFixture) -> None:
    count = changed_lines()
    with capsys.disabled():  # shown without -s too
        print(f"\ndiff sac_n_jax_flax.py sac_n_jax_eqx.py: {count} changed lines (budget {MAX_CHANGED_LINES})")
    assert count < MAX_CHANGED_LINES


def test_shared_sections_are_the_same_text() -> None:
    flax_sections, eqx_sections = sections(read_script("sac_n_jax_flax.py")), sections(read_script("sac_n_jax_eqx.py"))
    assert list(flax_sections) == list(eqx_sections), "the two files must have the same sections in the same order"
    differing = [name for name in flax_sections if flax_sections[name] != eqx_sections[name]]
    assert set(differing) <= FRAMEWORK_SECTIONS | {""}, f"framework-free sections differ: {differing}"
