"""The epoch's random draws: the batch indices, the policy noise on obs and the noise on
next_obs, drawn before each epoch from the state's key. A mistake here trains without an error and
learns a little worse: the same noise for the actor and the critic's target, batches that never
hold the last row or hold rows past it, an epoch that replays the previous epoch's draws, seeds
that draw alike.

The Flax script only: the Training epoch section is the same text in both (test_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from datasets import random_transitions

import sac_n_jax_flax as script

# test_training.py's sizes: the persistent compilation cache (conftest.py) compiles each once
SIZES = {"hidden_dim": 16, "num_critics": 3, "batch_size": 32, "num_updates_on_epoch": 10}
ROWS = 40  # so small that the 3 seeds x 2 epochs x 320 indices draw every row
NUM_SEEDS = 3
EPOCHS = 2
OBS_DIM, ACTION_DIM = 17, 6  # test_training.py's, so the initial state compiles once too
SEED_STEP = 1000  # seed i's step counters start at i * 1000: each record says whose update it is


def small_dataset() -> script.Batch:
    """Rows whose reward is their row number: a batch's rewards are the rows it was taken from."""
    rng = np.random.default_rng(0)
    return script.Batch(
        obs=jnp.asarray(rng.normal(size=(ROWS, OBS_DIM)), jnp.float32),
        actions=jnp.asarray(rng.uniform(-1, 1, size=(ROWS, ACTION_DIM)), jnp.float32),
        rewards=jnp.arange(ROWS, dtype=jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(ROWS, OBS_DIM)), jnp.float32),
        dones=jnp.zeros(ROWS, jnp.float32),
    )


def recording(records: dict, kind: str):
    """A stand-in for the update function `kind` that sends what it is given, the draws or the
    noise and the batch's rewards (its rows), from inside the compiled epoch to `records`, under
    (kind, the update's critic step count); it updates nothing but that count. The updates'
    losses need not be compiled to see which numbers reach them."""

    def store(step, *arrays) -> None:
        key = (kind, int(step))
        assert key not in records, f"{kind} called twice at step {int(step)}"
        records[key] = [np.asarray(array) for array in arrays]

    if kind == "update_sac_n":
        update_sac_n = script.update_sac_n

        def recorded(state, draws, dataset, config):
            jax.debug.callback(store, state.critic.step, *draws)
            return update_sac_n(state, draws, dataset, config)

        return recorded

    def recorded(noise, state, batch, config):  # update_alpha, update_actor, update_critic
        jax.debug.callback(store, state.critic.step, noise, batch.rewards)
        if kind == "update_alpha":
            return state.log_alpha, {}
        if kind == "update_actor":
            return state.actor, {}
        return state.critic.replace(step=state.critic.step + 1), {}

    return recorded


@pytest.fixture(scope="module")
def epochs() -> dict:
    """EPOCHS epochs of a NUM_SEEDS-seed state on the small dataset, run by train_epoch's and
    update_sac_n's own code (jitted afresh, so the real train_epoch's compiled program stays as it
    is), with every update's draws and what each update function received recorded; and the
    state's keys before and after each epoch."""
    config = script.Config(**SIZES, num_seeds=NUM_SEEDS, train_seed=5)
    dataset = small_dataset()
    state = script.create_sac_n_state(OBS_DIM, ACTION_DIM, config)
    step = state.critic.step
    state = state._replace(
        critic=state.critic.replace(step=step + SEED_STEP * jnp.arange(NUM_SEEDS, dtype=step.dtype))
    )
    records = {}
    kinds = ["update_sac_n", "update_alpha", "update_actor", "update_critic"]
    with pytest.MonkeyPatch.context() as patch:
        for kind in kinds:
            patch.setattr(script, kind, recording(records, kind))
        epoch = jax.jit(script.train_epoch.__wrapped__, static_argnames="config")
        keys = [np.asarray(state.key)]
        for _ in range(EPOCHS):
            state, _ = epoch(state, dataset, config)
            keys.append(np.asarray(state.key))
    jax.effects_barrier()
    num_updates = config.num_updates_on_epoch
    calls = {}  # (kind, seed, epoch) -> each recorded array stacked over the epoch's updates
    for kind in kinds:
        for seed in range(NUM_SEEDS):
            for index in range(EPOCHS):
                first = seed * SEED_STEP + index * num_updates
                updates = [records.pop((kind, first + update)) for update in range(num_updates)]
                calls[kind, seed, index] = [np.stack(arrays) for arrays in zip(*updates)]
    assert not records, f"calls outside the expected updates: {sorted(records)[:5]}"
    return {"config": config, "dataset": dataset, "keys": keys, "calls": calls}


def draws_of(epochs: dict, seed: int, index: int) -> script.UpdateDraws:
    return script.UpdateDraws(*epochs["calls"]["update_sac_n", seed, index])


SEEDS_AND_EPOCHS = [(seed, index) for seed in range(NUM_SEEDS) for index in range(EPOCHS)]


@pytest.mark.parametrize("seed, index", SEEDS_AND_EPOCHS)
def test_policy_noise_and_next_noise_are_different_draws(
    epochs: dict, seed: int, index: int
) -> None:
    """The actor and alpha losses take the policy's actions on obs from policy_noise, the critic's
    target its actions on next_obs from next_noise: two independent standard normal draws. One draw
    for both would correlate the target's action with the actor's."""
    calls = epochs["calls"]
    draws = draws_of(epochs, seed, index)
    shape = (SIZES["num_updates_on_epoch"], SIZES["batch_size"], ACTION_DIM)
    assert draws.policy_noise.shape == draws.next_noise.shape == shape
    # each update function got its own noise of this update
    np.testing.assert_array_equal(calls["update_alpha", seed, index][0], draws.policy_noise)
    np.testing.assert_array_equal(calls["update_actor", seed, index][0], draws.policy_noise)
    np.testing.assert_array_equal(calls["update_critic", seed, index][0], draws.next_noise)
    policy, target = draws.policy_noise.ravel(), draws.next_noise.ravel()
    assert not np.any(policy == target), "the critic's target reuses the policy noise"
    # 1920 numbers each: independent draws correlate by about +-0.02
    assert abs(np.corrcoef(policy, target)[0, 1]) < 0.15
    for noise in (policy, target):  # standard normal
        assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.1
    # and every update draws anew
    assert not np.any(draws.policy_noise[0] == draws.policy_noise[1])
    assert not np.any(draws.next_noise[0] == draws.next_noise[1])


def test_batch_indices_cover_the_dataset_and_stay_inside(epochs: dict) -> None:
    """Every index lies in [0, rows), and over these epochs every row, the first and the last
    too, is drawn (1920 draws of 40 rows: all of them come up, but for odds of 1e-12); each
    update's batch is the rows its indices name."""
    pooled = []
    for seed, index in SEEDS_AND_EPOCHS:
        draws = draws_of(epochs, seed, index)
        indices = draws.indices
        assert indices.shape == (SIZES["num_updates_on_epoch"], SIZES["batch_size"])
        assert np.issubdtype(indices.dtype, np.integer)
        assert indices.min() >= 0 and indices.max() < ROWS, (indices.min(), indices.max())
        pooled.append(indices.ravel())
        # the rewards are the row numbers: the three update functions saw the batch of these rows
        for kind in ["update_alpha", "update_actor", "update_critic"]:
            batch_rows = epochs["calls"][kind, seed, index][1]
            np.testing.assert_array_equal(batch_rows, indices.astype(np.float32), err_msg=kind)
    drawn = np.unique(np.concatenate(pooled))
    assert drawn.min() == 0 and drawn.max() == ROWS - 1, (drawn.min(), drawn.max())
    assert len(drawn) == ROWS, f"rows never drawn: {sorted(set(range(ROWS)) - set(drawn))}"


def test_each_epoch_draws_anew_from_the_state_key(epochs: dict) -> None:
    """The epoch returns a new key, the next epoch draws from it: the draws are those of
    draw_epoch on the key each epoch split off, and no two epochs or seeds draw alike."""
    keys, config, dataset = epochs["keys"], epochs["config"], epochs["dataset"]
    draw_epoch = jax.jit(script.draw_epoch, static_argnames="config")  # one compile
    for index in range(EPOCHS):
        assert not np.any(np.all(keys[index] == keys[index + 1], axis=-1)), (
            "the key did not advance"
        )
        for seed in range(NUM_SEEDS):
            new_key, draws_key, _ = jax.random.split(keys[index][seed], 3)
            np.testing.assert_array_equal(keys[index + 1][seed], new_key)
            expected = draw_epoch(draws_key, dataset, config)
            for name, want, got in zip(expected._fields, expected, draws_of(epochs, seed, index)):
                np.testing.assert_array_equal(
                    got, want, err_msg=f"seed {seed} epoch {index} {name}"
                )
    all_draws = {case: draws_of(epochs, *case) for case in SEEDS_AND_EPOCHS}
    for case, draws in all_draws.items():
        for other, other_draws in all_draws.items():
            if other != case:  # another seed, another epoch or both
                assert not np.array_equal(draws.indices, other_draws.indices), (case, other)
                assert not np.any(draws.policy_noise == other_draws.policy_noise), (case, other)
                assert not np.any(draws.next_noise == other_draws.next_noise), (case, other)


def test_the_compiled_train_epoch_advances_every_seeds_key() -> None:
    """The real, jitted train_epoch (test_training.py's 3-seed program): each epoch returns every
    seed a new key, of its own, split off its old one (from which the next epoch draws: the test
    above)."""
    config = script.Config(**SIZES, num_seeds=3, train_seed=5)
    transitions = random_transitions()
    dataset = script.Batch(
        **{key: jnp.asarray(value, jnp.float32) for key, value in transitions.items()}
    )
    state = script.create_sac_n_state(OBS_DIM, ACTION_DIM, config)
    keys = [np.asarray(state.key)]
    for _ in range(2):
        state, _ = script.train_epoch(state, dataset, config)
        keys.append(np.asarray(state.key))
    for before, after in zip(keys, keys[1:]):
        for seed in range(config.num_seeds):
            np.testing.assert_array_equal(after[seed], jax.random.split(before[seed], 3)[0])
    seen = {tuple(key) for epoch_keys in keys for key in epoch_keys}
    assert len(seen) == 3 * config.num_seeds, "two seeds or two epochs share a key"
