"""Shared fixtures: both scripts as modules, and tiny D4RL-layout files written once per session."""

import functools
import importlib
import os
import sys

import pyrallis.wrappers.docstring
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO_ROOT, os.path.dirname(os.path.abspath(__file__))]

# no test talks to the wandb servers; subprocesses inherit these
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

from d4rl_files import SCRIPTS, collect, script_path, write_d4rl_file  # noqa: E402

# pyrallis finds each field's help comment by parsing the script's whole source, once per field
# and parse_config call (~1 s a call here); the tests call parse_config a hundred times, so they
# remember each answer (same result, the source does not change during a session)
pyrallis.wrappers.docstring.get_attribute_docstring = functools.cache(
    pyrallis.wrappers.docstring.get_attribute_docstring
)


@pytest.fixture(params=SCRIPTS)
def script(request: pytest.FixtureRequest) -> str:
    """Absolute path of each script."""
    return script_path(request.param)


@pytest.fixture(scope="session", params=SCRIPTS)
def module(request: pytest.FixtureRequest):
    """Each script imported as a module."""
    script_path(request.param)
    return importlib.import_module(request.param.removesuffix(".py"))


@pytest.fixture(scope="session")
def halfcheetah_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3000 rows of uniform-random HalfCheetah-v4 play: 3 episodes of 1000 steps, each ending in a timeout."""
    path = str(tmp_path_factory.mktemp("d4rl") / "halfcheetah_tiny-v2.hdf5")
    write_d4rl_file(path, collect("HalfCheetah-v4", 3000, seed=0, max_episode_steps=1000))
    return path


@pytest.fixture(scope="session")
def hopper_data() -> dict:
    """600 rows of uniform-random Hopper-v4 play with 40-step episodes: a mix of
    terminations (the hopper falls) and timeouts."""
    return collect("Hopper-v4", 600, seed=1, max_episode_steps=40)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory: pytest.TempPathFactory, hopper_data: dict) -> str:
    path = str(tmp_path_factory.mktemp("d4rl") / "hopper_tiny-v2.hdf5")
    write_d4rl_file(path, hopper_data)
    return path
