"""PROTOTYPES for the benchmark, not the scripts' code: variants of the Flax script's update,
built from its own functions, to measure suggested speed-ups before anyone edits the scripts;
and the update's parts in separate jitted loops, to see where its time goes.

Used by `bench.py --prototypes` and `bench.py --profile`. Each prototype changes one thing:

- threefry in the loop: each update draws its own batch indices and policy noise inside the
  update loop (split, randint, two normals), as the scripts did before they drew an epoch's random
  numbers up front (`draw_epoch_noise`). XLA runs each threefry call on a CPU as a rolled
  5-iteration while loop of small kernels. Other random numbers, same distribution.
- flat Adam: `optax.flatten(optax.adam(...))`, one Adam over one flat vector per network
  instead of one per parameter array. Same math, elementwise.
- scan unroll: `lax.scan(..., unroll=4)`, four updates per loop iteration.
- packed dataset: the dataset as one [size, 2 * obs_dim + action_dim + 2] array, so a batch is
  one gather instead of five. Same batches.

Measured and dropped earlier (see benchmarks/README.md): one actor forward pass shared by the alpha
and actor losses (XLA already merges the two identical passes), and rbg / unsafe_rbg keys (JAX's
vmap of rng_bit_generator draws every seed's numbers from the first key).
"""

import dataclasses
from functools import partial
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Prototype:
    name: str
    keys_in_loop: bool = False
    flat_adam: bool = False
    unroll: int = 1
    packed: bool = False


PROTOTYPES = [
    Prototype("baseline (scan of update_sac_n, no seed vmap)"),
    Prototype("threefry in the loop (the scripts before)", keys_in_loop=True),
    Prototype("flat Adam", flat_adam=True),
    Prototype("scan unroll=4", unroll=4),
    Prototype("packed dataset", packed=True),
]


def strong_types(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype), tree)


def prepare_state(module: Any, proto: Prototype, config: Any, state: Any) -> Any:
    """One agent's state, changed as the prototype needs."""
    state = strong_types(state)
    if proto.flat_adam:
        flat_adam = {"actor": config.actor_learning_rate, "critic": config.critic_learning_rate}
        changes = {}
        for name, learning_rate in flat_adam.items():
            train_state = getattr(state, name)
            tx = optax.flatten(optax.adam(learning_rate))
            changes[name] = train_state.replace(tx=tx, opt_state=tx.init(train_state.params))
        state = state._replace(**changes)
    return state


def pack(dataset: Any) -> jax.Array:
    columns = [dataset.obs, dataset.actions, dataset.rewards[:, None], dataset.next_obs, dataset.dones[:, None]]
    return jnp.concatenate(columns, axis=1)  # [size, 2 * obs_dim + action_dim + 2]


def unpack_rows(module: Any, rows: jax.Array, obs_dim: int) -> Any:
    action_end = rows.shape[1] - obs_dim - 2  # columns: obs | actions | reward | next_obs | done
    return module.Batch(
        obs=rows[:, :obs_dim],
        actions=rows[:, obs_dim:action_end],
        rewards=rows[:, action_end],
        next_obs=rows[:, action_end + 1 : action_end + 1 + obs_dim],
        dones=rows[:, -1],
    )


def prototype_update(
    module: Any, proto: Prototype, config: Any, state: Any, data: Any, noise: Any, obs_dim: int
) -> tuple:
    """update_sac_n, or for the packed dataset its body with the batch taken in one gather."""
    if not proto.packed:
        return module.update_sac_n(state, data, noise, config)
    batch = unpack_rows(module, data[noise.indices], obs_dim)
    alpha, info = module.update_alpha(noise.policy_noise, state.actor, state.alpha, batch, config.max_action)
    alpha_value = jnp.exp(alpha.params["log_alpha"])
    actor, actor_info = module.update_actor(
        noise.policy_noise, state.actor, state.critic, alpha_value, batch, config.max_action
    )
    critic, critic_info = module.update_critic(
        noise.next_noise, actor, state.critic, alpha_value, batch, config.gamma, config.max_action
    )
    critic = module.update_target(critic, config.tau)
    return module.SACNState(actor, critic, alpha, state.key), {**info, **actor_info, **critic_info}


def prototype_epoch(module: Any, proto: Prototype, config: Any, state: Any, dataset: Any) -> tuple:
    """(jitted epoch(state, data) -> (state, metric means), its prepared state, its data)."""
    # draw_epoch_noise reads only the dataset's shapes
    shapes = jax.tree.map(lambda array: jax.ShapeDtypeStruct(array.shape, array.dtype), dataset)
    one_update = dataclasses.replace(config, num_updates_on_epoch=1)
    obs_dim = dataset.obs.shape[1]

    @partial(jax.jit, donate_argnums=0)
    def epoch(state: Any, data: Any) -> tuple:
        key, noise_key = jax.random.split(state.key)
        if proto.keys_in_loop:

            def step(carry: tuple, _: Any) -> tuple:
                state, key = carry
                key, step_key = jax.random.split(key)
                noise = jax.tree.map(lambda array: array[0], module.draw_epoch_noise(step_key, shapes, one_update))
                state, info = prototype_update(module, proto, config, state, data, noise, obs_dim)
                return (state, key), info

            (state, _), infos = jax.lax.scan(
                step, (state, noise_key), length=config.num_updates_on_epoch, unroll=proto.unroll
            )
        else:
            epoch_noise = module.draw_epoch_noise(noise_key, shapes, config)
            state, infos = jax.lax.scan(
                lambda state, noise: prototype_update(module, proto, config, state, data, noise, obs_dim),
                state,
                epoch_noise,
                unroll=proto.unroll,
            )
        return state._replace(key=key), jax.tree.map(jnp.mean, infos)

    data = pack(dataset) if proto.packed else dataset
    return epoch, prepare_state(module, proto, config, state), data


def check_equivalent(module: Any, proto: Prototype, config: Any, state: Any, dataset: Any) -> Optional[float]:
    """Largest parameter difference after one update on the same random numbers against the script's
    update_sac_n (None for the prototype that draws other random numbers). Run unjitted, on a small
    config."""
    if proto.keys_in_loop:
        return None
    epoch_noise = module.draw_epoch_noise(jax.random.PRNGKey(0), dataset, config)
    noise = jax.tree.map(lambda array: array[0], epoch_noise)
    expected, _ = module.update_sac_n(strong_types(state), dataset, noise, config)
    data = pack(dataset) if proto.packed else dataset
    prepared = prepare_state(module, proto, config, state)
    got, _ = prototype_update(module, proto, config, prepared, data, noise, dataset.obs.shape[1])
    differences = jax.tree.map(
        lambda a, b: jnp.max(jnp.abs(a - b)),
        (expected.actor.params, expected.critic.params, expected.critic.target_params, expected.alpha.params),
        (got.actor.params, got.critic.params, got.critic.target_params, got.alpha.params),
    )
    return float(max(jax.tree.leaves(differences)))


# --- Parts of the update, for the profile ---


def part_epochs(module: Any, config: Any, state: Any) -> dict[str, tuple[Callable, Any]]:
    """name -> (jitted epoch(carry, state, dataset) -> carry, initial carry). Each runs
    `num_updates_on_epoch` steps of one part of update_sac_n, each step on its own batch and noise
    from the epoch's `draw_epoch_noise`, with the rest of the state fixed; the whole update (the
    script's `scan_updates`, one agent) is the first entry."""
    alpha_value = jnp.exp(state.alpha.params["log_alpha"])
    gamma, tau, max_action = config.gamma, config.tau, config.max_action

    def part_epoch(part: Callable) -> Callable:
        @partial(jax.jit, donate_argnums=0)
        def epoch(carry: tuple, fixed: Any, dataset: Any) -> tuple:
            value, key = carry
            key, noise_key = jax.random.split(key)

            def step(value: Any, noise: Any) -> tuple:
                return part(value, fixed, module.take_rows(dataset, noise.indices), noise), None

            value, _ = jax.lax.scan(step, value, module.draw_epoch_noise(noise_key, dataset, config))
            return value, key

        return epoch

    @partial(jax.jit, donate_argnums=0)
    def whole_epoch(state: Any, fixed: Any, dataset: Any) -> Any:
        return module.scan_updates(state, dataset, config)[0]

    def batch_sum(total: jax.Array, fixed: Any, batch: Any, noise: Any) -> jax.Array:
        return total + sum(jnp.sum(array) for array in batch)  # keeps the gathers alive

    def alpha_part(alpha: Any, fixed: Any, batch: Any, noise: Any) -> Any:
        return module.update_alpha(noise.policy_noise, fixed.actor, alpha, batch, max_action)[0]

    def actor_part(actor: Any, fixed: Any, batch: Any, noise: Any) -> Any:
        return module.update_actor(noise.policy_noise, actor, fixed.critic, alpha_value, batch, max_action)[0]

    def critic_part(critic: Any, fixed: Any, batch: Any, noise: Any) -> Any:
        critic = module.update_critic(noise.next_noise, fixed.actor, critic, alpha_value, batch, gamma, max_action)[0]
        return module.update_target(critic, tau)

    # every carry is donated, so each gets its own buffers
    copy = lambda tree: (jax.tree.map(jnp.copy, tree), jax.random.PRNGKey(1))  # noqa: E731
    return {
        "whole update": (whole_epoch, jax.tree.map(jnp.copy, state)),
        "batch gather (take_rows)": (part_epoch(batch_sum), copy(jnp.zeros(()))),
        "update_alpha": (part_epoch(alpha_part), copy(state.alpha)),
        "update_actor": (part_epoch(actor_part), copy(state.actor)),
        "update_critic + target": (part_epoch(critic_part), copy(state.critic)),
    }
