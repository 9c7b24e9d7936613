"""Many seeds in one process, exact resume after SIGTERM, non-finite stops, results files, the plot."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from d4rl_files import REPO_ROOT, finish, start_script


def synthetic_dataset(module, size: int = 2000):
    rng = np.random.default_rng(0)
    return module.to_device(
        {
            "obs": rng.normal(size=(size, 17)),
            "actions": rng.uniform(-1, 1, size=(size, 6)),
            "rewards": rng.normal(size=size),
            "next_obs": rng.normal(size=(size, 17)),
            "dones": rng.uniform(size=size) < 0.05,
        }
    )


def train(module, dataset, epochs: int, **fields):
    config = module.Config(hidden_dim=16, num_critics=3, batch_size=32, num_updates_on_epoch=10, **fields)
    state = module.create_sac_n_state(17, 6, config)
    state, dataset = module.shard_seeds(state, dataset, config.num_seeds)
    initial = jax.device_get(state)
    for _ in range(epochs):
        state, metrics = module.train_epoch(state, dataset, config)
    return initial, jax.device_get(state), jax.device_get(metrics)


def seed_slice(tree, index: int):
    return jax.tree.leaves(jax.tree.map(lambda leaf: leaf[index], tree))


def test_seed_i_of_an_unbatched_multi_seed_run_is_the_single_seed_run_bit_for_bit(module):
    dataset = synthetic_dataset(module)
    multi_initial, multi, multi_metrics = train(module, dataset, 2, train_seed=5, num_seeds=3, batch_seeds=False)
    # a plain single-seed run: default settings
    single_initial, single, single_metrics = train(module, dataset, 2, train_seed=6, num_seeds=1)
    for initial, trained in [(multi_initial, multi), (single_initial, single)]:
        assert not all(np.array_equal(a, b) for a, b in zip(seed_slice(initial, 0), seed_slice(trained, 0)))
    for multi_leaf, single_leaf in zip(seed_slice(multi_initial, 1), seed_slice(single_initial, 0)):
        np.testing.assert_array_equal(multi_leaf, single_leaf)
    for multi_leaf, single_leaf in zip(seed_slice(multi, 1), seed_slice(single, 0)):
        np.testing.assert_array_equal(multi_leaf, single_leaf)
    assert multi_metrics.keys() == single_metrics.keys()
    for name in single_metrics:
        np.testing.assert_array_equal(multi_metrics[name][1], single_metrics[name][0])
    # evaluation acts for all seeds at once (vmapped): seed 1's actions are still the single run's
    obs = np.random.default_rng(1).normal(size=(1, 8, 17)).astype(np.float32)
    multi_actions = module.deterministic_action(multi.actor, np.repeat(obs, 3, axis=0), 1.0)
    np.testing.assert_array_equal(multi_actions[1:2], module.deterministic_action(single.actor, obs, 1.0))
    # and the seeds are distinct agents
    assert not np.allclose(seed_slice(multi.critic.params, 0)[0], seed_slice(multi.critic.params, 1)[0])


def test_seed_i_of_a_batched_multi_seed_run_matches_the_single_seed_run(module):
    dataset = synthetic_dataset(module)
    multi_initial, multi, multi_metrics = train(module, dataset, 2, train_seed=5, num_seeds=3)
    single_initial, single, single_metrics = train(module, dataset, 2, train_seed=6, num_seeds=1)
    # the same init, bit for bit
    for multi_leaf, single_leaf in zip(seed_slice(multi_initial, 1), seed_slice(single_initial, 0)):
        np.testing.assert_array_equal(multi_leaf, single_leaf)
    # after training, equal to float32 rounding: XLA compiles the vmapped [3, ...] seed axis with
    # other dot operand orders and fusions than one seed's program (README, "Many seeds")
    for multi_leaf, single_leaf in zip(seed_slice(multi, 1), seed_slice(single, 0)):
        np.testing.assert_allclose(multi_leaf, single_leaf, rtol=1e-4, atol=1e-6)
    for name in single_metrics:
        np.testing.assert_allclose(multi_metrics[name][1], single_metrics[name][0], rtol=1e-4, atol=1e-6)
    assert not np.allclose(seed_slice(multi.critic.params, 0)[0], seed_slice(multi.critic.params, 1)[0])


SHARDING_CHECK = """
import sys, jax, numpy as np
sys.path[:0] = [{repo!r}, {tests!r}]
import {module} as module
from test_long_runs import synthetic_dataset, train
assert jax.device_count() == 2, jax.devices()
dataset = synthetic_dataset(module)
config = module.Config(hidden_dim=16, num_critics=3, batch_size=32, num_updates_on_epoch=10, num_seeds=4)
state, dataset = module.shard_seeds(module.create_sac_n_state(17, 6, config), dataset, 4)
for _ in range(2):
    state, metrics = module.train_epoch(state, dataset, config)
leaf = jax.tree.leaves(state.critic.params)[0]
print("devices", len(leaf.sharding.device_set), "shard", leaf.addressable_shards[0].data.shape[0])
print("compiles", module.train_epoch._cache_size())
"""


def test_seed_axis_is_sharded_over_devices(module):
    code = SHARDING_CHECK.format(repo=REPO_ROOT, tests=os.path.dirname(__file__), module=module.__name__)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # 4 seeds over 2 devices: each device trains 2 of them
    assert "devices 2 shard 2" in result.stdout
    assert "compiles 1" in result.stdout  # the sharded state comes back sharded alike


def run_args(halfcheetah_file: str, checkpoints: str) -> list[str]:
    return [
        "--env_name=halfcheetah-medium-v2",
        f"--dataset_path={halfcheetah_file}",
        "--hidden_dim=16",
        "--num_critics=2",
        "--batch_size=32",
        "--num_epochs=8",
        "--num_updates_on_epoch=10",
        "--eval_every=2",
        "--eval_episodes=1",
        "--num_seeds=2",
        f"--checkpoints_path={checkpoints}",
    ]


def test_sigterm_then_resume_equals_an_uninterrupted_run(script, halfcheetah_file, tmp_path):
    # the resumed run finds the first runs' executables in JAX's compilation cache
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    whole = start_script(script, run_args(halfcheetah_file, "whole"), tmp_path, **cache)
    interrupted = start_script(script, run_args(halfcheetah_file, "parts"), tmp_path, **cache)
    checkpoint = tmp_path / "parts" / "checkpoint.npz"
    deadline = time.time() + 300
    while not checkpoint.exists() and interrupted.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    interrupted.send_signal(signal.SIGTERM)  # during epochs 3 to 8: 3 evaluations leave time
    stopped = finish(interrupted)
    assert stopped.returncode != 0 and "stopped by SIGTERM" in stopped.stderr, stopped.stderr[-2000:]
    resumed = finish(start_script(script, [*run_args(halfcheetah_file, "parts"), "--resume=true"], tmp_path, **cache))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert finish(whole).returncode == 0

    with np.load(tmp_path / "whole" / "checkpoint.npz") as a, np.load(checkpoint) as b:
        arrays = [name for name in a.files if name != "run"]
        assert arrays and sorted(arrays) == sorted(name for name in b.files if name != "run")
        for name in arrays:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def scores(run: str) -> list[list[str]]:  # every column but the wall-clock time
        lines = (tmp_path / run / "scores.csv").read_text().splitlines()
        return [line.split(",")[:2] + line.split(",")[3:] for line in lines]

    assert scores("whole") == scores("parts")
    assert len(scores("whole")) == 1 + 4 * 2  # header, evaluations at epochs 2, 4, 6, 8 for 2 seeds
    assert "normalized score over 2 seed(s): last" in resumed.stdout

    # the documented way to evaluate a checkpoint: its own config file plus --eval_only=true
    args = [f"--config_path={tmp_path / 'whole' / 'config.yaml'}", "--eval_only=true"]
    evaluated = finish(start_script(script, args, tmp_path, **cache))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    final_scores = scores("whole")[-2:]  # the last evaluation: epoch, seed, returns, scores
    expected_mean = np.mean([float(row[4]) for row in final_scores])
    assert f"eval/normalized_score_mean: {expected_mean:.3f}" in evaluated.stdout


def test_resume_with_other_hyperparameters_fails(script, halfcheetah_file, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("num_critics: 7\n")
    args = [*run_args(halfcheetah_file, "run"), "--resume=true"]
    result = finish(start_script(script, args, tmp_path))
    assert result.returncode != 0
    assert "config differs from the saved run" in result.stderr.strip().splitlines()[-1]


def test_non_finite_loss_stops_with_one_line(module, tmp_path, monkeypatch):
    transitions = {name: np.array(array) for name, array in synthetic_dataset(module)._asdict().items()}
    transitions["rewards"][:] = np.inf
    task = module.Task(make_eval_env=lambda: None, ref_min_score=0.0, ref_max_score=1.0)
    monkeypatch.setattr(module, "load_task", lambda config: (transitions, task))
    monkeypatch.setattr(module, "check_dataset", lambda *args: None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    config = module.Config(hidden_dim=8, num_critics=2, batch_size=16, num_epochs=3, num_updates_on_epoch=2)
    with pytest.raises(SystemExit) as error:
        module.main(config)
    message = str(error.value)
    assert "error: non-finite " in message and "at epoch 1, seed 10: training stopped" in message


def test_plot_draws_the_scores_files(tmp_path):
    for run, offset in (("a", 0.0), ("b", 5.0)):
        (tmp_path / run).mkdir()
        rows = ["epoch,seed,train_seconds,return_mean,return_std,score_mean,score_std"]
        rows += [f"{epoch},{seed},{epoch * 3.0},0,0,{epoch + seed + offset},0" for epoch in (5, 10) for seed in (0, 1)]
        (tmp_path / run / "scores.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "scores.png"
    command = [sys.executable, os.path.join(REPO_ROOT, "plot.py"), "a/scores.csv", "b/scores.csv", f"--out={out}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 10_000


def test_the_epoch_compiles_once_per_run(module):
    dataset = synthetic_dataset(module)
    config = module.Config(hidden_dim=8, num_critics=2, batch_size=16, num_updates_on_epoch=2, num_seeds=2)
    state, dataset = module.shard_seeds(module.create_sac_n_state(17, 6, config), dataset, config.num_seeds)
    before = module.train_epoch._cache_size()
    for _ in range(3):
        state, _ = module.train_epoch(state, dataset, config)
    # a second compile would mean the state's types changed between epochs (e.g. weak types)
    assert module.train_epoch._cache_size() == before + 1
