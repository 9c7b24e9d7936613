"""Options: every bad value is one line naming the option before any data loads; the config files and the wandb
sweep parse; --help documents every field. The Options section is the same text in both scripts
(test_parity.py), so these run on the Flax script."""

import dataclasses
import glob
import itertools
import os

import pytest
import yaml
from one_line_errors import error_message
from script_runs import REPO_ROOT, SCRIPTS

import sac_n_jax_flax as script


def test_help_lists_every_field_with_its_comment(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        script.parse_config(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for field in dataclasses.fields(script.Config):
        assert f"--{field.name}" in text
    assert (
        "N, the number of critics in the ensemble" in text
        and "Polyak coefficient of the target critics" in text
    )


def test_values_are_read_as_their_field_types(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    # PyYAML reads 3e-4 (no dot) as text, so a float field takes a number written as text too
    path.write_text("tau: 3e-4\nresume: True\neval_env: null\nname: 123\nhidden_dim: 64\n")
    args = [
        f"--config_path={path}",
        "--gamma",
        ".5",
        "--num_critics=+7",
        "--eval_only=false",
        "--dataset_path=null",
    ]
    config = script.parse_config(args + ["--checkpoints_path=run"])
    assert (config.tau, config.gamma, config.num_critics, config.hidden_dim) == (3e-4, 0.5, 7, 64)
    assert (config.resume, config.eval_only, config.eval_env, config.dataset_path, config.name) == (
        True,
        False,
        None,
        None,
        "123",
    )
    # the command line overrides the file
    assert (
        script.parse_config([f"--config_path={path}", "--tau=0.01", "--resume=false"]).tau == 0.01
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--learning_rate=0.1"], "unknown option 'learning_rate' in the command line"),
        (
            ["--num_critic=5"],
            "unknown option 'num_critic' in the command line; did you mean 'num_critics'?",
        ),
        (["--num_critic", "5"], "unknown option 'num_critic'"),
        (["halfcheetah"], "unknown option 'halfcheetah'"),
        (["--hidden_dim=abc"], "option hidden_dim must be of type int, got 'abc'"),
        (
            ["--hidden_dim=3.5"],
            "option hidden_dim must be of type int, got '3.5'",
        ),  # pyrallis reads it as 3
        (
            ["--resume=maybe"],
            "option resume must be of type bool, got 'maybe'",
        ),  # pyrallis reads it as true
        (["--gamma=high"], "option gamma must be of type float, got 'high'"),
        (["--tau=nan"], "option tau must be in (0, 1], got nan"),  # a float, but in no range
        (["--num_seeds"], "argument --num_seeds: expected one argument"),
        (["--eta=-1"], "option eta must be at least 0"),
        (
            ["--eta=1", "--num_critics=1"],
            "option num_critics must be at least 2 with eta > 0, got 1",
        ),
    ],
)
def test_bad_command_line(args: list[str], expected: str) -> None:
    assert expected in error_message(script.parse_config, args)


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
    ids=[
        "typo",
        "text_for_float",
        "float_for_int",
        "int_for_bool",
        "empty",
        "text",
        "list",
        "malformed",
    ],
)
def test_bad_config_file(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert expected.format(path=path) in error_message(
        script.parse_config, [f"--config_path={path}"]
    )


def test_missing_config_file(tmp_path) -> None:
    for path in (tmp_path / "absent.yaml", tmp_path):  # a file that is not there, and a directory
        assert f"cannot read config file {path}" in error_message(
            script.parse_config, [f"--config_path={path}"]
        )


@pytest.mark.parametrize(
    "args, option",
    [
        *(
            ([f"--{name}=0"], name)
            for name in ["hidden_dim", "num_critics", "batch_size", "num_epochs"]
        ),
        *(
            ([f"--{name}=0"], name)
            for name in ["num_updates_on_epoch", "eval_episodes", "eval_every", "num_seeds"]
        ),
        (["--max_action=0"], "max_action"),
        (["--actor_learning_rate=-1e-3"], "actor_learning_rate"),
        (["--critic_learning_rate=0"], "critic_learning_rate"),
        (["--alpha_learning_rate=1e999"], "alpha_learning_rate"),  # inf
        (["--gamma=1.5"], "gamma"),
        (["--tau=0"], "tau"),
        (["--tau=2"], "tau"),
        (["--train_seed=-1"], "train_seed"),
        (["--train_seed=4294967306"], "train_seed"),  # 2**32 + 10 would silently train seed 10
        (
            ["--train_seed=4294967295", "--num_seeds=2"],
            "train_seed",
        ),  # the second seed would be 2**32
        (["--eval_seed=-1"], "eval_seed"),  # gymnasium would reject it only at the first evaluation
        (["--env_name=hopper-mediun-v2"], "env_name"),
        (["--eval_env=Hoper-v4"], "eval_env"),
        (
            ["--env_name=pendulum-random", "--dataset_path=data.hdf5"],
            "eval_env",
        ),  # no D4RL domain to take it from
        (["--resume=true"], "checkpoints_path"),
        (["--eval_only=true"], "checkpoints_path"),
    ],
)
def test_value_out_of_range(args: list[str], option: str) -> None:
    message = error_message(script.parse_config, args)
    assert f"option {option} must be " in message and ", got " in message


def test_checkpoints_path_that_is_a_file(tmp_path) -> None:
    (tmp_path / "run").write_text("")
    message = error_message(script.parse_config, [f"--checkpoints_path={tmp_path / 'run'}"])
    assert "option checkpoints_path must be a directory, not a file" in message


LEVELS = ["random", "medium", "expert", "medium-replay", "medium-expert", "full-replay"]
# An et al. 2021 (arXiv:2110.01548), the N of SAC-N per dataset
SAC_N_NUM_CRITICS = {
    "halfcheetah": dict.fromkeys(LEVELS, 10),
    "hopper": {
        **dict.fromkeys(["random", "medium", "expert"], 500),
        **dict.fromkeys(["medium-expert", "medium-replay", "full-replay"], 200),
    },
    "walker2d": {**dict.fromkeys(LEVELS, 20), "expert": 100},
}
# EDAC's N per domain and eta per dataset: CORL's EDAC configs (medium, medium-replay, medium-expert)
# and the same team's LB-SAC configs (random, expert, full-replay), as project issue 16 lists them
EDAC_NUM_CRITICS = {"halfcheetah": 10, "hopper": 50, "walker2d": 10}
EDAC_ETA = {
    "halfcheetah": dict(zip(LEVELS, [0.0, 1.0, 1.0, 1.0, 5.0, 1.0])),
    "hopper": dict(zip(LEVELS, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0])),
    "walker2d": dict(zip(LEVELS, [1.0, 1.0, 5.0, 1.0, 5.0, 1.0])),
}
DATASETS = [f"{domain}-{level}-v2" for domain in SAC_N_NUM_CRITICS for level in LEVELS]


def read_yaml(path: str) -> dict:
    with open(path) as file:
        return yaml.safe_load(file)


def check_config_file(path: str) -> tuple:
    """The file parses to exactly its values, sets eta explicitly, and names a D4RL dataset."""
    config = script.parse_config([f"--config_path={path}"])
    values = read_yaml(path)
    for name, value in values.items():
        assert getattr(config, name) == value, name
    assert "eta" in values, f"{path} must set eta: it is what tells SAC-N from EDAC"
    domain, level = config.env_name.removesuffix("-v2").split("-", 1)
    return config, domain, level


@pytest.mark.parametrize("dataset", DATASETS)
def test_sac_n_and_edac_configs_of_each_dataset(dataset: str) -> None:
    """configs/sac_n/ (the paper's SAC-N ensemble sizes, eta 0) beside configs/edac/ (EDAC's N and eta,
    group and name EDAC); configs/d4rl/ is the SAC-N directory under its old name."""
    sac_n, domain, level = check_config_file(f"{REPO_ROOT}/configs/sac_n/{dataset}.yaml")
    assert (sac_n.num_critics, sac_n.eta) == (SAC_N_NUM_CRITICS[domain][level], 0.0)
    edac, _, _ = check_config_file(f"{REPO_ROOT}/configs/edac/{dataset}.yaml")
    assert (edac.num_critics, edac.eta) == (EDAC_NUM_CRITICS[domain], EDAC_ETA[domain][level])
    assert (edac.group, edac.name) == ("EDAC", "EDAC")
    # everything else is the SAC-N config's
    changed = {"num_critics", "eta", "group", "name"}
    for name in set(script.FIELD_TYPES) - changed:
        assert getattr(edac, name) == getattr(sac_n, name), name
    # the path that worked before the EDAC configs
    assert read_yaml(f"{REPO_ROOT}/configs/d4rl/{dataset}.yaml") == read_yaml(
        f"{REPO_ROOT}/configs/sac_n/{dataset}.yaml"
    )


def test_every_config_file_is_one_of_the_dataset_configs_or_a_top_level_one() -> None:
    for directory in ("sac_n", "edac", "d4rl"):
        names = {os.path.basename(path) for path in glob.glob(f"{REPO_ROOT}/configs/{directory}/*")}
        assert names == {f"{dataset}.yaml" for dataset in DATASETS}, directory
    top_level = sorted(glob.glob(f"{REPO_ROOT}/configs/*.yaml"))
    assert [os.path.basename(path) for path in top_level] == [
        "halfcheetah.yaml",
        "hopper.yaml",
        "sweep.yaml",
        "walker2d.yaml",
    ]
    for path in top_level[:2] + top_level[3:]:  # SAC-N on the domain's medium dataset
        config, domain, level = check_config_file(path)
        assert (config.num_critics, config.eta, level) == (
            SAC_N_NUM_CRITICS[domain][level],
            0.0,
            "medium",
        )


def test_every_command_line_of_the_sweep_parses(monkeypatch) -> None:
    """The wandb agent runs `program --config_path=... --train_seed=...` (its ${args}) from the repo
    root; the sweep puts SAC-N and EDAC side by side."""
    sweep = read_yaml(os.path.join(REPO_ROOT, "configs", "sweep.yaml"))
    assert (
        sweep["program"] in SCRIPTS and "${args}" in sweep["command"] and sweep["method"] == "grid"
    )
    monkeypatch.chdir(REPO_ROOT)
    parameters = sweep["parameters"]
    assert set(parameters) == {"config_path", "train_seed"}
    algorithms = set()
    for config_path, train_seed in itertools.product(
        *(parameters[name]["values"] for name in parameters)
    ):
        config = script.parse_config([f"--config_path={config_path}", f"--train_seed={train_seed}"])
        assert (
            config.train_seed == train_seed
            and config.env_name == os.path.basename(config_path)[:-5]
        )
        algorithms.add(config.group)
    assert algorithms == {"SAC-N-D4RL", "EDAC"}
