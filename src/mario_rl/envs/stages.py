"""Stage names, action sets and the raw game of a stage."""

from __future__ import annotations

import re

import gymnasium as gym

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


def action_bytes(actions: str) -> list[int]:
    """The controller byte of each action of an action set."""
    return [sum(BUTTONS[b] for b in combo) for combo in check_action_set(actions)]


def level_x(x_pos: int) -> int:
    """Mario's x in the level from the game's x_pos (page * 256 + x on the page), with wrapped pages read as
    negative. 4-4's wrong turns move Mario back 1,024 pixels, and from x 998 that is page 255, x_pos 65,510:
    a 4-4 training run's "x reached" read 65,535. The game's own reward keeps the raw value (lean_game)."""
    return x_pos - 0x10000 if x_pos >= 0xF000 else x_pos


def make_raw(stage: str, **make_kwargs) -> gym.Env:
    """`gym_super_mario_bros.make(env_id(stage))`: the raw game, byte actions, one emulator frame per step.

    Every env of the project starts here; docs/protocol.md's replay is exactly this call. `make_kwargs`
    (render_mode) go to gym.make.
    """
    import gym_super_mario_bros  # registers the ids; imported late because it loads ROM code

    return gym_super_mario_bros.make(env_id(stage), **make_kwargs)
