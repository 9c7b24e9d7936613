"""The tanh-Gaussian policy's sample and log-prob (the Policy section is the same text in both scripts, test_parity.py:
the Flax script's), and each script's actor output and critic ensemble at init."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sac_n_jax_flax as script

# mean, log_std pairs: ordinary, wide, narrow, and saturating ones where tanh(u) rounds to +-1 in float32
MEANS = [0.0, 0.3, -1.5, 4.0, -9.0, 25.0]
LOG_STDS = [-5.0, -1.0, 0.0, 1.0, 2.0]


def gaussian_log_density(u: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def normal(key: jax.Array, mean: np.ndarray) -> jax.Array:
    """The policy's standard-normal noise, as the scripts draw it (`draw_epoch`)."""
    return jax.random.normal(key, mean.shape)


def reference_sample(
    key: jax.Array, mean: np.ndarray, log_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 tanh-Gaussian sample and log-prob from the noise `normal(key)` gives the script.
    d tanh(u)/du = 1/cosh(u)^2, with no cancellation even where tanh(u) = 1 in float32."""
    noise = np.asarray(normal(key, mean), dtype=np.float64)
    std = np.exp(log_std.astype(np.float64))
    u = mean.astype(np.float64) + std * noise
    log_prob = (gaussian_log_density(u, mean, std) + 2 * np.log(np.cosh(u))).sum(axis=-1)
    return np.tanh(u), log_prob


def grid(action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (mean, log_std) pair, one per row, repeated over the action dims with small offsets."""
    pairs = np.array(list(itertools.product(MEANS, LOG_STDS)), dtype=np.float32)
    offsets = np.linspace(-0.1, 0.1, action_dim, dtype=np.float32)
    return pairs[:, :1] + offsets, pairs[:, 1:] + np.zeros(action_dim, np.float32)


@pytest.mark.parametrize("max_action", [1.0, 2.0])
def test_sample_action_log_prob_matches_float64_reference(max_action: float) -> None:
    mean, log_std = grid(action_dim=3)
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        actions, log_probs = script.sample_action(
            normal(key, mean), jnp.asarray(mean), jnp.asarray(log_std), max_action
        )
        want_actions, want_log_probs = reference_sample(key, mean, log_std)
        assert actions.shape == mean.shape and log_probs.shape == mean.shape[:1]
        np.testing.assert_allclose(
            np.asarray(actions), max_action * want_actions, rtol=1e-5, atol=1e-6
        )
        # float32 against float64: |log_prob| reaches ~150 where tanh saturates
        np.testing.assert_allclose(np.asarray(log_probs), want_log_probs, rtol=2e-5, atol=2e-3)


def test_log_prob_is_the_change_of_variables_with_a_numerical_jacobian() -> None:
    """Independent of the closed form: log p(a) = log N(u) - log |da/du|, the derivative by central
    differences in float64, for one-dimensional actions away from saturation."""
    mean = np.array([[0.0], [0.7], [-1.2], [1.5]], dtype=np.float32)
    log_std = np.array([[-1.0], [0.0], [-0.5], [0.3]], dtype=np.float32)
    key = jax.random.PRNGKey(7)
    actions, log_probs = script.sample_action(
        normal(key, mean), jnp.asarray(mean), jnp.asarray(log_std), 1.0
    )
    u = np.arctanh(np.asarray(actions, dtype=np.float64))
    assert np.abs(u).max() < 4, (
        "the inverse tanh of a float32 action is only accurate away from saturation"
    )
    step = 1e-6
    jacobian = (np.tanh(u + step) - np.tanh(u - step)) / (2 * step)
    want = gaussian_log_density(u, mean, np.exp(log_std.astype(np.float64))) - np.log(jacobian)
    np.testing.assert_allclose(np.asarray(log_probs), want.sum(axis=-1), rtol=1e-4, atol=1e-4)


def test_actions_stay_within_max_action_and_log_probs_stay_finite() -> None:
    mean = jnp.array([[-50.0, 50.0, 0.0, 3.0]] * 64)
    log_std = jnp.array([[2.0, 2.0, 2.0, -5.0]] * 64)
    for max_action in [1.0, 2.0, 0.4]:
        actions, log_probs = script.sample_action(
            normal(jax.random.PRNGKey(0), mean), mean, log_std, max_action
        )
        # max_action in float32, as the env's Box bounds hold it
        assert np.abs(np.asarray(actions)).max() <= np.float32(max_action)
        assert bool(jnp.isfinite(log_probs).all())


def test_max_action_scales_actions_and_leaves_log_prob() -> None:
    """CORL's convention: the log-prob is that of the tanh-squashed action in [-1, 1]."""
    mean, log_std = grid(action_dim=2)
    key = jax.random.PRNGKey(3)
    actions_1, log_probs_1 = script.sample_action(
        normal(key, mean), jnp.asarray(mean), jnp.asarray(log_std), 1.0
    )
    actions_3, log_probs_3 = script.sample_action(
        normal(key, mean), jnp.asarray(mean), jnp.asarray(log_std), 3.0
    )
    np.testing.assert_allclose(np.asarray(actions_3), 3.0 * np.asarray(actions_1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(log_probs_3), np.asarray(log_probs_1))


# --- networks at init, through create_sac_n_state ---

OBS_DIM, ACTION_DIM, BATCH_SIZE = 17, 6, 7


@pytest.fixture(scope="module")
def agent(module):
    """One agent's train state (seed axis removed); in both scripts a network call is apply_fn(params, inputs)."""
    # test_parity.py's sizes: the persistent compilation cache (conftest.py) then compiles the init once
    config = module.Config(hidden_dim=16, num_critics=3, batch_size=32, num_updates_on_epoch=10)
    state = module.create_sac_n_state(OBS_DIM, ACTION_DIM, config)
    return jax.tree.map(lambda leaf: leaf[0], state)


def random_inputs(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    obs_key, action_key = jax.random.split(jax.random.PRNGKey(seed))
    obs = jax.random.normal(obs_key, (BATCH_SIZE, OBS_DIM))
    return obs, jax.random.uniform(action_key, (BATCH_SIZE, ACTION_DIM), minval=-1, maxval=1)


def test_ensemble_output_is_num_critics_by_batch(agent) -> None:
    q_values = agent.critic.apply_fn(agent.critic.params, *random_inputs())
    assert q_values.shape == (3, BATCH_SIZE)


def test_ensemble_members_differ_at_init(agent) -> None:
    """Independent inits are what make the ensemble's minimum pessimistic; shared ones make N=1."""
    q_values = np.asarray(agent.critic.apply_fn(agent.critic.params, *random_inputs()))
    for i, j in itertools.combinations(range(3), 2):
        assert not np.allclose(q_values[i], q_values[j]), f"critics {i} and {j} agree"
    for leaf in map(np.asarray, jax.tree.leaves(agent.critic.params)):
        assert leaf.shape[0] == 3
        if (leaf == leaf.flat[0]).all():
            continue  # EDAC's constant 0.1 hidden biases are the same in every member
        assert all(not np.array_equal(leaf[0], leaf[i]) for i in range(1, 3))


def test_target_critics_equal_critics_at_init(agent) -> None:
    critic = agent.critic
    assert jax.tree.structure(critic.params) == jax.tree.structure(critic.target_params)
    for leaf, target_leaf in zip(
        jax.tree.leaves(critic.params), jax.tree.leaves(critic.target_params)
    ):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(target_leaf))


def test_actor_output_and_log_std_clip(agent) -> None:
    obs, _ = random_inputs()
    mean, log_std = agent.actor.apply_fn(agent.actor.params, obs)
    assert mean.shape == log_std.shape == (BATCH_SIZE, ACTION_DIM)
    # EDAC's small output init: the policy starts near tanh(0) with unit std
    assert float(jnp.abs(mean).max()) < 0.1 and float(jnp.abs(log_std).max()) < 0.1
    # blown-up weights push the raw log_std to +-1e6 or so; the clip keeps it in [-5, 2]
    huge = jax.tree.map(lambda leaf: leaf * 1e4, agent.actor.params)
    _, log_std = agent.actor.apply_fn(huge, obs * 10)
    assert set(np.unique(np.asarray(log_std))) <= {-5.0, 2.0}
    assert (
        float(jnp.exp(agent.log_alpha.params["log_alpha"])) == 1.0
    )  # alpha starts at 1, as in CORL
