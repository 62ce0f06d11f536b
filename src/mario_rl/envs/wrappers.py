"""Wrappers, one change each: the protocol's perturbations and the policy's preprocessing beneath and
above the frame skip, starts from a saved state, and the statistics a learner keeps."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from PIL import Image

from mario_rl.envs.stages import ACTION_SETS, action_bytes, level_x
from mario_rl.errors import UserError

# --- frame-level wrappers (beneath the frame skip; actions are controller bytes) ---


class StickyButtons(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """On every emulator frame, with probability p send the previous frame's buttons instead.

    Machado et al. (2018) sticky actions at the frame level, as the protocol asks: under a
    4-frame skip, an agent's new action may arrive one or two frames late.
    """

    def __init__(self, env: gym.Env, p: float):
        if not 0.0 <= p < 1.0:
            raise UserError(f"sticky probability must be in [0, 1), got {p}")
        gym.utils.RecordConstructorArgs.__init__(self, p=p)
        super().__init__(env)
        self.p = float(p)
        self._rng = np.random.default_rng()
        self._last = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            # A stream of its own, so that sticking and no-op counts are independent.
            self._rng = np.random.default_rng([seed, 1])
        self._last = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self.p > 0.0 and self._rng.random() < self.p:
            action = self._last
        self._last = action
        return self.env.step(action)


class NoopStart(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """At reset, play a uniformly random number of no-op frames in [0, noop_max]."""

    def __init__(self, env: gym.Env, noop_max: int):
        if noop_max < 0:
            raise UserError(f"noop_max must be >= 0, got {noop_max}")
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max)
        super().__init__(env)
        self.noop_max = int(noop_max)
        self._rng = np.random.default_rng()
        self.last_noops = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 2])
        obs, info = self.env.reset(seed=seed, options=options)
        self.last_noops = int(self._rng.integers(0, self.noop_max + 1)) if self.noop_max else 0
        for _ in range(self.last_noops):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # cannot happen in 30 frames of 1-1, but never step a done env
                obs, info = self.env.reset()
        return obs, info


class FrameRecorder(gym.Wrapper):
    """Hands a *copy* of every emulator frame to `sink`.

    The copy matters: nes-py returns a view of its live screen buffer, so keeping
    the array itself makes a video of one repeated (last) frame.
    """

    def __init__(self, env: gym.Env, sink: Callable[[np.ndarray], None]):
        super().__init__(env)
        self.sink = sink

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.sink(np.array(obs, copy=True))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.sink(np.array(obs, copy=True))
        return obs, reward, terminated, truncated, info


# --- starting from somewhere else than the stage's start ---


def restore_state(env: gym.Env, snapshot) -> tuple:
    """Load an emulator snapshot into `env`'s game; return (screen, info) as a reset would."""
    base = env.unwrapped
    base.load_state(snapshot)
    # The game keeps reward bookkeeping (x reached, clock, score) outside the emulator;
    # its own after-reset hook re-reads it from the restored RAM.
    base._did_reset()
    return base.screen, base._get_info()


class MidGame(gym.Wrapper):
    """reset() leaves the game where it is and returns its current screen and info.

    For `mario-rl game`, which hands the one running game from policy to policy: a policy's own
    preprocessing wrapped on top starts afresh (its frame stack filled with the current screen, as at
    an episode's start) at a new stage or after a lost life, without restarting the game underneath.
    Reset the game itself on the env beneath before the first reset here.
    """

    def reset(self, *, seed=None, options=None):
        base = self.env.unwrapped
        return base.screen, base._get_info()


class StartFrom(gym.Wrapper):
    """Every reset restores one emulator state (`demonstration.demo_state`) instead of the stage's start.

    For evaluating from a point along a demonstration (`mario-rl eval --from-frame`): where along a
    stage a policy fails, measured with sticky actions. Wrap it directly on the raw game, under
    StickyButtons and FrameRecorder, so that a video starts at that state.
    """

    def __init__(self, env: gym.Env, state: list):
        super().__init__(env)
        self.state = state  # a snapshot list: it keeps alive the emulator the snapshot came from

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        return restore_state(self.env, self.state[-1])


# --- agent-level wrappers (the policy's preprocessing) ---


class ActionSet(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """A named discrete action set -> NES controller byte.

    nes-py's JoypadSpace does the same, but it cannot be rebuilt from an env spec
    (Gymnasium's check_env needs that), so this is a ten-line twin.
    """

    def __init__(self, env: gym.Env, actions: str):
        gym.utils.RecordConstructorArgs.__init__(self, actions=actions)
        super().__init__(env)
        self.actions = actions
        self.bytes = action_bytes(actions)
        self.action_space = gym.spaces.Discrete(len(self.bytes))

    def action(self, action):
        return self.bytes[int(action)]

    def get_action_meanings(self) -> list[str]:
        return [" ".join(c) for c in ACTION_SETS[self.actions]]


class SkipFrame(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Repeat an action for `skip` frames and sum the rewards (the tutorial's SkipFrame, no max-pooling)."""

    def __init__(self, env: gym.Env, skip: int):
        if skip < 1:
            raise UserError(f"frame skip must be positive, got {skip}")
        gym.utils.RecordConstructorArgs.__init__(self, skip=skip)
        super().__init__(env)
        self.skip = int(skip)

    def step(self, action):
        total = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class GrayResize(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """RGB screen -> grayscale -> the top `crop_top` rows cut -> bilinear resize to size x size, uint8 throughout.

    Grayscale comes from nes-py's native luma copy when the observation is the
    emulator's own screen buffer (no RGB copy); any other RGB frame (an outside
    evaluator's wrapper may hand us its own array) goes through Pillow. Pillow also
    does the resize: an antialiased bilinear filter like the tutorial's torchvision
    Resize, without a float tensor round trip.
    """

    def __init__(self, env: gym.Env, size: int, crop_top: int = 0):
        gym.utils.RecordConstructorArgs.__init__(self, size=size, crop_top=crop_top)
        super().__init__(env)
        self.size, self.crop_top = int(size), int(crop_top)
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size), np.uint8)
        base = env.unwrapped
        self._screen = getattr(base, "screen", None)
        self._native_gray = self._screen is not None and hasattr(base, "observation")
        self._gray = np.empty(self._screen.shape[:2], np.uint8) if self._native_gray else None

    def observation(self, obs):
        if self._native_gray and obs is self._screen:
            gray = self.env.unwrapped.observation("grayscale", output=self._gray)[self.crop_top :]
        else:
            gray = np.asarray(Image.fromarray(np.ascontiguousarray(obs)).convert("L"))[self.crop_top :]
        return np.asarray(Image.fromarray(gray).resize((self.size, self.size), Image.BILINEAR))


# --- on top: what a learner keeps ---


class EpisodeStats(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Keeps only what a learner needs from the game's large info dict, and adds episode statistics.

    info holds x_pos and flag_get every step; when an episode ends it also holds
    info["episode"] = {"r": return, "l": length, "x": x reached (level_x), "flag": 1 if cleared}.
    A vector env aggregates every info key of every env at every step, so trimming
    the ~30 keys here is what keeps that cheap.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self._r, self._l, self._x, self._start = 0.0, 0, 0, 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._r, self._l, self._x = 0.0, 0, level_x(int(info.get("x_pos", 0)))
        self._start = int(info.get("demo_start", 0))
        return obs, {"x_pos": self._x, "flag_get": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._r += float(reward)
        self._l += 1
        x, flag = int(info.get("x_pos", 0)), bool(info.get("flag_get", False))
        self._x = max(self._x, level_x(x))
        out = {"x_pos": x, "flag_get": flag}
        # A flag ends the episode for a single stage; in "game" it would go on to the next stage.
        if terminated or truncated:
            out["episode"] = {"r": self._r, "l": self._l, "x": self._x, "flag": int(flag), "start": self._start}
        return obs, reward, terminated, truncated, out
