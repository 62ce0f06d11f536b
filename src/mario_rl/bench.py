"""`mario-rl bench`: speed and memory, each next to a reference measured in the same run.

- raw emulator frames/s (nes-py frame advances only, one process): the ceiling;
  agent steps/s can be at most a quarter of it at frame skip 4;
- the env pipeline (make_env, random actions) in agent steps/s;
- DDQN training, whole process (start-up, burn-in, learning, final checkpoint),
  against the PyTorch tutorial's own loop (mario_rl.tutorial) with the same
  steps and burn-in, each run as its own process, one after the other;
- replay memory per transition, ours against the tutorial's float tensors;
- the raw emulator with one process per core (the vector envs' ceiling), the
  vector env with random actions, and PPO training, each as a fraction of it; the
  ceiling runs in turns interleaved with each of the two (see `Ceiling`).

The raw emulator plays the game (see `bench_emulator`): the ceiling is the cost of
the frames an agent actually plays.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _gameplay_frames(env, seconds: float, buttons: np.ndarray) -> int:
    """Advance `env` (a raw SuperMarioBrosEnv) for `seconds`; return the frames played."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in buttons[(n // 4) % len(buttons) :][:64]:
            for _ in range(4):
                env._frame_advance(int(b))
            if env._is_dying or env._is_dead:
                env.reset()  # restores the start snapshot: no frames
        n += 256
    return n


def _gameplay_env():
    from mario_rl.envs import action_bytes, make_raw

    env = make_raw("1-1").unwrapped
    env.reset()
    return env, np.random.default_rng(0).choice(action_bytes("simple"), size=4096)


def bench_emulator(seconds: float) -> float:
    """Raw nes-py frames/s of gameplay: frame advances only, no rewards, info or observations.

    The buttons are random `simple` actions held for 4 frames, as an agent presses
    them, and a death restores the start state at once, so that every timed frame
    is a frame of play. Frames of the title screen, the demo and the game-over
    screens emulate 20 to 40% faster (1.1 to 1.5 ms against 1.9 ms here), and an
    earlier version that let Mario die into them overstated the ceiling.
    """
    env, buttons = _gameplay_env()
    t0 = time.perf_counter()
    rate = _gameplay_frames(env, seconds, buttons) / (time.perf_counter() - t0)
    env.close()
    return rate


def _ceiling_worker(conn) -> None:
    env, buttons = _gameplay_env()
    conn.send(0)
    while (seconds := conn.recv()) is not None:
        t0 = time.perf_counter()
        frames = _gameplay_frames(env, seconds, buttons)
        conn.send((frames, time.perf_counter() - t0))


class Ceiling:
    """The vector envs' ceiling: raw gameplay frames with one emulator process per core.

    The processes wait between turns, so that the ceiling can be measured in short
    turns interleaved with what is compared against it. This machine's speed drifts
    by 10 to 20% within a minute; two measurements one after the other differed by
    more than the gaps being measured, while interleaved turns see the same drift.
    """

    def __init__(self, processes: int):
        import multiprocessing as mp

        self.pipes, self.procs = [], []
        for _ in range(processes):
            parent, child = mp.Pipe()
            proc = mp.Process(target=_ceiling_worker, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            pipe.recv()
        self.frames, self.seconds = 0, 0.0

    def turn(self, seconds: float) -> float:
        """Run every process for `seconds`; return frames/s summed over them (also accumulated)."""
        for pipe in self.pipes:
            pipe.send(seconds)
        results = [pipe.recv() for pipe in self.pipes]
        rate = sum(frames / elapsed for frames, elapsed in results)
        self.frames += rate * seconds
        self.seconds += seconds
        return rate

    @property
    def fps(self) -> float:
        """Frames/s over all turns so far."""
        return self.frames / max(self.seconds, 1e-9)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join()


def bench_vec_env(seconds: float, num_envs: int, ceiling: Ceiling | None = None, turns: int = 4) -> float:
    """Agent steps/s of make_vec_env with random actions (all envs together).

    With a `ceiling`, the time is split into `turns` turns, each followed by a
    ceiling turn of the same length.
    """
    from mario_rl.envs import make_vec_env

    envs = make_vec_env("1-1", num_envs, "simple")
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    for _ in range(10):  # let every worker start up
        envs.step(rng.integers(0, 7, size=num_envs))
    n, busy = 0, 0.0
    turns = turns if ceiling is not None else 1
    for _ in range(turns):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / turns:
            envs.step(rng.integers(0, 7, size=num_envs))
            n += num_envs
        busy += time.perf_counter() - t0
        if ceiling is not None:
            ceiling.turn(seconds / turns)
    envs.close()
    return n / busy


def bench_ppo(steps: int, num_envs: int, ceiling: Ceiling | None = None, turn_seconds: float = 5.0) -> float:
    """PPO training agent steps/s: the loop of `mario-rl train --algo ppo`, from its first update on.

    Runs in this process; with a `ceiling`, a ceiling turn follows every update and
    its time is left out. Start-up and the first rollout (workers starting) are left
    out too, as in the rate `mario-rl train` reports at its end.
    """
    from mario_rl.agents.ppo import PPOConfig, train

    marks: list[tuple[int, float]] = []
    paused = 0.0

    def after_update(step: int, status: dict) -> None:
        nonlocal paused
        marks.append((step, time.perf_counter() - paused))
        if ceiling is not None and len(marks) > 1:
            t0 = time.perf_counter()
            ceiling.turn(turn_seconds)
            paused += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(
            stage="1-1",
            envs=num_envs,
            num_steps=128,
            steps=steps,
            video_steps=0,
            checkpoint_every=10**12,
            plot_every=10**9,
            run_dir=Path(tmp) / "run",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, after_update=after_update)
    if len(marks) < 2:
        raise ValueError(f"--ppo-steps {steps} is less than two PPO updates ({2 * 128 * num_envs} steps)")
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


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
    return {
        "ours": ours,
        "tutorial": tutorial,
        "capacity": capacity,
        "ours_total_gb": ours * capacity / 1e9,
        "tutorial_total_gb": tutorial * capacity / 1e9,
    }


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
            [
                sys.executable,
                "-m",
                "mario_rl.cli",
                "train",
                "1-1",
                "--algo",
                "ddqn",
                "--steps",
                str(steps),
                "--burnin",
                str(burnin),
                "--video-steps",
                "0",
                "--run-dir",
                f"{tmp}/run",
            ],
            r"trained [\d,]+ agent steps in [\d.]+ s \(([\d.]+) steps/s\)",
        )
    tutorial, tutorial_loop = _timed(
        [sys.executable, "-m", "mario_rl.tutorial", "--steps", str(steps), "--burnin", str(burnin)],
        r"tutorial loop: .*, ([\d.]+) steps/s",
    )
    return {
        "steps": steps,
        "burnin": burnin,
        "ours_seconds": ours,
        "tutorial_seconds": tutorial,
        "ours_steps_per_s": steps / ours,
        "tutorial_steps_per_s": steps / tutorial,
        "speedup": tutorial / ours,
        "ours_loop_steps_per_s": ours_loop,
        "tutorial_loop_steps_per_s": tutorial_loop,
        "loop_speedup": ours_loop / tutorial_loop,
    }


def run_bench(
    seconds: float = 20.0,
    tutorial: bool = True,
    train_steps: int = 3000,
    burnin: int = 1000,
    vec_envs: int = 16,
    ppo_steps: int = 10240,
    echo: Callable[[str], None] | None = print,
) -> dict:
    say = echo or (lambda s: None)
    report: dict = {"seconds": seconds}
    say(f"raw emulator ({seconds:.0f} s) ...")
    report["emulator_fps"] = bench_emulator(seconds)
    report["ceiling_steps_per_s"] = report["emulator_fps"] / 4
    say(f"env pipeline ({seconds:.0f} s) ...")
    report["env_steps_per_s"] = bench_env(seconds)
    report["env_fraction_of_ceiling"] = report["env_steps_per_s"] / report["ceiling_steps_per_s"]
    cores = os.cpu_count() or 1
    report["cores"] = cores
    ceiling = Ceiling(cores)
    try:
        say(
            f"vector env, {vec_envs} envs, in turns with the raw emulator, one process per core ({cores}), "
            f"{2 * seconds:.0f} s ..."
        )
        report["vec_envs"] = vec_envs
        report["vec_env_steps_per_s"] = bench_vec_env(seconds, vec_envs, ceiling)
        report["emulator_fps_all_cores"] = ceiling.fps
        report["ceiling_all_cores_steps_per_s"] = ceiling.fps / 4
        report["vec_env_fraction_of_ceiling"] = report["vec_env_steps_per_s"] / report["ceiling_all_cores_steps_per_s"]
        if ppo_steps:
            say(f"PPO training, {vec_envs} envs, {ppo_steps} steps, in turns with the raw emulator ...")
            ceiling.frames, ceiling.seconds = 0, 0.0
            report["ppo_steps_per_s"] = bench_ppo(ppo_steps, vec_envs, ceiling, turn_seconds=seconds / 4)
            report["ppo_ceiling_steps_per_s"] = ceiling.fps / 4
            report["ppo_fraction_of_ceiling"] = report["ppo_steps_per_s"] / report["ppo_ceiling_steps_per_s"]
    finally:
        ceiling.close()
    report["replay"] = replay_bytes_per_transition()
    if tutorial:
        say(f"DDQN training vs the tutorial's loop ({train_steps} steps, burn-in {burnin}; a few minutes) ...")
        report["training"] = bench_training(train_steps, burnin)
    return report


def format_report(r: dict) -> str:
    lines = [
        "mario_rl bench (one process, this machine)",
        f"  raw emulator            {r['emulator_fps']:8.0f} frames/s  "
        f"-> ceiling {r['ceiling_steps_per_s']:.0f} agent steps/s at skip 4",
        f"  env pipeline            {r['env_steps_per_s']:8.1f} agent steps/s  "
        f"({r['env_fraction_of_ceiling']:.2f} of the ceiling)",
        f"  raw emulator, {r['cores']} procs   {r['emulator_fps_all_cores']:8.0f} frames/s  "
        f"-> ceiling {r['ceiling_all_cores_steps_per_s']:.0f} agent steps/s",
        f"  vector env ({r['vec_envs']} envs)     {r['vec_env_steps_per_s']:8.1f} agent steps/s  "
        f"({r['vec_env_fraction_of_ceiling']:.2f} of the all-core ceiling)",
        *(
            [
                f"  PPO training            {r['ppo_steps_per_s']:8.1f} agent steps/s  "
                f"({r['ppo_fraction_of_ceiling']:.2f} of the all-core ceiling, "
                f"{r['ppo_ceiling_steps_per_s']:.0f} steps/s in its turns)"
            ]
            if "ppo_steps_per_s" in r
            else []
        ),
        f"  replay per transition   {r['replay']['ours']:8.0f} bytes  (tutorial {r['replay']['tutorial']:,} bytes; "
        f"100k transitions: {r['replay']['ours_total_gb']:.2f} GB vs {r['replay']['tutorial_total_gb']:.1f} GB)",
    ]
    if "training" in r:
        t = r["training"]
        lines += [
            f"  DDQN training           {t['ours_steps_per_s']:8.1f} agent steps/s  "
            f"(whole process: {t['steps']} steps, burn-in {t['burnin']}, {t['ours_seconds']:.1f} s)",
            f"  tutorial's loop         {t['tutorial_steps_per_s']:8.1f} agent steps/s  "
            f"(same steps, {t['tutorial_seconds']:.1f} s)",
            f"  speed-up                {t['speedup']:8.2f}x whole process; "
            f"{t['loop_speedup']:.2f}x training loops alone ({t['ours_loop_steps_per_s']:.1f} vs "
            f"{t['tutorial_loop_steps_per_s']:.1f} steps/s, start-up and final saves left out)",
        ]
    return "\n".join(lines)
