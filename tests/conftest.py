"""Shared fixtures: both scripts as modules and tiny D4RL-layout files written once per session; and one JAX
compilation cache for the session, this process and the scripts it starts: many tests compile the same programs
(the same sizes, configs that differ only in fields the program does not read), and a cache hit costs a file read
where a compile costs seconds."""

import importlib
import os
import sys
import tempfile
import types

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

# no test talks to the wandb servers; subprocesses inherit this, and the cache (set before JAX is imported)
os.environ["WANDB_MODE"] = "disabled"
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import functools  # noqa: E402
import inspect  # noqa: E402

import pyrallis.wrappers.docstring  # noqa: E402
from datasets import collect, write_d4rl_file  # noqa: E402
from script_runs import SCRIPTS  # noqa: E402

# pyrallis reads every option's --help text from the Config's source, one inspect.getsource per
# field, whenever it builds a parser: 0.5 s per parse_config. The tests parse hundreds of times, and
# the source does not change while they run, so its reader keeps what it read.
pyrallis.wrappers.docstring.inspect = types.SimpleNamespace(
    getsource=functools.lru_cache(inspect.getsource), getmro=inspect.getmro
)


@pytest.fixture(scope="session", params=SCRIPTS)
def module(request: pytest.FixtureRequest):
    """Each script imported as a module."""
    return importlib.import_module(request.param.removesuffix(".py"))


@pytest.fixture(scope="session")
def halfcheetah_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3000 rows of uniform-random HalfCheetah-v4 play: 3 episodes of 1000 steps, each ending in a timeout."""
    path = str(tmp_path_factory.mktemp("d4rl") / "halfcheetah_tiny-v2.hdf5")
    write_d4rl_file(path, collect("HalfCheetah-v4", 3000, seed=0, max_episode_steps=1000))
    return path


@pytest.fixture(scope="session")
def hopper_data() -> dict:
    """600 rows of uniform-random Hopper-v4 play with 40-step episodes: a mix of terminations (the hopper falls)
    and timeouts."""
    return collect("Hopper-v4", 600, seed=1, max_episode_steps=40)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory: pytest.TempPathFactory, hopper_data: dict) -> str:
    path = str(tmp_path_factory.mktemp("d4rl") / "hopper_tiny-v2.hdf5")
    write_d4rl_file(path, hopper_data)
    return path
