"""Evaluation: every env of the lockstep vector env runs one episode, and its return stops where
that episode ends, whichever step that is, while the others play on; each seed's episode j starts
from reset(seed=eval_seed + j). Checked against the plainest evaluation there is, one env at a
time, on real Hopper-v4 episodes that end at different steps; and D4RL's normalised score.

The Flax script only: the Policy and Evaluation sections are the same text in both (test_parity.py).
"""

from functools import partial

import gymnasium as gym
import jax
import numpy as np
import pytest

import sac_n_jax_flax as script

# gymnasium's note on the v4 envs (D4RL's), silenced as the scripts' load_task does
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is out of date. You should consider upgrading:DeprecationWarning"
)

NUM_SEEDS, EPISODES, EVAL_SEED = 2, 3, 7
# a time limit that some of these episodes reach and others do not: both ways an episode ends
MAX_STEPS = 60
# d4rl/infos.py's REF_MIN_SCORE and REF_MAX_SCORE of every hopper dataset
HOPPER_RANDOM, HOPPER_EXPERT = -20.272305, 3234.3


@pytest.fixture(scope="module")
def agents() -> tuple:
    """Two seeds' actors of Hopper's dimensions (11, 3): create_sac_n_state's actor, of which
    only the structure is used (jax.eval_shape: nothing compiles but the actor's forward pass),
    with parameters drawn here, kernels U(+-1/sqrt(fan_in)) and biases 0.1, so that they act:
    their Hopper episodes end at different steps for different start states and seeds, some
    falling, some timing out; and the config."""
    config = script.Config(
        hidden_dim=16,
        num_critics=3,
        batch_size=32,
        num_updates_on_epoch=10,
        num_seeds=NUM_SEEDS,
        eval_episodes=EPISODES,
        eval_seed=EVAL_SEED,
    )
    actor = jax.eval_shape(partial(script.create_sac_n_state, 11, 3, config)).actor
    rng = np.random.default_rng(0)

    def draw(leaf) -> np.ndarray:
        if leaf.ndim == 3:  # a kernel, [num_seeds, fan_in, fan_out]
            bound = 1 / np.sqrt(leaf.shape[1])
            return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)
        return np.full(leaf.shape, 0.1, leaf.dtype)  # a bias, [num_seeds, features]

    params = jax.tree.map(draw, actor.params)
    actor = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), actor)  # step, optimizer
    return actor.replace(params=params), config


make_env = partial(gym.make, "Hopper-v4", max_episode_steps=MAX_STEPS)


def one_episode(actor, config: script.Config, seed: int, episode: int) -> tuple:
    """Seed `seed`'s episode `episode`, alone in its env: the return, the length and whether it
    ended by termination (the hopper fell) rather than by the time limit."""
    env = make_env()
    obs, _ = env.reset(seed=config.eval_seed + episode)
    total, steps = 0.0, 0
    while True:
        # the actor called on the shape evaluate calls it on, this env's obs in its place, so
        # that the action is the same to the last bit
        all_obs = np.zeros((config.num_seeds, config.eval_episodes, obs.shape[0]))
        all_obs[seed, episode] = obs
        actions = script.deterministic_action(actor, all_obs, config.max_action)
        obs, reward, terminated, truncated, _ = env.step(np.asarray(actions)[seed, episode])
        total += reward
        steps += 1
        if terminated or truncated:
            env.close()
            return total, steps, bool(terminated)


class CountedSteps(gym.vector.SyncVectorEnv):
    """Counts evaluate's steps, and stops an evaluation that would step on after the time limit
    has ended every episode: it would never end."""

    steps = 0

    def step(self, actions):
        self.steps += 1
        assert self.steps <= MAX_STEPS, "evaluate steps on after every episode has ended"
        return super().step(actions)


@pytest.fixture(scope="module")
def evaluated(agents: tuple) -> dict:
    actor, config = agents
    envs = CountedSteps([make_env] * (NUM_SEEDS * EPISODES))
    ref_scores = (HOPPER_RANDOM, HOPPER_EXPERT)
    metrics, returns, scores = script.evaluate(actor, envs, ref_scores, config)
    envs.close()
    episodes = [
        [one_episode(actor, config, seed, episode) for episode in range(EPISODES)]
        for seed in range(NUM_SEEDS)
    ]
    return {
        "metrics": metrics,
        "returns": returns,
        "scores": scores,
        "episodes": episodes,
        "steps": envs.steps,
    }


def test_episodes_end_at_different_steps_both_ways(evaluated: dict) -> None:
    """What the tests below need to mean anything: in the lockstep vector env some envs end
    their episode while others play on for many more steps; and some episodes end by the hopper
    falling, others by the time limit."""
    lengths = np.array([[length for _, length, _ in seed] for seed in evaluated["episodes"]])
    assert lengths.max() - lengths.min() >= 10 and len(set(lengths.ravel())) >= 3, lengths
    ends = {terminated for seed in evaluated["episodes"] for _, _, terminated in seed}
    assert ends == {True, False}, "want episodes that fall and episodes that time out"


def test_evaluation_stops_when_the_longest_episode_ends(evaluated: dict) -> None:
    """Neither before it (the returns below would miss rewards) nor after (an evaluation that
    waited for terminations only would step on forever)."""
    lengths = [length for seed in evaluated["episodes"] for _, length, _ in seed]
    assert evaluated["steps"] == max(lengths)


def test_returns_are_those_of_each_episode_alone(evaluated: dict) -> None:
    """Seed i's episode j, played alone from reset(seed=eval_seed + j) by seed i's actor, returns
    exactly what evaluate reports for it: no reward after the episode's end (the env has started
    another one), none missing, no episode started from another seed's state."""
    expected = np.array([[total for total, _, _ in seed] for seed in evaluated["episodes"]])
    assert evaluated["returns"].shape == (NUM_SEEDS, EPISODES)
    np.testing.assert_array_equal(evaluated["returns"], expected)
    # and the seeds' actors do differ, or a mix-up of seeds could not show
    assert not np.array_equal(expected[0], expected[1])


def test_d4rl_normalized_score_with_hopper_reference_returns(evaluated: dict) -> None:
    """D4RL's score: 100 * (return - random) / (expert - random), with the reference returns d4rl
    gives hopper; 0 is a random policy, 100 an expert. The metrics: means and (population) stds
    over all episodes, each seed's means and the std of the seeds' mean scores."""
    assert script.D4RL_REF_SCORES["hopper"] == (HOPPER_RANDOM, HOPPER_EXPERT)
    returns, scores, metrics = evaluated["returns"], evaluated["scores"], evaluated["metrics"]
    expected = 100 * (returns - HOPPER_RANDOM) / (HOPPER_EXPERT - HOPPER_RANDOM)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    want = {
        "eval/return_mean": returns.mean(),
        "eval/return_std": returns.std(),
        "eval/normalized_score_mean": expected.mean(),
        "eval/normalized_score_std": expected.std(),
        "eval/normalized_score_seed_std": expected.mean(axis=1).std(),
    }
    for index in range(NUM_SEEDS):
        seed = 10 + index  # the default train_seed
        want[f"eval/seed_{seed}/return_mean"] = returns[index].mean()
        want[f"eval/seed_{seed}/normalized_score_mean"] = expected[index].mean()
    assert metrics.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-12, err_msg=name)
