"""The config files and the wandb sweep: each parses, and the D4RL configs use the paper's ensemble sizes."""

import glob
import itertools
import os

import pytest
import yaml
from d4rl_files import REPO_ROOT, SCRIPTS

CONFIGS = sorted(
    path
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
    if os.path.basename(path) != "sweep.yaml"
)
D4RL_CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "d4rl", "*.yaml")))

# An et al. 2021 (arXiv:2110.01548), the N of SAC-N per dataset
PAPER_NUM_CRITICS = {
    "halfcheetah": dict.fromkeys(["random", "medium", "expert", "medium-expert", "medium-replay", "full-replay"], 10),
    "hopper": {
        **dict.fromkeys(["random", "medium", "expert"], 500),
        **dict.fromkeys(["medium-expert", "medium-replay", "full-replay"], 200),
    },
    "walker2d": {
        **dict.fromkeys(["random", "medium", "medium-expert", "medium-replay", "full-replay"], 20),
        "expert": 100,
    },
}


@pytest.fixture
def sweep() -> dict:
    with open(os.path.join(REPO_ROOT, "configs", "sweep.yaml")) as file:
        return yaml.safe_load(file)


def test_sweep_runs_a_script_and_optimises_a_logged_metric(sweep: dict) -> None:
    assert sweep["program"] in SCRIPTS and os.path.isfile(os.path.join(REPO_ROOT, sweep["program"]))
    assert sweep["method"] == "grid"
    assert "${args}" in sweep["command"]
    with open(os.path.join(REPO_ROOT, sweep["program"])) as file:
        assert f'"{sweep["metric"]["name"]}"' in file.read(), "the sweep's metric is not one the script logs"


def test_every_sweep_command_line_parses(module, sweep: dict, monkeypatch) -> None:
    """The agent runs `program --config_path=... --train_seed=...` (${args}) from the repo root."""
    monkeypatch.chdir(REPO_ROOT)
    parameters = sweep["parameters"]
    assert set(parameters) == {"config_path", "train_seed"}
    for config_path, train_seed in itertools.product(*(parameters[name]["values"] for name in parameters)):
        assert os.path.isfile(config_path), config_path
        config = module.parse_config([f"--config_path={config_path}", f"--train_seed={train_seed}"])
        assert config.train_seed == train_seed
        assert config.env_name == os.path.basename(config_path).removesuffix(".yaml")
    config = module.parse_config(["--config_path=configs/d4rl/hopper-medium-v2.yaml", "--train_seed=3"])
    assert (config.train_seed, config.num_critics) == (3, 500)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: os.path.relpath(path, REPO_ROOT))
def test_config_file_parses(module, path: str) -> None:
    config = module.parse_config([f"--config_path={path}"])
    with open(path) as file:
        values = yaml.safe_load(file)
    for name, value in values.items():
        assert getattr(config, name) == value, name


def test_d4rl_configs_have_the_papers_ensemble_sizes(module) -> None:
    assert len(D4RL_CONFIGS) == 18
    seen = set()
    for path in D4RL_CONFIGS:
        config = module.parse_config([f"--config_path={path}"])
        domain, level = config.env_name.removesuffix("-v2").split("-", 1)
        assert os.path.basename(path) == f"{config.env_name}.yaml"
        assert config.num_critics == PAPER_NUM_CRITICS[domain][level], config.env_name
        seen.add((domain, level))
    assert len(seen) == 18
