"""The one place that builds environments.

The wrapper stack, read bottom (emulator) to top (agent):

    gym_super_mario_bros.make("SuperMarioBros-W-S-v0")   raw NES, one frame per step, byte actions
    FrameRecorder       (optional) copies every emulator frame for a video
    StickyButtons       (optional) frame-level sticky actions, as in docs/protocol.md
    NoopStart           (optional) 0..N random no-op frames at reset
    --- everything above here is the "base env"; everything below is the policy's own preprocessing ---
    ActionSet           a discrete action set -> controller byte
    SkipFrame           repeat the action for 4 frames, summing reward (the tutorial's SkipFrame)
    GrayResize          grayscale + resize to 84x84, uint8
    FrameStackObservation   the last 4 frames, shape (4, 84, 84), uint8

`wrap_preprocessing` applies the second half to *any* base env, which is how
`Policy.wrap` lets an outside evaluator put its own perturbations underneath.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation
from PIL import Image

from mario_rl.errors import UserError

WORLDS = range(1, 9)
STAGES_PER_WORLD = range(1, 5)
STAGES: tuple[str, ...] = tuple(f"{w}-{s}" for w in WORLDS for s in STAGES_PER_WORLD)
"""All 32 stages of Super Mario Bros, "1-1" ... "8-4"."""
GAME = "game"
"""The whole game from 1-1 with three lives, as one environment."""

ACTION_SETS: dict[str, list[list[str]]] = {
    # The PyTorch tutorial's two actions: walk right, jump right.
    "right": [["right"], ["right", "A"]],
    "right_only": [["NOOP"], ["right"], ["right", "A"], ["right", "B"], ["right", "A", "B"]],
    "simple": [
        ["NOOP"],
        ["right"],
        ["right", "A"],
        ["right", "B"],
        ["right", "A", "B"],
        ["A"],
        ["left"],
    ],
    "complex": [
        ["NOOP"],
        ["right"],
        ["right", "A"],
        ["right", "B"],
        ["right", "A", "B"],
        ["A"],
        ["left"],
        ["left", "A"],
        ["left", "B"],
        ["left", "A", "B"],
        ["down"],
        ["up"],
    ],
}

_STAGE_RE = re.compile(r"^([1-8])-([1-4])$")


def env_id(stage: str) -> str:
    """The gym-super-mario-bros id for a stage name ("1-1") or "game"; a clear error otherwise."""
    if stage == GAME:
        return "SuperMarioBros-v0"
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise UserError(f"unknown stage {stage!r}: expected W-S with W in 1..8 and S in 1..4 (e.g. 1-1), or 'game'")
    return f"SuperMarioBros-{stage}-v0"


def check_action_set(actions: str) -> list[list[str]]:
    if actions not in ACTION_SETS:
        raise UserError(f"unknown action set {actions!r}: choose one of {', '.join(ACTION_SETS)}")
    return ACTION_SETS[actions]


@dataclass(frozen=True)
class Preprocessing:
    """What a policy sees and does; stored in every policy file so `Policy.wrap` can rebuild it."""

    actions: str = "right"
    """action set name: right (the tutorial's two), right_only, simple or complex"""
    frame_skip: int = 4
    """emulator frames per agent step; the rewards of the skipped frames are summed"""
    frame_size: int = 84
    """observations are grayscale frames resized to frame_size x frame_size"""
    frame_stack: int = 4
    """how many of the latest frames one observation holds"""

    def __post_init__(self):
        check_action_set(self.actions)
        for name in ("frame_skip", "frame_size", "frame_stack"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


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


# --- agent-level wrappers (the policy's preprocessing) ---

# NES controller bits, as nes-py lays them out.
BUTTONS = {
    "right": 0x80,
    "left": 0x40,
    "down": 0x20,
    "up": 0x10,
    "start": 0x08,
    "select": 0x04,
    "B": 0x02,
    "A": 0x01,
    "NOOP": 0x00,
}


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
        from mario_rl.curriculum import DEMO_STRIDE

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


RETRY_TRAIL = 8
"""states kept along an episode for retries (one every DEMO_STRIDE frames: 128 frames back)"""
RETRY_KEEP = 64
"""states before recent deaths each env keeps to retry from; older ones make way. A nes-py snapshot
takes about 256 KB (measured: 5,000 of them raised the peak RSS by 1.25 GB), so with the trail an env
holds at most about 18 MB of them: 290 MB for 16 envs"""


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
    """Every reset restores one emulator state (`demo_state`) instead of the stage's start.

    For evaluating from a point along a demonstration (`mario-rl eval --from-frame`): where along a
    stage a policy fails, measured with sticky actions. Wrap it directly on the raw game, under
    StickyButtons and FrameRecorder, so that a video starts at that state.
    """

    def __init__(self, env: gym.Env, state: list):
        super().__init__(env)
        self.state = state  # a _Snapshots list: it keeps alive the emulator the snapshot came from

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        return restore_state(self.env, self.state[-1])


def demo_state(demo: dict, frame: int) -> list:
    """The emulator state after the first `frame` frames of a demonstration, for StartFrom."""
    n = len(demo["frames"])
    if not 0 < frame < n:
        raise UserError(
            f"the frame to start from must be in 1..{n - 1} (the demonstration has {n} frames), got {frame}"
        )
    return demo_snapshots(None, {**demo, "frames": demo["frames"][: frame + 1]}, stride=frame)


def demo_snapshots(base: gym.Env | None, demo: dict, stride: int = 0) -> list:
    """Emulator snapshots every `stride` frames along a demonstration, replayed on `base` (a raw game env;
    None: a new one). A snapshot loads into any emulator of the same stage, a forked process's included."""
    from mario_rl.curriculum import DEMO_STRIDE

    stride = stride or DEMO_STRIDE
    if base is None:
        import gym_super_mario_bros

        base = gym_super_mario_bros.make(env_id(demo["stage"])).unwrapped
    base.reset(seed=demo["seed"])
    snapshots = _Snapshots([base.dump_state()])
    # nes-py's snapshots point into the emulator that took them: loading one after that emulator
    # is freed crashes (measured: a segfault), so the list keeps it alive.
    snapshots.source = base
    for i, b in enumerate(demo["frames"][:-1]):  # never a snapshot at the (terminal) flag frame
        _, _, terminated, truncated, _ = base.step(int(b))
        if terminated or truncated:
            raise UserError(f"the demonstration ends at frame {i + 1}, before its last frame")
        if (i + 1) % stride == 0:
            snapshots.append(base.dump_state())
    return snapshots


class _Snapshots(list):
    """A list of emulator snapshots that holds on to the emulator they came from (`source`)."""

    source: gym.Env | None = None


def action_bytes(actions: str) -> list[int]:
    """The controller byte of each action of an action set."""
    return [sum(BUTTONS[b] for b in combo) for combo in check_action_set(actions)]


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
    """RGB screen -> grayscale -> bilinear resize to size x size, uint8 throughout.

    Grayscale comes from nes-py's native luma copy when the observation is the
    emulator's own screen buffer (no RGB copy); any other RGB frame (an outside
    evaluator's wrapper may hand us its own array) goes through Pillow. Pillow also
    does the resize: an antialiased bilinear filter like the tutorial's torchvision
    Resize, without a float tensor round trip.
    """

    def __init__(self, env: gym.Env, size: int):
        gym.utils.RecordConstructorArgs.__init__(self, size=size)
        super().__init__(env)
        self.size = int(size)
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size), np.uint8)
        base = env.unwrapped
        self._screen = getattr(base, "screen", None)
        self._native_gray = self._screen is not None and hasattr(base, "observation")
        self._gray = np.empty(self._screen.shape[:2], np.uint8) if self._native_gray else None

    def observation(self, obs):
        if self._native_gray and obs is self._screen:
            gray = Image.fromarray(self.env.unwrapped.observation("grayscale", output=self._gray))
        else:
            gray = Image.fromarray(np.ascontiguousarray(obs)).convert("L")
        return np.asarray(gray.resize((self.size, self.size), Image.BILINEAR))


def wrap_preprocessing(env: gym.Env, pre: Preprocessing) -> gym.Env:
    """Apply a policy's preprocessing to a base env whose actions are controller bytes."""
    env = ActionSet(env, pre.actions)
    env = SkipFrame(env, pre.frame_skip)
    env = GrayResize(env, pre.frame_size)
    return FrameStackObservation(env, pre.frame_stack)


def make_base_env(
    stage: str = "1-1",
    *,
    sticky: float = 0.0,
    noop_max: int = 0,
    render_mode: str | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
    demo: dict | None = None,
    demo_states: list | None = None,
    start_state: list | None = None,
) -> gym.Env:
    """The raw game with the protocol's perturbations: byte actions, one emulator frame per step.

    With a `demo`, resets can also start from states along it (DemoStart), the snapshots
    `demo_states` if given (`demo_snapshots`), else its own replay of the demonstration.
    With a `start_state` (`demo_state`), every reset starts there instead (StartFrom).
    """
    import gym_super_mario_bros  # registers the ids; imported late because it loads ROM code

    env = gym_super_mario_bros.make(env_id(stage), render_mode=render_mode)
    if start_state is not None:
        env = StartFrom(env, start_state)
    if frame_sink is not None:
        env = FrameRecorder(env, frame_sink)
    if sticky:
        env = StickyButtons(env, sticky)
    if noop_max:
        env = NoopStart(env, noop_max)
    if demo is not None:
        env = DemoStart(env, demo, snapshots=demo_states)
    return env


def make_env(
    stage: str = "1-1",
    actions: str = "right",
    *,
    frame_skip: int = 4,
    frame_size: int = 84,
    frame_stack: int = 4,
    sticky: float = 0.0,
    noop_max: int = 0,
    render_mode: str | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
    demo: dict | None = None,
    demo_states: list | None = None,
) -> gym.Env:
    """A Gymnasium env for one stage ("1-1" ... "8-4") or the whole game ("game").

    Observations are uint8 arrays of shape (frame_stack, frame_size, frame_size);
    actions index `ACTION_SETS[actions]`. `sticky` and `noop_max` are the
    evaluation protocol's perturbations, applied at the frame level underneath.
    """
    pre = Preprocessing(actions, frame_skip, frame_size, frame_stack)
    base = make_base_env(
        stage,
        sticky=sticky,
        noop_max=noop_max,
        render_mode=render_mode,
        frame_sink=frame_sink,
        demo=demo,
        demo_states=demo_states,
    )
    return wrap_preprocessing(base, pre)


# --- vector environments ---


def level_x(x_pos: int) -> int:
    """Mario's x in the level from the game's x_pos (page * 256 + x on the page), with wrapped pages read as
    negative. 4-4's wrong turns move Mario back 1,024 pixels, and from x 998 that is page 255, x_pos 65,510:
    a 4-4 training run's "x reached" read 65,535. The game's own reward keeps the raw value (lean_game)."""
    return x_pos - 0x10000 if x_pos >= 0xF000 else x_pos


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


_STAGE_OVER_ENEMIES = (0x2D, 0x31)  # Bowser and the flagpole, as gym-super-mario-bros reads them
_GAME_STATE = (
    "_get_reward",
    "_get_terminated",
    "_get_info",
    "ram",
    "is_single_stage_env",
    "_x_position_max",
    "_time_last",
    "_score_last",
    "_coins_last",
    "_status_last",
    "_completion_rewarded",
)


def _digits(m: bytes, address: int, n: int) -> int:
    """A number the game keeps as one decimal digit per byte (score, clock, coins)."""
    v = 0
    for d in m[address : address + n]:
        if d > 9:  # not a digit: decode as gym-super-mario-bros does, by string concatenation
            return int("".join(str(d) for d in m[address : address + n]))
        v = v * 10 + d
    return v


def _flag(m: bytes) -> bool:
    """gym-super-mario-bros' _flag_get: end of world, or the flagpole/Bowser loaded while Mario slides."""
    return m[0x0770] == 2 or (any(m[a] in _STAGE_OVER_ENEMIES for a in range(0x16, 0x1B)) and m[0x1D] == 3)


def _dying_or_dead(m: bytes) -> bool:
    return m[0x0E] in (0x0B, 0x06) or m[0xB5] > 1


def lean_game(env: gym.Env) -> gym.Env:
    """Make the game's per-frame reward, termination and info cheap; same values, fewer RAM reads.

    gym-super-mario-bros computes its reward, termination and a ~40-key info dict after
    every emulator frame through ~100 property reads of single RAM bytes (score, clock and
    coins decoded through strings), and the frame skip throws three of every four infos
    away: about a tenth of a frame's time, and in a vector env the emulator's time is all
    there is. There is no option for it, so this replaces the env's `_get_reward`,
    `_get_terminated` and `_get_info` on this instance with versions that read one copy
    of the RAM per call. The reward and termination are the game's own, value for value
    (the same sums in the same order; a test compares whole trajectories, a cleared stage
    included); the info keeps only x_pos and flag_get, what EpisodeStats reads. The
    reward's per-component diagnostics are not kept. If a future version renames these
    internals, the env is left as it is.
    """
    base = env.unwrapped
    if not all(hasattr(base, name) for name in _GAME_STATE):
        return env
    ram = base.ram

    def reward() -> float:
        m = ram.tobytes()
        x = m[0x6D] * 0x100 + m[0x86]
        progress = x - base._x_position_max
        if progress <= 0:
            progress = 0
        else:
            base._x_position_max = x
            if progress > 5:
                progress = 0
        t = _digits(m, 0x07F8, 3)
        clock, base._time_last = min(t - base._time_last, 0), t
        s = _digits(m, 0x07DE, 6)
        score, base._score_last = s - base._score_last, s
        c = _digits(m, 0x07ED, 2)
        coins, base._coins_last = c - base._coins_last, c
        if coins < -50:
            coins += 100
        p = min(m[0x0756], 2)
        powerup, base._status_last = (p - base._status_last) * 5, p
        completion = 0
        if _flag(m) and not base._completion_rewarded:
            base._completion_rewarded, completion = True, 50
        total = 0.0
        for part in (
            progress,
            clock,
            score / 100 if score > 0 else 0,
            coins * 5 if coins > 0 else 0,
            powerup,
            completion,
            -25 if _dying_or_dead(m) else 0,
        ):
            total += float(part)
        return total

    def terminated() -> bool:
        m = ram.tobytes()
        if base.is_single_stage_env:
            return _dying_or_dead(m) or _flag(m)
        return m[0x075A] == 0xFF

    def info() -> dict:
        m = ram.tobytes()
        return {"x_pos": m[0x6D] * 0x100 + m[0x86], "flag_get": _flag(m)}

    base._get_reward, base._get_terminated, base._get_info = reward, terminated, info
    return env


def _vector_worker_env(
    stage: str, actions: str, sticky: float, noop_max: int, demo: dict | None = None, demo_states: list | None = None
) -> gym.Env:
    return EpisodeStats(
        lean_game(make_env(stage, actions, sticky=sticky, noop_max=noop_max, demo=demo, demo_states=demo_states))
    )


class EnvGroup(gym.Env):
    """`k` envs stepped one after another in one process, which an AsyncVectorEnv sees as one env.

    Written by hand because neither Gymnasium's AsyncVectorEnv nor SB3's SubprocVecEnv runs
    several envs per process, and on a 2-core machine 16 processes of one env spend their time
    in pipe round trips and context switches (docs/performance.md). Its observation is the k
    observations stacked; rewards, ends and the k envs' own (vector) info travel in info["group"],
    and it never ends itself: each env inside resets on its own (same-step autoreset).
    `GroupedVectorEnv` turns a set of groups back into one vector env.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        self.inner = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.k = len(env_fns)
        single = self.inner.single_observation_space
        self.observation_space = gym.spaces.Box(0, 255, (self.k, *single.shape), single.dtype)
        self.action_space = gym.spaces.MultiDiscrete([self.inner.single_action_space.n] * self.k)

    def reset(self, *, seed=None, options=None):
        seeds = None if seed is None else [seed * self.k + j for j in range(self.k)]
        obs, info = self.inner.reset(seed=seeds, options=options)
        return obs, {"group": (None, info)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return obs, 0.0, False, False, {"group": ((reward, terminated, truncated), info)}

    def call_inner(self, name: str, *args, **kwargs) -> tuple:
        return self.inner.call(name, *args, **kwargs)

    def close(self):
        self.inner.close()


def _concat_infos(infos: list[dict], k: int) -> dict:
    """Vector infos of groups of k envs (arrays of length k, "_key" masks, nested dicts) -> one vector info."""
    out = {}
    for key in dict.fromkeys(key for info in infos for key in info):
        parts = [info.get(key) for info in infos]
        first = next(p for p in parts if p is not None)
        if isinstance(first, dict):
            out[key] = _concat_infos([p if p is not None else {} for p in parts], k)
        else:
            blank = np.zeros((k, *first.shape[1:]), first.dtype)  # an absent key: masked out (False)
            out[key] = np.concatenate([p if p is not None else blank for p in parts])
    return out


class GroupedVectorEnv(gym.vector.VectorEnv):
    """One vector env over `EnvGroup` processes of k envs each (env i is env i % k of group i // k).

    With `parts` > 1 the groups are split into that many AsyncVectorEnvs that step
    independently: `step_part_async(p, actions)` sends part p its actions and
    `step_part_wait(p)` collects its step, so that a learner can pick one part's
    actions while the other parts' emulators run (EnvPool's asynchronous mode does the
    same). `parts` lists each part's env indices as a slice. `step` steps every part.
    """

    def __init__(self, group_fns: list[Callable[[], gym.Env]], k: int, parts: int = 1):
        if parts < 1 or len(group_fns) % parts:
            raise UserError(f"{len(group_fns)} env groups cannot be split into {parts} parts")
        n = len(group_fns) // parts
        self._parts = [
            gym.vector.AsyncVectorEnv(
                group_fns[i * n : (i + 1) * n], shared_memory=True, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
            )
            for i in range(parts)
        ]
        self.k, self._groups_per_part, self.num_envs = k, n, len(group_fns) * k
        self.parts = tuple(slice(i * n * k, (i + 1) * n * k) for i in range(parts))
        space = self._parts[0].single_observation_space
        self.single_observation_space = gym.spaces.Box(0, 255, space.shape[1:], space.dtype)
        self.single_action_space = gym.spaces.Discrete(int(self._parts[0].single_action_space.nvec[0]))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def _flat(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(-1, *obs.shape[2:])

    def reset(self, *, seed=None, options=None):
        for p, part in enumerate(self._parts):
            # Group g gets seed + g whatever the parts, so that env i's seed depends on i alone.
            part.reset_async(seed=None if seed is None else seed + p * self._groups_per_part, options=options)
        results = [part.reset_wait() for part in self._parts]
        infos = [inner for _, info in results for _, inner in info["group"]]
        return np.concatenate([self._flat(obs) for obs, _ in results]), _concat_infos(infos, self.k)

    def step_part_async(self, p: int, actions) -> None:
        self._parts[p].step_async(np.asarray(actions).reshape(-1, self.k))

    def step_part_wait(self, p: int):
        """The step of part p's envs: (obs, rewards, terminated, truncated, info), each over those envs only."""
        obs, _, _, _, info = self._parts[p].step_wait()
        outs, infos = zip(*info["group"])
        rewards, terminated, truncated = zip(*outs)
        return (
            self._flat(obs),
            np.concatenate(rewards),
            np.concatenate(terminated),
            np.concatenate(truncated),
            _concat_infos(list(infos), self.k),
        )

    def step(self, actions):
        actions = np.asarray(actions)
        for p, part in enumerate(self.parts):
            self.step_part_async(p, actions[part])
        results = [self.step_part_wait(p) for p in range(len(self.parts))]
        if len(results) == 1:
            return results[0]
        obs, rewards, terminated, truncated = (np.concatenate(x) for x in zip(*(r[:4] for r in results)))
        # Each part's info is already one vector info; a part's arrays cover its envs only.
        infos = _concat_infos([r[4] for r in results], self.num_envs // len(self.parts))
        return obs, rewards, terminated, truncated, infos

    def call(self, name: str, *args, **kwargs) -> tuple:
        return tuple(
            r for part in self._parts for group in part.call("call_inner", name, *args, **kwargs) for r in group
        )

    def close_extras(self, **kwargs):
        for part in self._parts:
            part.close(**kwargs)


def make_vec_env(
    stage: str = "1-1",
    num_envs: int = 2,
    actions: str = "right",
    *,
    sticky: float = 0.0,
    noop_max: int = 0,
    asynchronous: bool = True,
    demo: dict | None = None,
    per_process: int = 0,
    parts: int = 1,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of make_env in emulator processes, observations in shared memory.

    `per_process` envs share a process (`EnvGroup`); 0 picks one process per core when
    num_envs divides evenly, else one process per env. With `parts` > 1 the envs
    step in that many independent parts (a `GroupedVectorEnv`, see its
    step_part_async), one process per core in each. Autoreset happens in the same
    step (Gymnasium's SAME_STEP mode): when an episode ends, the returned observation
    is already the next episode's first one; the finished episode's statistics are in
    info["final_info"], read them with `finished_episodes(info)`.
    """
    import multiprocessing
    import os
    from functools import partial

    env_id(stage)
    check_action_set(actions)
    if num_envs < 1:
        raise UserError(f"num_envs must be positive, got {num_envs}")
    if per_process < 0 or (per_process and num_envs % per_process):
        raise UserError(f"per_process must divide num_envs ({num_envs}), got {per_process}")
    if parts < 1 or num_envs % parts or (per_process and (num_envs // per_process) % parts):
        raise UserError(f"parts must divide num_envs ({num_envs}) and the number of processes, got {parts}")
    states = None
    if demo is not None and (not asynchronous or multiprocessing.get_start_method() == "fork"):
        # Replay the demonstration once here rather than in every worker (16 replays of 1-1's
        # 4,620 frames took a minute and a half on 2 cores); forked workers inherit the snapshots,
        # which cannot be pickled for other start methods.
        states = demo_snapshots(None, demo)
    fns = [partial(_vector_worker_env, stage, actions, sticky, noop_max, demo, states) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if not asynchronous:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    if not per_process:
        cores = os.cpu_count() or 1
        per_part = num_envs // parts
        per_process = per_part // cores if per_part > cores and per_part % cores == 0 else 1
    # The platform's default start method (fork on Linux): workers start fast and scripts need
    # no __main__ guard; a worker never runs torch, so forking the learner's threads is harmless.
    if per_process == 1 and parts == 1:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=True, autoreset_mode=mode)
    groups = [partial(EnvGroup, fns[i : i + per_process]) for i in range(0, num_envs, per_process)]
    return GroupedVectorEnv(groups, per_process, parts)


def finished_episodes(info: dict) -> list[tuple[int, dict]]:
    """(env index, {"r", "l", "x", "flag"}) for each episode that ended in this vector step."""
    final = info.get("final_info")
    if not final or "episode" not in final:
        return []
    mask = final.get("_episode", info.get("_final_info"))
    return [(int(i), {k: v[i].item() for k, v in final["episode"].items()}) for i in np.flatnonzero(mask)]
