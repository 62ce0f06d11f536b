"""The whole game in one video: `SuperMarioBros-v0` from 1-1 with three lives, each stage played by its own
bundled policy, a random agent where the project ships none yet.

The game runs in one emulator from start to game over. Policies differ in action set and preprocessing,
and each was trained on episodes that start at its stage's start, so at every new stage, and after every
lost life, the stage's agent wraps the running game afresh (`MidGame` under its preprocessing): its frame
stack starts from the current screen, as at an episode's start in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from mario_rl.envs import ACTION_SETS, GAME, MidGame, Preprocessing, level_x, make_base_env, wrap_preprocessing
from mario_rl.errors import UserError
from mario_rl.evaluate import random_actor
from mario_rl.policy import bundled_policy_path, load_policy

LIVES = 3
"""lives at the start of a game; the game keeps them in RAM as 2, 1, 0, and 255 at game over"""
RANDOM_LABEL = "random: no policy yet"


@dataclass
class GameConfig:
    """Play the whole game from 1-1 with three lives, each stage with its bundled policy (a random agent where there
    is none yet), into one video with the stage, lives and agent drawn on it."""

    out: Path = Path("videos/game.mp4")
    """video to write: an MP4 and, beside it, a GIF preview of its first minute"""
    seed: int = 0
    """seed of the game's reset, the policies' sampling and the random agent"""
    max_steps: int = 0
    """stop after this many agent steps (4 frames each) even if the game goes on; 0: play until game over"""
    sticky: float = 0.0
    """frame-level sticky-action probability"""
    noop_max: int = 0
    """up to this many random no-op frames at the game's start"""
    gif: bool = True
    """also write the GIF preview (--no-gif: only the MP4)"""


class RandomAgent:
    """The fallback where a stage has no bundled policy: uniform over walk right / jump right, as
    `mario-rl play --random`. A demonstration's frames would not do: they replay one stage from its own
    start, and mid-game Mario arrives with a different clock, score, power-up and enemies."""

    label = RANDOM_LABEL
    preprocessing = Preprocessing("right")

    def __init__(self, seed: int = 0):
        self._act = random_actor(len(ACTION_SETS[self.preprocessing.actions]), seed)

    def wrap(self, base_env: gym.Env) -> gym.Env:
        return wrap_preprocessing(base_env, self.preprocessing)

    def act(self, obs: np.ndarray) -> int:
        return self._act(obs)

    def seed(self, seed: int) -> None:
        pass  # one stream for the whole game, seeded once


class PolicySchedule:
    """Which agent plays a stage: its bundled policy (loaded once) where one exists, else one random agent.

    `find` and `load` default to the bundled policies (`bundled_policy_path`, `load_policy`); tests pass fakes.
    """

    def __init__(
        self,
        seed: int = 0,
        find: Callable[[str], Path | None] = bundled_policy_path,
        load: Callable[[Path], object] = load_policy,
    ):
        self.find, self.load = find, load
        self._paths: dict[str, Path | None] = {}
        self._agents: dict[str, object] = {}
        self._random = RandomAgent(seed)

    def path(self, stage: str) -> Path | None:
        if stage not in self._paths:
            self._paths[stage] = self.find(stage)
        return self._paths[stage]

    def label(self, stage: str) -> str:
        """What the overlay says plays this stage."""
        return f"policy {stage}" if self.path(stage) is not None else RANDOM_LABEL

    def agent(self, stage: str):
        """The agent for a stage: something with wrap(base_env), act(obs) and seed(seed)."""
        path = self.path(stage)
        if path is None:
            return self._random
        if stage not in self._agents:
            self._agents[stage] = self.load(path)
        return self._agents[stage]


def lives_left(life: int) -> int:
    """Lives left from the game's life counter (2, 1, 0; 255 once the game is over)."""
    return 0 if life >= 0x80 else life + 1


class Switcher:
    """Follows the game's info step by step: the stages reached, x on each, lives lost, and when the observation
    pipeline has to start afresh (a new stage, or a lost life: a new "episode" as the policies learnt them)."""

    def __init__(self, schedule: PolicySchedule, echo: Callable[[str], None] = lambda s: None):
        self.schedule, self.echo = schedule, echo
        self.stages: list[str] = []
        self.x: dict[str, int] = {}
        self.lives = LIVES
        self.lives_lost = 0
        self._life_x = 0  # x reached in the current life, for the line saying where a life was lost
        self.events: list[str] = []
        """one line per stage started and life lost (each also echoed)"""

    @property
    def stage(self) -> str | None:
        return self.stages[-1] if self.stages else None

    def _event(self, line: str) -> None:
        self.events.append(line)
        self.echo(line)

    def update(self, info: dict):
        """Take one step's (or the reset's) info; return the agent to restart with, or None to play on."""
        stage = f"{info['world']}-{info['stage']}"
        lives = lives_left(int(info["life"]))
        restart = None
        if lives < self.lives:
            self.lives_lost += self.lives - lives
            self._event(f"  life lost on {self.stage} at x {self._life_x:,} ({lives} left)")
            restart = self.schedule.agent(stage)
        self.lives = lives  # a 1-up raises it: not a restart
        if stage != self.stage:
            self.stages.append(stage)
            path = self.schedule.path(stage)
            self._event(f"{stage}: {self.schedule.label(stage)}" + (f" ({path})" if path else ""))
            restart = self.schedule.agent(stage)
        x = level_x(int(info.get("x_pos", 0)))
        self._life_x = x if restart is not None else max(self._life_x, x)
        self.x[stage] = max(self.x.get(stage, 0), x)
        return restart if lives else None  # game over: nothing left to play


# --- the overlay ---

BAND = 13
"""height in pixels of the dark band along the frame's bottom that the overlay's text is drawn on"""
_FONT = None


def overlay_mask(text: str, width: int) -> np.ndarray:
    """The text's pixels (bool, BAND x width) in PIL's built-in bitmap font (no font files needed)."""
    global _FONT
    from PIL import Image, ImageDraw, ImageFont

    if _FONT is None:
        _FONT = ImageFont.load_default_imagefont()
    img = Image.new("L", (width, BAND))
    ImageDraw.Draw(img).text((3, 1), text, fill=255, font=_FONT)
    return np.asarray(img) > 127


def draw_overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Darken the bottom BAND rows of an RGB frame and write the mask's pixels white, in place."""
    band = frame[-BAND:]
    band //= 4
    band[mask] = 255
    return frame


class Overlay:
    """A frame sink that writes the stage, lives left and the agent onto each frame, then passes it on.

    It reads the stage and lives from the game's RAM at every frame, so the text changes on the very frame the
    game does (the agent itself switches at the next agent step, at most frame_skip - 1 frames later).
    """

    def __init__(self, sink: Callable[[np.ndarray], None], label: Callable[[str], str]):
        self.sink, self.label = sink, label
        self.game = None  # the unwrapped game; set once the env exists
        self._masks: dict[str, np.ndarray] = {}

    def text(self) -> str:
        g = self.game
        stage = f"{g._world}-{g._stage}"
        return f"{stage}  lives {lives_left(g._life)}  {self.label(stage)}"

    def __call__(self, frame: np.ndarray) -> None:
        text = self.text()
        if text not in self._masks:
            self._masks[text] = overlay_mask(text, frame.shape[1])
        self.sink(draw_overlay(frame, self._masks[text]))


# --- the game ---


def play_game(cfg: GameConfig, echo: Callable[[str], None] = lambda s: None) -> dict:
    """Play the whole game into one video; return how far it got and the files written."""
    from mario_rl.video import VideoRecorder

    if cfg.max_steps < 0:
        raise UserError(f"--max-steps must be >= 0 (0: until game over), got {cfg.max_steps}")
    schedule = PolicySchedule(cfg.seed)
    recorder = VideoRecorder(cfg.out, gif_seconds=60.0 if cfg.gif else 0.0)
    overlay = Overlay(recorder, schedule.label)
    switcher = Switcher(schedule, echo)
    start, steps, restarts = time.monotonic(), 0, 0
    try:
        base = make_base_env(GAME, sticky=cfg.sticky, noop_max=cfg.noop_max, frame_sink=overlay)
        overlay.game = base.unwrapped  # the reset's frame already goes through the overlay, which reads the RAM
        try:
            _, info = base.reset(seed=cfg.seed)
            agent = switcher.update(info)
            while True:
                if agent is not None:  # a new stage or a lost life: the stage's agent starts afresh
                    playing = agent
                    playing.seed(cfg.seed + restarts)  # a sampling policy's draws: reproducible per restart
                    restarts += 1
                    env = playing.wrap(MidGame(base))
                    obs, _ = env.reset()
                if cfg.max_steps and steps >= cfg.max_steps:
                    ended = f"stopped at --max-steps {cfg.max_steps:,}"
                    break
                obs, _, terminated, truncated, info = env.step(playing.act(obs))
                steps += 1
                agent = switcher.update(info)
                if terminated or truncated:
                    ended = "game over" if terminated else "the env's time limit stopped it"
                    break
        finally:
            base.close()
    except BaseException:
        recorder.abort()
        raise
    files = recorder.close()
    stage = switcher.stage
    summary = {
        "reached": stage,
        "x": switcher.x[stage],
        "stages": switcher.stages,
        "x_per_stage": switcher.x,
        "agents": {s: schedule.label(s) for s in switcher.stages},
        "agent_steps": steps,
        "frames": recorder.count,
        "lives_lost": switcher.lives_lost,
        "ended": ended,
        "seconds": round(time.monotonic() - start, 1),
        "files": [str(f) for f in files],
    }
    echo(format_summary(summary))
    echo("wrote " + ", ".join(summary["files"]))
    return summary


def format_summary(s: dict) -> str:
    return (
        f"reached {s['reached']} at x {s['x']:,} | {s['ended']} | {s['frames']:,} frames "
        f"({s['agent_steps']:,} agent steps, {s['frames'] / 60:.0f} s of video) | lives lost {s['lives_lost']} | "
        f"played in {s['seconds']:.0f} s"
    )
