"""Options: every bad value is one line naming the option before any data loads; the config files and the wandb
sweep parse; --help documents every field."""

import dataclasses
import glob
import itertools
import os

import pytest
import yaml
from one_line_errors import error_message
from script_runs import REPO_ROOT, SCRIPTS


def test_help_lists_every_field_with_its_comment(module, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        module.parse_config(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for field in dataclasses.fields(module.Config):
        assert f"--{field.name}" in text
    assert "N: number of critics in the Q-ensemble" in text and "Polyak coefficient of the target critics" in text


def test_values_are_read_as_their_field_types(module, tmp_path) -> None:
    path = tmp_path / "run.yaml"
    # PyYAML reads 3e-4 (no dot) as text, so a float field takes a number written as text too
    path.write_text("tau: 3e-4\nresume: True\neval_env: null\nname: 123\nhidden_dim: 64\n")
    args = [f"--config_path={path}", "--gamma", ".5", "--num_critics=+7", "--eval_only=false", "--dataset_path=null"]
    config = module.parse_config(args + ["--checkpoints_path=run"])
    assert (config.tau, config.gamma, config.num_critics, config.hidden_dim) == (3e-4, 0.5, 7, 64)
    assert (config.resume, config.eval_only, config.eval_env, config.dataset_path, config.name) == (
        True,
        False,
        None,
        None,
        "123",
    )
    # the command line overrides the file
    assert module.parse_config([f"--config_path={path}", "--tau=0.01", "--resume=false"]).tau == 0.01


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--learning_rate=0.1"], "unknown option 'learning_rate' in the command line"),
        (["--num_critic=5"], "unknown option 'num_critic' in the command line; did you mean 'num_critics'?"),
        (["--num_critic", "5"], "unknown option 'num_critic'"),
        (["halfcheetah"], "unknown option 'halfcheetah'"),
        (["--hidden_dim=abc"], "option hidden_dim must be of type int, got 'abc'"),
        (["--hidden_dim=3.5"], "option hidden_dim must be of type int, got '3.5'"),  # pyrallis reads it as 3
        (["--resume=maybe"], "option resume must be of type bool, got 'maybe'"),  # pyrallis reads it as true
        (["--gamma=high"], "option gamma must be of type float, got 'high'"),
        (["--tau=nan"], "option tau must be of type float, got 'nan'"),
        (["--num_seeds"], "option num_seeds must be of type int, got ''"),
    ],
)
def test_bad_command_line(module, args: list[str], expected: str) -> None:
    assert expected in error_message(module.parse_config, args)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("num_critic: 5\n", "unknown option 'num_critic' in {path}"),
        ("gamma: high\n", "option gamma must be of type float, got 'high' in {path}"),
        ("hidden_dim: 3.5\n", "option hidden_dim must be of type int, got '3.5' in {path}"),
        ("resume: 1\n", "option resume must be of type bool, got '1' in {path}"),
        ("", "config file {path} must be a mapping of option: value, not None"),
        ("just text\n", "config file {path} must be a mapping of option: value, not 'just text'"),
        ("- hidden_dim\n", "config file {path} must be a mapping"),
        ("hidden_dim: [1\n", "cannot read config file {path}"),
    ],
    ids=["typo", "text_for_float", "float_for_int", "int_for_bool", "empty", "text", "list", "malformed"],
)
def test_bad_config_file(module, tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert expected.format(path=path) in error_message(module.parse_config, [f"--config_path={path}"])


def test_missing_config_file(module, tmp_path) -> None:
    for path in (tmp_path / "absent.yaml", tmp_path):  # a file that is not there, and a directory
        assert f"cannot read config file {path}" in error_message(module.parse_config, [f"--config_path={path}"])


@pytest.mark.parametrize(
    "args, option",
    [
        *(([f"--{name}=0"], name) for name in ["hidden_dim", "num_critics", "batch_size", "num_epochs"]),
        *(([f"--{name}=0"], name) for name in ["num_updates_on_epoch", "eval_episodes", "eval_every", "num_seeds"]),
        (["--max_action=0"], "max_action"),
        (["--actor_learning_rate=-1e-3"], "actor_learning_rate"),
        (["--critic_learning_rate=0"], "critic_learning_rate"),
        (["--alpha_learning_rate=1e999"], "alpha_learning_rate"),  # inf
        (["--gamma=1.5"], "gamma"),
        (["--tau=0"], "tau"),
        (["--tau=2"], "tau"),
        (["--train_seed=-1"], "train_seed"),
        (["--train_seed=4294967306"], "train_seed"),  # 2**32 + 10 would silently train seed 10
        (["--train_seed=4294967295", "--num_seeds=2"], "train_seed"),  # the second seed would be 2**32
        (["--eval_seed=-1"], "eval_seed"),  # gymnasium would reject it only at the first evaluation
        (["--env_name=hopper-mediun-v2"], "env_name"),
        (["--eval_env=Hoper-v4"], "eval_env"),
        (["--env_name=pendulum-random", "--dataset_path=data.hdf5"], "eval_env"),  # no D4RL domain to take it from
        (["--resume=true"], "checkpoints_path"),
        (["--eval_only=true"], "checkpoints_path"),
    ],
)
def test_value_out_of_range(module, args: list[str], option: str) -> None:
    message = error_message(module.parse_config, args)
    assert f"option {option} must be " in message and ", got " in message


def test_checkpoints_path_that_is_a_file(module, tmp_path) -> None:
    (tmp_path / "run").write_text("")
    message = error_message(module.parse_config, [f"--checkpoints_path={tmp_path / 'run'}"])
    assert "option checkpoints_path must be a directory, not a file" in message


CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))
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


@pytest.mark.parametrize(
    "path", [path for path in CONFIG_FILES if not path.endswith("sweep.yaml")], ids=os.path.basename
)
def test_config_file_parses_to_its_values_and_the_papers_ensemble_size(module, path: str) -> None:
    config = module.parse_config([f"--config_path={path}"])
    with open(path) as file:
        for name, value in yaml.safe_load(file).items():
            assert getattr(config, name) == value, name
    domain, level = config.env_name.removesuffix("-v2").split("-", 1)
    assert config.num_critics == PAPER_NUM_CRITICS[domain][level], config.env_name


def test_there_is_a_config_file_per_d4rl_dataset() -> None:
    names = {os.path.basename(path).removesuffix(".yaml") for path in glob.glob(f"{REPO_ROOT}/configs/d4rl/*.yaml")}
    assert names == {f"{domain}-{level}-v2" for domain, levels in PAPER_NUM_CRITICS.items() for level in levels}


def test_every_command_line_of_the_sweep_parses(module, monkeypatch) -> None:
    """The wandb agent runs `program --config_path=... --train_seed=...` (its ${args}) from the repo root."""
    with open(os.path.join(REPO_ROOT, "configs", "sweep.yaml")) as file:
        sweep = yaml.safe_load(file)
    assert sweep["program"] in SCRIPTS and "${args}" in sweep["command"] and sweep["method"] == "grid"
    monkeypatch.chdir(REPO_ROOT)
    parameters = sweep["parameters"]
    assert set(parameters) == {"config_path", "train_seed"}
    for config_path, train_seed in itertools.product(*(parameters[name]["values"] for name in parameters)):
        config = module.parse_config([f"--config_path={config_path}", f"--train_seed={train_seed}"])
        assert config.train_seed == train_seed and config.env_name == os.path.basename(config_path)[:-5]
