"""What a PPO run (agents/ppo.py) is set up with before its loop: the learner's device and precision, its
envs and rollout buffers, the network's first weights (a warm start, behaviour cloning), and where episodes
start along a demonstration."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mario_rl.envs import Preprocessing, make_vec_env
from mario_rl.errors import UserError
from mario_rl.training import Run


def learner_device(device: str) -> torch.device:
    """The torch device of --device (auto: cuda when PyTorch sees a GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no GPU here")
    return torch.device(device)


def use_bf16(precision: str, device: torch.device = torch.device("cpu")) -> bool:
    """Whether --precision means bfloat16 convolutions on this CPU (auto on a GPU: float32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type != "cpu":
        return False
    # Without native bfloat16 instructions oneDNN emulates it, slower than float32. The check is
    # PyTorch's own (private: if a version drops it, auto means float32).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_envs(cfg, pre: Preprocessing, demo: dict | None):
    """The run's vector env; with --demo its episodes can start along the demonstration (envs.DemoStart)."""
    return make_vec_env(
        cfg.stage,
        cfg.envs,
        pre,
        sticky=cfg.sticky,
        noop_max=cfg.noop_max,
        demo=demo,
        parts=cfg.env_parts or (2 if cfg.envs % 2 == 0 and cfg.envs >= 4 else 1),
    )


@dataclass
class Rollout:
    """One rollout's buffers, (num_steps, envs) each; frames stay uint8."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    """dones[t]: the observation at step t began a new episode"""
    values: torch.Tensor

    @classmethod
    def zeros(cls, num_steps: int, envs: int, obs_shape: tuple[int, ...]) -> Rollout:
        obs = torch.zeros((num_steps, envs, *obs_shape), dtype=torch.uint8)
        actions = torch.zeros((num_steps, envs), dtype=torch.long)
        return cls(obs, actions, *(torch.zeros((num_steps, envs)) for _ in range(4)))


def warm_start(agent: nn.Module, path: Path, pre: Preprocessing) -> None:
    """Load another ActorCritic policy's weights into `agent` (a new run's network, whose preprocessing is
    `pre`). With another action set the torso and value head are loaded and the policy head keeps its fresh
    initialization; the frames must be the same (skip, crop, size, stack)."""
    from mario_rl.policy import load_policy

    policy = load_policy(path)
    actions = pre.actions
    if policy.meta.get("network") != "ActorCritic":
        raise UserError(f"--init-policy {path}: a {policy.meta.get('network')} policy cannot start an ActorCritic run")
    theirs, ours = policy.preprocessing.to_dict(), pre.to_dict()
    differ = [f"{k} {theirs[k]} vs {ours[k]}" for k in ours if k != "actions" and theirs[k] != ours[k]]
    if differ:
        raise UserError(f"--init-policy {path}: its frames are not this run's ({', '.join(differ)})")
    weights = policy.net.state_dict()
    if policy.actions != actions:
        weights = {k: v for k, v in weights.items() if not k.startswith("policy.")}
    try:
        agent.load_state_dict(weights, strict=policy.actions == actions)
    except RuntimeError as e:
        raise UserError(f"--init-policy {path}: weights do not fit ({str(e).splitlines()[0]})") from None
    what = (
        "all weights" if policy.actions == actions else f"torso and value head ({policy.actions} -> {actions} actions)"
    )
    print(
        f"warm start from {path} ({policy.meta.get('stage')}, {policy.meta.get('steps', 0):,} steps): {what}",
        flush=True,
    )


def demo_data(demo: dict, cfg):
    """The demonstration as (observation, action, return) samples under the run's settings (mario_rl.bc):
    what --bc-epochs clones and --sil-coef imitates."""
    from mario_rl.bc import demo_dataset

    return demo_dataset(
        demo,
        cfg.preprocessing(),
        sticky=cfg.sticky,
        passes=cfg.bc_passes,
        gamma=cfg.gamma,
        reward_scale=cfg.reward_scale,
        seed=cfg.seed,
    )


def behaviour_clone(agent: nn.Module, data, cfg, run: Run) -> None:
    """--bc-epochs: clone the demonstration's samples (`demo_data`) into `agent` before the first PPO update
    (mario_rl.bc)."""
    from mario_rl.bc import clone

    t1 = time.perf_counter()
    for epoch, h in enumerate(clone(agent, data, epochs=cfg.bc_epochs, lr=cfg.lr, seed=cfg.seed), 1):
        run.log_scalars(epoch, "bc", **h)
    print(
        f"behaviour cloning: {len(data.actions):,} samples, {cfg.bc_epochs} epochs in "
        f"{time.perf_counter() - t1:.0f} s; accuracy {h['accuracy']:.2f}, value loss {h['value_loss']:.3f}",
        flush=True,
    )


class DemoStarts:
    """Where episodes start along the demonstration of --demo: moved back by a curriculum (--demo-order
    backward), or drawn from every start state, evenly or by priority."""

    def __init__(self, cfg, run: Run):
        from mario_rl.curriculum import BackwardCurriculum, StartPriorities
        from mario_rl.demonstration import demo_starts, load_demo, save_demo

        self.cfg = cfg
        # The run keeps its own copy, so that --resume does not depend on the original file.
        copy = run.dir / "demo.json"
        self.demo = load_demo(copy if copy.exists() else Path(cfg.demo))
        if self.demo["stage"] != cfg.stage:
            raise UserError(f"{cfg.demo} is a demonstration of {self.demo['stage']}, not {cfg.stage}")
        save_demo(copy, self.demo)
        starts = demo_starts(len(self.demo["frames"]))
        self.curriculum, self.window, self.priorities = None, None, None
        if cfg.demo_order == "backward":
            self.curriculum = BackwardCurriculum(
                starts, back=cfg.demo_back, success=cfg.demo_success, stall=cfg.demo_stall
            )
            return
        self.window = (0, starts - 1, 0.0)  # every start state, for the whole run
        if cfg.demo_order == "prioritized":
            self.priorities = StartPriorities(starts)
            if run.resumed_state is not None:
                from mario_rl.plots import read_episodes

                # The clear rates behind the weights come back from episodes.csv rather than the checkpoint.
                past = read_episodes(run.dir / "episodes.csv", extra=("flag", "start"))
                for start, flag in zip(past.get("start", ()), past.get("flag", ())):
                    if start == start:  # not NaN: rows from before starts were recorded have none
                        self.priorities.record(int(start), flag > 0)

    @property
    def done(self) -> bool:
        """Whether episodes start only at real resets now (a curriculum that reached the start)."""
        return self.curriculum is None or self.curriculum.done

    def apply(self, envs) -> None:
        """Tell every env where its next episodes start; every part of the envs must be idle."""
        window = self.window if self.curriculum is None else (*self.curriculum.window(), self.cfg.demo_behind)
        weights = None if self.priorities is None else self.priorities.weights()
        envs.call("set_demo_window", *window, retry=self.cfg.demo_retry, weights=weights)

    def record(self, start: int, cleared: bool) -> bool:
        """An episode that began at demonstration frame `start` ended; True when the starts should move."""
        move = False
        if self.curriculum is not None:
            move |= self.curriculum.record(start, cleared)
        if self.priorities is not None:
            move |= self.priorities.record(start, cleared)
        return move

    def status(self) -> str:
        """Where episodes start, for the progress line."""
        if self.curriculum is None:
            return {"uniform": "anywhere"}.get(self.cfg.demo_order, self.cfg.demo_order)
        return "reset" if self.curriculum.done else f"frame {self.curriculum.start_frame}"

    def state(self) -> dict | None:
        """The curriculum's place, for checkpoints (None without a curriculum)."""
        return None if self.curriculum is None else self.curriculum.state()

    def load(self, state: dict | None) -> None:
        if self.curriculum is not None and state is not None:
            self.curriculum.load(state)
