"""Whole runs: a run stopped by SIGTERM and resumed equals an uninterrupted one bit for bit, a resume continues
from its checkpoint, --eval_only, what a run writes and when, its console, and every way its directory or files can
go wrong. The Main section is the same text in both scripts (test_parity.py), so these run the Flax script;
test_learning.py runs both end to end."""

import errno
import json
import os
import re
import signal
import time
import types

import h5py
import jax
import numpy as np
import pytest
import yaml
from datasets import write_d4rl_file
from one_line_errors import error_before_compile, error_message
from script_runs import REPO_ROOT, finish, read_scores, start_script

import sac_n_jax_flax as script

SCRIPT = "sac_n_jax_flax.py"

TINY = [
    "--hidden_dim=16",
    "--num_critics=2",
    "--batch_size=32",
    "--num_updates_on_epoch=10",
    "--eval_episodes=1",
]
# 8 epochs with evaluations at 2, 4, 6, 8, for 2 seeds
LONG_RUN = [
    "--env_name=halfcheetah-medium-v2",
    *TINY,
    "--num_epochs=8",
    "--eval_every=2",
    "--num_seeds=2",
]


def no_wandb_login(home) -> dict:
    """A user who never ran `wandb login`: no WANDB_MODE, no API key, no ~/.netrc."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    return {**env, "HOME": str(home), "WANDB_DIR": str(home)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, halfcheetah_file: str) -> dict:
    """In one directory: `whole` run straight through, started without any wandb login; `parts` the same run
    stopped by SIGTERM after its first checkpoint, then resumed; then --eval_only on `whole`."""
    directory = tmp_path_factory.mktemp("runs")
    args = {
        name: [*LONG_RUN, f"--dataset_path={halfcheetah_file}", f"--checkpoints_path={name}"]
        for name in ("whole", "parts")
    }
    (directory / "home").mkdir()
    whole = start_script(SCRIPT, args["whole"], directory, env=no_wandb_login(directory / "home"))
    parts = start_script(SCRIPT, args["parts"], directory)
    deadline = time.time() + 300
    # SIGTERM as soon as the first checkpoint is there: during epoch 2 (the signal can land before its end)
    # to 8; 3 evaluations leave time
    while not (directory / "parts" / "checkpoint.npz").exists() and parts.poll() is None:
        assert time.time() < deadline, "no checkpoint in 300 s"
        time.sleep(0.01)
    parts.send_signal(signal.SIGTERM)
    runs = {"directory": directory, "stopped": finish(parts)}
    with np.load(directory / "parts" / "checkpoint.npz") as checkpoint:
        runs["stop_checkpoint_run"] = json.loads(str(checkpoint["run"]))
    runs["resumed"] = finish(start_script(SCRIPT, [*args["parts"], "--resume=true"], directory))
    runs["whole"] = finish(whole)
    eval_args = ["--config_path", str(directory / "whole" / "config.yaml"), "--eval_only=true"]
    runs["evaluated"] = finish(start_script(SCRIPT, eval_args, directory))
    return runs


def test_runs_succeed(runs: dict) -> None:
    for name in ("whole", "resumed", "evaluated"):
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
        assert "Traceback" not in runs[name].stderr
    stopped = runs["stopped"]
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
    match = re.search(
        r"error: stopped by SIGTERM after epoch ([2-7]); continue with --resume=true$",
        stopped.stderr.strip(),
    )
    assert match, stopped.stderr[-2000:]
    # the stop wrote its own checkpoint: a resume starts after the stopped epoch, not at an older evaluation's
    assert runs["stop_checkpoint_run"]["epoch"] == int(match.group(1))


def test_sigterm_then_resume_equals_an_uninterrupted_run(runs: dict) -> None:
    directory = runs["directory"]
    with (
        np.load(directory / "whole" / "checkpoint.npz") as whole,
        np.load(directory / "parts" / "checkpoint.npz") as parts,
    ):
        arrays = [name for name in whole.files if name != "run"]
        assert len(arrays) > 10 and whole.files == parts.files
        for name in arrays:
            np.testing.assert_array_equal(whole[name], parts[name], err_msg=name)
    whole, parts = (
        read_scores(directory / "whole" / "scores.csv"),
        read_scores(directory / "parts" / "scores.csv"),
    )
    assert [(row["epoch"], row["seed"]) for row in whole] == [
        (epoch, seed) for epoch in (2, 4, 6, 8) for seed in (10, 11)
    ]
    for whole_row, parts_row in zip(whole, parts, strict=True):
        (
            whole_row.pop("train_seconds"),
            parts_row.pop("train_seconds"),
        )  # the one column that is a clock
        assert whole_row == parts_row


def test_the_run_ends_with_the_last_and_best_score_over_seeds(runs: dict) -> None:
    scores = read_scores(runs["directory"] / "whole" / "scores.csv")
    by_seed = [[row["score_mean"] for row in scores if row["seed"] == seed] for seed in (10, 11)]
    last, best = np.array([seed[-1] for seed in by_seed]), np.array([max(seed) for seed in by_seed])
    summary = (
        f"last {last.mean():.1f} +- {last.std():.1f}, best {best.mean():.1f} +- {best.std():.1f}"
    )
    for name in ("whole", "resumed"):
        assert f"normalized score over 2 seed(s), mean +- std: {summary}" in runs[name].stdout


def test_eval_only_evaluates_the_saved_agents(runs: dict) -> None:
    """The last evaluation of a run, repeated from its checkpoint: the same start states give the same returns."""
    last = [
        row for row in read_scores(runs["directory"] / "whole" / "scores.csv") if row["epoch"] == 8
    ]
    score = np.mean([row["score_mean"] for row in last])
    assert f"eval/normalized_score_mean: {score:.3f}" in runs["evaluated"].stdout
    for seed, row in zip((10, 11), last):  # and each seed's scores
        assert (
            f"eval/seed_{seed}/normalized_score_mean: {row['score_mean']:.3f}"
            in runs["evaluated"].stdout
        )
        assert f"eval/seed_{seed}/return_mean: {row['return_mean']:.3f}" in runs["evaluated"].stdout
    assert "eval/normalized_score_seed_std" in runs["evaluated"].stdout


def test_without_a_wandb_login_the_run_logs_offline_and_says_how_to_upload(runs: dict) -> None:
    assert (
        "wandb: no login, so logging offline; upload with `wandb login; wandb sync "
        in runs["whole"].stdout
    )
    assert os.listdir(runs["directory"] / "home" / "wandb")  # the offline run


def test_the_console_shows_progress_scores_and_summary_only(runs: dict) -> None:
    stderr = runs["whole"].stderr
    for noise in (
        "settotalmass",
        "out of date",
        "Run summary",
        "Run history",
        "DeprecationWarning",
        "WARNING",
    ):
        assert noise not in stderr, noise
    assert "epoch 8: normalized score" in runs["whole"].stdout  # tqdm.write prints above its bar
    assert not os.path.exists(runs["directory"] / "MUJOCO_LOG.TXT")


def test_a_bad_command_line_is_one_line_on_stderr(runs: dict) -> None:
    result = finish(start_script(SCRIPT, ["--num_critic=5"], runs["directory"]))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{SCRIPT}: error: unknown option 'num_critic' in the command line; did you mean 'num_critics'? (see --help)"
    ]


# --- in one process, with the scripts' functions patched where a test needs to watch or break them ---


def tiny_config(directory, dataset_path: str, *args: str):
    return script.parse_config(
        [
            "--env_name=halfcheetah-random-v2",
            *TINY,
            f"--dataset_path={dataset_path}",
            f"--checkpoints_path={directory}",
            *args,
        ]
    )


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["sac_n", "edac"])
def test_what_a_run_logs_and_when_it_checkpoints(
    tmp_path, halfcheetah_file: str, monkeypatch, eta: float
) -> None:
    """checkpoint.npz at each evaluation and at the end (3 writes in 12 epochs with eval_every=5), not every epoch;
    every training metric each epoch (EDAC's diversity_loss with eta > 0), the evaluation metrics at each
    evaluation."""
    logs, saved_epochs, runs = [], [], []
    recording_wandb = types.SimpleNamespace(
        Settings=dict, log=lambda log, step: logs.append((step, log))
    )
    recording_wandb.init = lambda **kwargs: runs.append(kwargs)
    recording_wandb.finish = lambda **kwargs: None
    monkeypatch.setattr(script, "wandb", recording_wandb)
    save_checkpoint = script.save_checkpoint

    def recording_save_checkpoint(directory: str, state, run: dict) -> None:
        saved_epochs.append(run["epoch"])
        save_checkpoint(directory, state, run)

    monkeypatch.setattr(script, "save_checkpoint", recording_save_checkpoint)
    args = ["--num_epochs=12", "--eval_every=5", "--num_updates_on_epoch=2", f"--eta={eta}"]
    script.main(tiny_config(tmp_path / "run", halfcheetah_file, *args))
    assert saved_epochs == [5, 10, 12]
    assert [
        (run["project"], run["group"], run["config"]["num_epochs"], run["mode"]) for run in runs
    ] == [("SAC-N-JAX", "SAC-N", 12, None)]
    train_metrics = {
        "actor_loss",
        "critic_loss",
        "alpha_loss",
        "alpha",
        "batch_entropy",
        "q_policy_std",
    }
    train_metrics |= {"q_random_std", "diversity_loss"} if eta > 0 else {"q_random_std"}
    eval_metrics = {
        "eval/return_mean",
        "eval/return_std",
        "eval/normalized_score_mean",
        "eval/normalized_score_std",
    }
    with open(os.path.join(REPO_ROOT, "configs", "sweep.yaml")) as file:
        assert (
            yaml.safe_load(file)["metric"]["name"] in eval_metrics
        )  # what the sweep optimises is logged
    assert [step for step, _ in logs] == list(range(1, 13))
    for step, log in logs:
        expected = {
            "epoch",
            "updates_per_second",
            *train_metrics,
            *(eval_metrics if step in (5, 10, 12) else ()),
        }
        assert set(log) == expected and log["epoch"] == step
        assert all(np.isfinite(value) for value in log.values())
    assert logs[-1][1]["alpha"] < 1.0  # log_alpha moved from 0, towards the entropy target
    # D4RL's halfcheetah reference returns
    log = logs[-1][1]
    assert log["eval/normalized_score_mean"] == pytest.approx(
        100 * (log["eval/return_mean"] + 280.178953) / (12135 + 280.178953)
    )


def checkpoint_arrays(directory) -> tuple[list[np.ndarray], dict]:
    with np.load(directory / "checkpoint.npz") as data:
        return [data[name] for name in data.files if name != "run"], json.loads(str(data["run"]))


def record_train_epoch_states(monkeypatch) -> list:
    """The leaves of the state that each train_epoch call starts from (copied before it donates them)."""
    states, train_epoch = [], script.train_epoch

    def recording_train_epoch(state, dataset, config):
        states.append(jax.device_get(jax.tree.leaves(state)))
        return train_epoch(state, dataset, config)

    monkeypatch.setattr(script, "train_epoch", recording_train_epoch)
    return states


def test_resume_continues_from_the_checkpoint(tmp_path, halfcheetah_file: str, monkeypatch) -> None:
    """--resume=true runs only the epochs after the checkpoint's, and the first of them starts from the checkpoint's
    arrays: not from a new init of the same seed, which a deterministic retrain would hide from the bit-exact
    comparison of test_sigterm_then_resume_equals_an_uninterrupted_run."""
    args = ["--num_epochs=3", "--eval_every=3", "--num_updates_on_epoch=2"]
    script.main(tiny_config(tmp_path / "run", halfcheetah_file, *args))
    saved, run = checkpoint_arrays(tmp_path / "run")
    assert run["epoch"] == 3
    states = record_train_epoch_states(monkeypatch)
    script.main(
        tiny_config(
            tmp_path / "run", halfcheetah_file, *args[1:], "--num_epochs=5", "--resume=true"
        )
    )
    assert len(states) == 2  # epochs 4 and 5
    assert len(states[0]) == len(saved)
    for got, want in zip(states[0], saved):
        np.testing.assert_array_equal(got, want)
    assert [row["epoch"] for row in read_scores(tmp_path / "run" / "scores.csv")] == [3, 5]


def test_a_stop_checkpoints_the_epoch_it_ends(tmp_path, halfcheetah_file: str, monkeypatch) -> None:
    """SIGTERM during epoch 3 of a run that evaluates every 2: the run finishes epoch 3, checkpoints it (not only
    epoch 2's evaluation) and stops; the resume starts at epoch 4, from epoch 3's arrays."""
    states, train_epoch = record_train_epoch_states(monkeypatch), script.train_epoch

    def train_epoch_stopped_in_epoch_3(state, dataset, config):
        if len(states) == 2:  # epochs 1 and 2 recorded
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(state, dataset, config)

    monkeypatch.setattr(script, "train_epoch", train_epoch_stopped_in_epoch_3)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    args = ["--num_epochs=5", "--eval_every=2", "--num_updates_on_epoch=2"]
    try:
        message = error_message(script.main, tiny_config(tmp_path / "run", halfcheetah_file, *args))
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert message.endswith("stopped by SIGTERM after epoch 3; continue with --resume=true")
    saved, run = checkpoint_arrays(tmp_path / "run")
    assert run["epoch"] == 3 and len(states) == 3
    states.clear()
    monkeypatch.setattr(script, "train_epoch", train_epoch)
    states = record_train_epoch_states(monkeypatch)
    script.main(tiny_config(tmp_path / "run", halfcheetah_file, *args, "--resume=true"))
    assert len(states) == 2  # epochs 4 and 5
    for got, want in zip(states[0], saved):
        np.testing.assert_array_equal(got, want)


def test_a_new_run_never_writes_over_a_saved_run(tmp_path, halfcheetah_file: str, caplog) -> None:
    (tmp_path / "run").mkdir()
    saved = {
        "config.yaml": b"num_critics: 7\n",
        "checkpoint.npz": b"arrays",
        "scores.csv": b"epoch,seed\n5,10\n",
    }
    for name, content in saved.items():
        (tmp_path / "run" / name).write_bytes(content)
    message = error_before_compile(
        script.main, tiny_config(tmp_path / "run", halfcheetah_file), caplog=caplog
    )
    assert (
        f"checkpoints_path {tmp_path / 'run'} is not empty: continue its run with --resume=true, or pass a fresh one"
        in message
    )
    for name, content in saved.items():
        assert (tmp_path / "run" / name).read_bytes() == content


def test_resume_with_other_hyperparameters_fails(tmp_path, halfcheetah_file: str, caplog) -> None:
    (tmp_path / "run").mkdir()
    config = tiny_config(tmp_path / "run", halfcheetah_file, "--resume=true")
    saved = {
        name: getattr(config, name)
        for name in ("env_name", "dataset_path", "hidden_dim", "batch_size")
    }
    (tmp_path / "run" / "config.yaml").write_text(
        yaml.safe_dump({**saved, "num_critics": 7, "num_epochs": 99})
    )
    message = error_before_compile(script.main, config, caplog=caplog)
    # num_epochs may change (a resumed run may run longer), and so may eval_episodes and checkpoints_path
    assert (
        f"config differs from the saved run in {tmp_path / 'run'} in ['num_critics', 'num_updates_on_epoch']"
        in message
    )


@pytest.mark.parametrize(
    "checkpoint", [None, b"not a zip file", "truncated"], ids=["missing", "garbage", "truncated"]
)
def test_an_unreadable_checkpoint_is_one_line_that_names_it(
    tmp_path, halfcheetah_file, caplog, checkpoint
) -> None:
    config = tiny_config(tmp_path / "run", halfcheetah_file)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(vars(config) | {"resume": False}))
    path = tmp_path / "run" / "checkpoint.npz"
    if checkpoint == "truncated":
        np.savez(path, np.zeros(1000), run="{}")
        path.write_bytes(path.read_bytes()[:500])
    elif checkpoint is not None:
        path.write_bytes(checkpoint)
    resume = tiny_config(tmp_path / "run", halfcheetah_file, "--resume=true")
    assert f"cannot read checkpoint {path} (" in error_before_compile(
        script.main, resume, caplog=caplog
    )


def test_a_failed_checkpoint_write_loses_and_repeats_nothing(
    tmp_path, halfcheetah_file: str, monkeypatch
) -> None:
    """The disk fills while the checkpoint of epoch 4 is written: one line, no .tmp left, the epoch-2 checkpoint
    kept; --resume=true then repeats epochs 3 and 4 without writing epoch 4's scores twice."""
    savez, calls = np.savez, []

    def savez_on_a_full_disk(file, *args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 2:
            file.write(b"the first bytes of the checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        savez(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    args = ["--num_epochs=6", "--eval_every=2"]
    message = error_message(script.main, tiny_config(tmp_path / "run", halfcheetah_file, *args))
    assert (
        f"cannot write {tmp_path / 'run' / 'checkpoint.npz'} ([Errno 28] No space left on device)"
        in message
    )
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.npz", "config.yaml", "scores.csv"]
    assert [row["epoch"] for row in read_scores(tmp_path / "run" / "scores.csv")] == [2, 4]
    monkeypatch.setattr(np, "savez", savez)
    script.main(tiny_config(tmp_path / "run", halfcheetah_file, *args, "--resume=true"))
    rows = read_scores(tmp_path / "run" / "scores.csv")
    assert [row["epoch"] for row in rows] == [2, 4, 6]


def test_a_non_finite_loss_stops_the_run_in_one_line(tmp_path, halfcheetah_file: str) -> None:
    """Rewards of 1e30 are finite, but their squares are not: the losses overflow in the first epoch, before any
    checkpoint, so the message must not point at one."""
    with h5py.File(halfcheetah_file) as file:
        data = {key: file[key][()] for key in file}
    write_d4rl_file(
        tmp_path / "huge_rewards.hdf5", {**data, "rewards": np.full_like(data["rewards"], 1e30)}
    )
    message = error_message(
        script.main, tiny_config(tmp_path / "run", tmp_path / "huge_rewards.hdf5")
    )
    assert re.search(r"error: non-finite \w+ at epoch 1, seed 10: training stopped$", message), (
        message
    )
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")
