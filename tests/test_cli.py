"""The scripts end to end as subprocesses, and bad input rejected with one clear line before any compile.

A subprocess run costs 10-40 s of CPU (imports, compiles, MuJoCo evaluation), so each script runs
twice, from one module-scoped fixture that several tests read."""

import dataclasses
import importlib
import inspect
import math
import os
import subprocess
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
import yaml
from d4rl_files import REPO_ROOT, SCRIPTS, finish, read_wandb_run, script_path, start_script

TRAIN_SEED = 5
TINY_RUN = [
    "--env_name=halfcheetah-random-v2",
    "--hidden_dim=16",
    "--num_critics=2",
    "--num_epochs=2",
    "--num_updates_on_epoch=20",
    "--batch_size=64",
    "--eval_episodes=2",
    "--eval_every=1",
    f"--train_seed={TRAIN_SEED}",
]
EVAL_METRICS = ["eval/return_mean", "eval/return_std", "eval/normalized_score_mean", "eval/normalized_score_std"]
TRAIN_METRICS = ["actor_loss", "critic_loss", "alpha_loss", "alpha", "batch_entropy", "q_policy_std", "q_random_std"]
# what may differ between two runs with one seed: clocks
TIMING = {"updates_per_second", "_timestamp", "_runtime"}


class Runs(NamedTuple):
    module: Any  # the script, imported
    directories: list  # each run's working directory, WANDB_DIR and (under checkpoints/) checkpoints_path
    results: list[subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory: pytest.TempPathFactory, halfcheetah_file: str) -> dict[str, Runs]:
    """Two runs of each script with the same seed, each in its own directory. The dataset is 3000 rows
    of random HalfCheetah play; evaluation is in the real HalfCheetah-v4. A script's two runs share a
    JAX compilation cache, so the second skips the compiles (measured: 37 s of CPU for the first run,
    10 s for the second); the scripts run side by side, as a tiny run keeps about one core busy."""
    scripts = [script for script in SCRIPTS if os.path.isfile(os.path.join(REPO_ROOT, script))]
    caches = {
        script: {
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        for script in scripts
    }
    runs = {script: Runs(importlib.import_module(script.removesuffix(".py")), [], []) for script in scripts}
    for index in range(2):
        processes = {}
        for script in scripts:
            directory = tmp_path_factory.mktemp(f"run_{script}_{index}")
            checkpoints = f"--checkpoints_path={directory / 'checkpoints'}"
            args = [*TINY_RUN, f"--dataset_path={halfcheetah_file}", checkpoints]
            processes[script] = start_script(script_path(script), args, directory, **caches[script])
            runs[script].directories.append(directory)
        for script, process in processes.items():
            runs[script].results.append(finish(process))
    return runs


@pytest.fixture(scope="module", params=SCRIPTS)
def runs(request: pytest.FixtureRequest, all_runs: dict[str, Runs]) -> Runs:
    script_path(request.param)
    return all_runs[request.param]


def test_runs_succeed(runs: Runs) -> None:
    for result in runs.results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr


def test_wandb_run_has_eval_and_train_metrics(runs: Runs) -> None:
    config, history = read_wandb_run(str(runs.directories[0]))
    assert config["num_critics"] == 2 and config["train_seed"] == TRAIN_SEED and config["hidden_dim"] == 16
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:  # eval_every=1: every epoch evaluates
        for name in EVAL_METRICS + TRAIN_METRICS + ["updates_per_second"]:
            assert name in row and math.isfinite(row[name]), name
        # D4RL's halfcheetah reference scores
        score = 100 * (row["eval/return_mean"] + 280.178953) / (12135.0 + 280.178953)
        assert row["eval/normalized_score_mean"] == pytest.approx(score)
        assert row["alpha"] < 1.0  # log_alpha moved from 0 in the direction of the entropy target


def test_same_seed_gives_same_numbers(runs: Runs) -> None:
    histories = [read_wandb_run(str(directory))[1] for directory in runs.directories]
    assert len(histories[0]) == len(histories[1]) == 2
    for row, other_row in zip(*histories):
        assert row.keys() == other_row.keys()
        for name in row.keys() - TIMING:
            assert row[name] == other_row[name], name


def test_checkpoints_path_holds_config_and_checkpoint(runs: Runs) -> None:
    checkpoints = [directory / "checkpoints" for directory in runs.directories]
    assert os.path.isfile(checkpoints[0] / "config.yaml") and os.path.isfile(checkpoints[0] / "checkpoint.npz")
    # the saved config is a config file the script reads back as the run's config
    config = runs.module.parse_config([f"--config_path={checkpoints[0] / 'config.yaml'}"])
    assert (config.num_critics, config.hidden_dim, config.train_seed, config.num_epochs) == (2, 16, TRAIN_SEED, 2)
    with open(checkpoints[0] / "config.yaml") as file:
        assert yaml.safe_load(file)["dataset_path"] == config.dataset_path
    # the same seed gives bitwise the same train state
    with np.load(checkpoints[0] / "checkpoint.npz") as saved, np.load(checkpoints[1] / "checkpoint.npz") as other:
        arrays = [name for name in saved.files if name.startswith("arr_")]
        assert len(arrays) > 10 and saved.files == other.files
        for name in arrays:
            np.testing.assert_array_equal(saved[name], other[name], err_msg=name)


# --- bad input: each a one-line error, before any compile ---


def error_message(callable_, *args) -> str:
    with pytest.raises(SystemExit) as error:
        callable_(*args)
    message = str(error.value)
    assert error.value.code != 0 and "\n" not in message
    return message


def test_unknown_flag(module) -> None:
    message = error_message(module.parse_config, ["--learning_rate=0.1"])
    assert "learning_rate" in message


def test_misspelt_flag_is_rejected_not_abbreviated(module) -> None:
    """argparse would take --num_critic for --num_critics; the scripts must not."""
    message = error_message(module.parse_config, ["--num_critic=5"])
    assert "'num_critic'" in message and "num_critics" in message
    message = error_message(module.parse_config, ["--num_critic", "5"])
    assert "'num_critic'" in message


def test_misspelt_yaml_key(module, tmp_path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("env_name: hopper-medium-v2\nnum_critic: 5\n")
    message = error_message(module.parse_config, [f"--config_path={path}"])
    assert "num_critic" in message and str(path) in message


@pytest.mark.parametrize("flag", ["--num_critics=0", "--batch_size=0", "--hidden_dim=-1"])
def test_non_positive_sizes(module, flag: str) -> None:
    name = flag[2:].split("=")[0]
    assert name in error_message(module.parse_config, [flag])


def fails_before_compile(module, args: list[str], caplog: pytest.LogCaptureFixture) -> str:
    config = module.parse_config(args)
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        message = error_message(module.main, config)
    compiles = [record.getMessage() for record in caplog.records if "ompil" in record.getMessage()]
    assert not compiles, f"compiled before failing: {compiles[:3]}"
    return message


def test_dataset_that_does_not_fit_the_eval_env(module, hopper_file: str, caplog, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = fails_before_compile(
        module, ["--env_name=halfcheetah-random-v2", f"--dataset_path={hopper_file}"], caplog
    )
    assert "11/3" in message and "17/6" in message and "HalfCheetah-v4" in message


def test_batch_larger_than_dataset(module, halfcheetah_file: str, caplog, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--env_name=halfcheetah-random-v2", f"--dataset_path={halfcheetah_file}", "--batch_size=5000"]
    message = fails_before_compile(module, args, caplog)
    # 3000 rows less the two timeouts within and the last row, which has no next obs
    assert "batch_size 5000" in message and "2997" in message


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--env_name=hopper-mediun-v2"], "unknown D4RL dataset hopper-mediun-v2"),
        (["--dataset_path=/nonexistent/file.hdf5"], "/nonexistent/file.hdf5 does not exist"),
        (["--env_name=pendulum-random", "--dataset_path={halfcheetah_file}"], "--eval_env"),
    ],
    ids=["misspelt_d4rl_name", "missing_dataset_path", "no_default_eval_env"],
)
def test_bad_dataset_arguments(module, halfcheetah_file: str, tmp_path, monkeypatch, args, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))  # and so never a download
    config = module.parse_config([arg.format(halfcheetah_file=halfcheetah_file) for arg in args])
    assert expected in error_message(module.main, config)


def test_help_lists_every_field_with_its_comment(module, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        module.parse_config(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for field in dataclasses.fields(module.Config):
        assert f"--{field.name}" in text
    assert "N: number of critics in the Q-ensemble" in text


BAD_COMMAND_LINES = {
    "misspelt_flag": (["--num_critic=5"], ["'num_critic'", "num_critics"]),
    "wrong_shapes": (["--env_name=halfcheetah-random-v2", "--dataset_path={hopper_file}"], ["11/3", "17/6"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory, hopper_file: str) -> dict:
    """Every bad command line of every script, as parallel subprocesses: {(script, case): result}."""
    processes = {}
    for script in SCRIPTS:
        if not os.path.isfile(os.path.join(REPO_ROOT, script)):
            continue
        for case, (args, _) in BAD_COMMAND_LINES.items():
            directory = tmp_path_factory.mktemp(case)
            args = [arg.format(hopper_file=hopper_file) for arg in args]
            processes[script, case] = start_script(script_path(script), args, directory)
    return {key: finish(process, timeout=120) for key, process in processes.items()}


@pytest.mark.parametrize("case", BAD_COMMAND_LINES)
def test_bad_command_line_is_one_line_on_stderr(bad_runs: dict, script: str, case: str) -> None:
    result = bad_runs[os.path.basename(script), case]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"{os.path.basename(script)}: error: ")
    for expected in BAD_COMMAND_LINES[case][1]:
        assert expected in last_line


def test_config_fields_have_help_comments(module) -> None:
    """pyrallis turns the comment above each field into --help text."""
    source = inspect.getsource(module.Config).splitlines()
    for field in dataclasses.fields(module.Config):
        line = next(index for index, text in enumerate(source) if text.strip().startswith(f"{field.name}:"))
        assert source[line - 1].strip().startswith("#"), f"{field.name} has no comment"
