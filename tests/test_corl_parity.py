"""The scripts' update is CORL's SAC-N update (`algorithms/offline/sac_n.py`), as benchmarks/torch_sac_n.py writes it
in PyTorch: from the same parameters, batches and policy noise, in float64, both give the same losses, metrics and
new parameters to rounding (rtol 1e-10) over several updates. This is what makes the speed comparison like with like.

What the test has to allow for, each the scripts' choice against CORL's (README.md copies this list):

1. The tanh log-det: the scripts use the exact `log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`, CORL
   `log(1 - tanh(u)^2 + 1e-6)`, which saturates where tanh(u) rounds to +-1. The baseline runs with
   `exact_log_det=True`.
2. One policy sample: the scripts' alpha loss uses the actor loss's sample, where CORL draws another (the same in
   expectation, one actor forward pass fewer). The baseline runs with `shared_policy_sample=True`.
3. The first critic layer's init: U(+-1/sqrt(obs_dim + action_dim)) in the scripts, as EDAC's code; U(+-1/sqrt(
   hidden_dim)) in CORL, whose [in, out] weights make torch read fan_in from out. No effect on this comparison (the
   parameters are copied); test_init_matches_corl_but_first_critic_layer checks both.
4. The metric q_policy_std: the population std over the ensemble in the scripts, the sample std (torch.std) in CORL,
   so the scripts' value is CORL's times sqrt((N - 1) / N).

test_allowances_are_needed shows that each of 1, 2 and 4 is a difference far above the tolerance. Everything else
is the same to rounding, e.g. CORL's Gaussian log-prob of the sample (`Normal.log_prob`) against the scripts' of the
noise, torch's Adam against optax's, `lerp_` against the Polyak formula.

    python -m pytest tests/test_corl_parity.py -q   (add -s to see the largest relative differences)
"""

import dataclasses
import math
import os
import sys
from types import ModuleType
from typing import Any, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from torch_sac_n import TorchSACN, UpdateNoise, to_torch  # noqa: E402

# halfcheetah's dims and the default width: XLA's compile time does not grow with them, and at 256 the init test
# sees every layer's bound; a few critics and a small batch keep the float64 updates fast
OBS_DIM, ACTION_DIM, HIDDEN_DIM, NUM_CRITICS, BATCH_SIZE, NUM_UPDATES, DATASET_ROWS = 17, 6, 256, 4, 32, 6, 100
TOLERANCE = {"rtol": 1e-10, "atol": 1e-13}  # atol for values that can be ~0 (the first alpha loss is exactly 0)
SCRIPTS_CHOICES = {"exact_log_det": True, "shared_policy_sample": True}  # allowances 1 and 2
METRICS = ["alpha_loss", "alpha", "actor_loss", "batch_entropy", "critic_loss"]  # the same in CORL
NETWORKS = ["actor", "critic", "target_critic"]


@dataclasses.dataclass
class Run:
    infos: list[dict[str, float]]  # every update's metrics
    params: dict[str, Any]  # the final parameters in the scripts' layout, see torch_params
    initial: Optional[dict[str, Any]] = None  # the script's own initial parameters (before the baseline's)
    dtypes: Optional[set] = None  # of every float array the script computed


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """These sizes gain nothing from threads, and on a busy CPU torch's thread pool spins (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, ...]]]:
    """A float64 dataset, and each update's draws: (indices, policy_noise, next_noise, another alpha-loss noise)."""
    rng = np.random.default_rng(0)
    dataset = {
        "obs": rng.normal(size=(DATASET_ROWS, OBS_DIM)),
        "actions": rng.uniform(-1, 1, size=(DATASET_ROWS, ACTION_DIM)),
        "rewards": rng.normal(size=DATASET_ROWS),
        "next_obs": rng.normal(size=(DATASET_ROWS, OBS_DIM)),
        "dones": (rng.uniform(size=DATASET_ROWS) < 0.2).astype(np.float64),
    }
    noise_shape = (BATCH_SIZE, ACTION_DIM)
    draws = [
        (rng.integers(0, DATASET_ROWS, BATCH_SIZE), *(rng.normal(size=noise_shape) for _ in range(3)))
        for _ in range(NUM_UPDATES)
    ]
    return dataset, draws


# --- The baseline ---
def new_agent(**switches: bool) -> TorchSACN:
    """The same initial parameters at every call (the constructor seeds torch)."""
    return TorchSACN(OBS_DIM, ACTION_DIM, HIDDEN_DIM, NUM_CRITICS, torch.device("cpu"), dtype=torch.float64, **switches)


def torch_params(agent: TorchSACN) -> dict[str, Any]:
    """Each network's [(kernel, bias)] per layer in the scripts' layout: kernels [in, out] (torch's nn.Linear holds
    [out, in]), the critics' on a leading [num_critics] axis and their biases without CORL's [N, 1, out] middle axis."""

    def critic(network: torch.nn.Module) -> list:
        layers = [*network.hidden, network.output]
        return [(layer.weight.numpy(force=True), layer.bias.numpy(force=True)[:, 0]) for layer in layers]

    actor = [*agent.actor.hidden, agent.actor.mean, agent.actor.log_std]
    return {
        "actor": [(layer.weight.numpy(force=True).T, layer.bias.numpy(force=True)) for layer in actor],
        "critic": critic(agent.critic),
        "target_critic": critic(agent.target_critic),
        "log_alpha": agent.log_alpha.numpy(force=True),
    }


def run_torch(data: tuple, **switches: bool) -> Run:
    dataset, draws = data
    agent, infos = new_agent(**switches), []
    for indices, policy_noise, next_noise, alpha_noise in draws:
        batch = to_torch({key: value[indices] for key, value in dataset.items()}, torch.device("cpu"), torch.float64)
        noise = UpdateNoise(*(torch.from_numpy(array) for array in (alpha_noise, policy_noise, next_noise)))
        infos.append({name: value.item() for name, value in agent.update_batch(batch, noise).items()})
    return Run(infos, torch_params(agent))


# --- The scripts: Flax's params are dicts, Equinox's are the networks ---
def layers(network: Any) -> list:
    """A network's Dense layers in torch_params' order: Flax's Dense_0, Dense_1, ... (the actor's Dense_3 and Dense_4
    are its mean and log-std heads), or the Equinox fields."""
    if isinstance(network, dict):
        return [network["params"][f"Dense_{index}"] for index in range(len(network["params"]))]
    heads = [network.output] if hasattr(network, "output") else [network.mean, network.log_std]
    return [*network.hidden, *heads]


def kernel_bias(layer: Any) -> tuple[jax.Array, jax.Array]:
    return (layer["kernel"], layer["bias"]) if isinstance(layer, dict) else (layer.kernel, layer.bias)


def with_arrays(network: Any, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    """`network` with these (kernel, bias) pairs, as float64."""
    assert [array.shape for pair in pairs for array in pair] == [
        array.shape for layer in layers(network) for array in kernel_bias(layer)
    ]
    pairs = [(jnp.asarray(kernel, jnp.float64), jnp.asarray(bias, jnp.float64)) for kernel, bias in pairs]
    if isinstance(network, dict):
        return {
            "params": {f"Dense_{index}": {"kernel": kernel, "bias": bias} for index, (kernel, bias) in enumerate(pairs)}
        }
    arrays = [array for pair in pairs for array in pair]
    return eqx.tree_at(lambda net: [array for layer in layers(net) for array in kernel_bias(layer)], network, arrays)


def script_params(state: Any) -> dict[str, Any]:
    def pairs(network: Any) -> list:
        return [tuple(np.asarray(array) for array in kernel_bias(layer)) for layer in layers(network)]

    return {
        "actor": pairs(state.actor.params),
        "critic": pairs(state.critic.params),
        "target_critic": pairs(state.critic.target_params),
        "log_alpha": np.asarray(state.log_alpha.params["log_alpha"]),
    }


def run_script(module: ModuleType, data: tuple) -> Run:
    """NUM_UPDATES of the script's `update_sac_n` in float64, from the baseline's initial parameters."""
    dataset, draws = data
    config = module.Config(hidden_dim=HIDDEN_DIM, num_critics=NUM_CRITICS, batch_size=BATCH_SIZE)
    start, infos, dtypes = torch_params(new_agent()), [], set()
    with jax.enable_x64(True):  # only inside this block: the other tests in the process keep float32
        state = jax.tree.map(lambda leaf: leaf[0], module.create_sac_n_state(OBS_DIM, ACTION_DIM, config))  # seed 0
        initial = script_params(state)
        # every float (Adam's moments too) as float64: the scripts' initialisers make some float32 even under x64
        state = jax.tree.map(lambda leaf: leaf.astype(jnp.float64) if leaf.dtype.kind == "f" else leaf, state)
        critic = with_arrays(state.critic.params, start["critic"])  # the target critic starts as the critic
        state = state._replace(
            actor=dataclasses.replace(state.actor, params=with_arrays(state.actor.params, start["actor"])),
            critic=dataclasses.replace(state.critic, params=critic, target_params=jax.tree.map(jnp.copy, critic)),
            log_alpha=dataclasses.replace(state.log_alpha, params={"log_alpha": jnp.asarray(start["log_alpha"])}),
        )
        update = jax.jit(module.update_sac_n, static_argnames="config")
        dataset = module.Batch(**{key: jnp.asarray(value) for key, value in dataset.items()})
        for indices, policy_noise, next_noise, _ in draws:
            update_draws = module.UpdateDraws(*map(jnp.asarray, (indices, policy_noise, next_noise)))
            state, info = update(state, update_draws, dataset, config)
            infos.append({name: value.item() for name, value in info.items()})
            dtypes |= {leaf.dtype for leaf in jax.tree.leaves((state, info)) if leaf.dtype.kind == "f"}
        return Run(infos, script_params(state), initial, dtypes)


@pytest.fixture(scope="module")
def script_run(module: ModuleType, data: tuple) -> Run:
    return run_script(module, data)


@pytest.fixture(scope="module")
def corl_run(data: tuple) -> Run:
    """The baseline with the scripts' choices (allowances 1 and 2)."""
    return run_torch(data, **SCRIPTS_CHOICES)


@pytest.fixture(scope="module")
def corl_defaults_runs(data: tuple) -> dict[str, Run]:
    """The baseline with CORL's choice in place of allowance 1 or 2."""
    return {
        "log_det": run_torch(data, exact_log_det=False, shared_policy_sample=True),
        "sample": run_torch(data, exact_log_det=True, shared_policy_sample=False),
    }


def relative_difference(got: Any, expected: Any) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    return float(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), TOLERANCE["atol"])))


def assert_close(got: Any, expected: Any, what: str) -> None:
    print(f"{what}: largest relative difference {relative_difference(got, expected):.1e}")
    np.testing.assert_allclose(got, expected, **TOLERANCE, err_msg=what)


# --- Tests ---
def test_runs_in_float64(script_run: Run) -> None:
    """The comparison is not float32 in disguise: every float array of the script's updates is float64; and float64
    stayed inside run_script, so the other tests in this process still see JAX's float32 default."""
    assert script_run.dtypes == {np.dtype(np.float64)}
    assert jnp.zeros(()).dtype == jnp.float32


def test_losses_match_corl_every_update(script_run: Run, corl_run: Run) -> None:
    for name in METRICS:
        got, expected = ([info[name] for info in run.infos] for run in (script_run, corl_run))
        assert_close(got, expected, f"{name}, updates 1-{NUM_UPDATES}")
    # allowance 4: the scripts' population std is CORL's sample std times sqrt((N - 1) / N)
    got, expected = ([info["q_policy_std"] for info in run.infos] for run in (script_run, corl_run))
    assert_close(got, np.multiply(expected, math.sqrt((NUM_CRITICS - 1) / NUM_CRITICS)), "q_policy_std")


def test_parameters_match_corl_after_updates(script_run: Run, corl_run: Run) -> None:
    for network in NETWORKS:
        for index, (got, expected) in enumerate(zip(script_run.params[network], corl_run.params[network])):
            for part, got_array, expected_array in zip(["kernel", "bias"], got, expected):
                assert_close(got_array, expected_array, f"{network} layer {index} {part}")
    assert_close(script_run.params["log_alpha"], corl_run.params["log_alpha"], "log_alpha")
    # the updates moved every array: equal parameters are not the starting ones
    start = torch_params(new_agent())
    for network in NETWORKS:
        for got, initial in zip(script_run.params[network], start[network]):
            assert all(relative_difference(array, first) > 1e-6 for array, first in zip(got, initial)), network


def test_allowances_are_needed(script_run: Run, corl_run: Run, corl_defaults_runs: dict[str, Run]) -> None:
    """Without allowance 1, 2 or 4 the values differ by far more than the tolerance: each is a real difference."""

    def difference(name: str, run: Run, label: str, first_update: int = 0) -> float:
        got, expected = ([info[name] for info in each.infos[first_update:]] for each in (script_run, run))
        print(f"{name} against {label}: largest relative difference {relative_difference(got, expected):.1e}")
        return relative_difference(got, expected)

    for name in ["alpha_loss", "actor_loss", "batch_entropy", "critic_loss"]:
        assert difference(name, corl_defaults_runs["log_det"], "CORL's log-det") > 1e-7, name
    # the first alpha loss is 0 whatever the sample (log_alpha starts at 0); the later ones see it
    assert difference("alpha_loss", corl_defaults_runs["sample"], "CORL's separate sample", first_update=1) > 1e-3
    assert difference("q_policy_std", corl_run, "CORL's sample std") > 0.1


def test_init_matches_corl_but_first_critic_layer(script_run: Run) -> None:
    """Allowance 3, and the rest of the init the same: every layer's max |kernel| is near its bound (at hidden 256
    a layer has thousands of weights), hidden biases are 0.1, the output layers' biases within their kernels' bound."""
    hidden = 1 / math.sqrt(HIDDEN_DIM)
    actor_bounds, critic_bounds = [1 / math.sqrt(OBS_DIM), hidden, hidden, 1e-3, 1e-3], [hidden, hidden, 3e-3]
    first_critic_bounds = {"script": 1 / math.sqrt(OBS_DIM + ACTION_DIM), "CORL": hidden}
    for source, params in [("script", script_run.initial), ("CORL", torch_params(new_agent()))]:
        bounds = {"actor": actor_bounds, "critic": [first_critic_bounds[source], *critic_bounds]}
        for network, network_bounds in bounds.items():
            for index, ((kernel, bias), bound) in enumerate(zip(params[network], network_bounds)):
                where = f"{source} {network} layer {index}"
                assert 0.98 * bound < np.abs(kernel).max() <= bound, where
                if bound > 1e-2:  # a hidden layer: EDAC's bias
                    np.testing.assert_allclose(bias, 0.1, err_msg=where)
                else:
                    assert np.abs(bias).max() <= bound, where
