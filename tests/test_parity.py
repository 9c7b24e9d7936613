"""The Flax and Equinox scripts train the same model: same init distributions, and from the same parameters and
random numbers the same outputs, losses, gradients and updated parameters; checkpoints load in either file; and the
two files differ only in their framework sections. Tiny sizes, CPU."""

import dataclasses
import difflib
import math
import re
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from datasets import random_transitions

import sac_n_jax_eqx as eqx_script
import sac_n_jax_flax as flax_script

ROOT = Path(__file__).resolve().parents[1]
# the sizes of test_training.py and test_policy.py too: the persistent compilation cache (conftest.py) then compiles
# each program once
OBS_DIM, ACTION_DIM = 17, 6
SIZES = {"hidden_dim": 16, "num_critics": 3, "batch_size": 32, "num_updates_on_epoch": 10}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
# `diff sac_n_jax_flax.py sac_n_jax_eqx.py | grep -c '^[<>]'` must stay under this (STYLE.md)
MAX_CHANGED_LINES = 150
# the sections where the two files may differ; every other section must be the same text
FRAMEWORK_SECTIONS = {"Networks", "Train state"}


# --- Parameter conversion ---


def flax_dense_layers(params: dict) -> list[dict]:
    """Flax's auto-named layers in creation order: Dense_0, Dense_1, ..."""
    return [params["params"][f"Dense_{index}"] for index in range(len(params["params"]))]


def eqx_dense_layers(network: eqx.Module) -> list:
    """The Equinox layers in the same order as flax_dense_layers."""
    if isinstance(network, eqx_script.Critic):
        return [*network.hidden, network.output]
    return [*network.hidden, network.mean, network.log_std]


def to_eqx(flax_params: dict, network: eqx.Module) -> eqx.Module:
    """`network` with Flax's arrays, layer by layer (Dense_i -> the i-th Equinox Dense). Works for any params-shaped
    tree (parameters, gradients, Adam moments) and any leading axes (ensemble, seeds). The arrays are copied:
    train_epoch donates its state's buffers."""
    arrays = [
        jnp.copy(layer[name])
        for layer in flax_dense_layers(flax_params)
        for name in ("kernel", "bias")
    ]

    def where(network: eqx.Module) -> list:
        return [
            array for layer in eqx_dense_layers(network) for array in (layer.kernel, layer.bias)
        ]

    assert [array.shape for array in arrays] == [array.shape for array in where(network)]
    return eqx.tree_at(where, network, arrays)


def convert_train_state(flax_state: Any, eqx_state: Any, convert_params) -> Any:
    adam, *rest = flax_state.opt_state  # (ScaleByAdamState, EmptyState)
    adam = adam._replace(
        count=jnp.copy(adam.count), mu=convert_params(adam.mu), nu=convert_params(adam.nu)
    )
    changes = {
        "step": jnp.copy(flax_state.step),
        "params": convert_params(flax_state.params),
        "opt_state": (adam, *rest),
    }
    if eqx_state.target_params is not None:
        changes["target_params"] = convert_params(flax_state.target_params)
    return dataclasses.replace(eqx_state, **changes)


def to_eqx_state(
    flax_state: flax_script.SACNState, eqx_state: eqx_script.SACNState
) -> eqx_script.SACNState:
    """`eqx_state` (made by the Equinox file, for its structure) with every array of `flax_state`."""
    actor = convert_train_state(
        flax_state.actor, eqx_state.actor, lambda p: to_eqx(p, eqx_state.actor.params)
    )
    critic = convert_train_state(
        flax_state.critic, eqx_state.critic, lambda p: to_eqx(p, eqx_state.critic.params)
    )
    log_alpha = convert_train_state(
        flax_state.log_alpha, eqx_state.log_alpha, lambda p: jax.tree.map(jnp.copy, p)
    )
    return eqx_script.SACNState(actor, critic, log_alpha, jnp.copy(flax_state.key))


def assert_close(flax_tree: Any, eqx_tree: Any, what: str) -> None:
    flax_leaves, eqx_leaves = jax.tree.leaves(flax_tree), jax.tree.leaves(eqx_tree)
    assert len(flax_leaves) == len(eqx_leaves), what
    for flax_leaf, eqx_leaf in zip(flax_leaves, eqx_leaves):
        np.testing.assert_allclose(
            np.asarray(eqx_leaf), np.asarray(flax_leaf), err_msg=what, **TOLERANCE
        )


def assert_same_states(flax_state: flax_script.SACNState, eqx_state: eqx_script.SACNState) -> None:
    """Actor, critic, target critic and log_alpha, their Adam moments and step counts, and the key."""
    for name in ("actor", "critic"):
        flax_train_state, eqx_train_state = getattr(flax_state, name), getattr(eqx_state, name)
        network = eqx_train_state.params
        assert_close(to_eqx(flax_train_state.params, network), network, f"{name} params")
        flax_adam, eqx_adam = flax_train_state.opt_state[0], eqx_train_state.opt_state[0]
        assert_close(to_eqx(flax_adam.mu, network), eqx_adam.mu, f"{name} Adam mu")
        assert_close(to_eqx(flax_adam.nu, network), eqx_adam.nu, f"{name} Adam nu")
        np.testing.assert_array_equal(
            np.asarray(eqx_train_state.step), np.asarray(flax_train_state.step)
        )
    network = eqx_state.critic.target_params
    assert_close(to_eqx(flax_state.critic.target_params, network), network, "target critic params")
    assert_close(flax_state.log_alpha.params, eqx_state.log_alpha.params, "log_alpha")
    np.testing.assert_array_equal(np.asarray(eqx_state.key), np.asarray(flax_state.key))


# --- Fixtures ---


def configs(**changes: Any) -> tuple:
    return flax_script.Config(**SIZES, **changes), eqx_script.Config(**SIZES, **changes)


def first_agent(state: Any) -> Any:
    return jax.tree.map(lambda leaf: leaf[0], state)


@pytest.fixture(scope="module")
def agents() -> tuple:
    """One Flax agent and one Equinox agent holding the same parameters and key."""
    flax_config, eqx_config = configs()
    flax_state = first_agent(flax_script.create_sac_n_state(OBS_DIM, ACTION_DIM, flax_config))
    eqx_state = first_agent(eqx_script.create_sac_n_state(OBS_DIM, ACTION_DIM, eqx_config))
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


def one_update_draws(key: jax.Array, dataset: flax_script.Batch) -> flax_script.UpdateDraws:
    """The first update's random numbers of an epoch, as the Flax script draws them (both scripts draw the same:
    test_train_epoch_gives_the_same_parameters checks whole epochs)."""
    return jax.tree.map(lambda array: array[0], flax_script.draw_epoch(key, dataset, configs()[0]))


def recording_tx() -> optax.GradientTransformation:
    """An optimizer that leaves the parameters as they are and keeps the gradient as its state, so apply_gradients
    hands back exactly the gradient the update function computed."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def recording(train_state: Any) -> Any:
    return dataclasses.replace(
        train_state, tx=recording_tx(), opt_state=recording_tx().init(train_state.params)
    )


# --- Outputs, losses, gradients, updates ---


def test_networks_give_the_same_outputs(agents: tuple) -> None:
    batch = make_batch(jax.random.PRNGKey(2), SIZES["batch_size"])
    noise = jax.random.normal(jax.random.PRNGKey(3), batch.actions.shape)
    outputs = []
    for script, agent in zip((flax_script, eqx_script), agents):
        q_values = agent.critic.apply_fn(agent.critic.params, batch.obs, batch.actions)
        mean, log_std = agent.actor.apply_fn(agent.actor.params, batch.obs)
        outputs.append((q_values, (mean, log_std), script.sample_action(noise, mean, log_std, 1.0)))
    assert outputs[1][0].shape == (SIZES["num_critics"], SIZES["batch_size"])
    assert_close(
        outputs[0], outputs[1], "Q-values, actor mean and log_std, sampled actions and log-probs"
    )


def losses_and_gradients(script: Any, state: Any, batch: flax_script.Batch, draws: Any) -> tuple:
    """Each update function's metrics, and the gradient it applied (caught by a recording optimizer)."""
    config = configs()[0]
    recorded = state._replace(log_alpha=recording(state.log_alpha))
    log_alpha, alpha_info = script.update_alpha(draws.policy_noise, recorded, batch, config)
    actor, actor_info = script.update_actor(
        draws.policy_noise, state._replace(actor=recording(state.actor)), batch, config
    )
    critic, critic_info = script.update_critic(
        draws.next_noise, state._replace(critic=recording(state.critic)), batch, config
    )
    return {**alpha_info, **actor_info, **critic_info}, (
        log_alpha.opt_state,
        actor.opt_state,
        critic.opt_state,
    )


def test_losses_and_gradients_match(agents: tuple) -> None:
    flax_state, eqx_state = agents
    batch = make_batch(jax.random.PRNGKey(2), SIZES["batch_size"])
    draws = one_update_draws(jax.random.PRNGKey(3), batch)
    flax_info, (flax_alpha, flax_actor, flax_critic) = losses_and_gradients(
        flax_script, flax_state, batch, draws
    )
    eqx_info, (eqx_alpha, eqx_actor, eqx_critic) = losses_and_gradients(
        eqx_script, eqx_state, batch, draws
    )
    assert flax_info.keys() == eqx_info.keys()
    assert_close(flax_info, eqx_info, "alpha, actor and critic losses")
    assert_close(flax_alpha, eqx_alpha, "alpha gradient")
    assert_close(to_eqx(flax_actor, eqx_state.actor.params), eqx_actor, "actor gradient")
    assert_close(to_eqx(flax_critic, eqx_state.critic.params), eqx_critic, "critic gradient")
    # not trivially equal: every parameter array gets a gradient that is not zero
    for gradient in (eqx_alpha, eqx_actor, eqx_critic):
        assert all(np.abs(np.asarray(leaf)).max() > 0 for leaf in jax.tree.leaves(gradient))


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["sac_n", "edac"])
def test_one_update_gives_the_same_parameters(agents: tuple, eta: float) -> None:
    flax_config, eqx_config = configs(eta=eta)
    dataset = make_batch(jax.random.PRNGKey(2), 64)
    draws = one_update_draws(jax.random.PRNGKey(3), dataset)
    flax_state, flax_info = jax.jit(flax_script.update_sac_n, static_argnums=3)(
        agents[0], draws, dataset, flax_config
    )
    eqx_state, eqx_info = jax.jit(eqx_script.update_sac_n, static_argnums=3)(
        agents[1], draws, dataset, eqx_config
    )
    assert flax_info.keys() == eqx_info.keys()
    assert ("diversity_loss" in flax_info) == (eta > 0)
    assert_close(flax_info, eqx_info, "update_sac_n metrics")
    assert_same_states(flax_state, eqx_state)
    assert not np.allclose(np.asarray(flax_state.actor.params["params"]["Dense_0"]["kernel"]), 0.0)


def test_train_epoch_gives_the_same_parameters() -> None:
    """Three seeds (vmapped), ten updates each, in the jitted epoch of each file, and the evaluation actions."""
    flax_config, eqx_config = configs(num_seeds=3)
    flax_state = flax_script.create_sac_n_state(OBS_DIM, ACTION_DIM, flax_config)
    eqx_state = to_eqx_state(
        flax_state, eqx_script.create_sac_n_state(OBS_DIM, ACTION_DIM, eqx_config)
    )
    dataset = flax_script.Batch(
        **{key: jnp.asarray(value, jnp.float32) for key, value in random_transitions().items()}
    )
    flax_state, flax_metrics = flax_script.train_epoch(flax_state, dataset, flax_config)
    eqx_state, eqx_metrics = eqx_script.train_epoch(eqx_state, dataset, eqx_config)
    assert flax_metrics.keys() == eqx_metrics.keys()
    assert_close(flax_metrics, eqx_metrics, "train_epoch metrics")
    assert_same_states(flax_state, eqx_state)
    obs = jax.random.normal(
        jax.random.PRNGKey(3), (3, 4, OBS_DIM)
    )  # [num_seeds, num_envs, obs_dim]
    flax_actions = flax_script.deterministic_action(flax_state.actor, obs, 1.0)
    assert_close(
        flax_actions,
        eqx_script.deterministic_action(eqx_state.actor, obs, 1.0),
        "evaluation actions",
    )


# --- Initialisation ---


def init_layers(script: Any, config: Any) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(kernel, bias) of every layer of the actor and the critic ensemble, in the same order for both files."""
    agent = first_agent(script.create_sac_n_state(17, 6, config))
    if script is flax_script:
        layers = {
            "actor": flax_dense_layers(agent.actor.params),
            "critic": flax_dense_layers(agent.critic.params),
        }
        layers = {
            name: [(layer["kernel"], layer["bias"]) for layer in network]
            for name, network in layers.items()
        }
    else:
        layers = {
            "actor": eqx_dense_layers(agent.actor.params),
            "critic": eqx_dense_layers(agent.critic.params),
        }
        layers = {
            name: [(layer.kernel, layer.bias) for layer in network]
            for name, network in layers.items()
        }
    return jax.tree.map(np.asarray, layers)


@pytest.mark.parametrize("script", [flax_script, eqx_script], ids=["flax", "eqx"])
def test_initialisation_distributions(script: Any) -> None:
    """EDAC's init in both files: hidden kernels U(+-1/sqrt(fan_in)) and biases 0.1 (the critic's first layer too:
    fan_in = obs_dim + action_dim), actor heads U(+-1e-3), critic output U(+-3e-3); hidden 256, so a layer's max
    |kernel| comes close to its bound."""
    config = script.Config(hidden_dim=256, num_critics=4)
    layers = init_layers(script, config)
    expected = {"actor": ["hidden"] * 3 + [1e-3, 1e-3], "critic": ["hidden"] * 3 + [3e-3]}
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
    assert (
        layers["critic"][0][0].shape[-2] == 17 + 6
    )  # the first critic layer's fan_in, EDAC's (not CORL's)
    assert all(
        kernel.shape[0] == config.num_critics for kernel, _ in layers["critic"]
    )  # test_policy.py: distinct
    (mean_kernel, _), (log_std_kernel, _) = layers["actor"][3:]
    assert not np.allclose(mean_kernel, log_std_kernel)


# --- Checkpoints ---


def test_checkpoints_are_interchangeable(tmp_path: Path) -> None:
    """Both files flatten their train state to the same list of arrays, so a checkpoint written by either loads
    in the other."""
    flax_config, eqx_config = configs(num_seeds=2)
    flax_state = flax_script.create_sac_n_state(OBS_DIM, ACTION_DIM, flax_config)
    eqx_template = jax.eval_shape(
        lambda: eqx_script.create_sac_n_state(OBS_DIM, ACTION_DIM, eqx_config)
    )
    run = {
        "name": "parity",
        "wandb_id": "parity",
        "epoch": 3,
        "train_seconds": 1.5,
        "scores": [[3, 10, 1.5, 1, 2, 3, 4]],
    }
    flax_script.save_checkpoint(str(tmp_path), flax_state, run)
    eqx_state, loaded_run = eqx_script.load_checkpoint(str(tmp_path), eqx_template)
    assert loaded_run == run
    assert_same_states(flax_state, eqx_state)
    eqx_script.save_checkpoint(str(tmp_path), eqx_state, run)
    flax_again, _ = flax_script.load_checkpoint(str(tmp_path), jax.eval_shape(lambda: flax_state))
    assert jax.tree.structure(flax_again) == jax.tree.structure(flax_state)
    assert_close(flax_state, flax_again, "Flax -> Equinox -> Flax checkpoint round trip")


# --- The diff between the two files ---


def read_script(name: str) -> list[str]:
    return (ROOT / name).read_text().splitlines()


def changed_lines() -> int:
    """What `diff sac_n_jax_flax.py sac_n_jax_eqx.py | grep -c '^[<>]'` counts. Without autojunk, which treats
    frequent lines (blank ones) as junk, difflib aligns the files as GNU diff does."""
    matcher = difflib.SequenceMatcher(
        None, read_script("sac_n_jax_flax.py"), read_script("sac_n_jax_eqx.py"), autojunk=False
    )
    return sum(i2 - i1 + j2 - j1 for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def sections(lines: list[str]) -> dict[str, str]:
    """The text of each `# --- Name ---` section; the docstring and imports are the section ''."""
    text, name = {"": []}, ""
    for line in lines:
        if match := re.fullmatch(r"# --- (.+) ---", line):
            name = match.group(1)
            text[name] = []
        text[name].append(line)
    return {name: "\n".join(section) for name, section in text.items()}


def test_diff_stays_small(capsys: pytest.CaptureFixture) -> None:
    count = changed_lines()
    with capsys.disabled():  # shown without -s too
        print(
            f"\ndiff sac_n_jax_flax.py sac_n_jax_eqx.py: {count} changed lines (budget {MAX_CHANGED_LINES})"
        )
    assert count < MAX_CHANGED_LINES


def test_shared_sections_are_the_same_text() -> None:
    flax_sections, eqx_sections = (
        sections(read_script("sac_n_jax_flax.py")),
        sections(read_script("sac_n_jax_eqx.py")),
    )
    assert list(flax_sections) == list(eqx_sections), (
        "the two files must have the same sections in the same order"
    )
    # the algorithm first; below the run harness line, what makes it a tool (../shared/STYLE.md)
    assert list(flax_sections)[1:] == [
        "Config", "Networks", "Train state", "Policy", "Updates", "Training epoch",
        "Options", "Data", "Evaluation", "Main",
    ]  # fmt: skip
    harness = "# ============================ run harness: below this line, the algorithm above becomes a tool"
    assert flax_sections["Training epoch"].rstrip().endswith(harness)
    differing = [name for name in flax_sections if flax_sections[name] != eqx_sections[name]]
    assert set(differing) <= FRAMEWORK_SECTIONS | {""}, (
        f"framework-free sections differ: {differing}"
    )
