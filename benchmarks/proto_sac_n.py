"""PROTOTYPES for the benchmark, not the scripts' code: variants of the Flax script's update,
built from its own functions, to measure suggested speed-ups before anyone edits the scripts;
and the update's parts in separate jitted loops, to see where its time goes.

Used by `bench.py --prototypes` and `bench.py --profile`. Each prototype changes one thing:

- shared actor forward: the alpha loss reuses the log-probs of the actor loss's forward pass
  (`jax.vjp` once, then the actor gradient with the updated alpha) instead of a second actor
  forward. Same math: both losses see the same sample of the same (pre-update) actor.
- flat Adam: `optax.flatten(optax.adam(...))`, one Adam over one flat vector per network
  instead of one per parameter array. Same math, elementwise.
- scan unroll: `lax.scan(..., unroll=4)`, four updates per loop iteration.
- packed dataset: the dataset as one [size, 2 * obs_dim + action_dim + 2] array, so a batch is
  one gather instead of five. Same batches.
- rbg / unsafe_rbg keys: JAX's RngBitGenerator-based PRNGs instead of threefry, whose hash XLA
  runs on a CPU as a rolled 5-iteration while loop per random call. Other random numbers, same
  distribution.
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
    shared_forward: bool = False
    flat_adam: bool = False
    unroll: int = 1
    packed: bool = False
    key_impl: Optional[str] = None


PROTOTYPES = [
    Prototype("baseline (scan of update_sac_n, no seed vmap)"),
    Prototype("shared actor forward", shared_forward=True),
    Prototype("flat Adam", flat_adam=True),
    Prototype("scan unroll=4", unroll=4),
    Prototype("packed dataset", packed=True),
    Prototype("rbg keys", key_impl="rbg"),
    Prototype("unsafe_rbg keys", key_impl="unsafe_rbg"),
    Prototype("all (unsafe_rbg)", shared_forward=True, flat_adam=True, unroll=4, packed=True, key_impl="unsafe_rbg"),
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
    if proto.key_impl is not None:
        state = state._replace(key=jax.random.key(config.train_seed, impl=proto.key_impl))
    return state


def pack(dataset: Any) -> jax.Array:
    columns = [dataset.obs, dataset.actions, dataset.rewards[:, None], dataset.next_obs, dataset.dones[:, None]]
    return jnp.concatenate(columns, axis=1)  # [size, 2 * obs_dim + action_dim + 2]


def sample_packed(module: Any, key: jax.Array, packed: jax.Array, batch_size: int, obs_dim: int) -> Any:
    rows = packed[jax.random.randint(key, (batch_size,), 0, packed.shape[0])]
    action_end = packed.shape[1] - obs_dim - 2  # columns: obs | actions | reward | next_obs | done
    return module.Batch(
        obs=rows[:, :obs_dim],
        actions=rows[:, obs_dim:action_end],
        rewards=rows[:, action_end],
        next_obs=rows[:, action_end + 1 : action_end + 1 + obs_dim],
        dones=rows[:, -1],
    )


def update_alpha_and_actor(module: Any, key: jax.Array, state: Any, batch: Any, max_action: float) -> tuple:
    """update_alpha then update_actor of the script, from one actor forward pass."""
    actor, critic, alpha = state.actor, state.critic, state.alpha

    def policy_terms(actor_params: Any) -> tuple:
        mean, log_std = actor.apply_fn(actor_params, batch.obs)
        actions, log_probs = module.sample_action(key, mean, log_std, max_action)
        q_values = critic.apply_fn(critic.params, batch.obs, actions)  # [num_critics, batch_size]
        return (log_probs, q_values.min(axis=0)), q_values.std(axis=0).mean()

    (log_probs, min_q), pullback, q_policy_std = jax.vjp(policy_terms, actor.params, has_aux=True)
    target_entropy = -batch.actions.shape[-1]
    alpha_loss, alpha_grads = jax.value_and_grad(
        lambda params: -(params["log_alpha"] * (log_probs + target_entropy)).mean()
    )(alpha.params)
    alpha = alpha.apply_gradients(grads=alpha_grads)
    alpha_value = jnp.exp(alpha.params["log_alpha"])
    # d/d(log_probs, min_q) of mean(alpha * log_probs - min_q)
    batch_size = log_probs.shape[0]
    (grads,) = pullback((jnp.full_like(log_probs, alpha_value / batch_size), jnp.full_like(min_q, -1 / batch_size)))
    info = {
        "alpha_loss": alpha_loss,
        "alpha": alpha_value,
        "actor_loss": (alpha_value * log_probs - min_q).mean(),
        "batch_entropy": -log_probs.mean(),
        "q_policy_std": q_policy_std,
    }
    return alpha, actor.apply_gradients(grads=grads), info


def prototype_update(module: Any, proto: Prototype, config: Any, state: Any, data: Any, obs_dim: int) -> tuple:
    if not (proto.shared_forward or proto.packed):
        return module.update_sac_n(state, data, config)
    key, batch_key, actor_key, critic_key = jax.random.split(state.key, 4)
    if proto.packed:
        batch = sample_packed(module, batch_key, data, config.batch_size, obs_dim)
    else:
        batch = module.sample_batch(batch_key, data, config.batch_size)
    if proto.shared_forward:
        alpha, actor, info = update_alpha_and_actor(module, actor_key, state, batch, config.max_action)
        alpha_value = info["alpha"]
    else:
        alpha, info = module.update_alpha(actor_key, state.actor, state.alpha, batch, config.max_action)
        alpha_value = jnp.exp(alpha.params["log_alpha"])
        actor, actor_info = module.update_actor(
            actor_key, state.actor, state.critic, alpha_value, batch, config.max_action
        )
        info.update(actor_info)
    critic, critic_info = module.update_critic(
        critic_key, actor, state.critic, alpha_value, batch, config.gamma, config.max_action
    )
    critic = module.update_target(critic, config.tau)
    return module.SACNState(actor, critic, alpha, key), {**info, **critic_info}


def prototype_epoch(module: Any, proto: Prototype, config: Any, state: Any, dataset: Any) -> tuple:
    """(jitted epoch(state, data) -> (state, metric means), its prepared state, its data)."""
    obs_dim = dataset.obs.shape[1]
    update = partial(prototype_update, module, proto, config, obs_dim=obs_dim)

    @partial(jax.jit, donate_argnums=0)
    def epoch(state: Any, data: Any) -> tuple:
        state, infos = jax.lax.scan(
            lambda state, _: update(state, data=data), state, length=config.num_updates_on_epoch, unroll=proto.unroll
        )
        return state, jax.tree.map(jnp.mean, infos)

    data = pack(dataset) if proto.packed else dataset
    return epoch, prepare_state(module, proto, config, state), data


def check_equivalent(module: Any, proto: Prototype, config: Any, state: Any, dataset: Any) -> Optional[float]:
    """Largest parameter difference after one update against the script's update_sac_n (None for
    the prototypes that draw other random numbers). Run unjitted, on a small config."""
    if proto.key_impl is not None:
        return None
    expected, _ = module.update_sac_n(strong_types(state), dataset, config)
    data = pack(dataset) if proto.packed else dataset
    got, _ = prototype_update(
        module, proto, config, prepare_state(module, proto, config, state), data, dataset.obs.shape[1]
    )
    differences = jax.tree.map(
        lambda a, b: jnp.max(jnp.abs(a - b)),
        (expected.actor.params, expected.critic.params, expected.critic.target_params, expected.alpha.params),
        (got.actor.params, got.critic.params, got.critic.target_params, got.alpha.params),
    )
    return float(max(jax.tree.leaves(differences)))


# --- Parts of the update, for the profile ---


def part_epochs(module: Any, config: Any, state: Any) -> dict[str, tuple[Callable, Any]]:
    """name -> (jitted epoch(carry, state, dataset) -> carry, initial carry). Each runs
    `num_updates_on_epoch` steps of one part of update_sac_n, sampling a batch each step, with
    the rest of the state fixed; the whole update is the first entry."""
    alpha_value = jnp.exp(state.alpha.params["log_alpha"])
    gamma, tau, max_action = config.gamma, config.tau, config.max_action

    def part_epoch(part: Callable) -> Callable:
        def step(carry: tuple, fixed: Any, dataset: Any) -> tuple:
            value, key = carry
            key, batch_key, part_key = jax.random.split(key, 3)
            batch = module.sample_batch(batch_key, dataset, config.batch_size)
            return part(value, fixed, batch, part_key), key

        @partial(jax.jit, donate_argnums=0)
        def epoch(carry: tuple, fixed: Any, dataset: Any) -> tuple:
            return jax.lax.fori_loop(0, config.num_updates_on_epoch, lambda _, c: step(c, fixed, dataset), carry)

        return epoch

    @partial(jax.jit, donate_argnums=0)
    def whole_epoch(state: Any, fixed: Any, dataset: Any) -> Any:
        return jax.lax.fori_loop(
            0, config.num_updates_on_epoch, lambda _, s: module.update_sac_n(s, dataset, config)[0], state
        )

    def batch_sum(total: jax.Array, fixed: Any, batch: Any, key: jax.Array) -> jax.Array:
        return total + sum(jnp.sum(array) for array in batch)  # keeps the gathers alive

    def alpha_part(alpha: Any, fixed: Any, batch: Any, key: jax.Array) -> Any:
        return module.update_alpha(key, fixed.actor, alpha, batch, max_action)[0]

    def actor_part(actor: Any, fixed: Any, batch: Any, key: jax.Array) -> Any:
        return module.update_actor(key, actor, fixed.critic, alpha_value, batch, max_action)[0]

    def critic_part(critic: Any, fixed: Any, batch: Any, key: jax.Array) -> Any:
        critic = module.update_critic(key, fixed.actor, critic, alpha_value, batch, gamma, max_action)[0]
        return module.update_target(critic, tau)

    # every carry is donated, so each gets its own buffers
    copy = lambda tree: (jax.tree.map(jnp.copy, tree), jax.random.PRNGKey(1))  # noqa: E731
    return {
        "whole update": (whole_epoch, jax.tree.map(jnp.copy, state)),
        "sample_batch": (part_epoch(batch_sum), copy(jnp.zeros(()))),
        "update_alpha": (part_epoch(alpha_part), copy(state.alpha)),
        "update_actor": (part_epoch(actor_part), copy(state.actor)),
        "update_critic + target": (part_epoch(critic_part), copy(state.critic)),
    }
