"""Double DQN, as in the PyTorch tutorial "Train a Mario-playing RL Agent".

Faithful by default: MarioNet; epsilon-greedy from 1.0, multiplied by 0.99999975
per step, floor 0.1; burn-in 1e4 steps; learn every 3 steps; target sync every
1e4 steps; batch 32; gamma 0.9; Adam lr 2.5e-4; SmoothL1 loss; replay 100k.

What differs from the tutorial, and why (none of it changes the algorithm):
- the replay keeps uint8 frames, each once (replay.py): 0.7 GB instead of 22 GB;
- "terminated" (death, flag) stops bootstrapping, "truncated" does not (Gymnasium's API);
- Adam runs its fused kernel (same update, one pass over memory), and denormal
  floats are flushed to zero (tiny Adam moments otherwise slow the CPU down).

Speed-ups tried and dropped (the emulator in a thread or a process of its own, the
target network on a second thread, torch.compile, channels-last) are in docs/performance.md.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mario_rl.checkpoint import (
    load_optimizer,
    optimizer_state,
    prefixed,
    rng_state,
    set_rng_state,
    set_torch_rng,
    torch_rng_tensors,
    unprefixed,
)
from mario_rl.envs import Preprocessing, make_env
from mario_rl.errors import UserError
from mario_rl.nets import MarioNet
from mario_rl.policy import save_policy
from mario_rl.replay import FrameReplay
from mario_rl.training import Run, TrainConfig


@dataclass
class DDQNConfig(TrainConfig):
    """Double DQN with the PyTorch Mario tutorial's hyperparameters as defaults."""

    exploration_rate: float = 1.0
    """initial epsilon of epsilon-greedy exploration"""
    exploration_decay: float = 0.99999975
    """epsilon is multiplied by this after every agent step"""
    exploration_min: float = 0.1
    """epsilon never falls below this"""
    burnin: int = 10_000
    """agent steps before learning starts"""
    learn_every: int = 3
    """agent steps between gradient updates"""
    sync_every: int = 10_000
    """agent steps between copies of the online network into the target network"""
    batch_size: int = 32
    """transitions per gradient update"""
    gamma: float = 0.9
    """discount factor"""
    lr: float = 2.5e-4
    """Adam learning rate"""
    memory_size: int = 100_000
    """replay capacity in frames (about one transition each; 7 KB per frame)"""
    save_replay: bool = True
    """keep the replay in checkpoints, so a resumed run continues exactly; without it a
    resumed run refills --burnin transitions before it learns again"""

    def validate(self) -> None:
        super().validate()
        for name in ("burnin", "learn_every", "sync_every", "batch_size", "memory_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.exploration_min <= self.exploration_rate <= 1.0:
            raise UserError("need 0 <= --exploration-min <= --exploration-rate <= 1")
        if not 0.0 < self.exploration_decay <= 1.0:
            raise UserError(f"--exploration-decay must be in (0, 1], got {self.exploration_decay}")
        if not 0.0 <= self.gamma <= 1.0:
            raise UserError(f"--gamma must be in [0, 1], got {self.gamma}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")


def double_dqn_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
) -> torch.Tensor:
    """r + gamma * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a)).

    The online network chooses the next action; the target network scores it
    (van Hasselt et al., 2016). Plain DQN would take max_a Q_target(s', a).
    """
    best_next = next_q_online.argmax(dim=1, keepdim=True)
    next_value = next_q_target.gather(1, best_next).squeeze(1)
    return reward + gamma * (1.0 - terminated.float()) * next_value


class DDQNAgent:
    """The tutorial's `Mario` class: acting, remembering, learning, and its state for checkpoints."""

    def __init__(self, cfg: DDQNConfig, n_actions: int, pre: Preprocessing):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.n_actions = n_actions
        self.net_kwargs = {"in_channels": pre.frame_stack, "n_actions": n_actions, "frame_size": pre.frame_size}
        self.online = MarioNet(**self.net_kwargs)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr, fused=True)
        self.loss_fn = nn.SmoothL1Loss()
        self.replay = FrameReplay(cfg.memory_size, (pre.frame_size, pre.frame_size), pre.frame_stack)
        self.exploration_rate = cfg.exploration_rate
        self.act_rng = np.random.default_rng([cfg.seed, 11])
        self.replay_rng = np.random.default_rng([cfg.seed, 12])
        self.learn_from = cfg.burnin  # raised on a resume without replay

    # --- acting ---

    def explore(self) -> int | None:
        """Toss epsilon's coin and decay epsilon: a random action, or None for "act greedily"."""
        action = None
        if self.act_rng.random() < self.exploration_rate:
            action = int(self.act_rng.integers(self.n_actions))
        self.exploration_rate = max(self.cfg.exploration_min, self.exploration_rate * self.cfg.exploration_decay)
        return action

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> int:
        return int(self.online(torch.from_numpy(np.asarray(obs)).unsqueeze(0)).argmax(dim=1).item())

    # --- learning ---

    def learn(self, step: int) -> tuple[float, float] | None:
        """The tutorial's learn(), called after the transition of agent step `step` is stored."""
        cfg = self.cfg
        if step % cfg.sync_every == 0:
            self.target.load_state_dict(self.online.state_dict())
        if step < self.learn_from or step % cfg.learn_every != 0:
            return None
        s, a, r, s2, d = self.replay.sample(cfg.batch_size, self.replay_rng)
        s, s2 = torch.from_numpy(s), torch.from_numpy(s2)
        a, r, d = torch.from_numpy(a), torch.from_numpy(r), torch.from_numpy(d)
        q = self.online(s).gather(1, a.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            target = double_dqn_target(r, d, cfg.gamma, self.online(s2), self.target(s2))
        loss = self.loss_fn(q, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(q.detach().mean()), float(loss.detach())

    # --- checkpoints ---

    def state(self) -> tuple[dict, dict]:
        tensors = prefixed("online", self.online.state_dict()) | prefixed("target", self.target.state_dict())
        optim = optimizer_state(self.optimizer, tensors)
        tensors |= torch_rng_tensors()
        if self.cfg.save_replay:
            tensors |= prefixed("replay", self.replay.state_dict())
        state = {
            "optim": optim,
            "exploration_rate": self.exploration_rate,
            "act_rng": rng_state(self.act_rng),
            "replay_rng": rng_state(self.replay_rng),
            "learn_from": self.learn_from,
        }
        return tensors, state

    def load(self, tensors: dict, state: dict, step: int) -> None:
        self.online.load_state_dict(unprefixed("online", tensors))
        self.target.load_state_dict(unprefixed("target", tensors))
        load_optimizer(self.optimizer, state["optim"], tensors)
        set_torch_rng(tensors)
        self.exploration_rate = state["exploration_rate"]
        set_rng_state(self.act_rng, state["act_rng"])
        set_rng_state(self.replay_rng, state["replay_rng"])
        replay = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in unprefixed("replay", tensors).items()}
        if replay:
            self.replay.load_state_dict(replay)
            self.learn_from = state["learn_from"]
        else:  # documented choice: without a stored replay, refill a burn-in's worth first
            self.learn_from = step + self.cfg.burnin


class DDQN:
    """A DDQN run as the shared loop drives it (training.Learner): the agent, its env, and the step loop."""

    def __init__(self, cfg: DDQNConfig, run: Run):
        self.cfg, self.run = cfg, run
        self.pre = Preprocessing(cfg.actions)
        self.env = make_env(cfg.stage, cfg.actions, sticky=cfg.sticky, noop_max=cfg.noop_max)
        self.agent = DDQNAgent(cfg, int(self.env.action_space.n), self.pre)
        self.step = run.start_step
        if run.resumed_state is not None:
            self.agent.load(*run.resumed_state, step=self.step)
            print(f"resumed {run.dir} at step {self.step:,} (episode {run.episode})", flush=True)
        torch.set_flush_denormal(True)
        self.obs = self.new_episode()

    def new_episode(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.run.episode_seed())
        self.agent.replay.start_episode(obs)
        return obs

    def updates(self) -> Iterator[int]:
        """The tutorial's loop: act, step, remember, learn; one yield per agent step."""
        cfg, run, agent = self.cfg, self.run, self.agent
        ep_return, ep_len, ep_x, ep_loss, ep_q = 0.0, 0, 0, [], []
        last_sps_log = time.monotonic()
        while self.step < cfg.steps:
            # The next episode starts here rather than where the last one ended, so that a checkpoint
            # written in between holds none of it and a resume from there continues exactly.
            obs = self.obs if self.obs is not None else self.new_episode()
            action = agent.explore()  # the tutorial's act(): coin, then maybe the network
            if action is None:
                action = agent.greedy(obs)
            self.obs, reward, terminated, truncated, info = self.env.step(action)
            self.step += 1
            agent.replay.add(action, reward, terminated, self.obs)
            ep_return += reward
            ep_len += 1
            ep_x = max(ep_x, int(info["x_pos"]))
            out = agent.learn(self.step)
            if out is not None:
                ep_q.append(out[0])
                ep_loss.append(out[1])

            if terminated or truncated or info["flag_get"]:
                run.log_episode(
                    self.step,
                    **{"return": round(ep_return, 3)},
                    length=ep_len,
                    x=ep_x,
                    flag=int(bool(info["flag_get"])),
                    epsilon=round(agent.exploration_rate, 6),
                    loss=round(float(np.mean(ep_loss)), 6) if ep_loss else "",
                    q=round(float(np.mean(ep_q)), 6) if ep_q else "",
                )
                ep_return, ep_len, ep_x, ep_loss, ep_q = 0.0, 0, 0, [], []
                self.obs = None

            if self.step % 100 == 0 or self.step == cfg.steps:
                last_loss = ep_loss[-1] if ep_loss else None
                run.tick(self.step, episodes=run.episode, epsilon=agent.exploration_rate, loss=last_loss)
                if time.monotonic() - last_sps_log > 10:
                    run.log_scalars(self.step, "charts", SPS=run.progress.sps, epsilon=agent.exploration_rate)
                    if ep_loss:
                        run.log_scalars(self.step, "losses", td_loss=ep_loss[-1], q_values=ep_q[-1])
                    last_sps_log = time.monotonic()
            yield self.step

    def state(self) -> tuple[dict, dict]:
        return self.agent.state()

    def save_policy(self, step: int) -> Path:
        save_policy(
            self.run.policy_path,
            self.agent.online,
            algorithm="ddqn",
            network="MarioNet",
            network_kwargs=self.agent.net_kwargs,
            preprocessing=self.pre,
            stage=self.cfg.stage,
            steps=step,
        )
        return self.run.policy_path

    def greedy(self, obs: np.ndarray) -> int:
        return self.agent.greedy(obs)

    def close(self) -> None:
        self.env.close()


def train(cfg: DDQNConfig, stop: Callable[[int], bool] | None = None) -> Run:
    """Train Double DQN on one stage; resumable; returns the finished Run.

    `stop(step)`, if given, is called after every agent step; training stops early (checkpointed) when it
    returns True."""
    cfg.algo = "ddqn"
    run = Run(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run.loop(DDQN(cfg, run), stop)
    return run
