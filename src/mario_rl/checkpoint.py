"""Checkpoints: everything a run needs to resume exactly, in one versioned file.

A checkpoint is a safetensors file (storage.py: written atomically, never unpickled) whose header holds
the JSON state. Its "format" names the version; `load_checkpoint` brings every older version up to the
current one in `migrate`, the one place that knows what older files looked like.

Version 1 (format "mario_rl.checkpoint/1"):
    header   algo ("ddqn" or "ppo"), step, episode, best_x (envs.level_x), config (the run's settings),
             optim (the optimizer's state_dict, its tensors replaced by their names), and the algorithm's
             own fields: PPO's curriculum (null without one); DDQN's exploration_rate, act_rng,
             replay_rng and learn_from
    tensors  the networks (PPO agent.*; DDQN online.*, target.*), optim.*, rng.torch, DDQN's replay.*
             (unless --no-save-replay); PPO keeps Adam's moments in bfloat16, DDQN in float32
Version 0: every checkpoint written before versions (no "format" in its header), the committed ones
included; `migrate` lists how it differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mario_rl import __version__
from mario_rl.envs import level_x
from mario_rl.errors import UserError
from mario_rl.storage import flatten_state, load_tensors, save_tensors, unflatten_state

VERSION = 1
FORMAT_PREFIX = "mario_rl.checkpoint/"
REQUIRED = ("step", "episode", "best_x", "config", "optim")
"""header fields every version has"""


def save_checkpoint(path: Path, tensors: dict, state: dict) -> None:
    """Write a current-version checkpoint (tensors and JSON state), atomically."""
    meta = {"format": f"{FORMAT_PREFIX}{VERSION}", "mario_rl_version": __version__, **state}
    save_tensors(path, tensors, meta)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint of any version, migrated to the current one; any problem is a one-line UserError."""
    tensors, state = load_tensors(path, "checkpoint")
    return migrate(tensors, state, path)


def checkpoint_version(state: dict, path: Path | str = "checkpoint") -> int:
    fmt = state.get("format")
    if fmt is None:
        return 0
    if not (isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX) and fmt[len(FORMAT_PREFIX) :].isdigit()):
        raise UserError(f"{path} is not a mario_rl checkpoint (format {fmt!r})")
    return int(fmt[len(FORMAT_PREFIX) :])


def migrate(tensors: dict, state: dict, path: Path | str = "checkpoint") -> tuple[dict, dict]:
    """Bring a checkpoint's tensors and state from its version to the current one."""
    version = checkpoint_version(state, path)
    if version > VERSION:
        raise UserError(f"{path} is a version {version} checkpoint; this mario_rl reads versions up to {VERSION}")
    missing = [k for k in REQUIRED if k not in state] + [k for k in ("rng.torch",) if k not in tensors]
    if missing:
        raise UserError(f"{path} is not a complete checkpoint: it lacks {', '.join(missing)}")
    if version == 0:
        # Version 0 named its algorithm only in its config, and kept no curriculum field without a
        # curriculum. Its best_x is the one logged: 4-4's wrapped x read 65,535 before envs.level_x.
        # Settings added to a config since the run was saved stay missing: on resume they take the flag's
        # value (the default), as they always did, and --resume-set cannot name them.
        # Adam's moments are float32, or bfloat16 in PPO checkpoints written since 2026-11-30: both load
        # (`load_optimizer`). A run written on a GPU keeps "device": "cuda" in its config.
        state = {**state, "algo": state["config"]["algo"], "best_x": level_x(int(state["best_x"]))}
        if state["algo"] == "ppo":
            state.setdefault("curriculum", None)
    return tensors, state | {"format": f"{FORMAT_PREFIX}{VERSION}"}


# --- what algorithms put in a checkpoint ---


def prefixed(prefix: str, tensors: dict) -> dict:
    """A state_dict's tensors under `prefix.` (several networks share one file)."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict) -> dict:
    """The tensors stored under `prefix.`, with it taken off."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


def optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, bf16_moments: bool = False) -> dict:
    """Add the optimizer's tensors to `tensors` (as optim.*) and return the JSON skeleton that names them.

    bf16_moments keeps Adam's moments in bfloat16 (PPO: a 5.6 MB checkpoint becomes 3.7 MB; the weights stay
    float32). bfloat16 keeps float32's exponent range, so the tiny second moments do not underflow as they
    would in float16.
    """
    state = optimizer.state_dict()
    if bf16_moments:
        state = {
            **state,
            "state": {
                k: {name: v.to(torch.bfloat16) if name in ("exp_avg", "exp_avg_sq") else v for name, v in st.items()}
                for k, st in state["state"].items()
            },
        }
    return flatten_state("optim", state, tensors)


def load_optimizer(optimizer: torch.optim.Optimizer, skeleton: dict, tensors: dict) -> None:
    """Restore what `optimizer_state` stored; load_state_dict casts moments to the weights' dtype and device."""
    optimizer.load_state_dict(unflatten_state(skeleton, tensors))


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def torch_rng_tensors() -> dict[str, torch.Tensor]:
    return {"rng.torch": torch.get_rng_state()}


def set_torch_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
