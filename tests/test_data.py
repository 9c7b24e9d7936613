"""Loading: D4RL-layout files, D4RL names and downloads, Minari datasets, device arrays."""

import os
import warnings

import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from d4rl_files import finish, start_script, write_d4rl_file


def d4rl_qlearning_dataset(dataset: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d4rl's `qlearning_dataset` (d4rl/__init__.py at 71a9549, terminate_on_end=False) transcribed
    loop for loop, for a dataset that has `timeouts` (all v2 files do): the reference the script's
    vectorised loader must match row by row."""
    N = dataset["rewards"].shape[0]
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    use_timeouts = "timeouts" in dataset
    assert use_timeouts, "the env._max_episode_steps branch of d4rl is not transcribed"
    episode_step = 0
    for i in range(N - 1):
        obs = dataset["observations"][i].astype(np.float32)
        new_obs = dataset["observations"][i + 1].astype(np.float32)
        action = dataset["actions"][i].astype(np.float32)
        reward = dataset["rewards"][i].astype(np.float32)
        done_bool = bool(dataset["terminals"][i])
        final_timestep = dataset["timeouts"][i]
        if final_timestep:
            # Skip this transition and don't apply terminals on the last step of an episode
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(obs)
        next_obs_.append(new_obs)
        action_.append(action)
        reward_.append(reward)
        done_.append(done_bool)
        episode_step += 1
    return {
        "observations": np.array(obs_),
        "actions": np.array(action_),
        "next_observations": np.array(next_obs_),
        "rewards": np.array(reward_),
        "terminals": np.array(done_),
    }


def assert_same_transitions(transitions: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    names = {"obs": "observations", "actions": "actions", "rewards": "rewards"}
    names.update({"next_obs": "next_observations", "dones": "terminals"})
    assert len(transitions["rewards"]) == len(reference["rewards"])
    for key, reference_key in names.items():
        for row, (value, want) in enumerate(zip(transitions[key], reference[reference_key])):
            np.testing.assert_array_equal(value, want, err_msg=f"{key} differs in transition {row}")


def flagged(rows: list[int], num_rows: int) -> np.ndarray:
    flags = np.zeros(num_rows, dtype=bool)
    flags[rows] = True
    return flags


NUM_ROWS = 12
# (terminal rows, timeout rows): the places where a vectorised loader is most easily off by one
AWKWARD_FLAGS = {
    "terminal_first_row": ([0], [6]),
    "timeout_first_row": ([5], [0]),
    "terminal_last_row": ([3], [7, NUM_ROWS - 1]),
    "timeout_last_row": ([3], [NUM_ROWS - 1]),
    "timeout_second_last_row": ([], [NUM_ROWS - 2]),
    "consecutive_timeouts": ([8], [3, 4, 5]),
    "consecutive_terminals": ([2, 3, 4], [9]),
    "terminal_and_timeout_on_one_row": ([4, 9], [4, 10]),
    "no_timeouts_at_all": ([2, 7], []),
    "no_flags_at_all": ([], []),
    "every_row_but_one_timed_out": ([], list(range(1, NUM_ROWS))),
}


@pytest.mark.parametrize("case", AWKWARD_FLAGS)
def test_qlearning_dataset_matches_d4rl_on_awkward_flags(module, tmp_path, case: str) -> None:
    terminal_rows, timeout_rows = AWKWARD_FLAGS[case]
    rng = np.random.default_rng(0)
    data = {
        # distinct values in every row, so a shifted row cannot pass for the right one
        "observations": rng.normal(size=(NUM_ROWS, 3)),
        "actions": rng.uniform(-1, 1, size=(NUM_ROWS, 2)),
        "rewards": rng.normal(size=NUM_ROWS),
        "terminals": flagged(terminal_rows, NUM_ROWS),
        "timeouts": flagged(timeout_rows, NUM_ROWS),
    }
    path = str(tmp_path / "awkward.hdf5")
    write_d4rl_file(path, data)
    # the reference reads what was written: float32 arrays and bool flags, as in the released files
    with h5py.File(path, "r") as file:
        written = {key: file[key][()] for key in file}
    assert_same_transitions(module.qlearning_dataset(path), d4rl_qlearning_dataset(written))


def test_qlearning_dataset_matches_d4rl_on_rollouts(module, hopper_file: str, hopper_data: dict) -> None:
    """Real Hopper episodes: terminations when it falls, timeouts after 40 steps."""
    assert hopper_data["terminals"].any() and hopper_data["timeouts"].any()
    transitions = module.qlearning_dataset(hopper_file)
    assert_same_transitions(transitions, d4rl_qlearning_dataset(hopper_data))
    # and the transitions are real ones: within an episode, next_obs is the next row's obs
    assert len(transitions["rewards"]) == len(hopper_data["rewards"]) - 1 - hopper_data["timeouts"][:-1].sum()


@pytest.mark.parametrize("missing_key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_file_lacking_a_key_is_a_clear_error(module, tmp_path, hopper_data: dict, missing_key: str) -> None:
    path = str(tmp_path / "incomplete.hdf5")
    write_d4rl_file(path, hopper_data)
    with h5py.File(path, "a") as file:
        del file[missing_key]
    with pytest.raises(SystemExit) as error:
        module.qlearning_dataset(path)
    message = str(error.value)
    assert missing_key in message and path in message and "\n" not in message


D4RL_FILE_LEVELS = {
    # d4rl's gym_mujoco_v2 URLs: .../halfcheetah_medium_replay-v2.hdf5 for halfcheetah-medium-replay-v2
    "random": "random",
    "medium": "medium",
    "expert": "expert",
    "medium-replay": "medium_replay",
    "medium-expert": "medium_expert",
    "full-replay": "full_replay",
}


def test_d4rl_path_names_all_18_datasets(module, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    paths = set()
    for domain in ["halfcheetah", "hopper", "walker2d"]:
        for level, file_level in D4RL_FILE_LEVELS.items():
            path = module.d4rl_path(f"{domain}-{level}-v2")
            assert path == os.path.join(str(tmp_path), f"{domain}_{file_level}-v2.hdf5")
            paths.add(path)
    assert len(paths) == 18
    monkeypatch.delenv("D4RL_DATASET_DIR")
    expected = os.path.expanduser("~/.d4rl/datasets/walker2d_full_replay-v2.hdf5")
    assert module.d4rl_path("walker2d-full-replay-v2") == expected


def test_missing_d4rl_file_without_network_is_one_clear_line(script: str, tmp_path) -> None:
    """The dataset is neither on disk nor downloadable: one line naming both the path and the URL."""
    dataset_dir = tmp_path / "datasets"
    dataset_dir.mkdir()
    # a proxy on a closed port: the download fails at once here, and on a machine that does have
    # network this test still never fetches a real dataset
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    args = ["--env_name=hopper-medium-replay-v2", "--num_epochs=1"]
    result = finish(start_script(script, args, tmp_path, D4RL_DATASET_DIR=str(dataset_dir), **proxy), timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert str(dataset_dir / "hopper_medium_replay-v2.hdf5") in last_line
    assert "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5" in last_line
    assert os.listdir(dataset_dir) == [], "a failed download must leave nothing behind"


def test_to_device_gives_float32_device_arrays(module) -> None:
    rng = np.random.default_rng(0)
    transitions = {
        "obs": rng.normal(size=(5, 3)),  # float64, as Minari stores observations
        "actions": rng.uniform(-1, 1, size=(5, 2)).astype(np.float32),
        "rewards": rng.normal(size=5),
        "next_obs": rng.normal(size=(5, 3)),
        "dones": np.array([False, True, False, False, True]),
    }
    batch = module.to_device(transitions)
    for key, value in batch._asdict().items():
        assert isinstance(value, jax.Array) and value.dtype == jnp.float32, key
        np.testing.assert_allclose(np.asarray(value), transitions[key].astype(np.float32), err_msg=key)


def record_episodes(env: gym.Env, num_episodes: int) -> list[dict[str, list]]:
    episodes = []
    for seed in range(num_episodes):
        obs, _ = env.reset(seed=seed)
        episode = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        terminated = truncated = False
        while not (terminated or truncated):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(episode, (obs, action, reward, terminated, truncated)):
                episode[key].append(value)
        episodes.append(episode)
    return episodes


def test_minari_dataset(module, monkeypatch, tmp_path) -> None:
    """A Minari id loads the episodes' transitions, and the dataset's eval env and reference scores."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # read by minari at each call
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Hopper-v4", max_episode_steps=30)
    env.action_space.seed(0)
    episodes = record_episodes(env, 4)
    assert {episode["terminations"][-1] for episode in episodes} == {True, False}  # falls and timeouts
    dataset_id = "tests/hopper/random-v0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about every metadata field left out
        minari.create_dataset_from_buffers(
            dataset_id,
            [EpisodeBuffer(id=index, **episode) for index, episode in enumerate(episodes)],
            env=env,
            eval_env="Hopper-v5",  # not the collecting env, so the test sees which one the task uses
            ref_min_score=-20.5,
            ref_max_score=3000.25,
        )

    transitions, task = module.load_task(module.Config(env_name=dataset_id))
    expected = {
        "obs": np.concatenate([episode["observations"][:-1] for episode in episodes]),
        "actions": np.concatenate([episode["actions"] for episode in episodes]),
        "rewards": np.concatenate([episode["rewards"] for episode in episodes]),
        # within an episode the next obs is the following one, and the last one is the final obs
        "next_obs": np.concatenate([episode["observations"][1:] for episode in episodes]),
        "dones": np.concatenate([episode["terminations"] for episode in episodes]),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(transitions[key], value, rtol=1e-6, err_msg=key)
    assert transitions["dones"].sum() == sum(episode["terminations"][-1] for episode in episodes)
    assert (task.ref_min_score, task.ref_max_score) == (-20.5, 3000.25)
    assert task.make_eval_env().spec.id == "Hopper-v5"


def test_missing_minari_dataset_is_a_clear_error(module, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(SystemExit) as error:
        module.load_task(module.Config(env_name="tests/hopper/absent-v0"))
    message = str(error.value)
    assert "tests/hopper/absent-v0" in message and "minari download" in message and "\n" not in message
