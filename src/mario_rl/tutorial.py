"""The PyTorch tutorial's own training loop, kept as a speed reference for `mario-rl bench`.

"Train a Mario-playing RL Agent" (Yuansong Feng, Suraj Subramanian, Howard Wang,
Steven Guo), in the deque-replay form most learners ran, ported only as far as
today's stack forces: Gymnasium's 5-tuple step, and a LazyFrames-like frame stack
(Gymnasium 1.x's FrameStackObservation would cast the tutorial's float frames
to uint8). Everything else is the tutorial's: torchvision transforms per frame,
float32 state tensors cached twice per transition in a deque, random.sample,
three network passes per update. Not used for training; `mario-rl train` is.

    python -m mario_rl.tutorial --steps 3000 --burnin 1000
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from collections import deque

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
            nn.Conv2d(in_channels=c, out_channels=32, kernel_size=8, stride=4), nn.ReLU(),
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=4, stride=2), nn.ReLU(),
            nn.Conv2d(in_channels=64, out_channels=64, kernel_size=3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, output_dim),
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--burnin", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import gym_super_mario_bros

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    env = gym_super_mario_bros.make("SuperMarioBros-1-1-v0")
    from nes_py.wrappers import JoypadSpace

    env = JoypadSpace(env, [["right"], ["right", "A"]])
    env = SkipFrame(env, skip=4)
    env = GrayScaleObservation(env)
    env = ResizeObservation(env, shape=84)
    env = FrameStack(env, num_stack=4)
    mario = Mario(state_dim=(4, 84, 84), action_dim=env.action_space.n, burnin=args.burnin)
    t0 = time.perf_counter()
    rewards, losses, qs, episodes = [], [], [], 0
    while mario.curr_step < args.steps:
        state, _ = env.reset()
        while True:
            action = mario.act(state)
            next_state, reward, done, trunc, info = env.step(action)
            mario.cache(state, next_state, action, reward, done)
            q, loss = mario.learn()
            rewards.append(reward)  # the tutorial's MetricLogger.log_step
            if loss is not None:
                losses.append(loss)
                qs.append(q)
            state = next_state
            if done or info["flag_get"] or mario.curr_step >= args.steps:
                break
        episodes += 1
    elapsed = time.perf_counter() - t0
    print(f"tutorial loop: {mario.curr_step} steps, {episodes} episodes, {elapsed:.1f} s, "
          f"{mario.curr_step / elapsed:.1f} steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
