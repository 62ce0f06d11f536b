"""Demonstrations: the one place that reads, writes, replays and snapshots them.

A demonstration is a path found by mario_rl.explore, in docs/protocol.md's format: one
NES controller byte per emulator frame after `make_raw(stage).reset(seed=seed)`, stored as
JSON {"format": "mario_rl.demo/1", "stage": "W-S", "seed": S, "frames": [b, ...]}. Files
written before the format field (those in demos/ and checkpoints/) are version 1. In
memory a demonstration is that dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym

from mario_rl.envs import action_bytes, env_id, level_x, make_raw
from mario_rl.errors import UserError

FORMAT = "mario_rl.demo/1"
"""the format field of the files this version writes"""
DEMO_STRIDE = 16
"""frames between the demonstration states episodes can start from"""


def new_demo(stage: str, seed: int, frames) -> dict:
    """A demonstration of `frames` (controller bytes) on `stage` from `reset(seed=seed)`."""
    return {"format": FORMAT, "stage": stage, "seed": seed, "frames": list(frames)}


def upgrade(data: dict) -> dict:
    """A demonstration as stored, in this version's format; the only migration: no format field is version 1."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    found = data.get("format", FORMAT)
    if found != FORMAT:
        raise ValueError(f"format {found!r}; this version reads {FORMAT!r}")
    return {"format": FORMAT, **data}


def check_demo(demo: dict) -> dict:
    """`demo` if it names a stage and a seed and its frames are bytes; a ValueError (or KeyError) otherwise."""
    env_id(demo["stage"])
    if not all(isinstance(b, int) and 0 <= b < 256 for b in demo["frames"]):
        raise ValueError("frames must be bytes")
    int(demo["seed"])
    return demo


def load_demo(path: Path) -> dict:
    """Read a demonstration file, of any version; any problem is a one-line UserError."""
    try:
        return check_demo(upgrade(json.loads(Path(path).read_text())))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a demonstration ({e})") from None


def save_demo(path: Path, demo: dict) -> None:
    """Write a demonstration atomically, in this version's format."""
    from mario_rl.storage import atomic_write  # imported here: storage loads torch, the env workers never do

    text = json.dumps(check_demo(upgrade(demo)), separators=(",", ":"))
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def replay(demo: dict, frame_sink=None) -> dict:
    """Replay a demonstration frame by frame on a raw env; report whether it reaches the flag.

    Follows docs/protocol.md literally: `make_raw(stage)` (`gym_super_mario_bros.make(...)`),
    `reset(seed=...)`, then one `step(byte)` per frame.
    """
    env = make_raw(demo["stage"])
    obs, info = env.reset(seed=demo["seed"])
    if frame_sink is not None:
        frame_sink(obs.copy())
    flag, x, played, ended = False, level_x(int(info["x_pos"])), 0, False
    for b in demo["frames"]:
        obs, _, terminated, truncated, info = env.step(int(b))
        played += 1
        x = max(x, level_x(int(info["x_pos"])))
        if frame_sink is not None:
            frame_sink(obs.copy())
        if info["flag_get"]:
            flag = True
        if terminated or truncated:
            ended = True
            break
    env.close()
    time_left = int(info["time"])  # the game's timer where the path ends
    return {"flag": flag, "x": x, "frames": played, "ended": ended, "of": len(demo["frames"]), "time": time_left}


def demo_labels(demo: dict, actions: str, frame_skip: int = 4) -> list[int]:
    """The demonstration's agent actions: the index in `actions` of the byte held over each `frame_skip` frames."""
    index = {b: i for i, b in enumerate(action_bytes(actions))}
    frames = demo["frames"]
    labels = []
    for t in range(0, len(frames), frame_skip):
        b = frames[t]
        if b not in index:
            raise UserError(
                f"the demonstration presses byte {b} at frame {t}, which is not in the {actions!r} "
                "action set: clone it with the action set it was explored with"
            )
        labels.append(index[b])
    return labels


# --- emulator states along a demonstration ---


def demo_starts(frames: int, stride: int = DEMO_STRIDE) -> int:
    """Start states of a demonstration of `frames` frames: frame 0, stride, 2 stride, ... before the last frame."""
    return 1 + max(frames - 1, 0) // stride


def demo_snapshots(base: gym.Env | None, demo: dict, stride: int = 0) -> list:
    """Emulator snapshots every `stride` frames along a demonstration, replayed on `base` (a raw game env;
    None: a new one). A snapshot loads into any emulator of the same stage, a forked process's included."""
    stride = stride or DEMO_STRIDE
    if base is None:
        base = make_raw(demo["stage"]).unwrapped
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


def demo_state(demo: dict, frame: int) -> list:
    """The emulator state after the first `frame` frames of a demonstration, for envs.StartFrom."""
    n = len(demo["frames"])
    if not 0 < frame < n:
        raise UserError(
            f"the frame to start from must be in 1..{n - 1} (the demonstration has {n} frames), got {frame}"
        )
    return demo_snapshots(None, {**demo, "frames": demo["frames"][: frame + 1]}, stride=frame)


class _Snapshots(list):
    """A list of emulator snapshots that holds on to the emulator they came from (`source`)."""

    source: gym.Env | None = None
