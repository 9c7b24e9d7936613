"""Small datasets in the exact D4RL HDF5 layout, written by the tests themselves."""

import gymnasium as gym
import h5py
import numpy as np


def collect(env_id: str, num_steps: int, seed: int, max_episode_steps: int, policy=None) -> dict[str, np.ndarray]:
    """Roll out `policy` (default: uniform random) and record rows the way D4RL does: one row per
    step, `terminals` on true terminations, `timeouts` on the last row of a time-limited episode."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    rows = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for _ in range(num_steps):
        action = env.action_space.sample() if policy is None else policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated and not terminated)):
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
