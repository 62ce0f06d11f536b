"""`mario-rl bench`: speed and memory, each next to a reference measured in the same run.

- raw emulator frames/s (nes-py frame advances only, one process): the ceiling;
  agent steps/s can be at most a quarter of it at frame skip 4;
- the env pipeline (make_env, random actions) in agent steps/s;
- DDQN training, whole process (start-up, burn-in, learning, final checkpoint),
  against the PyTorch tutorial's own loop (mario_rl.tutorial) with the same
  steps and burn-in, each run as its own process, one after the other;
- replay memory per transition, ours against the tutorial's float tensors;
- the raw emulator with one process per core (the vector envs' ceiling), the
  vector env with random actions, and PPO training, each as a fraction of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np


def bench_emulator(seconds: float) -> float:
    """Raw nes-py frames/s: frame advances only, no rewards, info or observations."""
    import gym_super_mario_bros

    env = gym_super_mario_bros.make("SuperMarioBros-1-1-v0").unwrapped
    env.reset()
    buttons = [0x80, 0x81] * 8  # run right, jump now and then: the game keeps moving
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in buttons:
            env._frame_advance(b)
        n += len(buttons)
        if n % 4096 == 0:
            env.reset()  # reset restores the start state; keeps Mario from dying into the menus
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def _emulator_worker(seconds: float, out) -> None:
    out.put(bench_emulator(seconds))


def bench_emulator_all_cores(seconds: float, processes: int) -> float:
    """Raw frames/s summed over one emulator process per core: the vector envs' ceiling."""
    import multiprocessing as mp

    queue = mp.Queue()
    procs = [mp.Process(target=_emulator_worker, args=(seconds, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total


def bench_vec_env(seconds: float, num_envs: int) -> float:
    """Agent steps/s of make_vec_env with random actions (all envs together)."""
    from mario_rl.envs import make_vec_env

    envs = make_vec_env("1-1", num_envs, "simple")
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    for _ in range(10):  # let every worker start up
        envs.step(rng.integers(0, 7, size=num_envs))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        envs.step(rng.integers(0, 7, size=num_envs))
        n += num_envs
    rate = n / (time.perf_counter() - t0)
    envs.close()
    return rate


def bench_ppo(steps: int, num_envs: int) -> float:
    """PPO training loop agent steps/s, as `mario-rl train --algo ppo` reports it."""
    with tempfile.TemporaryDirectory() as tmp:
        _, loop = _timed(
            [sys.executable, "-m", "mario_rl.cli", "train", "1-1", "--algo", "ppo", "--envs", str(num_envs),
             "--num-steps", "128", "--steps", str(steps), "--video-steps", "0", "--run-dir", f"{tmp}/run"],
            r"trained [\d,]+ agent steps in [\d.]+ s \(([\d.]+) steps/s\)")
    return loop


def bench_env(seconds: float) -> float:
    """Agent steps/s of make_env (skip 4, grayscale, resize, stack) with random actions."""
    from mario_rl.envs import make_env

    env = make_env("1-1")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
        n += 1
        if terminated or truncated:
            env.reset()
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def replay_bytes_per_transition(capacity: int = 100_000) -> dict:
    from mario_rl.replay import FrameReplay

    ours = FrameReplay(capacity).nbytes / capacity
    # The tutorial: state and next_state as float32 4x84x84 tensors, plus three 1-element tensors.
    tutorial = 2 * 4 * 84 * 84 * 4 + 3 * 8
    return {"ours": ours, "tutorial": tutorial, "capacity": capacity,
            "ours_total_gb": ours * capacity / 1e9, "tutorial_total_gb": tutorial * capacity / 1e9}


def _timed(cmd: list[str], loop_pattern: str) -> tuple[float, float]:
    """Wall seconds of a whole process, and the agent steps/s its training loop reported."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    match = re.search(loop_pattern, proc.stdout)
    return elapsed, float(match.group(1)) if match else float("nan")


def bench_training(steps: int, burnin: int) -> dict:
    """Whole-process agent steps/s: `mario-rl train` against the tutorial's loop."""
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_loop = _timed(
            [sys.executable, "-m", "mario_rl.cli", "train", "1-1", "--algo", "ddqn", "--steps", str(steps),
             "--burnin", str(burnin), "--video-steps", "0", "--run-dir", f"{tmp}/run"],
            r"trained [\d,]+ agent steps in [\d.]+ s \(([\d.]+) steps/s\)")
    tutorial, tutorial_loop = _timed(
        [sys.executable, "-m", "mario_rl.tutorial", "--steps", str(steps), "--burnin", str(burnin)],
        r"tutorial loop: .*, ([\d.]+) steps/s")
    return {"steps": steps, "burnin": burnin, "ours_seconds": ours, "tutorial_seconds": tutorial,
            "ours_steps_per_s": steps / ours, "tutorial_steps_per_s": steps / tutorial,
            "speedup": tutorial / ours, "ours_loop_steps_per_s": ours_loop,
            "tutorial_loop_steps_per_s": tutorial_loop, "loop_speedup": ours_loop / tutorial_loop}


def run_bench(seconds: float = 20.0, tutorial: bool = True, train_steps: int = 3000, burnin: int = 1000,
              vec_envs: int = 8, ppo_steps: int = 8192, echo: Callable[[str], None] | None = print) -> dict:
    say = echo or (lambda s: None)
    report: dict = {"seconds": seconds}
    say(f"raw emulator ({seconds:.0f} s) ...")
    report["emulator_fps"] = bench_emulator(seconds)
    report["ceiling_steps_per_s"] = report["emulator_fps"] / 4
    say(f"env pipeline ({seconds:.0f} s) ...")
    report["env_steps_per_s"] = bench_env(seconds)
    report["env_fraction_of_ceiling"] = report["env_steps_per_s"] / report["ceiling_steps_per_s"]
    cores = os.cpu_count() or 1
    say(f"raw emulator, one process per core ({cores}) ...")
    report["cores"] = cores
    report["emulator_fps_all_cores"] = bench_emulator_all_cores(seconds, cores)
    report["ceiling_all_cores_steps_per_s"] = report["emulator_fps_all_cores"] / 4
    say(f"vector env, {vec_envs} envs ({seconds:.0f} s) ...")
    report["vec_envs"] = vec_envs
    report["vec_env_steps_per_s"] = bench_vec_env(seconds, vec_envs)
    report["vec_env_fraction_of_ceiling"] = report["vec_env_steps_per_s"] / report["ceiling_all_cores_steps_per_s"]
    if ppo_steps:
        say(f"PPO training, {vec_envs} envs, {ppo_steps} steps ...")
        report["ppo_steps_per_s"] = bench_ppo(ppo_steps, vec_envs)
        report["ppo_fraction_of_ceiling"] = report["ppo_steps_per_s"] / report["ceiling_all_cores_steps_per_s"]
    report["replay"] = replay_bytes_per_transition()
    if tutorial:
        say(f"DDQN training vs the tutorial's loop ({train_steps} steps, burn-in {burnin}; a few minutes) ...")
        report["training"] = bench_training(train_steps, burnin)
    return report


def format_report(r: dict) -> str:
    lines = [
        "mario_rl bench (one process, this machine)",
        f"  raw emulator            {r['emulator_fps']:8.0f} frames/s  -> ceiling {r['ceiling_steps_per_s']:.0f} agent steps/s at skip 4",
        f"  env pipeline            {r['env_steps_per_s']:8.1f} agent steps/s  ({r['env_fraction_of_ceiling']:.2f} of the ceiling)",
        f"  raw emulator, {r['cores']} procs   {r['emulator_fps_all_cores']:8.0f} frames/s  -> ceiling {r['ceiling_all_cores_steps_per_s']:.0f} agent steps/s",
        f"  vector env ({r['vec_envs']} envs)     {r['vec_env_steps_per_s']:8.1f} agent steps/s  ({r['vec_env_fraction_of_ceiling']:.2f} of the all-core ceiling)",
        *([f"  PPO training            {r['ppo_steps_per_s']:8.1f} agent steps/s  ({r['ppo_fraction_of_ceiling']:.2f} of the all-core ceiling)"]
          if "ppo_steps_per_s" in r else []),
        f"  replay per transition   {r['replay']['ours']:8.0f} bytes  (tutorial {r['replay']['tutorial']:,} bytes; "
        f"100k transitions: {r['replay']['ours_total_gb']:.2f} GB vs {r['replay']['tutorial_total_gb']:.1f} GB)",
    ]
    if "training" in r:
        t = r["training"]
        lines += [
            f"  DDQN training           {t['ours_steps_per_s']:8.1f} agent steps/s  (whole process: {t['steps']} steps, burn-in {t['burnin']}, {t['ours_seconds']:.1f} s)",
            f"  tutorial's loop         {t['tutorial_steps_per_s']:8.1f} agent steps/s  (same steps, {t['tutorial_seconds']:.1f} s)",
            f"  speed-up                {t['speedup']:8.2f}x whole process; "
            f"{t['loop_speedup']:.2f}x training loops alone ({t['ours_loop_steps_per_s']:.1f} vs "
            f"{t['tutorial_loop_steps_per_s']:.1f} steps/s, start-up and final saves left out)",
        ]
    return "\n".join(lines)
