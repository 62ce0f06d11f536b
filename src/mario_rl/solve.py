"""`mario-rl solve STAGE`: explore, learn, evaluate, record; resumable at every stage.

1. explore (mario_rl.explore) until a demonstration reaches the flag, unless the
   output folder already holds one that replays to the flag;
2. PPO from the demonstration's states (agents.ppo with --demo, mario_rl.curriculum; with --bc-epochs
   the network first clones the demonstration, mario_rl.bc),
   under the protocol's sticky actions and no-op starts, resuming the run in the
   folder if there is one;
3. whenever the start has reached the real reset and at least `check_from` of the
   latest 20 training episodes from a real reset cleared, the current policy, acting at
   `temperature`, is evaluated under docs/protocol.md on fresh seeds (at most once every
   `check_every` steps); a check that passes is repeated on the next 20 seeds (`confirm`),
   and training stops when both pass (or, with --minutes, once search and training have taken that long);
4. the final evaluation, on its own seeds, goes to eval.json, with a video.

Folder: explore/ (demo.json, explore.json, videos), run/ (the PPO run),
policy.safetensors, eval.json, eval.mp4 and eval.gif.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from mario_rl.errors import UserError
from mario_rl.storage import atomic_write


@dataclass
class SolveConfig:
    """Options of `mario-rl solve`."""

    stage: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STAGE")] = "1-1"
    """stage to solve: 1-1 ... 8-4"""
    out: Path | None = None
    """folder for everything (default: solutions/<stage>); solve resumes from what it holds"""
    explore_minutes: float = 30.0
    """wall-clock limit of the search for a demonstration (it stops earlier once it has one and has polished it)"""
    steps: int = 2_000_000
    """PPO agent-step budget (also the length of its learning-rate schedule)"""
    envs: int = 16
    """PPO's parallel emulators"""
    actions: str = "complex"
    """buttons for both the search and the policy"""
    sticky: float = 0.25
    """frame-level sticky actions while training and evaluating (docs/protocol.md: 0.25)"""
    train_sticky: float | None = None
    """frame-level sticky actions while training only (None: --sticky); above the protocol's 0.25 it trains
    on harder perturbations than the checks and the final evaluation play (docs/experiments.md, issue 26)"""
    noop_max: int = 30
    """no-op frames at reset while training and evaluating (docs/protocol.md: 30)"""
    seed: int = 0
    """seed of the search and of the training run"""
    eval_seed: int = 1000
    """first seed of the final evaluation (checks during training use other seeds)"""
    eval_episodes: int = 20
    """episodes of the final evaluation (docs/protocol.md: 20; a pass needs 20 or more)"""
    temperature: float = 0.25
    """sampling temperature of the policy in the checks and the final evaluation, written into
    policy.safetensors (1: as in training; docs/results/1-1.md)"""
    check_from: int = 12
    """clears among the latest 20 training episodes from a real reset (at temperature 1) that start a check"""
    check_every: int = 100_000
    """agent steps between checks, at least (a check plays 20 protocol episodes)"""
    confirm: bool = True
    """repeat a passing check on the next 20 seeds and stop only if that passes too (an 80% policy passes one
    check 21% of the time, two in a row 4%)"""
    check_rate: float = 0.9
    """share of a check's episodes (and of its confirmation's) that must clear to stop training: 0.9 is the
    protocol's 18 of 20, 0.95 asks 19 (the campaign passes its --goal)"""
    demo_order: str = "backward"
    """where PPO episodes start: backward, uniform or prioritized (PPOConfig.demo_order; docs/design.md)"""
    demo_retry: float = 0.25
    """share of PPO's non-reset starts taken from shortly before the agent's own recent deaths
    (PPOConfig.demo_retry)"""
    demo_stall: int = 1024
    """episodes from the backward starts, none from the earliest of them a clear, after which the starts move
    forward again (PPOConfig.demo_stall; backward order only; 0: never; docs/experiments.md, 1-3)"""
    sil_coef: float = 0.1
    """weight of self-imitation of the demonstration (PPOConfig.sil_coef; 0: off; docs/experiments.md, 1-3)"""
    sil_own: bool = True
    """self-imitation also of the agent's own episodes that reached the flag (PPOConfig.sil_own; only with
    --sil-coef above 0)"""
    checkpoint_every: int = 50_000
    """agent steps between PPO checkpoints"""
    gamma: float | None = None
    """PPO's discount factor for a new run (None: PPOConfig's, 0.99)"""
    reward_scale: float | None = None
    """PPO's reward scale for a new run (None: PPOConfig's, 0.01; use 0.05 with --gamma 0.9)"""
    bc_epochs: int = 0
    """epochs of behaviour cloning on the demonstration before PPO's first update, in a new run
    (PPOConfig.bc_epochs, mario_rl.bc); 0: PPO from a random network"""
    minutes: float | None = None
    """minutes of search and training together, then the final evaluation (None: no limit); set --steps to
    what fits, since the learning rate decays to 0 at --steps"""
    eval_video: bool = True
    """record the final evaluation as eval.mp4 (and eval.gif)"""
    device: str = "cpu"
    """where PPO's learner runs: cpu, cuda, or auto (cuda when PyTorch sees a GPU); a resumed run takes it
    from this flag too, since it belongs to the machine"""
    ppo_set: tuple[str, ...] = ()
    """further settings of a new PPO run, as KEY=VALUE (agents.ppo.PPOConfig's fields, e.g. target_kl=0.02);
    a resumed run keeps its saved ones (change them with --resume-set)"""
    resume_set: tuple[str, ...] = ()
    """when solve resumes its PPO run, settings that change from the run's saved ones, as KEY=VALUE
    (e.g. demo_retry=0.5); the run's other settings stay as saved, whatever the flags above say"""


def solve(
    cfg: SolveConfig, echo=print, stop: Callable[[int], bool] | None = None, ppo_overrides: dict | None = None
) -> dict:
    """Run the pipeline; returns the final evaluation's result (what eval.json holds).

    `stop(step)`, called after every PPO update, ends training early when it returns True (the campaign's
    time budget): the run is checkpointed and no final evaluation is played; the result is then only
    {"stopped": True, "step": step, "timings": ...}. `ppo_overrides` sets further PPOConfig fields of a new
    run (init_policy, device, ...)."""
    _validate(cfg)
    out = Path(cfg.out or Path("solutions") / cfg.stage)
    demo_path, run_dir = out / "explore" / "demo.json", out / "run"
    resuming = (run_dir / "checkpoint.safetensors").exists()
    if cfg.resume_set and not resuming:
        raise UserError(f"--resume-set changes a resumed run's settings, and {run_dir} holds none")
    ppo = _ppo_config(cfg, demo_path, run_dir, resuming, ppo_overrides)
    ppo.validate()  # bad PPO settings fail now, not after a 30-minute search
    t0 = time.monotonic()
    timings: dict[str, float] = {}  # seconds; and stopped_at_step when --minutes ran out

    # 1. A demonstration.
    _find_demo(cfg, demo_path, out, echo)
    timings["explore_s"] = time.monotonic() - t0

    # 2-3. PPO from the demonstration, stopping at the first protocol pass.
    run, checks, stopped_at = _train(cfg, ppo, t0, timings, stop, echo)
    if stopped_at is not None:
        return {"stopped": True, "step": stopped_at, "checks": checks, "timings": timings}

    # 4. The final evaluation, on seeds no check used.
    return _final_evaluation(cfg, run.policy_path, out, checks, t0, timings, echo)


def _validate(cfg: SolveConfig) -> None:
    from mario_rl.envs import env_id

    env_id(cfg.stage)
    if cfg.eval_episodes < 1 or cfg.explore_minutes <= 0 or not cfg.temperature > 0:
        raise UserError("--eval-episodes, --explore-minutes and --temperature must be positive")
    if cfg.train_sticky is not None and not 0 <= cfg.train_sticky < 1:
        raise UserError(f"--train-sticky must be in [0, 1), got {cfg.train_sticky:g}")
    if cfg.minutes is not None and not cfg.minutes > 0:
        raise UserError(f"--minutes must be positive, got {cfg.minutes:g}")
    if not 0 <= cfg.check_from <= 20 or cfg.check_every < 0:
        raise UserError("--check-from must be in 0..20 and --check-every at least 0")
    if not 0.9 <= cfg.check_rate <= 1:
        raise UserError(f"--check-rate must be in [0.9, 1] (0.9: the protocol's pass), got {cfg.check_rate:g}")
    if cfg.stage == "game":
        raise UserError("solve works on one stage at a time (1-1 ... 8-4), not on game")


def _ppo_config(cfg: SolveConfig, demo_path: Path, run_dir: Path, resuming: bool, ppo_overrides: dict | None):
    """The PPO run's settings: PPO from the demonstration under the protocol's sticky actions and no-ops."""
    from mario_rl.agents.ppo import PPOConfig
    from mario_rl.training import parse_settings

    own = {k: getattr(cfg, k) for k in ("stage", "actions", "envs", "steps", "sticky", "noop_max", "seed")}
    own |= {k: getattr(cfg, k) for k in ("demo_order", "demo_retry", "demo_stall", "bc_epochs", "checkpoint_every")}
    own |= {"demo": demo_path, "run_dir": run_dir, "resume": resuming, "resume_set": cfg.resume_set}
    if cfg.train_sticky is not None:
        own["sticky"] = cfg.train_sticky
    # Settings with a flag of solve's own are not --ppo-set's (nor is algo: solve trains PPO).
    mine = (*own, "algo", "device", "gamma", "reward_scale", "sil_coef", "sil_own")
    further = parse_settings(cfg.ppo_set, PPOConfig, mine, "--ppo-set")
    settings = (
        own
        | {"video_steps": 1500, "device": cfg.device, "sil_coef": cfg.sil_coef}
        | {k: getattr(cfg, k) for k in ("gamma", "reward_scale") if getattr(cfg, k) is not None}
        | further
        | (ppo_overrides or {})
    )
    # Own flag episodes are a source for self-imitation: with it off (--sil-coef 0, or the campaign's
    # --ppo-set sil_coef=0) the default --sil-own goes with it rather than failing PPOConfig's check.
    settings.setdefault("sil_own", cfg.sil_own and settings["sil_coef"] > 0)
    return PPOConfig(**settings)


def _find_demo(cfg: SolveConfig, demo_path: Path, out: Path, echo) -> None:
    """Phase 1: the demonstration in demo_path if it replays to the flag, else a search (SolveFailed when it
    finds no flag)."""
    from mario_rl.demonstration import load_demo, replay
    from mario_rl.explore import ExploreConfig, run_explore

    if demo_path.exists() and replay(load_demo(demo_path))["flag"]:
        echo(f"using the demonstration in {demo_path}")
        return
    minutes = cfg.explore_minutes if cfg.minutes is None else min(cfg.explore_minutes, cfg.minutes)
    echo(f"exploring {cfg.stage} for up to {minutes:g} minutes ...")
    result = run_explore(
        ExploreConfig(cfg.stage, minutes=minutes, actions=cfg.actions, seed=cfg.seed), out / "explore", echo=echo
    )
    if not result.solved:
        raise SolveFailed(
            f"no path to the flag found in {minutes:g} minutes (best x {result.best_x}); see {out / 'explore'}"
        )
    echo(f"demonstration found: {len(result.frames):,} frames after {result.seconds:.0f} s of search")


def _train(cfg: SolveConfig, ppo, t0: float, timings: dict, stop: Callable[[int], bool] | None, echo):
    """Phases 2-3: PPO until a check passes and is confirmed, `stop` says so, or --minutes run out (or the
    step budget is spent). Returns (the run, the checks' records, the step `stop` ended it at, or None)."""
    from mario_rl.agents.ppo import train

    checks: list[dict] = []
    stopped: list[int] = []

    def after_update(step: int, status: dict) -> bool:
        if stop is not None and stop(step):
            timings["stopped_at_step"] = step
            stopped.append(step)
            return True
        if cfg.minutes is not None and time.monotonic() - t0 >= 60 * cfg.minutes:
            echo(f"--minutes {cfg.minutes:g} reached at step {step:,}: training stops")
            timings["stopped_at_step"] = step
            return True
        flags = status["reset_flags"]
        if not status["demo_done"] or len(flags) < 20 or sum(flags) < cfg.check_from:
            return False
        if checks and step - checks[-1]["step"] < cfg.check_every:
            return False
        passed, records = _check(cfg, status["save_policy"](), step, echo)
        checks.extend(r | {"temperature": cfg.temperature} for r in records)
        return passed

    t1 = time.monotonic()
    run = train(ppo, after_update=after_update)
    timings["train_s"] = time.monotonic() - t1
    return run, checks, (stopped[0] if stopped else None)


def _check(cfg: SolveConfig, policy_path: Path, step: int, echo) -> tuple[bool, list[dict]]:
    """Phase 3: the current policy, acting at --temperature, on 20 protocol episodes (and 20 more to
    confirm a pass); see run_check."""
    from mario_rl.evaluate import evaluate
    from mario_rl.policy import load_policy

    policy = load_policy(policy_path, temperature=cfg.temperature)
    # Seeds from the step, not from a count of checks: that count restarts at 0 when solve resumes,
    # and 1-2's checks after each resume replayed seeds 100000..100019.
    return run_check(
        lambda seed: evaluate(policy, cfg.stage, sticky=cfg.sticky, noop_max=cfg.noop_max, seed=seed),
        step,
        100_000 + 10 * step,
        cfg.confirm,
        echo,
        cfg.check_rate,
    )


def _final_evaluation(
    cfg: SolveConfig, run_policy: Path, out: Path, checks: list[dict], t0: float, timings: dict, echo
) -> dict:
    """Phase 4: the trained policy, at --temperature, as policy.safetensors; its protocol evaluation on the
    final seeds (with a video), written to eval.json and returned."""
    from mario_rl.evaluate import PROTOCOL, evaluate
    from mario_rl.policy import load_policy, write_policy

    policy_path = out / "policy.safetensors"
    write_policy(policy_path, load_policy(run_policy, temperature=cfg.temperature))
    policy = load_policy(policy_path)
    echo(f"evaluating under docs/protocol.md, seeds {cfg.eval_seed}..{cfg.eval_seed + cfg.eval_episodes - 1} ...")
    result = evaluate(
        policy,
        cfg.stage,
        episodes=cfg.eval_episodes,
        sticky=cfg.sticky,
        noop_max=cfg.noop_max,
        seed=cfg.eval_seed,
        video=out / "eval.mp4" if cfg.eval_video else None,
    )
    timings["total_s"] = time.monotonic() - t0
    result |= {
        "checks": checks,
        "timings": timings,
        "protocol": PROTOCOL,
        "passed": result["episodes"] >= PROTOCOL["episodes"]
        and result["cleared_stage"]
        and cfg.sticky == PROTOCOL["sticky"]
        and cfg.noop_max == PROTOCOL["noop_max"],
    }
    atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    return result


def run_check(play, step: int, seed: int, confirm: bool, echo=print, rate: float = 0.9) -> tuple[bool, list[dict]]:
    """One check of `solve`: play(first_seed) plays 20 protocol episodes on first_seed.. and returns
    evaluate's result; it passes when that result clears the stage (18 of 20) and a share `rate` of its
    episodes cleared (19 of 20 at 0.95), and with `confirm` a pass
    is repeated on seed + 20.. (solve seeds a check with 10 x its step, and checks are at least one PPO
    update of thousands of steps apart, so those seeds are no other check's). Returns (passed, one record
    per 20 episodes)."""
    records = []
    for attempt in range(1 + confirm):
        first = seed + 20 * attempt
        r = play(first)
        records.append({"step": step, "seed": first, "clears": r["clears"], "episodes": r["episodes"]})
        what = "confirmation" if attempt else "check"
        echo(f"{what} at step {step:,}: cleared {r['clears']}/{r['episodes']} (seeds {first}..{first + 19})")
        # evaluate's protocol rule (18 of 20), and the stricter share asked for; the 1e-9 keeps 0.95 x 20 at 19
        if not r["cleared_stage"] or r["clears"] < rate * r["episodes"] - 1e-9:
            return False, records
    return True, records


class SolveFailed(Exception):
    """The stage was not solved (the reason is the message); not a usage error."""
