"""CORL's SAC-N update (`algorithms/offline/sac_n.py`) in PyTorch, and with `eta > 0` CORL's EDAC
update (`algorithms/offline/edac.py`), for the benchmark and the CORL parity test.

As in CORL, the critic ensemble is one module whose layers hold stacked [num_critics, in, out]
weights, the actor is a tanh-Gaussian MLP, and one update runs alpha -> actor -> critic -> soft
target update, each with its own Adam and learning rate. edac.py's networks, init, losses and update
order are sac_n.py's, but for one term: with `eta > 0` the critic loss adds eta times EDAC's
ensemble similarity, written as edac.py's `_critic_diversity_loss` (EDAC's own code, restyled): the
batch's obs and actions repeated for every critic; each critic's gradient of Q with respect to its
own copy of the actions (`autograd.grad` of the summed Q-values with `create_graph=True`, so that
the loss's gradient flows through it); normalised to unit L2 norm over the action dimensions (norm
+ 1e-10); per sample, the Gram matrix of the N normalised gradients with its diagonal masked out,
summed over the ordered pairs of distinct critics (each pair twice); the mean over the batch,
divided by N - 1. As edac.py logs it, "critic_loss" is the total (TD + eta * similarity);
"diversity_loss" is the term alone (only with eta > 0). `eta=0`, the default, is SAC-N.

Where the JAX scripts choose otherwise, it does what CORL does by default:

- the tanh log-det is CORL's `log(1 - tanh(u)^2 + 1e-6)`; `exact_log_det=True` gives the scripts'
  exact `2 (log 2 - u - softplus(-2u))`;
- the alpha loss draws its own policy sample; `shared_policy_sample=True` gives it the actor loss's
  sample, as the scripts do (`update_batch` takes all three noise tensors, so a test can drive it);
- the critics' init is CORL's, which differs from EDAC's (and the scripts') in the first layer only
  (see VectorizedCritic); tests/test_corl_parity.py copies the parameters, so there is no switch.

It departs from CORL for speed only, with the same math: the batch is sampled with `torch.randint`
from tensors already on the device, `expand` replaces CORL's `repeat_interleave` copy of the critic
input (of the obs in the similarity term too; its actions are copied, as in edac.py, since each
critic needs its own), `baddbmm` fuses its `x @ weight + bias`, `lerp_` its soft update, the noise
is drawn before the update rather than inside `rsample`, `Normal` skips its argument check (a host
sync on a GPU), and there are no `.item()` calls (CORL logs every update; a host sync per update
would time the logging, not the update), no `q_random_std` (the scripts compute it once per epoch),
no checkpoints and no evaluation.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn


class TorchBatch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor


class UpdateNoise(NamedTuple):
    """The standard-normal draws of one update, each [batch_size, action_dim]."""

    alpha_noise: torch.Tensor  # the alpha loss's policy sample on obs (CORL draws its own)
    actor_noise: torch.Tensor  # the actor loss's policy sample on obs
    next_noise: torch.Tensor  # the policy's sample on next_obs, in the critic target


def to_torch(
    transitions: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype = torch.float32
) -> TorchBatch:
    return TorchBatch(
        **{
            key: torch.as_tensor(value, dtype=dtype, device=device)
            for key, value in transitions.items()
        }
    )


class VectorizedLinear(nn.Module):
    """`num_critics` independent linear layers applied in one batched matmul."""

    def __init__(self, in_dim: int, out_dim: int, num_critics: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_critics, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_critics, 1, out_dim))
        # CORL's init: kaiming_uniform_(a=sqrt(5)) on each member's [in, out] weight. torch reads a
        # 2-D tensor's fan_in from its second dimension, so this is U(+-1/sqrt(out_dim)), torch's
        # nn.Linear default only where in_dim == out_dim. The critic's hidden biases and output
        # layer are reset below.
        for member_weight in self.weight:
            nn.init.kaiming_uniform_(member_weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(out_dim)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [num_critics, batch, in] -> [num_critics, batch, out]
        return torch.baddbmm(self.bias, x, self.weight)


class VectorizedCritic(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, num_critics: int):
        super().__init__()
        dims = [obs_dim + action_dim, hidden_dim, hidden_dim, hidden_dim]
        self.hidden = nn.ModuleList(
            VectorizedLinear(a, b, num_critics) for a, b in zip(dims[:-1], dims[1:])
        )
        self.output = VectorizedLinear(hidden_dim, 1, num_critics)
        self.num_critics = num_critics
        # Weights: the first layer is U(+-1/sqrt(hidden_dim)) as CORL, where EDAC's code and the JAX
        # scripts use U(+-1/sqrt(obs_dim + action_dim)); the other two hidden layers are
        # U(+-1/sqrt(hidden_dim)) in all three. Biases 0.1 and the output layer U(+-3e-3): EDAC's,
        # as CORL and the scripts.
        for layer in self.hidden:
            nn.init.constant_(layer.bias, 0.1)
        nn.init.uniform_(self.output.weight, -3e-3, 3e-3)
        nn.init.uniform_(self.output.bias, -3e-3, 3e-3)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of every critic, [num_critics, batch_size], from obs and actions of [batch_size, dim],
        or of [num_critics, batch_size, dim] (one copy per critic, as edac.py's similarity term)."""
        x = torch.cat([obs, actions], dim=-1)
        if x.dim() == 2:
            # CORL repeats the input for every critic; `expand` is the same values without a copy
            x = x.unsqueeze(0).expand(self.num_critics, *x.shape)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x).squeeze(-1)


class Actor(nn.Module):
    def __init__(
        self, obs_dim: int, action_dim: int, hidden_dim: int, max_action: float, exact_log_det: bool
    ):
        super().__init__()
        dims = [obs_dim, hidden_dim, hidden_dim, hidden_dim]
        # torch's nn.Linear init, U(+-1/sqrt(in_dim)), then EDAC's biases and heads: as CORL and the
        # scripts
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.mean = nn.Linear(hidden_dim, action_dim)
        self.log_std = nn.Linear(hidden_dim, action_dim)
        self.max_action, self.exact_log_det = max_action, exact_log_det
        for layer in self.hidden:
            nn.init.constant_(layer.bias, 0.1)
        for head in (self.mean, self.log_std):
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
            nn.init.uniform_(head.bias, -1e-3, 1e-3)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reparameterised tanh-Gaussian sample from standard normal `noise`, and its
        log-prob."""
        x = obs
        for layer in self.hidden:
            x = torch.relu(layer(x))
        mean, std = self.mean(x), torch.exp(torch.clip(self.log_std(x), -5.0, 2.0))
        # what CORL's Normal(mean, std).rsample() computes from its own noise
        pre_tanh = mean + noise * std
        # validate_args=False: the check would sync the host with the device on every call
        normal = torch.distributions.Normal(mean, std, validate_args=False)
        gaussian_log_prob = normal.log_prob(pre_tanh)
        squashed = torch.tanh(pre_tanh)
        if self.exact_log_det:  # the scripts': log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))
            softplus = nn.functional.softplus(-2 * pre_tanh)
            log_det_jacobian = 2 * (math.log(2.0) - pre_tanh - softplus)
        else:  # CORL's, which saturates at log(1e-6) where tanh(u) rounds to +-1
            log_det_jacobian = torch.log(1 - squashed**2 + 1e-6)
        # like CORL and the scripts, no term for the max_action scale
        log_probs = (gaussian_log_prob - log_det_jacobian).sum(dim=-1)
        return squashed * self.max_action, log_probs


class TorchSACN:
    """The actor, the critic ensemble, its target copy, log_alpha and their Adams; SAC-N with
    `eta=0`, EDAC with `eta > 0`."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int,
        num_critics: int,
        device: torch.device,
        seed: int = 0,
        gamma: float = 0.99,
        tau: float = 5e-3,
        actor_learning_rate: float = 3e-4,
        critic_learning_rate: float = 3e-4,
        alpha_learning_rate: float = 3e-4,
        max_action: float = 1.0,
        eta: float = 0.0,
        dtype: torch.dtype = torch.float32,
        exact_log_det: bool = False,
        shared_policy_sample: bool = False,
    ):
        torch.manual_seed(seed)

        def critic() -> VectorizedCritic:
            return VectorizedCritic(obs_dim, action_dim, hidden_dim, num_critics).to(device, dtype)

        self.actor = Actor(obs_dim, action_dim, hidden_dim, max_action, exact_log_det)
        self.actor.to(device, dtype)
        self.critic, self.target_critic = critic(), critic()
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        # alpha = 1 at the start, as CORL
        self.log_alpha = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_learning_rate)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=alpha_learning_rate)
        self.target_entropy = -float(action_dim)
        self.gamma, self.tau, self.eta, self.device, self.dtype = gamma, tau, eta, device, dtype
        self.action_dim, self.shared_policy_sample = action_dim, shared_policy_sample

    def sample_batch(self, dataset: TorchBatch, batch_size: int) -> TorchBatch:
        indices = torch.randint(0, dataset.rewards.shape[0], (batch_size,), device=self.device)
        return TorchBatch(*(array[indices] for array in dataset))

    def draw_noise(self, batch_size: int) -> UpdateNoise:
        def normal() -> torch.Tensor:
            return torch.randn(batch_size, self.action_dim, device=self.device, dtype=self.dtype)

        actor_noise, next_noise = normal(), normal()
        alpha_noise = actor_noise if self.shared_policy_sample else normal()
        return UpdateNoise(alpha_noise, actor_noise, next_noise)

    def update_alpha(self, batch: TorchBatch, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            _, log_probs = self.actor(batch.obs, noise)
        loss = -(self.log_alpha * (log_probs + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        loss.backward()
        self.alpha_optimizer.step()
        return {"alpha_loss": loss.detach(), "alpha": self.log_alpha.detach().exp()}

    def update_actor(
        self, batch: TorchBatch, noise: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        actions, log_probs = self.actor(batch.obs, noise)
        q_values = self.critic(batch.obs, actions)  # [num_critics, batch_size]
        loss = (alpha * log_probs - q_values.min(dim=0).values).mean()
        self.actor_optimizer.zero_grad()
        # as in CORL, this backward also fills the critic's .grad, which the critic update clears
        loss.backward()
        self.actor_optimizer.step()
        return {
            "actor_loss": loss.detach(),
            "batch_entropy": -log_probs.detach().mean(),
            # torch.std is the sample std (N - 1 in the denominator), as CORL logs it
            "q_policy_std": q_values.detach().std(dim=0).mean(),
        }

    def update_critic(
        self, batch: TorchBatch, noise: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_actions, next_log_probs = self.actor(batch.next_obs, noise)
            # [num_critics, batch_size]
            next_q_values = self.target_critic(batch.next_obs, next_actions)
            next_values = next_q_values.min(dim=0).values - alpha * next_log_probs
            targets = batch.rewards + self.gamma * (1.0 - batch.dones) * next_values
        q_values = self.critic(batch.obs, batch.actions)  # [num_critics, batch_size]
        loss = ((q_values - targets) ** 2).mean(dim=1).sum()
        info = {}
        if self.eta > 0:  # EDAC; the logged critic_loss is the total, as edac.py logs it
            diversity = self.diversity_loss(batch.obs, batch.actions)
            loss = loss + self.eta * diversity
            info["diversity_loss"] = diversity.detach()
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        return {"critic_loss": loss.detach(), **info}

    def diversity_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """EDAC's ensemble similarity, as edac.py's `_critic_diversity_loss`: the cosine
        similarities of the critics' gradients of Q with respect to the batch's actions, summed over
        ordered pairs of distinct critics, averaged over the batch and divided by N - 1."""
        num_critics = self.critic.num_critics
        # [num_critics, batch_size, dim]; edac.py repeats the obs too, which need no gradient
        obs = obs.unsqueeze(0).expand(num_critics, *obs.shape)
        actions = actions.unsqueeze(0).repeat_interleave(num_critics, dim=0).requires_grad_(True)
        q_values = self.critic(obs, actions)  # [num_critics, batch_size]
        # critic i sees only its copy of the actions: the sum's gradient holds each critic's own
        (grads,) = torch.autograd.grad(
            q_values.sum(), actions, retain_graph=True, create_graph=True
        )
        grads = grads / (torch.norm(grads, p=2, dim=2).unsqueeze(-1) + 1e-10)
        grads = grads.transpose(0, 1)  # [batch_size, num_critics, action_dim]
        similarities = grads @ grads.permute(0, 2, 1)  # [batch_size, num_critics, num_critics]
        masks = 1 - torch.eye(num_critics, device=self.device, dtype=self.dtype)
        return (masks * similarities).sum(dim=(1, 2)).mean() / (num_critics - 1)

    def update_target(self) -> None:
        with torch.no_grad():
            for target, source in zip(self.target_critic.parameters(), self.critic.parameters()):
                # (1 - tau) * target + tau * source, as CORL's soft_update
                target.lerp_(source, self.tau)

    def update_batch(self, batch: TorchBatch, noise: UpdateNoise) -> dict[str, torch.Tensor]:
        """One update on `batch` with the given policy noise, in CORL's order: alpha -> actor ->
        critic -> target. With `shared_policy_sample` the alpha loss uses `noise.actor_noise` and
        ignores `noise.alpha_noise`."""
        alpha_noise = noise.actor_noise if self.shared_policy_sample else noise.alpha_noise
        info = self.update_alpha(batch, alpha_noise)
        info.update(self.update_actor(batch, noise.actor_noise, info["alpha"]))
        info.update(self.update_critic(batch, noise.next_noise, info["alpha"]))
        self.update_target()
        return info

    def update(self, dataset: TorchBatch, batch_size: int) -> dict[str, torch.Tensor]:
        batch = self.sample_batch(dataset, batch_size)
        return self.update_batch(batch, self.draw_noise(batch_size))

    def train_epoch(
        self, dataset: TorchBatch, batch_size: int, num_updates: int
    ) -> dict[str, torch.Tensor]:
        """`num_updates` updates from a Python loop, then one wait for the device."""
        for _ in range(num_updates):
            info = self.update(dataset, batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return info
