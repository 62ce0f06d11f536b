"""Exploration over emulator save states: Go-Explore's first phase (Ecoffet et al., 2021) for any stage.

The NES emulator is deterministic and nes-py's snapshots are cheap (a dump takes
about 0.2 ms, a load 0.04 ms, against 1.9 ms per frame), so instead of learning
how to get somewhere we remember how we got there. An *archive* (mario_rl.archive)
maps a *cell*, a coarse description of where Mario is, to the best known frame
sequence that reaches it and a snapshot of the emulator there. Each round picks a cell, restores
it, and presses random buttons for a while; a cell seen for the first time, or
reached in fewer frames, is stored. Half of the rounds start from the newest cells,
a quarter from the cells on the last two screens left of the furthest x reached,
the rest from any cell; within each pool, cells chosen or seen less often are picked
more often. No reward is used: novelty drives the search, which is what gets it
through the maze castles, where going right is often wrong; the furthest x only
says where to look harder.

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
import multiprocessing as mp
import queue
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from mario_rl.archive import Explorer
from mario_rl.demonstration import load_demo, new_demo, replay, save_demo
from mario_rl.envs import check_action_set, env_id
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
    furthest_by_area: bool = False
    """furthest rounds draw an area first, evenly among those reached, then start on the last screens
    reached in it (off: the last screens of any area, which a dead-end room far to the right can hold)"""
    sooner: int = 0
    """frames: a cell reached this much sooner than its known way in becomes a frontier cell again, so the
    saving carries on to the cells after it (0: never; docs/experiments.md)"""
    start: Path | None = None
    """a demonstration JSON to go on from (e.g. an earlier search's furthest.json, same stage and seed)"""


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


def check_config(cfg: ExploreConfig) -> None:
    """A one-line UserError for options that explore cannot run with."""
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


def _start_frames(cfg: ExploreConfig) -> bytes:
    """The frames of --start (the workers follow them first), checked against the stage and seed."""
    if cfg.start is None:
        return b""
    demo = load_demo(cfg.start)
    if demo["stage"] != cfg.stage or int(demo["seed"]) != cfg.seed:
        raise UserError(
            f"--start {cfg.start} is a path on {demo['stage']} from seed {demo['seed']}, "
            f"not on {cfg.stage} from seed {cfg.seed}"
        )
    return bytes(demo["frames"])


@dataclass
class _Search:
    """What the main process knows of the workers' search."""

    status: dict[int, dict] = field(default_factory=dict)
    best_path: bytes = b""
    """the furthest path any worker has reported"""
    best_x: int = -1
    solution: bytes | None = None
    """the best path to the flag so far: fewest area changes, then fewest frames"""
    solution_changes: int = 0


def explore(cfg: ExploreConfig, echo=print) -> ExploreResult:
    """Search with one explorer per worker until the flag or the time limit."""
    check_config(cfg)
    start = _start_frames(cfg)
    workers = cfg.workers or mp.cpu_count()
    ctx = mp.get_context("fork")
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker, args=(cfg, w, inboxes[w], outbox, start), daemon=True) for w in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    search = _Search()
    try:
        _coordinate(cfg, search, procs, inboxes, outbox, t0, echo)
    finally:
        for box in inboxes:
            box.put(("stop", None))
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    elapsed = time.monotonic() - t0
    status, solution = search.status, search.solution
    if solution is not None:
        echo(
            _status_line(elapsed, status) + f" | path to the flag: {len(solution):,} frames, "
            f"{search.solution_changes} area changes"
        )
    return ExploreResult(
        cfg.stage,
        cfg.seed,
        solution is not None,
        solution if solution is not None else search.best_path,
        elapsed,
        sum(s["frames"] for s in status.values()),
        sum(s["cells"] for s in status.values()),
        max([s["best_x"] for s in status.values()], default=0),
        search.solution_changes,
    )


def _coordinate(cfg: ExploreConfig, search: _Search, procs, inboxes, outbox, t0: float, echo) -> None:
    """Collect the workers' reports into `search` until the deadline: share the best path to the flag and
    the furthest path with the workers, print progress, and after the first flag polish for a while."""
    last_share = last_print = t0
    deadline = t0 + cfg.minutes * 60
    while time.monotonic() < deadline:
        try:
            kind, worker, path, st = outbox.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise RuntimeError("every explorer process has died") from None
            continue
        search.status[worker] = st
        if kind == "solved":
            path, changes = path
            what = f"{len(path):,} frames, {changes} area change{'s' * (changes != 1)}"
            better = search.solution is None or (changes, len(path)) < (search.solution_changes, len(search.solution))
            if search.solution is None:
                now = time.monotonic()
                echo(_status_line(now - t0, search.status) + f" | flag reached: {what}")
                deadline = min(deadline, now + cfg.polish * (now - t0))
            elif better:
                echo(f"  a better path: {what}")
            if better:
                search.solution, search.solution_changes = path, changes
                for box in inboxes:
                    box.put(("solved", changes))
            continue
        if path is not None and st["best_x"] > search.best_x:
            search.best_path, search.best_x = path, st["best_x"]
        now = time.monotonic()
        if now - last_share > cfg.share_every:
            last_share = now
            for w, s in search.status.items():
                if s["best_x"] < search.best_x - 64:
                    inboxes[w].put(("follow", search.best_path))
        if now - last_print > 5.0:
            last_print = now
            echo(_status_line(now - t0, search.status))


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
