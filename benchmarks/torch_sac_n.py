"""The SAC-N update in PyTorch, written for the benchmark only (not a training script).

It does what `update_sac_n` in sac_n_jax_flax.py does, in the style of CORL's
`algorithms/offline/sac_n.py`: the critic ensemble is one module whose layers hold
stacked [num_critics, in, out] weights applied with `torch.baddbmm`, the actor is a
tanh-Gaussian MLP, and one update runs alpha -> actor -> critic -> soft target
update, each with its own Adam. Network sizes and initialisation (EDAC's: hidden
biases 0.1, small uniform output layers) match the JAX scripts, and the batch is
sampled with `torch.randint` from tensors that already live on the device.

What it leaves out: `.item()` calls on the metrics (CORL logs every update; a host
sync per update would time the logging, not the update), checkpoints and evaluation.
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


def to_torch(transitions: dict[str, np.ndarray], device: torch.device) -> TorchBatch:
    return TorchBatch(
        **{key: torch.as_tensor(value, dtype=torch.float32, device=device) for key, value in transitions.items()}
    )


class VectorizedLinear(nn.Module):
    """`num_critics` independent linear layers applied in one batched matmul."""

    def __init__(self, in_dim: int, out_dim: int, num_critics: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_critics, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_critics, 1, out_dim))
        # torch.nn.Linear's default init for every member, U(+-1/sqrt(fan_in)), as in CORL
        bound = 1 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)  # [num_critics, batch, in] -> [num_critics, batch, out]


class VectorizedCritic(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, num_critics: int):
        super().__init__()
        dims = [obs_dim + action_dim, hidden_dim, hidden_dim, hidden_dim]
        self.hidden = nn.ModuleList(VectorizedLinear(a, b, num_critics) for a, b in zip(dims[:-1], dims[1:]))
        self.output = VectorizedLinear(hidden_dim, 1, num_critics)
        self.num_critics = num_critics
        for layer in self.hidden:  # EDAC init
            nn.init.constant_(layer.bias, 0.1)
        nn.init.uniform_(self.output.weight, -3e-3, 3e-3)
        nn.init.uniform_(self.output.bias, -3e-3, 3e-3)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        # CORL repeats the input for every critic; `expand` is the same values without a copy
        x = x.unsqueeze(0).expand(self.num_critics, *x.shape)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x).squeeze(-1)  # [num_critics, batch_size]


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, max_action: float):
        super().__init__()
        dims = [obs_dim, hidden_dim, hidden_dim, hidden_dim]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.mean = nn.Linear(hidden_dim, action_dim)
        self.log_std = nn.Linear(hidden_dim, action_dim)
        self.max_action = max_action
        for layer in self.hidden:  # EDAC init
            nn.init.constant_(layer.bias, 0.1)
        for head in (self.mean, self.log_std):
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
            nn.init.uniform_(head.bias, -1e-3, 1e-3)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised tanh-Gaussian sample and its log-prob, the math of the JAX scripts'
        `sample_action` (CORL builds a torch.distributions.Normal; the values are the same)."""
        x = obs
        for layer in self.hidden:
            x = torch.relu(layer(x))
        mean, log_std = self.mean(x), torch.clip(self.log_std(x), -5.0, 2.0)
        noise = torch.randn_like(mean)
        pre_tanh = mean + torch.exp(log_std) * noise
        gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
        log_det_jacobian = 2 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2 * pre_tanh))
        log_probs = (gaussian_log_prob - log_det_jacobian).sum(dim=-1)
        return torch.tanh(pre_tanh) * self.max_action, log_probs


class TorchSACN:
    """The actor, the critic ensemble, its target copy, log_alpha and their Adams."""

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
        learning_rate: float = 3e-4,
        max_action: float = 1.0,
    ):
        torch.manual_seed(seed)
        self.actor = Actor(obs_dim, action_dim, hidden_dim, max_action).to(device)
        self.critic = VectorizedCritic(obs_dim, action_dim, hidden_dim, num_critics).to(device)
        self.target_critic = VectorizedCritic(obs_dim, action_dim, hidden_dim, num_critics).to(device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=learning_rate)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=learning_rate)
        self.target_entropy = -float(action_dim)
        self.gamma, self.tau, self.device = gamma, tau, device

    def sample_batch(self, dataset: TorchBatch, batch_size: int) -> TorchBatch:
        indices = torch.randint(0, dataset.rewards.shape[0], (batch_size,), device=self.device)
        return TorchBatch(*(array[indices] for array in dataset))

    def update_alpha(self, batch: TorchBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            _, log_probs = self.actor(batch.obs)
        loss = -(self.log_alpha * (log_probs + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        loss.backward()
        self.alpha_optimizer.step()
        return {"alpha_loss": loss.detach()}

    def update_actor(self, batch: TorchBatch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        actions, log_probs = self.actor(batch.obs)
        q_values = self.critic(batch.obs, actions)  # [num_critics, batch_size]
        loss = (alpha * log_probs - q_values.min(dim=0).values).mean()
        self.actor_optimizer.zero_grad()
        # as in CORL, this backward also fills the critic's .grad, which the critic update then clears
        loss.backward()
        self.actor_optimizer.step()
        return {"actor_loss": loss.detach(), "batch_entropy": -log_probs.detach().mean()}

    def update_critic(self, batch: TorchBatch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_actions, next_log_probs = self.actor(batch.next_obs)
            next_q_values = self.target_critic(batch.next_obs, next_actions)  # [num_critics, batch_size]
            next_values = next_q_values.min(dim=0).values - alpha * next_log_probs
            targets = batch.rewards + self.gamma * (1.0 - batch.dones) * next_values
        q_values = self.critic(batch.obs, batch.actions)  # [num_critics, batch_size]
        loss = ((q_values - targets) ** 2).mean(dim=1).sum()
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        return {"critic_loss": loss.detach()}

    def update_target(self) -> None:
        with torch.no_grad():
            for target, source in zip(self.target_critic.parameters(), self.critic.parameters()):
                target.lerp_(source, self.tau)  # (1 - tau) * target + tau * source, as CORL's soft_update

    def update(self, dataset: TorchBatch, batch_size: int) -> dict[str, torch.Tensor]:
        batch = self.sample_batch(dataset, batch_size)
        # CORL's order: alpha -> actor -> critic -> target
        info = self.update_alpha(batch)
        alpha = self.log_alpha.detach().exp()
        info.update(self.update_actor(batch, alpha))
        info.update(self.update_critic(batch, alpha))
        self.update_target()
        return info

    def train_epoch(self, dataset: TorchBatch, batch_size: int, num_updates: int) -> dict[str, torch.Tensor]:
        """`num_updates` updates from a Python loop, then one wait for the device."""
        for _ in range(num_updates):
            info = self.update(dataset, batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return info
