"""Building one env: the raw game, the protocol's perturbations beneath, a policy's preprocessing on top."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation

from mario_rl.envs.demo_start import DemoStart
from mario_rl.envs.stages import check_action_set, make_raw
from mario_rl.envs.wrappers import ActionSet, FrameRecorder, GrayResize, NoopStart, SkipFrame, StartFrom, StickyButtons
from mario_rl.errors import UserError


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
    crop_top: int = 0
    """rows cut off the top of the 240-row screen before resizing (32: the score bar; 0: none)"""

    def __post_init__(self):
        check_action_set(self.actions)
        for name in ("frame_skip", "frame_size", "frame_stack"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.crop_top < 240:
            raise UserError(f"crop_top must be in 0..239, got {self.crop_top}")

    def to_dict(self) -> dict:
        return asdict(self)


def wrap_preprocessing(env: gym.Env, pre: Preprocessing) -> gym.Env:
    """Apply a policy's preprocessing to a base env whose actions are controller bytes."""
    env = ActionSet(env, pre.actions)
    env = SkipFrame(env, pre.frame_skip)
    env = GrayResize(env, pre.frame_size, pre.crop_top)
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
    `demo_states` if given (`demonstration.demo_snapshots`), else its own replay of the demonstration.
    With a `start_state` (`demonstration.demo_state`), every reset starts there instead (StartFrom).
    """
    env = make_raw(stage, render_mode=render_mode)
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
    crop_top: int = 0,
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
    pre = Preprocessing(actions, frame_skip, frame_size, frame_stack, crop_top)
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
