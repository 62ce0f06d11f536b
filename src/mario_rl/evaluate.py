"""Episodes, played out: the loop shared by `play`, `eval` and training videos; `eval --all` over the registry."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from mario_rl.demonstration import demo_state
from mario_rl.envs import level_x, make_base_env
from mario_rl.errors import UserError

PROTOCOL = {"episodes": 20, "sticky": 0.25, "noop_max": 30}
"""docs/protocol.md v1: 20 episodes, frame-level sticky actions 0.25, 0..30 no-op frames."""
CLEAR_RATE = 0.9


def run_episode(
    env: gym.Env, act: Callable[[np.ndarray], int], seed: int | None = None, max_steps: int | None = None
) -> dict:
    """Play one episode; return what happened (cleared, x reached, score, agent steps, return)."""
    obs, info = env.reset(seed=seed)
    total, steps, x_max = 0.0, 0, level_x(int(info.get("x_pos", 0)))
    flag = False
    while True:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        total += float(reward)
        steps += 1
        x_max = max(x_max, level_x(int(info.get("x_pos", 0))))
        flag = flag or bool(info.get("flag_get", False))
        if terminated or truncated or flag or (max_steps is not None and steps >= max_steps):
            break
    return {
        "seed": seed,
        "cleared": flag,
        "x": x_max,
        "score": int(info.get("score", 0)),
        "steps": steps,
        "return": round(total, 3),
    }


def random_actor(n_actions: int, seed: int = 0) -> Callable[[np.ndarray], int]:
    rng = np.random.default_rng(seed)
    return lambda obs: int(rng.integers(n_actions))


def evaluate(
    policy,
    stage: str,
    episodes: int = PROTOCOL["episodes"],
    sticky: float = PROTOCOL["sticky"],
    noop_max: int = PROTOCOL["noop_max"],
    seed: int = 0,
    video: Path | None = None,
    on_episode: Callable[[dict], None] | None = None,
    demo: dict | None = None,
    from_frame: int = 0,
) -> dict:
    """Evaluate a policy under the protocol; episode i uses seed `seed + i`.

    With a `demo` and `from_frame`, every episode starts from the demonstration's state after that many
    frames instead of the stage's start: where along the stage a policy fails. That is a diagnosis, not a
    protocol result; the report says `from_frame`. Sticky actions apply from there, the no-op frames do not,
    as in training's starts along a demonstration: idling for up to half a second mid-jump is not what a
    player meets there. One start is one moment, so results differ from frame to frame: on 8-4, a policy
    that cleared 13 of 20 from frame 7,360 with 0..30 no-ops first cleared none without them (its first
    jump there lands in Bowser's fire); measure from several frames.
    """
    if episodes < 1:
        raise UserError(f"episodes must be positive, got {episodes}")
    start_state = None
    if from_frame:
        if demo is None:
            raise UserError("starting from a frame needs the demonstration it counts along")
        if demo["stage"] != stage:
            raise UserError(f"the demonstration is of stage {demo['stage']}, not {stage}")
        start_state = demo_state(demo, from_frame)
        noop_max = 0
    recorder = None
    if video is not None:
        from mario_rl.video import VideoRecorder

        recorder = VideoRecorder(video)
    base = make_base_env(stage, sticky=sticky, noop_max=noop_max, frame_sink=recorder, start_state=start_state)
    env = policy.wrap(base)
    results = []
    try:
        for i in range(episodes):
            if hasattr(policy, "seed"):
                policy.seed(seed + i)  # a sampling policy's draws are part of the episode's seed
            results.append(run_episode(env, policy.act, seed=seed + i))
            if on_episode:
                on_episode(results[-1])
    finally:
        env.close()
        if recorder is not None:
            recorder.close()
    where = {"from_frame": from_frame} if from_frame else {}
    report = summarize(
        results,
        stage=stage,
        sticky=sticky,
        noop_max=noop_max,
        act=getattr(policy, "mode", "greedy"),
        temperature=getattr(policy, "temperature", None),
        policy=policy.meta,
        **where,
    )
    if from_frame:
        report["cleared_stage"] = False  # a stage is cleared from its start, never from part-way along
    return report


def summarize(results: list[dict], policy: dict | None = None, **context) -> dict:
    """The protocol's report: clear rate, x reached, steps, seeds, and every episode."""
    xs = [r["x"] for r in results]
    clears = sum(r["cleared"] for r in results)
    return {
        **context,
        "policy": {k: policy.get(k) for k in ("algorithm", "stage", "steps")} if policy else None,
        "episodes": len(results),
        "clears": clears,
        "clear_rate": clears / len(results),
        "cleared_stage": clears / len(results) >= CLEAR_RATE,
        "mean_x": statistics.fmean(xs),
        "median_x": statistics.median(xs),
        "mean_steps": statistics.fmean(r["steps"] for r in results),
        "seeds": [r["seed"] for r in results],
        "results": results,
    }


def eval_all(registry_path: Path | None = None, episodes: int = 20, seed: int | None = None, echo=print) -> list[str]:
    """`mario-rl eval --all`: every stage with a policy in the registry, on fresh seeds; the registry gets
    each result. A stage whose policy file is missing or changed is reported and left as it is; the rest go
    on. Returns the problems (registry_path None: the repository's models/index.json)."""
    from mario_rl import registry as reg_mod  # here: the registry brings torch, which episodes do not need
    from mario_rl.policy import load_policy

    registry_path = reg_mod.DEFAULT_PATH if registry_path is None else registry_path
    registry = reg_mod.load_registry(registry_path)
    if seed is None:
        seed = 1_000_000_000 + int(time.time()) % 100_000_000  # fresh in practice; printed and recorded
    echo(f"eval --all: {episodes} protocol episodes per stage from seed {seed}")
    problems = []
    for stage, entry in registry["stages"].items():
        if not entry.get("policy"):
            continue
        problem = reg_mod.check_policy(entry)
        if problem is None:
            try:
                policy = load_policy(reg_mod.resolve(entry["policy"]))
            except UserError as e:
                problem = str(e)
        if problem is not None:
            echo(f"{stage}: error: {problem}")
            problems.append(f"{stage}: {problem}")
            continue
        r = evaluate(policy, stage, episodes=episodes, seed=seed)
        protocol = reg_mod.protocol_record(r)
        passed = r["episodes"] >= PROTOCOL["episodes"] and r["clear_rate"] >= CLEAR_RATE
        best_x = max(int(entry.get("best_x") or 0), int(max(x["x"] for x in r["results"])))
        reg_mod.update_stage(
            stage, registry_path, protocol=protocol, status="cleared" if passed else "training", best_x=best_x
        )
        echo(f"{stage}: {reg_mod.rate_text(protocol)} (95% Wilson) -> {'cleared' if passed else 'not cleared'}")
    return problems
