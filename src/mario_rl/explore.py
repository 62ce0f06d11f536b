"""Exploration over emulator save states: Go-Explore's first phase (Ecoffet et al., 2021) for any stage.

The NES emulator is deterministic and nes-py's snapshots are cheap (a dump takes
about 0.2 ms, a load 0.04 ms, against 1.9 ms per frame), so instead of learning
how to get somewhere we remember how we got there. An *archive* maps a *cell*, a
coarse description of where Mario is, to the shortest known frame sequence that
reaches it and a snapshot of the emulator there. Each round picks a cell, restores
it, and presses random buttons for a while; a cell seen for the first time, or
reached in fewer frames, is stored. Half of the rounds start from the newest cells,
a quarter from the cells on the last two screens left of the furthest x reached,
the rest from any cell; within each pool, cells chosen or seen less often are picked
more often. No reward is used: novelty drives the search, which is what gets it
through the maze castles, where going right is often wrong; the furthest x only
says where to look harder.

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

Every worker process (one per core) runs its own archive with its own random
stream. Every `share_every` seconds the main process hands the furthest path found
by any worker to the workers that are behind; they replay it from reset and add
the cells along it. After the first flag the search goes on for a while (`polish`)
and keeps the best path to the flag: fewest area changes, then fewest frames.

A found path is a *demonstration* (mario_rl.demonstration) in the format of
docs/protocol.md: one controller byte per emulator frame after `reset(seed=...)`,
replayable on a raw env. It is
evidence that a path exists, never a clear: mario_rl.curriculum and mario_rl.solve
turn it into a policy.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import queue
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from mario_rl.demonstration import load_demo, new_demo, replay, save_demo
from mario_rl.envs import action_bytes, check_action_set, env_id, lean_game, level_x, make_raw
from mario_rl.errors import UserError
from mario_rl.storage import atomic_write


@dataclass
class ExploreConfig:
    """Options of `mario-rl explore`."""

    stage: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STAGE")] = "1-1"
    """stage to explore: 1-1 ... 8-4"""
    minutes: float = 5.0
    """give up after this many minutes of wall clock"""
    workers: int = 0
    """explorer processes (0: one per core)"""
    actions: str = "complex"
    """buttons to press at random: complex has down (pipes) and up (vines)"""
    seed: int = 0
    """seed of the reset the demonstration starts from, and of the explorers' random streams"""
    frames_per_move: int = 4
    """frames each random button choice is held (the agents' frame skip)"""
    repeat_prob: float = 0.9
    """probability of keeping the previous move's buttons (long jumps need long presses)"""
    moves: int = 100
    """moves explored from a chosen cell before picking another"""
    share_every: float = 30.0
    """seconds between handing the furthest path to workers that are behind"""
    polish: float = 1.0
    """after the first flag, search on for this fraction of the time it took, keeping the best (shortest) path"""
    frontier: int = 16
    """the newest cells, from which half of the rounds start"""
    frontier_prob: float = 0.5
    """share of rounds that start from the newest cells"""
    furthest: int = 512
    """pixels: rounds of --furthest-prob start from cells at most this far left of the furthest x (512: two screens)"""
    furthest_prob: float = 0.25
    """share of rounds that start from the furthest cells (the rest start from any cell)"""
    sooner: int = 0
    """frames: a cell reached this much sooner than its known way in becomes a frontier cell again, so the
    saving carries on to the cells after it (0: never; docs/experiments.md)"""
    start: Path | None = None
    """a demonstration JSON to go on from (e.g. an earlier search's furthest.json, same stage and seed)"""


@dataclass
class Cell:
    snapshot: object
    frames: bytes
    x: int
    changes: int = 0
    """times the path to this cell changed area"""
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
        self.archive[cell_key(self.env)] = Cell(self.env.dump_state(), b"", mario_x(self.env))
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
            new = Cell(self.env.dump_state(), bytes(frames), mario_x(self.env), changes)
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
            far = self.best.x - self.cfg.furthest
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


def _worker(cfg: ExploreConfig, worker: int, inbox, outbox, start: bytes = b"") -> None:
    explorer = Explorer(cfg, worker)
    if start:
        explorer.follow(start)
    last = 0.0
    best_sent, sent_solution = -1, (1 << 62, 1 << 62)
    try:
        while True:
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg[0] == "stop":
                    return
                if msg[0] == "solved":
                    explorer.changes_bound = min(explorer.changes_bound, msg[1])
                else:
                    explorer.follow(msg[1])
            if explorer.round() and (explorer.solution_changes, len(explorer.solution)) < sent_solution:
                sent_solution = (explorer.solution_changes, len(explorer.solution))
                outbox.put(("solved", worker, (explorer.solution, explorer.solution_changes), explorer.status()))
            if time.monotonic() - last > 1.0:
                last = time.monotonic()
                status = explorer.status()
                best = explorer.best
                path = best.frames if best.x > best_sent else None
                best_sent = max(best_sent, best.x)
                outbox.put(("status", worker, path, status))
    except KeyboardInterrupt:
        return


@dataclass
class ExploreResult:
    stage: str
    seed: int
    solved: bool
    frames: bytes
    seconds: float
    frames_played: int
    cells: int
    best_x: int
    changes: int = 0
    """area changes along the path"""

    def demo(self) -> dict:
        """The demonstration in docs/protocol.md's format."""
        return new_demo(self.stage, self.seed, self.frames)


def explore(cfg: ExploreConfig, echo=print) -> ExploreResult:
    """Search with one explorer per worker until the flag or the time limit."""
    env_id(cfg.stage)
    check_action_set(cfg.actions)
    if cfg.stage == "game":
        raise UserError("explore works on one stage at a time (1-1 ... 8-4), not on game")
    if cfg.minutes <= 0 or cfg.moves <= 0 or cfg.frames_per_move <= 0 or cfg.polish < 0:
        raise UserError("--minutes, --moves and --frames-per-move must be positive, --polish >= 0")
    if (
        not 0 <= cfg.repeat_prob < 1
        or min(cfg.frontier_prob, cfg.furthest_prob) < 0
        or (cfg.frontier_prob + cfg.furthest_prob > 1)
    ):
        raise UserError(
            "--repeat-prob must be in [0, 1); --frontier-prob and --furthest-prob must be >= 0 with a sum of at most 1"
        )
    if cfg.frontier <= 0 or cfg.furthest <= 0 or cfg.sooner < 0:
        raise UserError(
            f"--frontier and --furthest must be positive and --sooner >= 0, got {cfg.frontier}, "
            f"{cfg.furthest} and {cfg.sooner}"
        )
    start = b""
    if cfg.start is not None:
        demo = load_demo(cfg.start)
        if demo["stage"] != cfg.stage or int(demo["seed"]) != cfg.seed:
            raise UserError(
                f"--start {cfg.start} is a path on {demo['stage']} from seed {demo['seed']}, "
                f"not on {cfg.stage} from seed {cfg.seed}"
            )
        start = bytes(demo["frames"])
    workers = cfg.workers or mp.cpu_count()
    ctx = mp.get_context("fork")
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker, args=(cfg, w, inboxes[w], outbox, start), daemon=True) for w in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    status: dict[int, dict] = {}
    best_path, best_x, solution, solution_changes = b"", -1, None, 0
    last_share = last_print = t0
    deadline = t0 + cfg.minutes * 60
    try:
        while time.monotonic() < deadline:
            try:
                kind, worker, path, st = outbox.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError("every explorer process has died") from None
                continue
            status[worker] = st
            if kind == "solved":
                path, changes = path
                what = f"{len(path):,} frames, {changes} area change{'s' * (changes != 1)}"
                better = solution is None or (changes, len(path)) < (solution_changes, len(solution))
                if solution is None:
                    now = time.monotonic()
                    echo(_status_line(now - t0, status) + f" | flag reached: {what}")
                    deadline = min(deadline, now + cfg.polish * (now - t0))
                elif better:
                    echo(f"  a better path: {what}")
                if better:
                    solution, solution_changes = path, changes
                    for box in inboxes:
                        box.put(("solved", changes))
                continue
            if path is not None and st["best_x"] > best_x:
                best_path, best_x = path, st["best_x"]
            now = time.monotonic()
            if now - last_share > cfg.share_every:
                last_share = now
                for w, s in status.items():
                    if s["best_x"] < best_x - 64:
                        inboxes[w].put(("follow", best_path))
            if now - last_print > 5.0:
                last_print = now
                echo(_status_line(now - t0, status))
    finally:
        for box in inboxes:
            box.put(("stop", None))
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    elapsed = time.monotonic() - t0
    frames_played = sum(s["frames"] for s in status.values())
    cells = sum(s["cells"] for s in status.values())
    if solution is not None:
        echo(
            _status_line(elapsed, status) + f" | path to the flag: {len(solution):,} frames, "
            f"{solution_changes} area changes"
        )
    return ExploreResult(
        cfg.stage,
        cfg.seed,
        solution is not None,
        solution if solution is not None else best_path,
        elapsed,
        frames_played,
        cells,
        max([s["best_x"] for s in status.values()], default=0),
        solution_changes,
    )


def _status_line(seconds: float, status: dict[int, dict]) -> str:
    frames = sum(s["frames"] for s in status.values())
    return (
        f"[{int(seconds) // 60:02d}:{int(seconds) % 60:02d}] cells {sum(s['cells'] for s in status.values()):,} | "
        f"best x {max(s['best_x'] for s in status.values())} | frames {frames:,} "
        f"({frames / max(seconds, 1e-9):,.0f}/s)"
    )


def run_explore(cfg: ExploreConfig, out: Path, video: bool = True, echo=print) -> ExploreResult:
    """explore, then write and verify: DIR/demo.json (or furthest.json), explore.json, demo.mp4/.gif."""
    from mario_rl.storage import check_writable

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out / "explore.json")
    result = explore(cfg, echo=echo)
    demo = result.demo()
    name = "demo" if result.solved else "furthest"
    if result.solved:  # a furthest path from an earlier, unsuccessful search is superseded
        for old in out.glob("furthest.*"):
            old.unlink()
    save_demo(out / f"{name}.json", demo)
    recorder = None
    if video:
        from mario_rl.video import VideoRecorder

        recorder = VideoRecorder(out / f"{name}.mp4")
    check = replay(demo, frame_sink=recorder)
    videos = [str(p) for p in recorder.close()] if recorder is not None else []
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    summary = {
        "config": config,
        "solved": result.solved,
        "verified": check["flag"],
        "replay": check,
        "seconds": round(result.seconds, 1),
        "frames_played": result.frames_played,
        "cells": result.cells,
        "best_x": result.best_x,
        "demo_frames": len(demo["frames"]),
        "area_changes": result.changes,
        "videos": videos,
    }
    atomic_write(out / "explore.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    if result.solved and not check["flag"]:
        raise RuntimeError(f"the path found does not replay to the flag: {check}")
    return result
