"""The explorer's archive: cells of where Mario is, the best known way into each, and rounds of random
presses from them (mario_rl.explore runs one Explorer per worker process).

The cell is (area, vertical band of the screen, x // 16, y // 32, the blocks around
Mario). The area comes from the game's own area pointer, so a pipe or a maze
section that the game treats as another area gets its own cells; the blocks tell a
level with a hidden block revealed (or a brick broken) from one without; nothing
is specific to a stage.

A way into a cell is better when it changes area fewer times, then when it is
shorter. A shortest path happily takes a bonus pipe (1-1's saves about 400
frames), but a policy that learns from the path must then learn to press down on
one pipe among many, where the x reward points the other way: a route that stays
in one area is one the reward can teach. Where the stage needs a pipe, every path
has that change, and the order falls back to length.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mario_rl.envs import action_bytes, lean_game, level_x, make_raw

if TYPE_CHECKING:
    from mario_rl.explore import ExploreConfig


@dataclass
class Cell:
    snapshot: object
    frames: bytes
    x: int
    changes: int = 0
    """times the path to this cell changed area"""
    area: int = 0
    """the game's area pointer there (the cell key's first part)"""
    born: int = 0
    chosen: int = 0
    seen: int = 0

    def weight(self) -> float:
        # Go-Explore's count-based weights: fresh cells, at the frontier, dominate.
        return 1.0 / math.sqrt(self.chosen + 1) + 1.0 / math.sqrt(self.seen + 1)


def raw_env(stage: str):
    """The raw single-stage game (byte actions, one frame per step) with a lean per-frame info."""
    return lean_game(make_raw(stage)).unwrapped


def mario_x(env) -> int:
    """Mario's x in the level (envs.level_x: wrapped pages read as negative)."""
    return level_x(int(env.ram[0x6D]) * 256 + int(env.ram[0x86]))


_ROWS = np.arange(13) * 16


def blocks_near(env, x: int, reach: int = 2) -> np.ndarray:
    """The level's blocks (metatiles) in the columns within `reach` of x: 13 rows each.

    The game keeps the blocks of two screens in a ring at 0x0500 (13 rows of 16 columns per
    screen, world column w in screen (w >> 4) & 1, column w & 15); the columns around Mario
    are always on screen, hence loaded. A negative x (mario_x's wrapped pages) lands on the
    same ring columns as the raw one, since the wrap, 0x10000 // 16, is a multiple of 32.
    """
    cols = np.arange(x // 16 - reach, x // 16 + reach + 1) % 32
    return env.ram[0x0500 + (cols >> 4)[:, None] * 0xD0 + (cols & 15)[:, None] + _ROWS]


def cell_key(env) -> tuple[int, int, int, int, int]:
    ram = env.ram
    x = mario_x(env)
    # 0x0750: the area pointer; 0x00B5: vertical screen (0 above, 1 on, 2+ falling); 0x03B8: y pixel.
    # The blocks around Mario tell a changed level apart: a hidden block hit, a brick broken. In
    # 8-4 the way on is a pipe reachable only from a hidden block, and without this the state with
    # the block revealed falls in the cell of the state without it, whose path is shorter, and is
    # dropped (the search stalled at that pipe for 23 minutes). Unchanged blocks are a function of
    # x, so they split nothing.
    return (
        int(ram[0x0750]),
        min(int(ram[0x00B5]), 2),
        x // 16,
        int(ram[0x03B8]) // 32,
        zlib.crc32(blocks_near(env, x).tobytes()),
    )


@dataclass
class Explorer:
    """One archive and its search loop (runs inside a worker process, or inline for tests)."""

    cfg: ExploreConfig
    worker: int = 0
    archive: dict = field(default_factory=dict)
    frames_played: int = 0
    solution: bytes | None = None

    def __post_init__(self):
        self.env = raw_env(self.cfg.stage)
        self.env.reset(seed=self.cfg.seed)
        self.rng = np.random.default_rng([self.cfg.seed, self.worker])
        self.buttons = action_bytes(self.cfg.actions)
        key = cell_key(self.env)
        self.archive[key] = Cell(self.env.dump_state(), b"", mario_x(self.env), area=key[0])
        self.solution_changes = 0
        self.changes_bound = 1 << 30  # area changes of the best path to the flag this or any worker has
        self.births = 0

    def better_solution(self, frames: bytes, changes: int) -> bool:
        return self.solution is None or (changes, len(frames)) < (self.solution_changes, len(self.solution))

    @property
    def best(self) -> Cell:
        return max(self.archive.values(), key=lambda c: (c.x, -len(c.frames)))

    def _visit(self, frames: bytearray, changes: int) -> None:
        key = cell_key(self.env)
        cell = self.archive.get(key)
        if cell is None or (changes, len(frames)) < (cell.changes, len(cell.frames)):
            new = Cell(self.env.dump_state(), bytes(frames), mario_x(self.env), changes, area=key[0])
            if (
                cell is not None
                and changes == cell.changes
                and not (self.cfg.sooner and len(cell.frames) - len(frames) >= self.cfg.sooner)
            ):
                # Only shorter: keep the counts, so the cell is not "new" again.
                new.born, new.chosen, new.seen = cell.born, cell.chosen, cell.seen
            else:
                # New, or reached without a detour through another area, or much sooner: a frontier
                # to explore on from (otherwise the better route stops where the old one rejoins it).
                self.births += 1
                new.born = self.births
            self.archive[key] = new
        else:
            cell.seen += 1

    def round(self) -> bool:
        """Pick a cell, explore from it; True once the flag is reached."""
        cells = list(self.archive.values())
        draw = self.rng.random()
        if draw < self.cfg.frontier_prob:
            fewer = [c for c in cells if c.changes < self.changes_bound]
            if fewer:
                # Polishing a path that changes area: the detour's cells are the newest, and the
                # route without it stalls where it was when they appeared. Its frontier goes on.
                cells = fewer
            # The newest cells are where the search is making progress: without this, an archive
            # of hundreds of cells picks its frontier a fraction of a percent of the time.
            cells = sorted(cells, key=lambda c: c.born)[-self.cfg.frontier :]
        elif draw < self.cfg.frontier_prob + self.cfg.furthest_prob:
            # When the newest cells lead nowhere (a dead end, or a way on that needs a rare sequence
            # of buttons), the way on is usually on the last screens reached: 8-4's hidden block, the
            # step to its floating pipe, is 180 pixels before the end of its room, and a search with
            # one screen (256) stalled 295 pixels right of it (at x 2,692). Drawn from all of
            # ~2,000 cells, one cell comes up about once in half an hour of a worker's rounds (about
            # two a second here, at ~700 frames/s and up to 400 frames a round, half of them drawn
            # from any cell), and the search sat below that block for 26 of its 30 minutes.
            if self.cfg.furthest_by_area:
                # A room whose x lies beyond the way on (6-2's bonus coin room) otherwise holds every
                # furthest round; so first an area, evenly, then the last screens reached in it.
                areas = sorted({c.area for c in cells})
                area = areas[self.rng.integers(len(areas))]
                cells = [c for c in cells if c.area == area]
            far = max(c.x for c in cells) - self.cfg.furthest
            cells = [c for c in cells if c.x >= far]
        weights = np.array([c.weight() for c in cells])
        cell = cells[self.rng.choice(len(cells), p=weights / weights.sum())]
        cell.chosen += 1
        self.env.load_state(cell.snapshot)
        frames = bytearray(cell.frames)
        changes, area = cell.changes, int(self.env.ram[0x0750])
        button = self.buttons[self.rng.integers(len(self.buttons))]
        for _ in range(self.cfg.moves):
            if self.rng.random() > self.cfg.repeat_prob:
                button = self.buttons[self.rng.integers(len(self.buttons))]
            for _ in range(self.cfg.frames_per_move):
                _, _, terminated, truncated, info = self.env.step(button)
                frames.append(button)
                self.frames_played += 1
                if terminated or truncated:
                    break
            if info["flag_get"]:
                if self.better_solution(frames, changes):
                    self.solution, self.solution_changes = bytes(frames), changes
                    self.changes_bound = min(self.changes_bound, changes)
                return True
            if terminated or truncated:
                return False
            if int(self.env.ram[0x0750]) != area:
                changes, area = changes + 1, int(self.env.ram[0x0750])
            self._visit(frames, changes)
        return False

    def follow(self, frames: bytes) -> None:
        """Replay another worker's path from reset, adding the cells along it."""
        self.env.reset(seed=self.cfg.seed)
        played = bytearray()
        changes, area = 0, int(self.env.ram[0x0750])
        for i, b in enumerate(frames):
            _, _, terminated, truncated, _ = self.env.step(b)
            played.append(b)
            self.frames_played += 1
            if terminated or truncated:
                return
            if i % self.cfg.frames_per_move == self.cfg.frames_per_move - 1:
                if int(self.env.ram[0x0750]) != area:
                    changes, area = changes + 1, int(self.env.ram[0x0750])
                self._visit(played, changes)

    def status(self) -> dict:
        best = self.best
        return {"worker": self.worker, "cells": len(self.archive), "best_x": best.x, "frames": self.frames_played}
