"""The PyTorch tutorial's own training loop, kept as a speed reference for `mario-rl bench`.

"Train a Mario-playing RL Agent" (Yuansong Feng, Suraj Subramanian, Howard Wang,
Steven Guo), in the deque-replay form most learners ran, ported only as far as
today's stack forces: Gymnasium's 5-tuple step, and a LazyFrames-like frame stack
(Gymnasium 1.x's FrameStackObservation would cast the tutorial's float frames
to uint8). Everything else is the tutorial's: torchvision transforms per frame,
float32 state tensors cached twice per transition in a deque, random.sample,
three network passes per update, its MetricLogger (a log line and four plots
every 20 episodes). Not used for training; `mario-rl train` is.

    python -m mario_rl.tutorial --steps 3000 --burnin 1000
"""

from __future__ import annotations

import argparse
import copy
import random
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box
from torch import nn


def _transforms():
    from torchvision import transforms as T  # optional (dev group): only this reference needs it

    return T


class SkipFrame(gym.Wrapper):
    def __init__(self, env, skip):
        super().__init__(env)
        self._skip = skip

    def step(self, action):
        total_reward = 0.0
        for _ in range(self._skip):
            obs, reward, done, trunk, info = self.env.step(action)
            total_reward += reward
            if done:
                break
        return obs, total_reward, done, trunk, info


class GrayScaleObservation(gym.ObservationWrapper):
    def __init__(self, env):
        super().__init__(env)
        obs_shape = self.observation_space.shape[:2]
        self.observation_space = Box(low=0, high=255, shape=obs_shape, dtype=np.uint8)

    def permute_orientation(self, observation):
        observation = np.transpose(observation, (2, 0, 1))
        return torch.tensor(observation.copy(), dtype=torch.float)

    def observation(self, observation):
        observation = self.permute_orientation(observation)
        return _transforms().Grayscale()(observation)


class ResizeObservation(gym.ObservationWrapper):
    def __init__(self, env, shape):
        super().__init__(env)
        self.shape = (shape, shape)
        self.observation_space = Box(low=0, high=255, shape=self.shape, dtype=np.uint8)

    def observation(self, observation):
        T = _transforms()
        transforms = T.Compose([T.Resize(self.shape, antialias=True), T.Normalize(0, 255)])
        return transforms(observation).squeeze(0)


class FrameStack(gym.Wrapper):
    """gym 0.26's FrameStack: a deque of frames, stacked by np.array when used (LazyFrames)."""

    def __init__(self, env, num_stack):
        super().__init__(env)
        self.frames = deque(maxlen=num_stack)
        self.num_stack = num_stack

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.num_stack):
            self.frames.append(obs)
        return LazyFrames(list(self.frames)), info

    def step(self, action):
        obs, reward, done, trunc, info = self.env.step(action)
        self.frames.append(obs)
        return LazyFrames(list(self.frames)), reward, done, trunc, info


class LazyFrames:
    def __init__(self, frames):
        self._frames = frames

    def __array__(self, dtype=None, copy=None):
        arr = np.stack([np.asarray(f) for f in self._frames])
        return arr.astype(dtype) if dtype is not None else arr


class MarioNet(nn.Module):
    def __init__(self, input_dim, output_dim):
        super().__init__()
        c, h, w = input_dim
        self.online = nn.Sequential(
            nn.Conv2d(in_channels=c, out_channels=32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(in_channels=64, out_channels=64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, output_dim),
        )
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad = False

    def forward(self, input, model):
        if model == "online":
            return self.online(input)
        elif model == "target":
            return self.target(input)


class Mario:
    def __init__(self, state_dim, action_dim, burnin=1e4):
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.device = "cpu"
        self.net = MarioNet(self.state_dim, self.action_dim).float()
        self.exploration_rate = 1
        self.exploration_rate_decay = 0.99999975
        self.exploration_rate_min = 0.1
        self.curr_step = 0
        self.memory = deque(maxlen=100000)
        self.batch_size = 32
        self.gamma = 0.9
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.00025)
        self.loss_fn = torch.nn.SmoothL1Loss()
        self.burnin = burnin
        self.learn_every = 3
        self.sync_every = 1e4

    def act(self, state):
        if np.random.rand() < self.exploration_rate:
            action_idx = np.random.randint(self.action_dim)
        else:
            state = state[0].__array__() if isinstance(state, tuple) else state.__array__()
            state = torch.tensor(state, device=self.device).unsqueeze(0)
            action_values = self.net(state, model="online")
            action_idx = torch.argmax(action_values, axis=1).item()
        self.exploration_rate *= self.exploration_rate_decay
        self.exploration_rate = max(self.exploration_rate_min, self.exploration_rate)
        self.curr_step += 1
        return action_idx

    def cache(self, state, next_state, action, reward, done):
        def first_if_tuple(x):
            return x[0] if isinstance(x, tuple) else x

        state = torch.tensor(first_if_tuple(state).__array__())
        next_state = torch.tensor(first_if_tuple(next_state).__array__())
        action = torch.tensor([action])
        reward = torch.tensor([reward])
        done = torch.tensor([done])
        self.memory.append((state, next_state, action, reward, done))

    def recall(self):
        batch = random.sample(self.memory, self.batch_size)
        state, next_state, action, reward, done = map(torch.stack, zip(*batch))
        return state, next_state, action.squeeze(), reward.squeeze(), done.squeeze()

    def td_estimate(self, state, action):
        return self.net(state, model="online")[np.arange(0, self.batch_size), action]

    @torch.no_grad()
    def td_target(self, reward, next_state, done):
        next_state_Q = self.net(next_state, model="online")
        best_action = torch.argmax(next_state_Q, axis=1)
        next_Q = self.net(next_state, model="target")[np.arange(0, self.batch_size), best_action]
        return (reward + (1 - done.float()) * self.gamma * next_Q).float()

    def update_Q_online(self, td_estimate, td_target):
        loss = self.loss_fn(td_estimate, td_target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def sync_Q_target(self):
        self.net.target.load_state_dict(self.net.online.state_dict())

    def learn(self):
        if self.curr_step % self.sync_every == 0:
            self.sync_Q_target()
        if self.curr_step < self.burnin:
            return None, None
        if self.curr_step % self.learn_every != 0:
            return None, None
        state, next_state, action, reward, done = self.recall()
        td_est = self.td_estimate(state, action)
        td_tgt = self.td_target(reward, next_state, done)
        loss = self.update_Q_online(td_est, td_tgt)
        return (td_est.mean().item(), loss)


class MetricLogger:
    """The tutorial's MetricLogger: per-step sums, per-episode means, a log line and four plots."""

    def __init__(self, save_dir):
        import matplotlib

        matplotlib.use("Agg")
        self.save_log = save_dir / "log"
        with open(self.save_log, "w") as f:
            f.write(
                f"{'Episode':>8}{'Step':>8}{'Epsilon':>10}{'MeanReward':>15}{'MeanLength':>15}"
                f"{'MeanLoss':>15}{'MeanQValue':>15}{'TimeDelta':>15}{'Time':>20}\n"
            )
        self.plots = {
            name: save_dir / f"{name}_plot.jpg" for name in ("ep_rewards", "ep_lengths", "ep_avg_losses", "ep_avg_qs")
        }
        self.ep_rewards, self.ep_lengths, self.ep_avg_losses, self.ep_avg_qs = [], [], [], []
        self.moving_avg = {name: [] for name in self.plots}
        self.init_episode()
        self.record_time = time.time()

    def log_step(self, reward, loss, q):
        self.curr_ep_reward += reward
        self.curr_ep_length += 1
        if loss:
            self.curr_ep_loss += loss
            self.curr_ep_q += q
            self.curr_ep_loss_length += 1

    def log_episode(self):
        self.ep_rewards.append(self.curr_ep_reward)
        self.ep_lengths.append(self.curr_ep_length)
        if self.curr_ep_loss_length == 0:
            ep_avg_loss = ep_avg_q = 0
        else:
            ep_avg_loss = np.round(self.curr_ep_loss / self.curr_ep_loss_length, 5)
            ep_avg_q = np.round(self.curr_ep_q / self.curr_ep_loss_length, 5)
        self.ep_avg_losses.append(ep_avg_loss)
        self.ep_avg_qs.append(ep_avg_q)
        self.init_episode()

    def init_episode(self):
        self.curr_ep_reward = 0.0
        self.curr_ep_length = 0
        self.curr_ep_loss = 0.0
        self.curr_ep_q = 0.0
        self.curr_ep_loss_length = 0

    def record(self, episode, epsilon, step):
        import matplotlib.pyplot as plt

        for name in self.plots:
            self.moving_avg[name].append(np.round(np.mean(getattr(self, name)[-100:]), 3))
        last = time.time()
        delta, self.record_time = np.round(last - self.record_time, 3), last
        m = {name: values[-1] for name, values in self.moving_avg.items()}
        print(
            f"Episode {episode} - Step {step} - Epsilon {epsilon} - Mean Reward {m['ep_rewards']} - "
            f"Mean Length {m['ep_lengths']} - Mean Loss {m['ep_avg_losses']} - Mean Q Value {m['ep_avg_qs']} - "
            f"Time Delta {delta}"
        )
        with open(self.save_log, "a") as f:
            f.write(
                f"{episode:8d}{step:8d}{epsilon:10.3f}{m['ep_rewards']:15.3f}{m['ep_lengths']:15.3f}"
                f"{m['ep_avg_losses']:15.3f}{m['ep_avg_qs']:15.3f}{delta:15.3f}{time.ctime():>20}\n"
            )
        for name, path in self.plots.items():
            plt.clf()
            plt.plot(self.moving_avg[name], label=f"moving_avg_{name}")
            plt.legend()
            plt.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--burnin", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from mario_rl.envs import make_raw

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    env = make_raw("1-1")  # the tutorial's gym_super_mario_bros.make("SuperMarioBros-1-1-v0")
    from nes_py.wrappers import JoypadSpace

    env = JoypadSpace(env, [["right"], ["right", "A"]])
    env = SkipFrame(env, skip=4)
    env = GrayScaleObservation(env)
    env = ResizeObservation(env, shape=84)
    env = FrameStack(env, num_stack=4)
    mario = Mario(state_dim=(4, 84, 84), action_dim=env.action_space.n, burnin=args.burnin)
    save_dir = Path(tempfile.mkdtemp(prefix="mario-tutorial-"))
    logger = MetricLogger(save_dir)
    t0 = time.perf_counter()
    episodes = 0
    while mario.curr_step < args.steps:
        state, _ = env.reset()
        while True:
            action = mario.act(state)
            next_state, reward, done, trunc, info = env.step(action)
            mario.cache(state, next_state, action, reward, done)
            q, loss = mario.learn()
            logger.log_step(reward, loss, q)
            state = next_state
            if done or info["flag_get"] or mario.curr_step >= args.steps:
                break
        logger.log_episode()
        if episodes % 20 == 0:
            logger.record(episode=episodes, epsilon=mario.exploration_rate, step=mario.curr_step)
        episodes += 1
    elapsed = time.perf_counter() - t0
    shutil.rmtree(save_dir, ignore_errors=True)
    print(
        f"tutorial loop: {mario.curr_step} steps, {episodes} episodes, {elapsed:.1f} s, "
        f"{mario.curr_step / elapsed:.1f} steps/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
