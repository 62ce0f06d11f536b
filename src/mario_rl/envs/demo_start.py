"""DemoStart: episodes that start from states along a demonstration, or shortly before recent deaths."""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

from mario_rl.envs.wrappers import restore_state

RETRY_TRAIL = 8
"""states kept along an episode for retries (one every DEMO_STRIDE frames: 128 frames back)"""
RETRY_KEEP = 64
"""states before recent deaths each env keeps to retry from; older ones make way. A nes-py snapshot
takes about 256 KB (measured: 5,000 of them raised the peak RSS by 1.25 GB), so with the trail an env
holds at most about 18 MB of them: 290 MB for 16 envs"""


class DemoStart(gym.Wrapper):
    """Start episodes from states along a demonstration (Salimans and Chen, 2018), or shortly before the
    agent's own recent deaths ("retries").

    The demonstration is replayed once, keeping a snapshot every `stride` frames (or `snapshots` from
    `demo_snapshots`). A reset restores one of them, picked from the window of `set_demo_window(lo, hi,
    behind, retry, weights)`, or is an ordinary reset (`p_reset`, or while the window is empty).
    info["demo_start"] is the start frame (0: a real reset, -1: a retry). An episode from a demonstration
    state is truncated after twice the frames the demonstration took from there, plus `slack`. Wrap it
    above StickyButtons and NoopStart, so the perturbations apply after a restored start too.
    Why each part is there: docs/design.md ("The start curriculum").
    """

    def __init__(
        self,
        env: gym.Env,
        demo: dict,
        stride: int = 0,
        p_reset: float = 0.1,
        slack: int = 600,
        snapshots: list | None = None,
    ):
        # Imported here: mario_rl.demonstration imports this package.
        from mario_rl.demonstration import DEMO_STRIDE, demo_snapshots

        super().__init__(env)
        stride = stride or DEMO_STRIDE
        self.length, self.slack = len(demo["frames"]), int(slack)
        self._budget = None  # frames left to this episode, when it started from the demonstration
        self.stride, self.p_reset = int(stride), float(p_reset)
        self.snapshots = snapshots if snapshots is not None else demo_snapshots(env.unwrapped, demo, self.stride)
        self.window, self.behind, self.retry, self.weights = (0, -1), 0.0, 0.0, None
        self._rng = np.random.default_rng()
        self._frame, self._own = 0, True
        self._trail: deque = deque(maxlen=RETRY_TRAIL)  # this episode's latest states, `stride` frames apart
        self._retries: deque = deque(maxlen=RETRY_KEEP)  # states shortly before recent deaths

    def set_demo_window(
        self, lo: int, hi: int, behind: float = 0.0, retry: float = 0.0, weights: list[float] | None = None
    ) -> None:
        """Start from states lo..hi (`behind` of the time from any after lo), or, with `weights` (one
        probability per snapshot, curriculum.StartPriorities), from any state, drawn by those weights."""
        self.window, self.behind, self.retry = (int(lo), int(hi)), float(behind), float(retry)
        if weights is not None and len(weights) != len(self.snapshots):
            raise ValueError(f"{len(weights)} weights for {len(self.snapshots)} start states")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 3])
        obs, info = self.env.reset(seed=seed, options=options)
        self._frame = 0
        self._trail.clear()
        lo, hi = self.window
        start = 0
        if self._rng.random() < self.p_reset:
            self._budget = None
        elif self._retries and self._rng.random() < self.retry:
            retry = self._retries[int(self._rng.integers(len(self._retries)))]
            (obs, info), start = restore_state(self.env, retry), -1
            self._budget = self.slack
        elif self.weights is not None or hi >= lo:
            if self.weights is not None:
                i = int(self._rng.choice(len(self.snapshots), p=self.weights))
            elif self._rng.random() < self.behind:
                i = int(self._rng.integers(lo, len(self.snapshots)))
            else:
                i = int(self._rng.integers(lo, hi + 1))
            (obs, info), start = restore_state(self.env, self.snapshots[i]), i * self.stride
            self._budget = 2 * (self.length - start) + self.slack
        else:
            self._budget = None
        self._own = start <= 0  # a real reset or a retry: the agent's own states, not the demonstration's
        return obs, {**info, "demo_start": start}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._budget is not None:
            self._budget -= 1
            truncated = truncated or self._budget <= 0
        if self.retry and self._own:
            # A snapshot every `stride` frames costs about 20 us against about 1 ms per frame.
            self._frame += 1
            if terminated and not info.get("flag_get", False):
                # The latest two states (1..32 frames before the death) are often past saving.
                if len(self._trail) > 2:
                    self._retries.append(self._trail[int(self._rng.integers(len(self._trail) - 2))])
            elif self._frame % self.stride == 0:
                self._trail.append(self.env.unwrapped.dump_state())
        return obs, reward, terminated, truncated, info
