"""`mario-rl report RUN`: what a run's episodes.csv says about it, block by block of agent steps.

A run from a demonstration mixes three kinds of episodes (episodes.csv's `start`): from a
real reset (0), from a state along the demonstration (its frame) and retries from before
the agent's own deaths (-1). Only the first kind is what the protocol plays, so the
learning curves' x and return, which average all three, say little about how close a
run is to a pass. This table keeps them apart: per block, the share of each kind, the
clear rate of episodes from a real reset (the number `solve` waits for), and where the
failed ones got to, grouped into `bin`-pixel bins; then, over all the blocks, how often
episodes started along the demonstration reach the flag, by start frame (`frames` per
bin): which stretches of it the agent has learned. For a run with backward starts, each block
also says where the curriculum's window began at its end (replayed from the episodes, see
`_windows`). Training episodes sample at temperature 1; a protocol evaluation (`mario-rl eval`)
is still the measure of a policy.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from mario_rl.envs import level_x
from mario_rl.errors import UserError
from mario_rl.plots import read_episodes


def _start_kind(start: float) -> str:
    if math.isnan(start):
        return "unknown"  # rows written before episodes.csv had a start column's value
    return "reset" if start == 0 else "retry" if start < 0 else "demo"


def run_report(
    run: Path, block: int = 100_000, bin: int = 100, top: int = 3, since: int = 0, frames: int = 400
) -> dict:
    """Summarize a run's episodes.csv (`run` is the run folder or the file itself) in blocks of `block` steps.

    Runs without a start column (no demonstration) count every episode as a real reset."""
    if block < 1 or bin < 1 or frames < 1 or top < 0 or since < 0:
        raise UserError("--block, --bin and --frames must be positive, --top and --since at least 0")
    path = Path(run)
    path = path / "episodes.csv" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a run folder (with episodes.csv) or the file itself")
    try:
        data = read_episodes(path, extra=("flag", "start"))
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a run's episodes.csv ({type(e).__name__}: {e})") from None
    if not data:
        raise UserError(f"{path} holds no episodes yet")
    if "flag" not in data or np.isnan(data["step"]).any() or np.isnan(data["x"]).any():
        raise UserError(f"{path} is not a run's episodes.csv (it needs step, x and flag in every row)")
    has_start = "start" in data
    windows = _windows(path.parent, data) if has_start else None
    blocks: dict[int, dict] = {}
    from_demo: dict[int, list[int]] = {}  # start-frame bin: [episodes, clears]
    for i, step in enumerate(data["step"]):
        if step < since:
            continue
        kind = _start_kind(data["start"][i]) if has_start else "reset"
        b = blocks.setdefault(int(step) // block, _tally())
        b["episodes"] += 1
        b["starts"][kind] += 1
        if windows is not None:
            b["window"] = windows[i]  # the last episode's: where the window was at the block's end
        if kind == "demo":
            d = from_demo.setdefault(int(data["start"][i]) // frames * frames, [0, 0])
            d[0] += 1
            d[1] += int(data["flag"][i] > 0)
        if kind == "reset":
            if data["flag"][i] > 0:
                b["reset_clears"] += 1
            else:
                # level_x: episodes.csv from before it holds 4-4's wrapped x as 65,535.
                b["died_at"][level_x(int(data["x"][i])) // bin * bin] += 1
    rows = [_row(k * block, (k + 1) * block, b, top) for k, b in sorted(blocks.items())]
    total = _tally()
    for b in blocks.values():
        total["episodes"] += b["episodes"]
        total["reset_clears"] += b["reset_clears"]
        total["starts"].update(b["starts"])
        total["died_at"].update(b["died_at"])
    first = rows[0]["from"] if rows else since
    last = int(data["step"][-1])
    return {
        "path": str(path),
        "block": block,
        "bin": bin,
        "blocks": rows,
        "total": _row(first, last, total, top) if rows else None,
        "frames": frames,
        "from_demo": [
            {"from_frame": f, "episodes": n, "clears": c, "clear_rate": c / n}
            for f, (n, c) in sorted(from_demo.items())
        ],
    }


def _windows(folder: Path, data: dict) -> list[int | str] | None:
    """The backward curriculum's earliest start frame after each episode ("reset" once it is done: real
    resets only), replayed from the episodes as PPO recorded them (episodes.csv holds what it passed to the
    curriculum, in order); None for runs without backward starts or without the run's config.json and
    demo.json beside episodes.csv. It is a replay with today's rules and the run's latest settings, so it can
    part from what the run did: before a setting changed on a resume (`--resume-set`, a new --demo-order
    included), in runs older than those rules (the 32-episode rate, --demo-stall), and after resumes from
    checkpoints written before 2026-12-07 (which dropped the window's latest outcomes)."""
    from mario_rl.curriculum import BackwardCurriculum
    from mario_rl.demonstration import demo_starts

    try:
        cfg = json.loads((folder / "config.json").read_text())
        frames = len(json.loads((folder / "demo.json").read_text())["frames"])
        if cfg.get("demo_order") != "backward":
            return None
        curriculum = BackwardCurriculum(
            demo_starts(frames),
            back=int(cfg["demo_back"]),
            success=float(cfg["demo_success"]),
            stall=int(cfg.get("demo_stall", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a run folder with a demonstration: the table without the column
    out = []
    for start, flag in zip(data["start"], data["flag"]):
        if start == start:  # NaN: rows from before starts were recorded
            curriculum.record(int(start), flag > 0)
        out.append("reset" if curriculum.done else curriculum.start_frame)
    return out


def _tally() -> dict:
    """What a block (or all of them) counts: episodes, their starts, clears from a reset, where failures got to."""
    return {"episodes": 0, "starts": Counter(), "reset_clears": 0, "died_at": Counter()}


def _row(lo: int, hi: int, b: dict, top: int) -> dict:
    resets = b["starts"]["reset"]
    failed = resets - b["reset_clears"]
    return {
        "from": lo,
        "to": hi,
        "episodes": b["episodes"],
        "starts": dict(b["starts"]),
        "resets": resets,
        "reset_clears": b["reset_clears"],
        "reset_clear_rate": b["reset_clears"] / resets if resets else None,
        "window": b.get("window"),
        # Where failures got to, most frequent first, with the share of all failures from a reset.
        "died_at": [(x, n, n / failed) for x, n in b["died_at"].most_common(top)],
    }


def format_report(report: dict) -> str:
    bin_ = report["bin"]
    with_window = any(r.get("window") is not None for r in report["blocks"])
    lines = [
        f"{report['path']}: episodes per {report['block']:,} agent steps; clears and deaths count "
        f"episodes from a real reset (training: temperature 1)",
        f"{'steps from':>12} {'episodes':>8} {'reset/demo/retry':>17} {'clears':>9} {'rate':>5}  "
        + ("window  " if with_window else "")
        + f"failures got to x (bins of {bin_})",
    ]

    def line(r: dict, label: str) -> str:
        s = r["starts"]
        kinds = f"{s.get('reset', 0)}/{s.get('demo', 0)}/{s.get('retry', 0)}"
        rate = "-" if r["reset_clear_rate"] is None else f"{r['reset_clear_rate']:.2f}"
        died = ", ".join(f"{x}-{x + bin_ - 1} {share:.0%}" for x, _, share in r["died_at"])
        window = ""
        if with_window:  # the frame the backward window began at after the block ("-" for the total)
            w = r.get("window")
            window = "-" if w is None else w if isinstance(w, str) else f"{w:,}"
            window = f"{window:>6}  "
        return (
            f"{label:>12} {r['episodes']:>8} {kinds:>17} {r['reset_clears']:>4}/{r['resets']:<4} {rate:>5}  "
            f"{window}{died}"
        )

    lines += [line(r, f"{r['from']:,}") for r in report["blocks"]]
    if report["total"] is not None:
        t = report["total"]
        lines.append(line(t, "all"))
        unknown = t["starts"].get("unknown", 0)
        if unknown:
            lines.append(f"({unknown} episodes from before episodes.csv recorded starts are left out of the clears)")
    if report["from_demo"]:
        lines.append(
            f"episodes started along the demonstration that reached the flag (or axe), by start frame "
            f"(bins of {report['frames']}):"
        )
        lines += [
            f"{d['from_frame']:>12,} {d['clears']:>8}/{d['episodes']:<8} {d['clear_rate']:.2f}"
            for d in report["from_demo"]
        ]
    return "\n".join(lines)
