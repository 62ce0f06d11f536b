"""Behaviour cloning from a demonstration: a warm start for PPO (`--bc-epochs`).

PPO from a demonstration's states (mario_rl.curriculum) starts from a random network:
it must find out by trial that running right and jumping at the right moment pays,
once per stretch of the stage. The demonstration already says which button it pressed
in each state, so before PPO's first update the network is fitted to those presses
(cross-entropy) and its value head to the discounted rewards that followed them.

The demonstration is one trajectory without perturbations, and a network fitted to
it alone has seen none of the states that sticky actions lead to. So the data also
holds short perturbed stretches: from every start state along the demonstration
(`demonstration.DEMO_STRIDE` frames apart) the demonstration's own buttons are played on
for `span` agent steps under frame-level sticky actions, and each observation is
labelled with the button the demonstration pressed at that moment. A delay of a frame
or two changes little over `span` steps, so the label is still mostly the right one.

This is a warm start, not the policy: the demonstration comes from a random search
(mario_rl.explore) and its presses are noisy (a quarter of 1-1's are no button at all);
PPO then trains from the cloned network as from any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from mario_rl.envs import Preprocessing


@dataclass
class CloneData:
    """Observations (N, stack, size, size) uint8, the demonstration's action indices (N,) and value
    targets (N,): the discounted, scaled rewards of the demonstration from that moment on."""

    obs: torch.Tensor
    actions: torch.Tensor
    returns: torch.Tensor


def demo_dataset(
    demo: dict,
    actions: str | Preprocessing,
    *,
    gamma: float,
    reward_scale: float,
    sticky: float = 0.25,
    span: int = 16,
    passes: int = 2,
    seed: int = 0,
) -> CloneData:
    """Observations along the demonstration with its actions as labels: the demonstration itself replayed
    through the policy's preprocessing (`actions`: an action set's name for the default one, or a whole
    Preprocessing), plus `passes` perturbed stretches of `span` agent steps from each of its start states
    (sticky actions `sticky`). `gamma` and `reward_scale` are the training run's: they make the value targets."""
    from mario_rl.demonstration import DEMO_STRIDE, demo_labels, demo_snapshots
    from mario_rl.envs import Preprocessing, StartFrom, lean_game, make_base_env, wrap_preprocessing

    pre = actions if isinstance(actions, Preprocessing) else Preprocessing(actions)
    labels = demo_labels(demo, pre.actions, pre.frame_skip)
    if DEMO_STRIDE % pre.frame_skip:
        raise ValueError("start states must fall on agent steps")

    # The clean replay from reset: observations, labels and the rewards that give the value targets.
    env = lean_game(wrap_preprocessing(make_base_env(demo["stage"]), pre))
    obs, _ = env.reset(seed=demo["seed"])
    clean_obs, rewards = [], []
    for a in labels:
        clean_obs.append(obs)
        obs, reward, terminated, truncated, _ = env.step(a)
        rewards.append(reward * reward_scale)
        if terminated or truncated:
            break
    env.close()
    returns = np.zeros(len(rewards), np.float32)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    steps = len(rewards)
    all_obs, all_act, all_ret = list(clean_obs), labels[:steps], list(returns)

    # Perturbed stretches from each start state: StartFrom restores the state on reset, the frame stack
    # starts full of that screen, as after DemoStart's starts in training.
    snapshots = demo_snapshots(None, demo, DEMO_STRIDE)
    base = make_base_env(demo["stage"], sticky=sticky, start_state=[snapshots[0]])
    env = lean_game(wrap_preprocessing(base, pre))
    start_from = base
    while not isinstance(start_from, StartFrom):
        start_from = start_from.env
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        for i, snapshot in enumerate(snapshots):
            start_from.state = [snapshot]
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            t0 = i * DEMO_STRIDE // pre.frame_skip
            for t in range(t0, min(t0 + span, steps)):
                all_obs.append(obs)
                all_act.append(labels[t])
                all_ret.append(returns[t])
                obs, _, terminated, truncated, _ = env.step(labels[t])
                if terminated or truncated:
                    break
    env.close()
    return CloneData(
        torch.from_numpy(np.stack(all_obs)),
        torch.tensor(all_act, dtype=torch.long),
        torch.tensor(np.asarray(all_ret, np.float32)),
    )


def clone(
    agent: nn.Module,
    data: CloneData,
    *,
    epochs: int,
    lr: float = 2.5e-4,
    batch: int = 256,
    vf_coef: float = 0.5,
    label_smoothing: float = 0.1,
    seed: int = 0,
) -> list[dict]:
    """Fit an ActorCritic's policy head to the labels (cross-entropy) and its value head to the returns;
    one {"policy_loss", "value_loss", "accuracy"} per epoch. Label smoothing keeps some probability on
    every action: PPO explores by sampling, and a network sure of one noisy demonstration would not."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    g = torch.Generator().manual_seed(seed)
    history = []
    n = len(data.actions)
    for _ in range(epochs):
        sums = torch.zeros(3)
        for idx in torch.randperm(n, generator=g).split(batch):
            logits, value = agent(data.obs[idx])
            pi_loss = F.cross_entropy(logits, data.actions[idx], label_smoothing=label_smoothing)
            v_loss = 0.5 * ((value - data.returns[idx]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            (pi_loss + vf_coef * v_loss).backward()
            nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()
            with torch.no_grad():
                hits = (logits.argmax(1) == data.actions[idx]).float().sum()
            sums += torch.stack([pi_loss.detach() * len(idx), v_loss.detach() * len(idx), hits])
        history.append(
            {"policy_loss": float(sums[0] / n), "value_loss": float(sums[1] / n), "accuracy": float(sums[2] / n)}
        )
    return history


SIL_VALUE_COEF = 0.01
"""weight of the self-imitation value loss against its policy loss (Oh et al. 2018, beta)"""


def sil_loss(agent: nn.Module, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, bf16: bool = False):
    """Self-imitation (Oh et al. 2018) on samples whose return beats the agent's value: -log pi(a|s) (R - V)+
    plus SIL_VALUE_COEF x (R - V)+^2 / 2, where (.)+ is max(., 0). Unlike cloning, a sample stops pulling once
    the agent expects as much from its state as the demonstration got, so the policy is free to do better.
    Returns the loss and the share of samples with R > V."""
    logits, value = agent(obs, bf16=bf16)
    gap = (returns - value).clamp(min=0)
    logprob = logits.log_softmax(1).gather(1, actions[:, None])[:, 0]
    loss = -(logprob * gap.detach()).mean() + SIL_VALUE_COEF * 0.5 * (gap**2).mean()
    return loss, (gap > 0).float().mean()


class FlagMemory:
    """The agent's own episodes that reached the flag, as (observation, action, return) samples that
    self-imitation draws from beside the demonstration's (--sil-own): the newest `capacity` samples.

    A frame stack shifts by one frame each step, so each env's running episode is kept as its first
    observation and the newest frame of each later one: a quarter of the memory of whole observations.
    Returns are the discounted, scaled rewards to the episode's end (the flag: nothing after it)."""

    def __init__(self, n_envs: int, capacity: int, gamma: float):
        self.capacity, self.gamma = capacity, gamma
        self.first: list[torch.Tensor | None] = [None] * n_envs
        self.frames: list[list[torch.Tensor]] = [[] for _ in range(n_envs)]
        self.actions: list[list[int]] = [[] for _ in range(n_envs)]
        self.rewards: list[list[float]] = [[] for _ in range(n_envs)]
        self.obs: torch.Tensor | None = None  # allocated at the first stored episode: its shape is known then
        self.act = torch.zeros(capacity, dtype=torch.long)
        self.ret = torch.zeros(capacity)
        self.size = self.pos = self.episodes = 0

    def acted(self, envs: range, obs: torch.Tensor, actions: torch.Tensor) -> None:
        """Envs `envs` chose `actions` (n,) on `obs` (n, stack, size, size)."""
        for k, i in enumerate(envs):
            if self.first[i] is None:
                self.first[i] = obs[k].clone()
            else:
                self.frames[i].append(obs[k, -1].clone())
            self.actions[i].append(int(actions[k]))

    def stepped(self, envs: range, rewards: np.ndarray, ended: np.ndarray, flags: np.ndarray) -> None:
        """Envs `envs` got their (scaled) rewards; those `ended` start anew, kept when their `flags` are set."""
        for k, i in enumerate(envs):
            self.rewards[i].append(float(rewards[k]))
            if ended[k]:
                if flags[k]:
                    self._keep(i)
                self.first[i], self.frames[i], self.actions[i], self.rewards[i] = None, [], [], []

    def _keep(self, i: int) -> None:
        first, n = self.first[i], len(self.actions[i])
        seq = torch.cat([first, torch.stack(self.frames[i])]) if self.frames[i] else first
        obs = torch.stack([seq[t : t + len(first)] for t in range(n)])
        ret, g = torch.zeros(n), 0.0
        for t in range(n - 1, -1, -1):
            g = self.rewards[i][t] + self.gamma * g
            ret[t] = g
        if self.obs is None:
            self.obs = torch.zeros((self.capacity, *first.shape), dtype=torch.uint8)
        for t in range(max(0, n - self.capacity), n):  # an episode longer than the memory keeps its end
            self.obs[self.pos], self.act[self.pos], self.ret[self.pos] = obs[t], self.actions[i][t], ret[t]
            self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.capacity, self.size + n)
        self.episodes += 1
