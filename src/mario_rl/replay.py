"""A replay memory that stores each uint8 frame once.

The tutorial keeps (state, next_state) as two float32 tensors of 4x84x84 per
transition: 226 KB each, 22 GB for its 100k transitions. Consecutive stacked
states share three of their four frames, so this buffer keeps single 84x84 uint8
frames in a ring (7 KB each) and rebuilds stacks by index, like DQN's original
replay and dqn_zoo's. 100k transitions take about 0.7 GB.

Layout: slot j holds one frame and, if that frame is not the last of its
episode, the transition (action, reward, terminated) that led from it to the
frame in slot j+1. Each slot also remembers where its episode started, so that
stacks at the start of an episode repeat the first frame, exactly as Gymnasium's
FrameStackObservation(padding_type="reset") does at reset.
"""

from __future__ import annotations

import numpy as np


class FrameReplay:
    def __init__(self, capacity: int, frame_shape: tuple[int, int] = (84, 84), stack: int = 4):
        if capacity < 2:
            raise ValueError(f"replay capacity must be at least 2, got {capacity}")
        self.capacity = int(capacity)
        self.stack = int(stack)
        self.frames = np.zeros((self.capacity, *frame_shape), np.uint8)
        self.actions = np.zeros(self.capacity, np.int64)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.dones = np.zeros(self.capacity, np.bool_)
        self.has_next = np.zeros(self.capacity, np.bool_)  # slot j starts a stored transition
        self.episode_start = np.zeros(self.capacity, np.int64)  # absolute index of the episode's first frame
        self.total = 0  # frames ever written (absolute index of the next slot)
        self._start = 0

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        lo = max(0, self.total - self.capacity)
        idx = np.arange(lo, self.total) % self.capacity
        return int(self.has_next[idx].sum())

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.frames, self.actions, self.rewards, self.dones, self.has_next, self.episode_start)
        )

    def _write(self, frame: np.ndarray) -> int:
        j = self.total % self.capacity
        self.frames[j] = frame
        self.has_next[j] = False
        self.episode_start[j] = self._start
        self.total += 1
        return j

    def start_episode(self, obs: np.ndarray) -> None:
        """Record the first observation (a stack) of an episode; only its newest frame is kept."""
        self._start = self.total
        self._write(obs[-1])

    def add(self, action: int, reward: float, terminated: bool, next_obs: np.ndarray) -> None:
        """Record one transition from the newest stored frame to `next_obs`."""
        if self.total == 0:
            raise RuntimeError("call start_episode(obs) before add()")
        prev = (self.total - 1) % self.capacity
        self.actions[prev] = action
        self.rewards[prev] = reward
        self.dones[prev] = terminated
        self.has_next[prev] = True
        self._write(next_obs[-1])

    def _stacks(self, absolute: np.ndarray) -> np.ndarray:
        """Stacked observations (B, stack, H, W) ending at the given absolute frame indices."""
        offsets = np.arange(-self.stack + 1, 1)
        idx = absolute[:, None] + offsets[None, :]
        start = self.episode_start[absolute % self.capacity]
        idx = np.maximum(idx, start[:, None])
        return self.frames[idx % self.capacity]

    def sample(self, batch_size: int, rng: np.random.Generator):
        """Uniformly sample transitions: (states, actions, rewards, next_states, dones) as numpy arrays."""
        # The oldest usable transition needs its stack's frames still in the ring; an episode
        # start used as padding is never older than those frames, so it is in the ring too.
        lo = max(0, self.total - self.capacity + self.stack - 1)
        hi = self.total - 1  # the newest frame has no successor yet
        if len(self) < 1 or hi <= lo:
            raise RuntimeError("not enough transitions in the replay to sample")
        chosen = np.empty(0, np.int64)
        while chosen.size < batch_size:
            cand = rng.integers(lo, hi, size=2 * batch_size)
            cand = cand[self.has_next[cand % self.capacity]]
            chosen = np.concatenate([chosen, cand])
        chosen = chosen[:batch_size]
        j = chosen % self.capacity
        return (self._stacks(chosen), self.actions[j], self.rewards[j], self._stacks(chosen + 1), self.dones[j])

    # --- checkpointing: plain arrays in, plain arrays out ---

    def state_dict(self) -> dict[str, np.ndarray]:
        n = min(self.total, self.capacity)
        return {
            "frames": self.frames[:n],
            "actions": self.actions[:n],
            "rewards": self.rewards[:n],
            "dones": self.dones[:n],
            "has_next": self.has_next[:n],
            "episode_start": self.episode_start[:n],
            "counters": np.array([self.total, self._start], np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n = state["frames"].shape[0]
        if n > self.capacity:
            raise ValueError(f"checkpoint replay holds {n} frames, more than capacity {self.capacity}")
        for name in ("frames", "actions", "rewards", "dones", "has_next", "episode_start"):
            getattr(self, name)[:n] = state[name]
        self.total, self._start = (int(x) for x in state["counters"])
