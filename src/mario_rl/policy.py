"""Policy files: weights in safetensors, and in its header everything needed to use them.

policy = mario_rl.load_policy("1-1")            # the bundled policy for a stage
policy = mario_rl.load_policy("runs/x/policy.safetensors")
env = policy.wrap(gym_super_mario_bros.make("SuperMarioBros-1-1-v0"))
obs, info = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(policy.act(obs))
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mario_rl import __version__
from mario_rl.envs import STAGES, Preprocessing, wrap_preprocessing
from mario_rl.errors import UserError
from mario_rl.nets import build_network
from mario_rl.storage import load_tensors, save_tensors

FORMAT = "mario_rl.policy/1"
ACT_MODES = ("greedy", "sample")
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
"""Bundled policies, one file per stage: models/<stage>.safetensors (e.g. models/1-1.safetensors)."""


def bundled_policy_path(stage: str) -> Path | None:
    """The bundled policy file for a stage, or None when the project ships none yet."""
    for folder in (Path(__file__).resolve().parent / "models", REPO_MODELS):
        path = folder / f"{stage}.safetensors"
        if path.is_file():
            return path
    return None


class Policy:
    """A trained network plus the preprocessing and action set it was trained with."""

    def __init__(self, net: nn.Module, meta: dict, mode: str | None = None, temperature: float | None = None):
        self.net = net.eval()
        self.meta = meta
        self.preprocessing = Preprocessing(**meta["preprocessing"])
        self.mode = mode or meta.get("act", "greedy")
        if self.mode not in ACT_MODES:
            raise UserError(f"unknown act mode {self.mode!r}: choose greedy or sample")
        self.temperature = float(temperature if temperature is not None else meta.get("temperature", 1.0))
        if not self.temperature > 0:
            raise UserError(f"temperature must be positive, got {self.temperature}")
        self._rng = torch.Generator().manual_seed(0)

    def seed(self, seed: int) -> None:
        """Seed the sampling of a "sample" policy (evaluate seeds it per episode)."""
        self._rng.manual_seed(int(seed))

    @property
    def actions(self) -> str:
        return self.preprocessing.actions

    def check_actions(self, actions: str | None) -> None:
        """Refuse an action set other than the one the policy was trained for."""
        if actions is not None and actions != self.actions:
            raise UserError(f"this policy was trained with the {self.actions!r} action set, not {actions!r}")

    def wrap(self, base_env: gym.Env) -> gym.Env:
        """Apply exactly this policy's preprocessing to a raw env (byte actions, RGB frames).

        Perturbations such as sticky actions belong underneath, in `base_env`.
        """
        space = base_env.action_space
        if not (isinstance(space, gym.spaces.Discrete) and space.n == 256):
            raise UserError(
                "policy.wrap needs a raw env with NES controller-byte actions (Discrete(256)), "
                f"such as gym_super_mario_bros.make('SuperMarioBros-1-1-v0'); got action space {space}"
            )
        return wrap_preprocessing(base_env, self.preprocessing)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        """The action for one observation (frame_stack, size, size) uint8: the most likely one
        ("greedy"), or one drawn from the policy's distribution ("sample", as an actor-critic acts
        while it trains), sharpened by a temperature below 1 (softmax(logits / temperature))."""
        x = torch.as_tensor(np.asarray(obs)).unsqueeze(0)
        out = self.net(x)
        logits = out[0] if isinstance(out, tuple) else out  # (logits, value) for actor-critics
        if self.mode == "sample":
            return int(torch.multinomial((logits / self.temperature).softmax(1), 1, generator=self._rng).item())
        return int(logits.argmax(dim=1).item())

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Policy({m.get('algorithm')}, {m.get('network')}, stage={m.get('stage')}, "
            f"actions={self.actions}, steps={m.get('steps')})"
        )


def save_policy(
    path: Path,
    net: nn.Module,
    *,
    algorithm: str,
    network: str,
    network_kwargs: dict,
    preprocessing: Preprocessing,
    stage: str,
    steps: int,
    extra: dict | None = None,
) -> None:
    meta = {
        "format": FORMAT,
        "algorithm": algorithm,
        "network": network,
        "network_kwargs": network_kwargs,
        "preprocessing": preprocessing.to_dict(),
        "stage": stage,
        "steps": int(steps),
        "mario_rl_version": __version__,
        **(extra or {}),
    }
    save_tensors(path, {k: v for k, v in net.state_dict().items()}, meta)


def write_policy(path: Path, policy: Policy) -> None:
    """Write a loaded policy's weights, unchanged, with the act mode and temperature it is to be played
    with in its header (what `load_policy`'s overrides set), atomically."""
    save_tensors(path, policy.net.state_dict(), {**policy.meta, "act": policy.mode, "temperature": policy.temperature})


def load_policy(path_or_stage: str | Path, mode: str | None = None, temperature: float | None = None) -> Policy:
    """Load a policy file, or the bundled policy for a stage name such as "1-1".

    `mode` ("greedy" or "sample") and `temperature` (of "sample") override what the file says.
    """
    if isinstance(path_or_stage, str) and path_or_stage in STAGES:
        path = bundled_policy_path(path_or_stage)
        if path is None:
            raise UserError(f"no bundled policy for stage {path_or_stage} yet")
    else:
        path = Path(path_or_stage)
    tensors, meta = load_tensors(path, "policy file")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a mario_rl policy file (format {meta.get('format')!r})")
    try:
        net = build_network(meta["network"], **meta["network_kwargs"])
        net.load_state_dict(tensors)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: weights do not fit the network it names ({str(e).splitlines()[0]})") from None
    return Policy(net, meta, mode, temperature)


MAX_BUNDLED_BYTES = 2 * 1024 * 1024
"""The size limit of a bundled policy file (the repository ships them)."""


def bundle_policy(
    src: str | Path, stage: str, *, act: str | None = None, temperature: float | None = None, folder: Path = REPO_MODELS
) -> Path:
    """Copy a policy file to `folder`/<stage>.safetensors, where `load_policy(stage)` and `mario-rl play`
    find it, with the act mode and temperature it is to be played with written into its header.

    The weights are copied unchanged; the header says how it was evaluated before shipping (choose the
    temperature on seeds other than the ones you report).
    """
    if stage not in STAGES or stage == "game":
        raise UserError(f"bundle a policy for one stage (1-1 ... 8-4), not {stage!r}")
    policy = load_policy(src, act, temperature)  # checks the file and the options
    if policy.meta.get("stage") != stage:
        raise UserError(f"{src} was trained on {policy.meta.get('stage')}, not {stage}")
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{stage}.safetensors"
    # Written beside the destination and measured before the rename, so that a file over the limit never
    # replaces a policy already bundled there.
    tmp = folder / f".{stage}.bundle.safetensors"
    write_policy(tmp, policy)
    size = tmp.stat().st_size
    if size > MAX_BUNDLED_BYTES:
        tmp.unlink()
        raise UserError(f"{src} makes a {size:,}-byte file, over the {MAX_BUNDLED_BYTES:,} a bundled policy may have")
    tmp.replace(dst)
    return dst
