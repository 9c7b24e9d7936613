"""The scripts' update is CORL's SAC-N update (`algorithms/offline/sac_n.py`), and with eta > 0
CORL's EDAC update (`algorithms/offline/edac.py`), as benchmarks/torch_sac_n.py writes them in
PyTorch: from the same parameters, batches and policy noise, in float64, both give the same losses,
metrics and new parameters to rounding (rtol 1e-10) over several updates. This is what makes the
speed comparison like with like.

What the test has to allow for, each the scripts' choice against CORL's (README.md copies this
list):

1. The tanh log-det: the scripts use the exact
   `log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`, CORL `log(1 - tanh(u)^2 + 1e-6)`, which
   saturates where tanh(u) rounds to +-1. The baseline runs with `exact_log_det=True`.
2. One policy sample: the scripts' alpha loss uses the actor loss's sample, where CORL draws
   another (the same in expectation, one actor forward pass fewer). The baseline runs with
   `shared_policy_sample=True`.
3. The first critic layer's init: U(+-1/sqrt(obs_dim + action_dim)) in the scripts, as EDAC's
   code; U(+-1/sqrt(hidden_dim)) in CORL, whose [in, out] weights make torch read fan_in from
   out. No effect on this comparison (the parameters are copied);
   test_init_matches_corl_but_first_critic_layer checks both.
4. The metric q_policy_std: the population std over the ensemble in the scripts, the sample std
   (torch.std) in CORL, so the scripts' value is CORL's times sqrt((N - 1) / N).

test_allowances_are_needed shows that each of 1, 2 and 4 is a difference far above the tolerance.
Everything else is the same to rounding, e.g. CORL's Gaussian log-prob of the sample
(`Normal.log_prob`) against the scripts' of the noise, torch's Adam against optax's, `lerp_`
against the Polyak formula.

EDAC needs no allowance beyond these: the similarity term is the same math in both (the scripts'
`jax.grad` of each critic's summed Q-values, vmapped over the critics, against edac.py's one
backward pass over per-critic copies of the actions), and "critic_loss" is the total in both.
test_diversity_loss_by_hand checks the term's sign and scale on critics whose action gradients
are written down by hand.

Every hyperparameter the update reads is off its default in both runs, SAC-N (eta = 0, the
default) and EDAC (eta > 0), and the three learning rates all differ: a value that does not reach
the scripts' update fails the comparison (project issue 17).
test_hyperparameters_reach_the_comparison shows that each of them moves the baseline's parameters
by far more than the tolerance, test_defaults_are_corls that the defaults (which the runs no
longer use) are CORL's, and test_sac_n_is_far_from_edac that the scripts' SAC-N run is far from
the EDAC baseline (so the EDAC comparison sees the term).

A critic whose action gradient is exactly 0 at a sample (e.g. every ReLU of a layer off there)
gives the term a finite gradient, as in PyTorch (optax.safe_norm; jnp.linalg.norm's derivative at
0 is NaN): test_a_zero_action_gradient_gives_a_finite_gradient.

    python -m pytest tests/test_corl_parity.py -q   (add -s to see the largest relative differences)
"""

import dataclasses
import inspect
import math
import os
import sys
from functools import partial
from types import ModuleType
from typing import Any, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from torch_sac_n import TorchSACN, UpdateNoise, to_torch  # noqa: E402

# halfcheetah's dims and the default width: XLA's compile time does not grow with them, and at 256
# the init test sees every layer's bound; a few critics and a small batch keep the float64 updates
# fast. The SAC-N and EDAC runs have the same sizes, so each script's state constructor compiles
# once: its program does not depend on the hyperparameters, and JAX's compilation cache
# (tests/conftest.py) serves the second call.
OBS_DIM, ACTION_DIM, HIDDEN_DIM, NUM_CRITICS = 17, 6, 256, 4
BATCH_SIZE, NUM_UPDATES, DATASET_ROWS = 32, 6, 100
# atol for values that can be ~0 (the first alpha loss is exactly 0)
TOLERANCE = {"rtol": 1e-10, "atol": 1e-13}
FAR = 1e-6  # "far above the tolerance": a relative difference 10^4 times rtol
SCRIPTS_CHOICES = {"exact_log_det": True, "shared_policy_sample": True}  # allowances 1 and 2
METRICS = ["alpha_loss", "alpha", "actor_loss", "batch_entropy", "critic_loss"]  # the same in CORL
NETWORKS = ["actor", "critic", "target_critic"]
# every hyperparameter the update reads, none at its default, the learning rates all different;
# the data's actions are in [-max_action, max_action]. The same names in Config and TorchSACN.
HYPERPARAMETERS = {
    "actor_learning_rate": 1e-3,
    "critic_learning_rate": 2e-3,
    "alpha_learning_rate": 5e-3,
    "gamma": 0.9,
    "tau": 0.05,
    "max_action": 2.0,
}
EDAC = {**HYPERPARAMETERS, "eta": 2.5}
# CORL's defaults (sac_n.py's TrainConfig; eta: SAC-N), the values a script would use that lost
# the configured ones
CORL_DEFAULTS = {
    "actor_learning_rate": 3e-4,
    "critic_learning_rate": 3e-4,
    "alpha_learning_rate": 3e-4,
    "gamma": 0.99,
    "tau": 5e-3,
    "max_action": 1.0,
    "eta": 0.0,
}


@dataclasses.dataclass
class Run:
    infos: list[dict[str, float]]  # every update's metrics
    params: dict[str, Any]  # the final parameters in the scripts' layout, see torch_params
    initial: Optional[dict[str, Any]] = None  # the script's own initial parameters
    dtypes: Optional[set] = None  # of every float array the script computed


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """These sizes gain nothing from threads, and on a busy CPU torch's thread pool spins (10x
    slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, ...]]]:
    """A float64 dataset, its actions in [-max_action, max_action], and each update's draws:
    (indices, policy_noise, next_noise, another alpha-loss noise)."""
    rng, max_action = np.random.default_rng(0), HYPERPARAMETERS["max_action"]
    dataset = {
        "obs": rng.normal(size=(DATASET_ROWS, OBS_DIM)),
        "actions": rng.uniform(-max_action, max_action, size=(DATASET_ROWS, ACTION_DIM)),
        "rewards": rng.normal(size=DATASET_ROWS),
        "next_obs": rng.normal(size=(DATASET_ROWS, OBS_DIM)),
        "dones": (rng.uniform(size=DATASET_ROWS) < 0.2).astype(np.float64),
    }
    noise_shape = (BATCH_SIZE, ACTION_DIM)
    draws = [
        (
            rng.integers(0, DATASET_ROWS, BATCH_SIZE),
            *(rng.normal(size=noise_shape) for _ in range(3)),
        )
        for _ in range(NUM_UPDATES)
    ]
    return dataset, draws


# --- The baseline ---
def new_agent(**options: Any) -> TorchSACN:
    """The same initial parameters at every call (the constructor seeds torch)."""
    device, dtype = torch.device("cpu"), torch.float64
    return TorchSACN(OBS_DIM, ACTION_DIM, HIDDEN_DIM, NUM_CRITICS, device, dtype=dtype, **options)


def torch_params(agent: TorchSACN) -> dict[str, Any]:
    """Each network's [(kernel, bias)] per layer in the scripts' layout: kernels [in, out] (torch's
    nn.Linear holds [out, in]), the critics' on a leading [num_critics] axis and their biases
    without CORL's [N, 1, out] middle axis."""

    def critic(network: torch.nn.Module) -> list:
        layers = [*network.hidden, network.output]
        return [
            (layer.weight.numpy(force=True), layer.bias.numpy(force=True)[:, 0]) for layer in layers
        ]

    actor = [*agent.actor.hidden, agent.actor.mean, agent.actor.log_std]
    return {
        "actor": [
            (layer.weight.numpy(force=True).T, layer.bias.numpy(force=True)) for layer in actor
        ],
        "critic": critic(agent.critic),
        "target_critic": critic(agent.target_critic),
        "log_alpha": agent.log_alpha.numpy(force=True),
    }


def run_torch(data: tuple, **options: Any) -> Run:
    """NUM_UPDATES of the baseline with the scripts' choices (allowances 1 and 2) unless `options`
    (TorchSACN's switches and hyperparameters) say otherwise."""
    dataset, draws = data
    agent, infos = new_agent(**(SCRIPTS_CHOICES | options)), []
    for indices, policy_noise, next_noise, alpha_noise in draws:
        transitions = {key: value[indices] for key, value in dataset.items()}
        batch = to_torch(transitions, torch.device("cpu"), torch.float64)
        noises = (alpha_noise, policy_noise, next_noise)
        noise = UpdateNoise(*(torch.from_numpy(array) for array in noises))
        infos.append(
            {name: value.item() for name, value in agent.update_batch(batch, noise).items()}
        )
    return Run(infos, torch_params(agent))


# --- The scripts: Flax's params are dicts, Equinox's are the networks ---
def layers(network: Any) -> list:
    """A network's Dense layers in torch_params' order: Flax's Dense_0, Dense_1, ... (the actor's
    Dense_3 and Dense_4 are its mean and log-std heads), or the Equinox fields."""
    if isinstance(network, dict):
        return [network["params"][f"Dense_{index}"] for index in range(len(network["params"]))]
    heads = [network.output] if hasattr(network, "output") else [network.mean, network.log_std]
    return [*network.hidden, *heads]


def kernel_bias(layer: Any) -> tuple[jax.Array, jax.Array]:
    return (
        (layer["kernel"], layer["bias"]) if isinstance(layer, dict) else (layer.kernel, layer.bias)
    )


def with_arrays(network: Any, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    """`network` with these (kernel, bias) pairs, as float64."""
    assert [array.shape for pair in pairs for array in pair] == [
        array.shape for layer in layers(network) for array in kernel_bias(layer)
    ]
    pairs = [
        (jnp.asarray(kernel, jnp.float64), jnp.asarray(bias, jnp.float64)) for kernel, bias in pairs
    ]
    if isinstance(network, dict):
        dense = {f"Dense_{index}": {"kernel": k, "bias": b} for index, (k, b) in enumerate(pairs)}
        return {"params": dense}
    arrays = [array for pair in pairs for array in pair]
    return eqx.tree_at(
        lambda net: [array for layer in layers(net) for array in kernel_bias(layer)],
        network,
        arrays,
    )


def script_params(state: Any) -> dict[str, Any]:
    def pairs(network: Any) -> list:
        return [
            tuple(np.asarray(array) for array in kernel_bias(layer)) for layer in layers(network)
        ]

    return {
        "actor": pairs(state.actor.params),
        "critic": pairs(state.critic.params),
        "target_critic": pairs(state.critic.target_params),
        "log_alpha": np.asarray(state.log_alpha.params["log_alpha"]),
    }


def run_script(module: ModuleType, data: tuple, **hyperparameters: Any) -> Run:
    """NUM_UPDATES of the script's `update_sac_n` in float64, from the baseline's initial
    parameters, on a state from the script's `create_sac_n_state` with the same config (its
    optimizers hold the learning rates)."""
    dataset, draws = data
    config = module.Config(
        hidden_dim=HIDDEN_DIM, num_critics=NUM_CRITICS, batch_size=BATCH_SIZE, **hyperparameters
    )
    start, infos, dtypes = torch_params(new_agent()), [], set()
    with jax.enable_x64(
        True
    ):  # only inside this block: the other tests in the process keep float32
        states = module.create_sac_n_state(OBS_DIM, ACTION_DIM, config)
        state = jax.tree.map(lambda leaf: leaf[0], states)  # seed 0
        initial = script_params(state)
        # every float (Adam's moments too) as float64: the scripts' initialisers make some float32
        # even under x64
        state = jax.tree.map(
            lambda leaf: leaf.astype(jnp.float64) if leaf.dtype.kind == "f" else leaf, state
        )
        critic = with_arrays(
            state.critic.params, start["critic"]
        )  # the target starts as the critic
        target = jax.tree.map(jnp.copy, critic)
        state = state._replace(
            actor=dataclasses.replace(
                state.actor, params=with_arrays(state.actor.params, start["actor"])
            ),
            critic=dataclasses.replace(state.critic, params=critic, target_params=target),
            log_alpha=dataclasses.replace(
                state.log_alpha, params={"log_alpha": jnp.asarray(start["log_alpha"])}
            ),
        )
        update = jax.jit(module.update_sac_n, static_argnames="config")
        dataset = module.Batch(**{key: jnp.asarray(value) for key, value in dataset.items()})
        for indices, policy_noise, next_noise, _ in draws:
            update_draws = module.UpdateDraws(
                *map(jnp.asarray, (indices, policy_noise, next_noise))
            )
            state, info = update(state, update_draws, dataset, config)
            infos.append({name: value.item() for name, value in info.items()})
            leaves = jax.tree.leaves((state, info))
            dtypes |= {leaf.dtype for leaf in leaves if leaf.dtype.kind == "f"}
        return Run(infos, script_params(state), initial, dtypes)


@pytest.fixture(scope="module")
def script_run(module: ModuleType, data: tuple) -> Run:
    """SAC-N: eta left at its default."""
    return run_script(module, data, **HYPERPARAMETERS)


@pytest.fixture(scope="module")
def script_edac_run(module: ModuleType, data: tuple) -> Run:
    return run_script(module, data, **EDAC)


@pytest.fixture(scope="module")
def corl_run(data: tuple) -> Run:
    return run_torch(data, **HYPERPARAMETERS)


@pytest.fixture(scope="module")
def corl_edac_run(data: tuple) -> Run:
    return run_torch(data, **EDAC)


@pytest.fixture(scope="module")
def corl_defaults_runs(data: tuple) -> dict[str, Run]:
    """The SAC-N baseline with CORL's choice in place of allowance 1 or 2."""
    return {
        "log_det": run_torch(data, **HYPERPARAMETERS, exact_log_det=False),
        "sample": run_torch(data, **HYPERPARAMETERS, shared_policy_sample=False),
    }


# --- Comparisons ---
def relative_difference(got: Any, expected: Any) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    return float(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), TOLERANCE["atol"])))


def assert_close(got: Any, expected: Any, what: str) -> None:
    print(f"{what}: largest relative difference {relative_difference(got, expected):.1e}")
    np.testing.assert_allclose(got, expected, **TOLERANCE, err_msg=what)


def values(run: Run, name: str, first_update: int = 0) -> list[float]:
    return [info[name] for info in run.infos[first_update:]]


def assert_losses_match(got: Run, expected: Run, metrics: list[str], label: str) -> None:
    for name in metrics:
        assert_close(
            values(got, name), values(expected, name), f"{label}{name}, updates 1-{NUM_UPDATES}"
        )
    # allowance 4: the scripts' population std is CORL's sample std times sqrt((N - 1) / N)
    population = np.multiply(
        values(expected, "q_policy_std"), math.sqrt((NUM_CRITICS - 1) / NUM_CRITICS)
    )
    assert_close(values(got, "q_policy_std"), population, f"{label}q_policy_std")


def parameter_arrays(run: Run) -> dict[str, np.ndarray]:
    """Every parameter array by name: log_alpha, then each network's layers' kernels and biases."""
    named = {"log_alpha": run.params["log_alpha"]}
    for network in NETWORKS:
        for index, pair in enumerate(run.params[network]):
            named |= {
                f"{network} layer {index} {part}": array
                for part, array in zip(["kernel", "bias"], pair)
            }
    return named


def assert_parameters_match(got: Run, expected: Run, label: str) -> None:
    expected_arrays = parameter_arrays(expected)
    for name, array in parameter_arrays(got).items():
        assert_close(array, expected_arrays[name], f"{label}{name}")
    # the updates moved every array: equal parameters are not the starting ones
    start = parameter_arrays(Run([], torch_params(new_agent())))
    for name, array in parameter_arrays(got).items():
        assert relative_difference(array, start[name]) > FAR, name


def largest_parameter_difference(run: Run, other: Run) -> tuple[float, str]:
    """The largest relative difference over the parameter arrays, and that array's name."""
    other_arrays = parameter_arrays(other)
    return max(
        (relative_difference(array, other_arrays[name]), name)
        for name, array in parameter_arrays(run).items()
    )


# --- Tests: SAC-N ---
def test_runs_in_float64(script_run: Run, script_edac_run: Run) -> None:
    """The comparison is not float32 in disguise: every float array of the script's updates is
    float64; and float64 stayed inside run_script, so the other tests in this process still see
    JAX's float32 default."""
    assert script_run.dtypes == script_edac_run.dtypes == {np.dtype(np.float64)}
    assert jnp.zeros(()).dtype == jnp.float32


def test_losses_match_corl_every_update(script_run: Run, corl_run: Run) -> None:
    assert "diversity_loss" not in script_run.infos[0]  # SAC-N: the term is not even traced
    assert_losses_match(script_run, corl_run, METRICS, "")


def test_parameters_match_corl_after_updates(script_run: Run, corl_run: Run) -> None:
    assert_parameters_match(script_run, corl_run, "")


def test_allowances_are_needed(
    script_run: Run, corl_run: Run, corl_defaults_runs: dict[str, Run]
) -> None:
    """Without allowance 1, 2 or 4 the values differ by far more than the tolerance: each is a real
    difference."""

    def difference(name: str, run: Run, label: str, first_update: int = 0) -> float:
        got, expected = (values(each, name, first_update) for each in (script_run, run))
        difference = relative_difference(got, expected)
        print(f"{name} against {label}: largest relative difference {difference:.1e}")
        return difference

    for name in ["alpha_loss", "actor_loss", "batch_entropy", "critic_loss"]:
        assert difference(name, corl_defaults_runs["log_det"], "CORL's log-det") > 1e-7, name
    # the first alpha loss is 0 whatever the sample (log_alpha starts at 0); the later ones see it
    sample = corl_defaults_runs["sample"]
    assert difference("alpha_loss", sample, "CORL's separate sample", first_update=1) > 1e-3
    assert difference("q_policy_std", corl_run, "CORL's sample std") > 0.1


def test_init_matches_corl_but_first_critic_layer(script_run: Run) -> None:
    """Allowance 3, and the rest of the init the same: every layer's max |kernel| is near its bound
    (at hidden 256 a layer has thousands of weights), hidden biases are 0.1, the output layers'
    biases within their kernels' bound."""
    hidden = 1 / math.sqrt(HIDDEN_DIM)
    actor_bounds = [1 / math.sqrt(OBS_DIM), hidden, hidden, 1e-3, 1e-3]
    critic_bounds = [hidden, hidden, 3e-3]
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


# --- Tests: EDAC ---
def test_edac_losses_match_corl_every_update(script_edac_run: Run, corl_edac_run: Run) -> None:
    assert_losses_match(script_edac_run, corl_edac_run, [*METRICS, "diversity_loss"], "EDAC ")
    # the term is not negligible next to the TD loss it is added to
    diversity = np.array(values(script_edac_run, "diversity_loss"))
    assert np.all(
        EDAC["eta"] * np.abs(diversity) > 1e-3 * np.abs(values(script_edac_run, "critic_loss"))
    )


def test_edac_parameters_match_corl_after_updates(script_edac_run: Run, corl_edac_run: Run) -> None:
    assert_parameters_match(script_edac_run, corl_edac_run, "EDAC ")


def test_sac_n_is_far_from_edac(script_run: Run, corl_edac_run: Run) -> None:
    """The control: the script with eta = 0 and otherwise EDAC's hyperparameters, data and draws is
    far from the EDAC baseline, in the critic loss from the first update and in the parameters."""
    critic_loss = relative_difference(
        values(script_run, "critic_loss"), values(corl_edac_run, "critic_loss")
    )
    print(f"eta=0 against EDAC: critic_loss largest relative difference {critic_loss:.1e}")
    difference, where = largest_parameter_difference(script_run, corl_edac_run)
    print(f"eta=0 against EDAC: largest relative parameter difference {difference:.1e} ({where})")
    assert critic_loss > FAR and difference > FAR


# --- Tests: the hyperparameters ---
def test_hyperparameters_reach_the_comparison(
    data: tuple, corl_run: Run, corl_edac_run: Run
) -> None:
    """Each hyperparameter of the runs, set back to CORL's default (the value a script that lost the
    configured one would use; for EDAC's eta, 1.0, edac.py's default), moves the baseline's final
    parameters by far more than the tolerance: so the scripts, which match the baseline to the
    tolerance, use every one of them (issue 17)."""
    for label, hyperparameters, baseline in [
        ("SAC-N", HYPERPARAMETERS, corl_run),
        ("EDAC", EDAC, corl_edac_run),
    ]:
        for name in hyperparameters:
            other_value = 1.0 if name == "eta" else CORL_DEFAULTS[name]
            other = run_torch(data, **(hyperparameters | {name: other_value}))
            difference, where = largest_parameter_difference(other, baseline)
            print(
                f"{label} {name}={other_value}: largest relative parameter difference {difference:.1e} ({where})"
            )
            assert difference > FAR, (label, name)


def test_defaults_are_corls(module: ModuleType) -> None:
    """The runs above set every hyperparameter; the defaults they leave out are CORL's, in the
    scripts' Config and in the baseline."""
    baseline_defaults = inspect.signature(TorchSACN).parameters
    for name, value in CORL_DEFAULTS.items():
        assert getattr(module.Config(), name) == value, name
        assert baseline_defaults[name].default == value, name


# --- Tests: the similarity term by hand ---
def linear_q(weights: jax.Array, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """An ensemble, as the scripts' critic apply_fn: Q_i(obs, a) = (w_i * obs) . a for each critic
    i and sample, [num_critics, batch_size], so critic i's action gradient is w_i * obs."""
    return jnp.einsum("nk,bk,bk->nb", weights, obs, actions)


@partial(jax.jit, static_argnums=0)
def hand_diversity(module: ModuleType, weights: jax.Array, obs: jax.Array) -> jax.Array:
    """The script's `diversity_loss` of the critics `linear_q` with these weights, on a batch of obs;
    jitted, as a few compiles cost less than eager dispatch. The actions do not change the action
    gradients, but they are not the obs: a gradient with respect to the obs would differ."""
    zeros = jnp.zeros(len(obs))
    actions = jnp.broadcast_to(jnp.array([0.3, -1.7]), obs.shape)
    batch = module.Batch(obs=obs, actions=actions, rewards=zeros, next_obs=obs, dones=zeros)
    critic = module.TrainState.create(apply_fn=linear_q, params=weights, tx=optax.identity())
    return module.diversity_loss(weights, critic, batch)


ONES = [[1.0, 1.0]] * 3  # a batch of 3 like samples: the batch mean is each one's value


@pytest.mark.parametrize(
    "weights, obs, expected",
    [
        # parallel gradients: cosine 1 for each of the 2 ordered pairs, / (N - 1 = 1)
        ([[1.0, 2.0], [3.0, 6.0]], ONES, 2.0),
        # opposite: cosine -1, twice
        ([[1.0, 2.0], [-0.5, -1.0]], ONES, -2.0),
        # orthogonal: 0
        ([[1.0, 2.0], [-4.0, 2.0]], ONES, 0.0),
        # a critic with a zero gradient: 0 / (0 + 1e-10) = 0, so its pairs count 0 (not NaN)
        ([[1.0, 2.0], [0.0, 0.0]], ONES, 0.0),
        # gradients w_i * obs that change with the sample, w = (1, 1) and (1, -1): obs (1, 0) gives
        # (1, 0) twice, cosine 1; obs (1, 1) gives (1, 1), (1, -1), cosine 0; obs (2, 1) gives
        # (2, 1), (2, -1), cosine 3/5; the batch mean of 2 * cosine: (2 + 0 + 1.2) / 3
        ([[1.0, 1.0], [1.0, -1.0]], [[1.0, 0.0], [1.0, 1.0], [2.0, 1.0]], 3.2 / 3),
        # 3 critics, unit gradients (1, 0), (1, 1)/sqrt 2, (0.6, 0.8): cosines 1/sqrt 2, 0.6 and
        # 1.4/sqrt 2, each twice, / 2 = 0.6 + 2.4/sqrt 2
        ([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], ONES, 0.6 + 2.4 / math.sqrt(2)),
        # 4 parallel critics: 12 ordered pairs of cosine 1, / 3 = 4 (= N)
        ([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5], [7.0, 7.0]], ONES, 4.0),
    ],
    ids=[
        "parallel",
        "opposite",
        "orthogonal",
        "zero-gradient",
        "per-sample",
        "3-general",
        "4-parallel",
    ],
)
def test_diversity_loss_by_hand(
    module: ModuleType, weights: list, obs: list, expected: float
) -> None:
    """The scripts' `diversity_loss` on critics Q_i(obs, a) = (w_i * obs) . a, whose action
    gradients w_i * obs are known by hand: the sign and scale of EDAC's term (a sum over ordered
    pairs, so 2 for two parallel gradients, divided by N - 1)."""
    with jax.enable_x64(True):
        got = hand_diversity(module, jnp.asarray(weights), jnp.asarray(obs))
        assert got.dtype == jnp.float64
        # rtol above the 1e-10's effect on gradients of norm ~1 (~1e-10 relative)
        np.testing.assert_allclose(float(got), expected, rtol=1e-9, atol=1e-12)


def test_a_zero_action_gradient_gives_a_finite_gradient(module: ModuleType) -> None:
    """A critic whose action gradient is exactly 0 at a sample (every ReLU of a layer off there):
    the term's gradient stays finite, as in PyTorch, where jnp.linalg.norm's derivative at 0 would
    make it NaN and stop the run. That critic's part is 1 / (0 + 1e-10) times its action gradient's
    derivative, as in the baseline."""
    obs = jnp.ones((3, 2))

    def diversity(weights: jax.Array) -> jax.Array:
        return hand_diversity.__wrapped__(module, weights, obs)

    grads = jax.grad(diversity)(jnp.array([[1.0, 2.0], [0.0, 0.0]]))
    assert np.isfinite(np.asarray(grads)).all(), grads
    assert np.abs(np.asarray(grads[1])).max() > 1e6  # the 1 / 1e-10 factor, not a zero
