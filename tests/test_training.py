"""The jitted epoch: many seeds in one vmapped program (sharded over devices), one compile per run, and the
state's types kept from epoch to epoch."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
from datasets import random_transitions
from script_runs import REPO_ROOT

import sac_n_jax_flax as script

# the sizes of test_parity.py too: the persistent compilation cache (conftest.py) then compiles each program once
SIZES = {"hidden_dim": 16, "num_critics": 3, "batch_size": 32, "num_updates_on_epoch": 10}


def to_batch(module, transitions: dict):
    return module.Batch(
        **{key: jax.numpy.asarray(value, dtype=np.float32) for key, value in transitions.items()}
    )


def train(module, epochs: int, **fields):
    """`epochs` epochs on random data; also checks that the epoch compiled once: a second compile would mean the
    state's types changed between epochs (weak types, say), and every epoch would cost a compile."""
    config = module.Config(**SIZES, **fields)
    state, dataset = module.shard_seeds(
        module.create_sac_n_state(17, 6, config),
        to_batch(module, random_transitions()),
        config.num_seeds,
    )
    initial, compiles = jax.device_get(state), module.train_epoch._cache_size()
    for _ in range(epochs):
        state, metrics = module.train_epoch(state, dataset, config)
    assert module.train_epoch._cache_size() == compiles + 1
    return initial, jax.device_get(state), jax.device_get(metrics)


def seed_leaves(tree, index: int) -> list:
    return jax.tree.leaves(jax.tree.map(lambda leaf: leaf[index], tree))


def test_seed_i_of_a_multi_seed_run_is_the_single_seed_run() -> None:
    """Seed i starts bit for bit as a one-seed run with train_seed + i, and trains as it does to float32 rounding:
    XLA compiles a batched seed axis with other operand orders and fusions (benchmarks/README.md). The Training
    epoch section is the same text in both scripts (test_parity.py): the Flax script's."""
    multi_initial, multi, multi_metrics = train(script, 2, train_seed=5, num_seeds=3)
    single_initial, single, single_metrics = train(script, 2, train_seed=6, num_seeds=1)
    for multi_leaf, single_leaf in zip(
        seed_leaves(multi_initial, 1), seed_leaves(single_initial, 0)
    ):
        np.testing.assert_array_equal(multi_leaf, single_leaf)
    for multi_leaf, single_leaf in zip(seed_leaves(multi, 1), seed_leaves(single, 0)):
        np.testing.assert_allclose(multi_leaf, single_leaf, rtol=1e-4, atol=1e-6)
    assert not all(
        np.array_equal(a, b) for a, b in zip(seed_leaves(single, 0), seed_leaves(single_initial, 0))
    )
    assert multi_metrics.keys() == single_metrics.keys()
    for name in single_metrics:
        assert multi_metrics[name].shape == (3,) and single_metrics[name].shape == (1,)
        np.testing.assert_allclose(
            multi_metrics[name][1], single_metrics[name][0], rtol=1e-4, atol=1e-6
        )
    # and the seeds are distinct agents
    assert not np.allclose(
        seed_leaves(multi.critic.params, 0)[0], seed_leaves(multi.critic.params, 1)[0]
    )


SHARDING_CHECK = """
import sys, jax
sys.path[:0] = [{repo!r}, {tests!r}]
import {module} as module
from test_training import train_epoch_on_devices
print(train_epoch_on_devices(module))
"""


def train_epoch_on_devices(module) -> str:
    """Run in a process that sees 2 CPU devices: 4 seeds sharded over them, 2 epochs."""
    assert jax.device_count() == 2, jax.devices()
    config = module.Config(**SIZES, num_seeds=4)
    state, dataset = module.shard_seeds(
        module.create_sac_n_state(17, 6, config), to_batch(module, random_transitions()), 4
    )
    for _ in range(2):
        state, _ = module.train_epoch(state, dataset, config)
    leaf, compiles = jax.tree.leaves(state.critic.params)[0], module.train_epoch._cache_size()
    return f"devices {len(leaf.sharding.device_set)} shard {leaf.addressable_shards[0].data.shape[0]} compiles {compiles}"


def test_seed_axis_is_sharded_over_devices() -> None:
    """The Flax script only: shard_seeds and train_epoch are the same text in both (test_parity.py)."""
    code = SHARDING_CHECK.format(
        repo=REPO_ROOT, tests=os.path.dirname(__file__), module="sac_n_jax_flax"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # 4 seeds over 2 devices: each device trains 2 of them, and the sharded state comes back sharded alike
    assert "devices 2 shard 2 compiles 1" in result.stdout


def test_train_epoch_keeps_the_state_types(module) -> None:
    """An epoch returns its state with the shapes, dtypes and weak types it was given: any change makes the next
    call retrace and recompile the whole epoch. Traced abstractly, so nothing runs or compiles."""
    config = module.Config(hidden_dim=8, num_critics=2, batch_size=4, num_updates_on_epoch=2)
    state = jax.eval_shape(functools.partial(module.create_sac_n_state, 3, 1, config))
    shapes = [(10, 3), (10, 1), (10,), (10, 3), (10,)]
    dataset = module.Batch(*(jax.ShapeDtypeStruct(shape, np.float32) for shape in shapes))
    new_state, metrics = jax.eval_shape(module.train_epoch, state, dataset, config)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for (path, leaf), new_leaf in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(new_state)
    ):
        before = (leaf.shape, leaf.dtype, leaf.weak_type)
        after = (new_leaf.shape, new_leaf.dtype, new_leaf.weak_type)
        assert before == after, (
            f"state{jax.tree_util.keystr(path)}: (shape, dtype, weak_type) {before} -> {after}"
        )
    assert all(value.shape == (1,) for value in metrics.values())  # [num_seeds] per metric
