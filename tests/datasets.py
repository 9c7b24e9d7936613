"""Small datasets the tests make themselves: rollouts recorded the way D4RL records them, written in its HDF5 layout."""

import gymnasium as gym
import h5py
import numpy as np


def collect(
    env_id: str, num_steps: int, seed: int, max_episode_steps: int, policy=None
) -> dict[str, np.ndarray]:
    """Roll out `policy` (default: uniform random) and record rows the way D4RL does: one row per step,
    `terminals` on true terminations, `timeouts` on the last row of a time-limited episode."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    rows = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for _ in range(num_steps):
        action = env.action_space.sample() if policy is None else policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(
            rows, (obs, action, reward, terminated, truncated and not terminated)
        ):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {key: np.asarray(value) for key, value in rows.items()}


def write_d4rl_file(path, data: dict[str, np.ndarray]) -> None:
    """The dtypes of the released D4RL files: float32 arrays, bool flags."""
    with h5py.File(path, "w") as file:
        for key in ("observations", "actions", "rewards"):
            file.create_dataset(key, data=np.asarray(data[key], dtype=np.float32))
        for key in ("terminals", "timeouts"):
            file.create_dataset(key, data=np.asarray(data[key], dtype=bool))


def random_transitions(
    size: int = 2000, obs_dim: int = 17, action_dim: int = 6, seed: int = 0
) -> dict:
    """Transitions of halfcheetah's shapes with random values, for tests that only need the arrays."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(size, obs_dim)),
        "actions": rng.uniform(-1, 1, size=(size, action_dim)),
        "rewards": rng.normal(size=size),
        "next_obs": rng.normal(size=(size, obs_dim)),
        "dones": rng.uniform(size=size) < 0.05,
    }
