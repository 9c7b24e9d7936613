"""Whole runs: a run stopped by SIGTERM and resumed equals an uninterrupted one bit for bit, --eval_only, what a run
writes and when, its console, and every way its directory or files can go wrong."""

import errno
import os
import re
import signal
import time
import types

import h5py
import numpy as np
import pytest
import yaml
from datasets import write_d4rl_file
from one_line_errors import error_before_compile, error_message
from script_runs import REPO_ROOT, SCRIPTS, finish, read_scores, start_script

TINY = ["--hidden_dim=16", "--num_critics=2", "--batch_size=32", "--num_updates_on_epoch=10", "--eval_episodes=1"]
# 8 epochs with evaluations at 2, 4, 6, 8, for 2 seeds
LONG_RUN = ["--env_name=halfcheetah-medium-v2", *TINY, "--num_epochs=8", "--eval_every=2", "--num_seeds=2"]


def no_wandb_login(home) -> dict:
    """A user who never ran `wandb login`: no WANDB_MODE, no API key, no ~/.netrc."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    return {**env, "HOME": str(home), "WANDB_DIR": str(home)}


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory: pytest.TempPathFactory, halfcheetah_file: str) -> dict:
    """Per script, in one directory: `whole` run straight through, started without any wandb login; `parts` the
    same run stopped by SIGTERM after its first checkpoint, then resumed; then --eval_only on `whole`."""
    runs = {}
    for script in SCRIPTS:
        directory = tmp_path_factory.mktemp(script)
        args = {
            name: [*LONG_RUN, f"--dataset_path={halfcheetah_file}", f"--checkpoints_path={name}"]
            for name in ("whole", "parts")
        }
        (directory / "home").mkdir()
        whole = start_script(script, args["whole"], directory, env=no_wandb_login(directory / "home"))
        parts = start_script(script, args["parts"], directory)
        runs[script] = {"directory": directory, "args": args, "processes": (whole, parts)}
    deadline, waiting = time.time() + 300, dict(runs)
    while waiting and time.time() < deadline:  # SIGTERM each run as soon as its first checkpoint is there
        for script, run in list(waiting.items()):
            parts = run["processes"][1]
            if (run["directory"] / "parts" / "checkpoint.npz").exists() or parts.poll() is not None:
                parts.send_signal(
                    signal.SIGTERM
                )  # during epoch 2 (the signal can land before its end) to 8: 3 evaluations leave time
                del waiting[script]
        time.sleep(0.01)
    for script, run in runs.items():
        directory, run["stopped"] = run["directory"], finish(run["processes"][1])
        run["resumed"] = finish(start_script(script, [*run["args"]["parts"], "--resume=true"], directory))
        run["whole"] = finish(run["processes"][0])
        args = ["--config_path", str(directory / "whole" / "config.yaml"), "--eval_only=true"]
        run["evaluated"] = finish(start_script(script, args, directory))
    return runs


@pytest.fixture(params=SCRIPTS)
def runs(request: pytest.FixtureRequest, long_runs: dict) -> dict:
    return long_runs[request.param]


def test_runs_succeed(runs: dict) -> None:
    for name in ("whole", "resumed", "evaluated"):
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
        assert "Traceback" not in runs[name].stderr
    stopped = runs["stopped"]
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
    assert re.search(
        r"error: stopped by SIGTERM after epoch [2-7]; continue with --resume=true$", stopped.stderr.strip()
    )


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
    whole, parts = read_scores(directory / "whole" / "scores.csv"), read_scores(directory / "parts" / "scores.csv")
    assert [(row["epoch"], row["seed"]) for row in whole] == [
        (epoch, seed) for epoch in (2, 4, 6, 8) for seed in (10, 11)
    ]
    for whole_row, parts_row in zip(whole, parts, strict=True):
        whole_row.pop("train_seconds"), parts_row.pop("train_seconds")  # the one column that is a clock
        assert whole_row == parts_row


def test_the_run_ends_with_the_last_and_best_score_over_seeds(runs: dict) -> None:
    scores = read_scores(runs["directory"] / "whole" / "scores.csv")
    by_seed = [[row["score_mean"] for row in scores if row["seed"] == seed] for seed in (10, 11)]
    last, best = np.array([seed[-1] for seed in by_seed]), np.array([max(seed) for seed in by_seed])
    summary = f"last {last.mean():.1f} +- {last.std():.1f}, best {best.mean():.1f} +- {best.std():.1f}"
    for name in ("whole", "resumed"):
        assert f"normalized score over 2 seed(s), mean +- std: {summary}" in runs[name].stdout


def test_eval_only_evaluates_the_saved_agents(runs: dict) -> None:
    """The last evaluation of a run, repeated from its checkpoint: the same start states give the same returns."""
    last = [row for row in read_scores(runs["directory"] / "whole" / "scores.csv") if row["epoch"] == 8]
    score = np.mean([row["score_mean"] for row in last])
    assert f"eval/normalized_score_mean: {score:.3f}" in runs["evaluated"].stdout
    for seed, row in zip((10, 11), last):  # and each seed's scores
        assert f"eval/seed_{seed}/normalized_score_mean: {row['score_mean']:.3f}" in runs["evaluated"].stdout
        assert f"eval/seed_{seed}/return_mean: {row['return_mean']:.3f}" in runs["evaluated"].stdout
    assert "eval/normalized_score_seed_std" in runs["evaluated"].stdout


def test_without_a_wandb_login_the_run_logs_offline_and_says_how_to_upload(runs: dict) -> None:
    assert "wandb: no login, so logging offline; upload with `wandb login; wandb sync " in runs["whole"].stdout
    assert os.listdir(runs["directory"] / "home" / "wandb")  # the offline run


def test_the_console_shows_progress_scores_and_summary_only(runs: dict) -> None:
    stderr = runs["whole"].stderr
    for noise in ("settotalmass", "out of date", "Run summary", "Run history", "DeprecationWarning", "WARNING"):
        assert noise not in stderr, noise
    assert "epoch 8: normalized score" in runs["whole"].stdout  # tqdm.write prints above its bar
    assert not os.path.exists(runs["directory"] / "MUJOCO_LOG.TXT")


def test_a_bad_command_line_is_one_line_on_stderr(runs: dict) -> None:
    script = os.path.basename(runs["whole"].args[1])
    result = finish(start_script(script, ["--num_critic=5"], runs["directory"]))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{script}: error: unknown option 'num_critic' in the command line; did you mean 'num_critics'? (see --help)"
    ]


# --- in one process, with the scripts' functions patched where a test needs to watch or break them ---


def tiny_config(module, directory, dataset_path: str, *args: str):
    return module.parse_config(
        [
            "--env_name=halfcheetah-random-v2",
            *TINY,
            f"--dataset_path={dataset_path}",
            f"--checkpoints_path={directory}",
            *args,
        ]
    )


def test_what_a_run_logs_and_when_it_checkpoints(module, tmp_path, halfcheetah_file: str, monkeypatch) -> None:
    """checkpoint.npz at each evaluation and at the end (3 writes in 12 epochs with eval_every=5), not every epoch;
    every training metric each epoch, the evaluation metrics at each evaluation."""
    logs, saved_epochs, runs = [], [], []
    recording_wandb = types.SimpleNamespace(Settings=dict, log=lambda log, step: logs.append((step, log)))
    recording_wandb.init = lambda **kwargs: runs.append(kwargs)
    monkeypatch.setattr(module, "wandb", recording_wandb)
    monkeypatch.setattr(recording_wandb, "finish", lambda **kwargs: None, raising=False)
    save_checkpoint = module.save_checkpoint
    monkeypatch.setattr(
        module, "save_checkpoint", lambda *args: saved_epochs.append(args[2]["epoch"]) or save_checkpoint(*args)
    )
    module.main(
        tiny_config(
            module, tmp_path / "run", halfcheetah_file, "--num_epochs=12", "--eval_every=5", "--num_updates_on_epoch=2"
        )
    )
    assert saved_epochs == [5, 10, 12]
    assert [(run["project"], run["group"], run["config"]["num_epochs"], run["mode"]) for run in runs] == [
        ("SAC-N-JAX", "SAC-N", 12, None)
    ]
    train_metrics = {
        "actor_loss",
        "critic_loss",
        "alpha_loss",
        "alpha",
        "batch_entropy",
        "q_policy_std",
        "q_random_std",
    }
    eval_metrics = {"eval/return_mean", "eval/return_std", "eval/normalized_score_mean", "eval/normalized_score_std"}
    with open(os.path.join(REPO_ROOT, "configs", "sweep.yaml")) as file:
        assert yaml.safe_load(file)["metric"]["name"] in eval_metrics  # what the sweep optimises is logged
    assert [step for step, _ in logs] == list(range(1, 13))
    for step, log in logs:
        expected = {"epoch", "updates_per_second", *train_metrics, *(eval_metrics if step in (5, 10, 12) else ())}
        assert set(log) == expected and log["epoch"] == step
        assert all(np.isfinite(value) for value in log.values())
    assert logs[-1][1]["alpha"] < 1.0  # log_alpha moved from 0, towards the entropy target
    # D4RL's halfcheetah reference returns
    log = logs[-1][1]
    assert log["eval/normalized_score_mean"] == pytest.approx(
        100 * (log["eval/return_mean"] + 280.178953) / (12135 + 280.178953)
    )


def test_a_new_run_never_writes_over_a_saved_run(module, tmp_path, halfcheetah_file: str, caplog) -> None:
    (tmp_path / "run").mkdir()
    saved = {"config.yaml": b"num_critics: 7\n", "checkpoint.npz": b"arrays", "scores.csv": b"epoch,seed\n5,10\n"}
    for name, content in saved.items():
        (tmp_path / "run" / name).write_bytes(content)
    message = error_before_compile(module.main, tiny_config(module, tmp_path / "run", halfcheetah_file), caplog=caplog)
    assert (
        f"checkpoints_path {tmp_path / 'run'} is not empty: continue its run with --resume=true, or pass a fresh one"
        in message
    )
    for name, content in saved.items():
        assert (tmp_path / "run" / name).read_bytes() == content


def test_resume_with_other_hyperparameters_fails(module, tmp_path, halfcheetah_file: str, caplog) -> None:
    (tmp_path / "run").mkdir()
    config = tiny_config(module, tmp_path / "run", halfcheetah_file, "--resume=true")
    saved = {name: getattr(config, name) for name in ("env_name", "dataset_path", "hidden_dim", "batch_size")}
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**saved, "num_critics": 7, "num_epochs": 99}))
    message = error_before_compile(module.main, config, caplog=caplog)
    # num_epochs may change (a resumed run may run longer), and so may eval_episodes and checkpoints_path
    assert (
        f"config differs from the saved run in {tmp_path / 'run'} in ['num_critics', 'num_updates_on_epoch']" in message
    )


@pytest.mark.parametrize("checkpoint", [None, b"not a zip file", "truncated"], ids=["missing", "garbage", "truncated"])
def test_an_unreadable_checkpoint_is_one_line_that_names_it(
    module, tmp_path, halfcheetah_file, caplog, checkpoint
) -> None:
    config = tiny_config(module, tmp_path / "run", halfcheetah_file)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(vars(config) | {"resume": False}))
    path = tmp_path / "run" / "checkpoint.npz"
    if checkpoint == "truncated":
        np.savez(path, np.zeros(1000), run="{}")
        path.write_bytes(path.read_bytes()[:500])
    elif checkpoint is not None:
        path.write_bytes(checkpoint)
    resume = tiny_config(module, tmp_path / "run", halfcheetah_file, "--resume=true")
    assert f"cannot read checkpoint {path} (" in error_before_compile(module.main, resume, caplog=caplog)


def test_a_failed_checkpoint_write_loses_and_repeats_nothing(
    module, tmp_path, halfcheetah_file: str, monkeypatch
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
    message = error_message(module.main, tiny_config(module, tmp_path / "run", halfcheetah_file, *args))
    assert f"cannot write {tmp_path / 'run' / 'checkpoint.npz'} ([Errno 28] No space left on device)" in message
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.npz", "config.yaml", "scores.csv"]
    assert [row["epoch"] for row in read_scores(tmp_path / "run" / "scores.csv")] == [2, 4]
    monkeypatch.setattr(np, "savez", savez)
    module.main(tiny_config(module, tmp_path / "run", halfcheetah_file, *args, "--resume=true"))
    rows = read_scores(tmp_path / "run" / "scores.csv")
    assert [row["epoch"] for row in rows] == [2, 4, 6]


def test_a_non_finite_loss_stops_the_run_in_one_line(module, tmp_path, halfcheetah_file: str) -> None:
    """Rewards of 1e30 are finite, but their squares are not: the losses overflow in the first epoch, before any
    checkpoint, so the message must not point at one."""
    with h5py.File(halfcheetah_file) as file:
        data = {key: file[key][()] for key in file}
    write_d4rl_file(tmp_path / "huge_rewards.hdf5", {**data, "rewards": np.full_like(data["rewards"], 1e30)})
    message = error_message(module.main, tiny_config(module, tmp_path / "run", tmp_path / "huge_rewards.hdf5"))
    assert re.search(r"error: non-finite \w+ at epoch 1, seed 10: training stopped$", message), message
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")
