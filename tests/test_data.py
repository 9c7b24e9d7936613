"""Loading: D4RL-layout files read exactly as d4rl reads them, D4RL names and downloads, Minari datasets, and every
bad file a one-line error that names it, before anything compiles. The Data section is the same text in both
scripts (test_parity.py), so these run on the Flax script."""

import urllib.request
import warnings

import gymnasium as gym
import h5py
import numpy as np
import pytest
from datasets import random_transitions, write_d4rl_file
from one_line_errors import error_before_compile, error_message

import sac_n_jax_flax as script


def d4rl_qlearning_dataset(dataset: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d4rl's `qlearning_dataset` (d4rl/__init__.py at 71a9549, terminate_on_end=False) transcribed loop for loop,
    for a dataset that has `timeouts` (all v2 files do): the reference the scripts' vectorised loader must match."""
    N = dataset["rewards"].shape[0]
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    assert "timeouts" in dataset, "the env._max_episode_steps branch of d4rl is not transcribed"
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
        "obs": np.array(obs_),
        "actions": np.array(action_),
        "next_obs": np.array(next_obs_),
        "rewards": np.array(reward_),
        "dones": np.array(done_),
    }


def assert_same_transitions(
    transitions: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> None:
    assert transitions.keys() == reference.keys()
    for key, want in reference.items():
        assert len(transitions[key]) == len(want), key
        for row, (value, want_row) in enumerate(zip(transitions[key], want)):
            np.testing.assert_array_equal(
                value, want_row, err_msg=f"{key} differs in transition {row}"
            )


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
def test_qlearning_dataset_matches_d4rl_on_awkward_flags(tmp_path, case: str) -> None:
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
    assert_same_transitions(script.qlearning_dataset(path), d4rl_qlearning_dataset(written))


def test_qlearning_dataset_matches_d4rl_on_rollouts(hopper_file: str, hopper_data: dict) -> None:
    """Real Hopper episodes: terminations when it falls, timeouts after 40 steps."""
    assert hopper_data["terminals"].any() and hopper_data["timeouts"].any()
    transitions = script.qlearning_dataset(hopper_file)
    assert_same_transitions(transitions, d4rl_qlearning_dataset(hopper_data))
    # and independently of the transcription: transition k is row i's step, its next_obs the observation of row i + 1
    rows = [i for i in range(len(hopper_data["rewards"]) - 1) if not hopper_data["timeouts"][i]]
    np.testing.assert_array_equal(
        transitions["obs"], hopper_data["observations"][rows].astype(np.float32)
    )
    np.testing.assert_array_equal(
        transitions["next_obs"], hopper_data["observations"][np.add(rows, 1)].astype("f4")
    )
    np.testing.assert_array_equal(transitions["dones"], hopper_data["terminals"][rows])


def hopper_arrays(hopper_data: dict, **changes) -> dict:
    return {**{key: np.asarray(value) for key, value in hopper_data.items()}, **changes}


def write_raw(path, data: dict) -> str:
    with h5py.File(path, "w") as file:
        for key, value in data.items():
            file.create_dataset(key, data=value)
    return str(path)


@pytest.mark.parametrize(
    "missing_key", ["observations", "actions", "rewards", "terminals", "timeouts"]
)
def test_file_lacking_a_dataset(tmp_path, hopper_data: dict, missing_key: str) -> None:
    data = hopper_arrays(hopper_data)
    del data[missing_key]
    path = write_raw(tmp_path / "incomplete.hdf5", data)
    message = error_message(script.qlearning_dataset, path)
    assert (
        f"{path} is not in the D4RL layout" in message and f"'{missing_key}': 'missing'" in message
    )


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"rewards": lambda rewards: rewards[:-5]},
            "is not in the D4RL layout",
        ),  # different lengths
        ({"rewards": lambda rewards: rewards[:, None]}, "'rewards': (600, 1)"),
        ({"observations": lambda obs: obs[:, 0]}, "'observations': (600,)"),
        (
            {"terminals": lambda flags: flags.astype(np.int8) * 2},
            "has terminals other than 0 and 1",
        ),
        ({"timeouts": lambda flags: -flags.astype(np.float32)}, "has timeouts other than 0 and 1"),
    ],
    ids=[
        "different_lengths",
        "rewards_n_by_1",
        "observations_1d",
        "terminals_2",
        "timeouts_minus_1",
    ],
)
def test_file_not_in_the_d4rl_layout(
    tmp_path, hopper_data: dict, change: dict, expected: str
) -> None:
    data = hopper_arrays(hopper_data)
    data.update({key: function(data[key]) for key, function in change.items()})
    path = write_raw(tmp_path / "odd.hdf5", data)
    message = error_message(script.qlearning_dataset, path)
    assert path in message and expected in message


def test_file_that_is_not_hdf5_or_is_truncated(tmp_path, hopper_file: str) -> None:
    text = tmp_path / "notes.hdf5"
    text.write_text("these are not the arrays you are looking for")
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(open(hopper_file, "rb").read()[:3000])
    for path in (text, truncated):
        assert f"cannot read {path} as HDF5" in error_message(script.qlearning_dataset, str(path))
    for path in (tmp_path, tmp_path / "absent.hdf5"):  # a directory, and no file at all
        message = error_message(script.qlearning_dataset, str(path))
        assert f"dataset file {path} does not exist or is a directory" in message


def load(dataset_path: str, caplog, *args: str) -> str:
    config = script.parse_config(
        ["--env_name=hopper-random-v2", f"--dataset_path={dataset_path}", *args]
    )
    return error_before_compile(script.load_task, config, caplog=caplog)


@pytest.mark.parametrize("key", ["observations", "actions", "rewards"])
def test_nan_or_inf_in_the_data(tmp_path, hopper_data: dict, caplog, key: str) -> None:
    """A NaN reward would train until the losses turn NaN, and the stop would blame the actor loss."""
    data = hopper_arrays(hopper_data)
    data[key] = data[key].astype(np.float32)
    data[key].flat[17] = np.nan if key == "rewards" else np.inf
    path = str(tmp_path / "bad_values.hdf5")
    write_d4rl_file(path, data)
    message = load(path, caplog)
    assert (
        f"{path} has NaN or inf values in" in message
        and ("obs" if key == "observations" else key) in message
    )


def test_data_that_does_not_fit_the_eval_env(hopper_file: str, caplog) -> None:
    message = load(hopper_file, caplog, "--eval_env=HalfCheetah-v4")
    assert (
        f"{hopper_file} has obs/action dims [11, 3] but eval env HalfCheetah-v4 has [17, 6]"
        in message
    )


def test_batch_larger_than_the_data(halfcheetah_file: str, caplog) -> None:
    message = load(
        halfcheetah_file, caplog, "--env_name=halfcheetah-random-v2", "--batch_size=5000"
    )
    # 3000 rows less the two timeouts within and the last row, which has no next obs
    assert "batch_size 5000 is larger than the dataset (2997 transitions)" in message


def test_actions_outside_max_action_are_a_warning_with_count_and_range(
    tmp_path, hopper_data, capsys
) -> None:
    data = hopper_arrays(hopper_data, actions=hopper_data["actions"].copy())
    data["actions"][:4, 0] = [1.5, -2.0, 1.25, 1.0]  # 3 values the tanh policy cannot produce
    path = str(tmp_path / "wide_actions.hdf5")
    write_d4rl_file(path, data)
    dataset, _, _ = script.load_task(
        script.parse_config(["--env_name=hopper-random-v2", f"--dataset_path={path}"])
    )
    warning = capsys.readouterr().err
    assert (
        f"warning: 3 of {dataset.actions.size} action values in {path} are outside [-max_action, max_action]"
        in warning
    )
    assert "in [-2, 1.5]: check max_action" in warning


D4RL_FILE_LEVELS = {
    # d4rl's gym_mujoco_v2 URLs: .../halfcheetah_medium_replay-v2.hdf5 for halfcheetah-medium-replay-v2
    "random": "random",
    "medium": "medium",
    "expert": "expert",
    "medium-replay": "medium_replay",
    "medium-expert": "medium_expert",
    "full-replay": "full_replay",
}


@pytest.fixture
def no_network(monkeypatch):
    """A proxy on a closed port: a download fails at once here, and never fetches a real dataset anywhere."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "")
    # urlopen keeps the opener (and its proxies) of its first call: a new one reads the proxy above
    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


@pytest.mark.parametrize("domain", ["halfcheetah", "hopper", "walker2d"])
def test_missing_d4rl_file_names_the_file_and_the_url(
    tmp_path, monkeypatch, no_network, domain
) -> None:
    """The file d4rl itself would read, in D4RL_DATASET_DIR, downloaded from d4rl's URL; without network one line."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "datasets"))
    for level, file_level in D4RL_FILE_LEVELS.items():
        message = error_message(
            script.load_task, script.parse_config([f"--env_name={domain}-{level}-v2"])
        )
        file = f"{domain}_{file_level}-v2.hdf5"
        assert f"{tmp_path / 'datasets' / file} is missing and downloading" in message
        assert (
            f"http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{file} failed"
            in message
        )
    assert not (tmp_path / "datasets").exists(), "a failed download must leave nothing behind"


def test_d4rl_files_live_in_home_by_default(tmp_path, monkeypatch, no_network) -> None:
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    message = error_message(
        script.load_task, script.parse_config(["--env_name=walker2d-full-replay-v2"])
    )
    assert f"{tmp_path}/.d4rl/datasets/walker2d_full_replay-v2.hdf5 is missing" in message


def record_episodes(env: gym.Env, num_episodes: int) -> list[dict[str, list]]:
    episodes = []
    for seed in range(num_episodes):
        obs, _ = env.reset(seed=seed)
        episode = {
            "observations": [obs],
            "actions": [],
            "rewards": [],
            "terminations": [],
            "truncations": [],
        }
        terminated = truncated = False
        while not (terminated or truncated):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(episode, (obs, action, reward, terminated, truncated)):
                episode[key].append(value)
        episodes.append(episode)
    return episodes


def test_minari_dataset(monkeypatch, tmp_path) -> None:
    """A Minari id loads the episodes' transitions, and the dataset's eval env and reference scores."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # read by minari at each call
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Hopper-v4", max_episode_steps=30)
    env.action_space.seed(0)
    episodes = record_episodes(env, 4)
    assert {episode["terminations"][-1] for episode in episodes} == {
        True,
        False,
    }  # falls and timeouts
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

    dataset, envs, ref_scores = script.load_task(
        script.parse_config([f"--env_name={dataset_id}", "--batch_size=32"])
    )
    expected = {
        "obs": np.concatenate([episode["observations"][:-1] for episode in episodes]),
        "actions": np.concatenate([episode["actions"] for episode in episodes]),
        "rewards": np.concatenate([episode["rewards"] for episode in episodes]),
        # within an episode the next obs is the following one, and the last one is the final obs
        "next_obs": np.concatenate([episode["observations"][1:] for episode in episodes]),
        "dones": np.concatenate([episode["terminations"] for episode in episodes]),
    }
    for key, value in expected.items():
        assert getattr(dataset, key).dtype == np.float32, key
        np.testing.assert_allclose(np.asarray(getattr(dataset, key)), value, rtol=1e-6, err_msg=key)
    assert float(dataset.dones.sum()) == sum(episode["terminations"][-1] for episode in episodes)
    assert ref_scores == (-20.5, 3000.25)
    assert envs.envs[0].spec.id == "Hopper-v5"


def test_missing_minari_dataset(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    message = error_message(
        script.load_task, script.parse_config(["--env_name=tests/hopper/absent-v0"])
    )
    assert (
        "tests/hopper/absent-v0" in message and "minari download tests/hopper/absent-v0" in message
    )


def test_the_data_goes_to_the_device_as_float32(tmp_path) -> None:
    transitions = random_transitions(size=50, obs_dim=11, action_dim=3)
    data = {"observations": np.concatenate([transitions["obs"], transitions["next_obs"][-1:]])}
    data.update(actions=np.concatenate([transitions["actions"], transitions["actions"][-1:]]))
    data.update(
        rewards=np.append(transitions["rewards"], 0.0),
        terminals=np.append(transitions["dones"], False),
    )
    data["timeouts"] = np.zeros(51, dtype=bool)
    path = write_raw(
        tmp_path / "float64.hdf5", data
    )  # float64 arrays, as some converters write them
    config = script.parse_config(
        ["--env_name=hopper-random-v2", f"--dataset_path={path}", "--batch_size=50"]
    )
    dataset, _, ref_scores = script.load_task(config)
    assert ref_scores == (-20.272305, 3234.3)  # hopper's D4RL reference returns
    for key in dataset._fields:
        assert getattr(dataset, key).dtype == np.float32, key
    np.testing.assert_allclose(
        np.asarray(dataset.rewards), transitions["rewards"].astype(np.float32)
    )
    np.testing.assert_allclose(
        np.asarray(dataset.next_obs[:-1]), transitions["obs"][1:].astype(np.float32)
    )
