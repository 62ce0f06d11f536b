"""What every training run shares, whatever the algorithm: its folder, config, resume, metrics
(CSV + TensorBoard), live progress, learning-curve plots, checkpoints, videos, episode seeds and the
training loop itself (`Run.loop`).

An algorithm file (agents/ddqn.py, agents/ppo.py) holds only the algorithm: a `Learner` that trains in
`updates()`; the `Run` drives it, checkpoints it, stops it and closes it.

A run folder:
    config.json            the full config, written first
    episodes.csv           one row per finished episode (step, return, length, x, flag, ...)
    tb/                    TensorBoard events (charts/, losses/)
    plots/*.png            learning curves, refreshed while training
    checkpoint.safetensors everything to resume (weights, optimizer, replay, RNGs, counters; checkpoint.py)
    policy.safetensors     the latest policy, loadable with mario_rl.load_policy
    videos/step_*.mp4      the greedy policy at each checkpoint
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
import typing
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

import numpy as np
import tyro

from mario_rl.checkpoint import load_checkpoint, save_checkpoint
from mario_rl.envs import Preprocessing, env_id, level_x
from mario_rl.errors import UserError
from mario_rl.progress import ProgressDisplay
from mario_rl.storage import atomic_write


def _children_cpu() -> float:
    """CPU seconds of this process's finished (reaped) child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class TrainConfig:
    """Options every algorithm shares."""

    stage: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STAGE")] = "1-1"
    """stage to train on: 1-1 ... 8-4, or game"""
    steps: int = 1_000_000
    """total agent steps to train for (on --resume: the new total)"""
    run_dir: Path | None = None
    """folder for this run's files (default: runs/<stage>__<algo>__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --run-dir from its last checkpoint"""
    resume_set: tuple[str, ...] = ()
    """on --resume, settings that change from the saved run's, as KEY=VALUE (e.g. demo_retry=0.5 lr=1e-4);
    every other setting stays as saved, whatever its flag says (except --steps and --device)"""
    seed: int = 1
    """seed for the networks, exploration, replay sampling and the first episode"""
    actions: str = "right"
    """action set: right (the tutorial's two), right_only, simple or complex"""
    sticky: float = 0.0
    """train under frame-level sticky actions with this probability"""
    noop_max: int = 0
    """train with 0..noop_max random no-op frames at each reset"""
    checkpoint_every: int = 50_000
    """agent steps between checkpoints (each also saves the policy and records a video)"""
    video_steps: int = 600
    """agent steps in each checkpoint video; 0 records none"""
    plot_every: float = 60.0
    """seconds between learning-curve refreshes (at least 10 times the CPU time the last refresh took)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    algo: tyro.conf.Suppress[str] = "ddqn"

    def validate(self) -> None:
        env_id(self.stage)
        Preprocessing(self.actions)
        for name in ("steps", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.video_steps < 0:
            raise UserError(f"--video-steps must be >= 0, got {self.video_steps}")
        if not 0.0 <= self.sticky < 1.0:
            raise UserError(f"--sticky must be in [0, 1), got {self.sticky}")
        if self.noop_max < 0:
            raise UserError(f"--noop-max must be >= 0, got {self.noop_max}")
        if self.resume and self.run_dir is None:
            raise UserError("--resume needs --run-dir (the run to continue)")
        if self.resume_set and not self.resume:
            raise UserError("--resume-set changes a resumed run's settings; a new run takes them as flags")

    def to_json(self) -> dict:
        return {k: json_value(v) for k, v in dataclasses.asdict(self).items()}


def json_value(value):
    """A config value as its run's config.json holds it: a path as text, relative to the working folder when
    it lies under it (config.json is committed and read on other machines, where an absolute path from this
    one means nothing); anything else as it is."""
    if not isinstance(value, Path):
        return value
    if value.is_absolute() and value.is_relative_to(Path.cwd()):
        return str(value.relative_to(Path.cwd()))
    return str(value)


def _is_path_field(hint) -> bool:
    """Whether a config field's type hint is Path or Path | None."""
    return hint is Path or Path in typing.get_args(hint)


_RESUME_FLAGS = ("steps", "resume", "run_dir", "resume_set", "device")
"""what a resume takes from its own flags, not from the saved config (the device belongs to the machine that
resumes: a run saved on a GPU machine resumes on a CPU-only one)"""
_FIXED_ON_RESUME = ("stage", "algo", "actions", "envs", "num_steps", "frame_skip", "crop_top") + _RESUME_FLAGS
"""what --resume-set may not change: what the run is (its network's inputs and outputs too), shapes its
checkpoint holds, and what has its own flag"""


def parse_settings(items: tuple[str, ...], config: type, fixed: tuple[str, ...], flag: str) -> dict:
    """KEY=VALUE items (`flag`'s) as {key: value}: KEY a field of the dataclass `config` not in `fixed`, VALUE
    of the field's type (none for a field that may be None)."""
    import types

    hints = typing.get_type_hints(config)
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints or key in fixed:
            raise UserError(
                f"{flag} {item!r}: expected KEY=VALUE with KEY a setting of this run other than {', '.join(fixed)}"
            )
        kinds = typing.get_args(hints[key]) if isinstance(hints[key], types.UnionType) else (hints[key],)
        try:
            if text.lower() == "none" and type(None) in kinds:
                value = None
            elif bool in kinds:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                value = text.lower() == "true"
            elif int in kinds or float in kinds:
                value = int(text) if int in kinds else float(text)
            elif Path in kinds:
                value = Path(text)
            elif str in kinds:
                value = text
            else:
                raise ValueError
        except ValueError:
            names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
            raise UserError(f"{flag} {item!r}: {key} is {names}, got {text!r}") from None
        changes[key] = value
    return changes


EPISODE_FIELDS = ["step", "episode", "return", "length", "x", "flag", "epsilon", "loss", "q", "time", "start"]
"""episodes.csv's columns. start (PPO from a demonstration): the demonstration frame the episode began at,
0 for a real reset, -1 for a retry from before one of the agent's own deaths (envs.DemoStart)."""


class Learner(Protocol):
    """An algorithm as the shared loop drives it (agents/ddqn.py's DDQN, agents/ppo.py's PPO)."""

    pre: Preprocessing
    """what its policy sees and does"""

    def updates(self) -> Iterator[int]:
        """Train up to --steps, yielding the agent step after each unit of work (DDQN: a step; PPO: an update)."""
        ...

    def state(self) -> tuple[dict, dict]:
        """Its part of a checkpoint: tensors, and JSON-able state (checkpoint.py)."""
        ...

    def save_policy(self, step: int) -> Path:
        """Write the run's policy file; returns its path."""
        ...

    def greedy(self, obs: np.ndarray) -> int: ...

    def close(self) -> None: ...


class Run:
    """One training run: its folder, resume, logging, checkpoints, and the loop that drives a `Learner`."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        if cfg.run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg.run_dir = Path("runs") / f"{cfg.stage}__{cfg.algo}__{cfg.seed}__{stamp}"
        self.dir = Path(cfg.run_dir)
        self.checkpoint_path = self.dir / "checkpoint.safetensors"
        self.policy_path = self.dir / "policy.safetensors"
        self.resumed_state: tuple[dict, dict] | None = None
        """(tensors, state) of the checkpoint this run resumes from, migrated to the current version"""
        if cfg.resume:
            self.resumed_state = self._resume(cfg)
        elif self.checkpoint_path.exists():
            raise UserError(f"{self.dir} already holds a run; pass --resume to continue it")
        try:
            (self.dir / "plots").mkdir(parents=True, exist_ok=True)
            (self.dir / "videos").mkdir(exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.dir}: {e.strerror or e}") from None
        self.cfg = cfg
        atomic_write(self.dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_json(), indent=2)))
        state = self.resumed_state[1] if self.resumed_state else {"step": 0, "episode": 0, "best_x": 0}
        self.start_step: int = state["step"]
        self.episode: int = state["episode"]
        """episodes finished so far (log_episode counts them)"""
        self.best_x: int = state["best_x"]
        start_step = self.start_step
        self._episodes_csv = self.dir / "episodes.csv"
        self._truncate_csv(self._episodes_csv, start_step)
        new = not self._episodes_csv.exists()
        self._csv_file = open(self._episodes_csv, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=EPISODE_FIELDS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        from torch.utils.tensorboard import SummaryWriter  # heavy; only when training

        self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=start_step or None)
        self.recent = deque(maxlen=20)
        self._last_plot = time.monotonic()
        self._plotter: subprocess.Popen | None = None
        self._final_plot_step: int | None = None
        # A refresh redraws every episode so far: on a long run (90k episodes) it costs ~8 s of a core. Waiting
        # 10x its CPU time between refreshes keeps them under ~10% of a core.
        self._plot_unmeasured = False  # a refresh is running whose CPU time is not counted yet
        self._plot_cost = 0.0
        self.progress = ProgressDisplay(cfg.steps, start_step)

    def _resume(self, cfg: TrainConfig) -> tuple[dict, dict] | None:
        """The checkpoint to resume from (None in a run folder without one yet); `cfg` becomes its config."""
        if not self.dir.is_dir():
            raise UserError(f"nothing to resume: {self.dir} does not exist")
        if not self.checkpoint_path.exists():
            return None
        tensors, state = load_checkpoint(self.checkpoint_path)
        saved = state["config"]
        if state["algo"] != cfg.algo:
            raise UserError(f"{self.dir} is a {state['algo']} run, not {cfg.algo}")
        # The saved config wins, except the new step budget and what --resume-set names. A setting the saved
        # config lacks (the run is older than the setting) takes its default, which is what the run ran with.
        changes = parse_settings(cfg.resume_set, type(cfg), _FIXED_ON_RESUME, "--resume-set")
        defaults = type(cfg)()
        hints = typing.get_type_hints(type(cfg))
        for f in dataclasses.fields(cfg):
            if f.name not in _RESUME_FLAGS:
                value = saved.get(f.name, getattr(defaults, f.name))
                # JSON holds paths as text; as Paths again they are written back relative (json_value).
                if isinstance(value, str) and _is_path_field(hints[f.name]):
                    value = Path(value)
                setattr(cfg, f.name, value)
        for key, value in changes.items():
            print(f"--resume-set: {key} {getattr(cfg, key)!r} -> {value!r}", flush=True)
            setattr(cfg, key, value)
        cfg.validate()
        return tensors, state

    @staticmethod
    def _truncate_csv(path: Path, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=EPISODE_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(keep)

        atomic_write(path, write)

    # --- logging ---

    def episode_seed(self) -> int:
        """The seed of the next episode's reset, from the run seed and the episodes so far: resumable, reproducible."""
        return self.cfg.seed * 1_000_003 + self.episode

    def log_episode(self, step: int, **values) -> None:
        """A finished episode: counted, and written to episodes.csv and TensorBoard."""
        self.episode += 1
        values = {"step": step, "episode": self.episode, "time": round(time.time(), 3), **values}
        self._csv.writerow(values)
        self._csv_file.flush()
        self.best_x = max(self.best_x, int(values.get("x", 0)))
        self.recent.append(values)
        for key, tag in (
            ("return", "episodic_return"),
            ("length", "episodic_length"),
            ("x", "x_reached"),
            ("flag", "flag"),
        ):
            if key in values:
                self.tb.add_scalar(f"charts/{tag}", values[key], step)

    def log_scalars(self, step: int, group: str, **values) -> None:
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.tb.add_scalar(f"{group}/{key}", value, step)

    def tick(self, step: int, **status) -> None:
        """Called every step or so: refreshes the progress display and, now and then, the plots."""
        mean_return = np.mean([r["return"] for r in self.recent]) if self.recent else float("nan")
        self.progress.update(
            step, episodes=status.pop("episodes", 0), mean_return=mean_return, best_x=self.best_x, **status
        )
        if self._plot_unmeasured:
            # The refresh's own CPU time: a finished child's usage is added when poll() reaps it. (Wall time
            # would be measured in ticks, once per PPO update, so minutes.)
            before = _children_cpu()
            if self._plotter.poll() is not None:
                self._plot_cost, self._plot_unmeasured = _children_cpu() - before, False
        if time.monotonic() - self._last_plot > max(self.cfg.plot_every, 10 * self._plot_cost):
            self.plot()
            self.tb.add_scalar("charts/SPS", self.progress.sps, step)

    def plot(self, final: bool = False) -> None:
        """Refresh the learning curves in a separate process, so training never waits for matplotlib.

        final=True waits for a refresh still drawing and starts one with every episode in it.
        """
        if self._plotter is not None and self._plotter.poll() is None:
            if not final:
                return  # the previous refresh is still drawing
            self._plotter.wait()
        self._final_plot_step = self.progress.last_step if final else None
        self._csv_file.flush()
        self._plotter = subprocess.Popen(
            [sys.executable, "-m", "mario_rl.plots", str(self._episodes_csv), str(self.dir / "plots")],
            stdout=subprocess.DEVNULL,
        )
        self._last_plot, self._plot_unmeasured = time.monotonic(), True

    # --- checkpoints, policies, videos ---

    def save(self, step: int, learner: Learner) -> None:
        """What each checkpoint interval writes: the checkpoint, the policy file and a video."""
        tensors, state = learner.state()
        # level_x: DDQN logs the game's x_pos, which wraps on 4-4.
        counters = {"step": step, "episode": self.episode, "best_x": level_x(self.best_x)}
        save_checkpoint(
            self.checkpoint_path, tensors, {"algo": self.cfg.algo, **counters, **state, "config": self.cfg.to_json()}
        )
        learner.save_policy(step)
        self.record_video(learner.greedy, step, learner.pre)

    def record_video(self, act, step: int, pre: Preprocessing) -> Path | None:
        """A short video of the greedy policy (whose preprocessing is `pre`) on the training stage, unperturbed."""
        if self.cfg.video_steps <= 0:
            return None
        from mario_rl.envs import make_base_env, wrap_preprocessing
        from mario_rl.evaluate import run_episode
        from mario_rl.video import VideoRecorder

        out = self.dir / "videos" / f"step_{step:09d}.mp4"
        recorder = VideoRecorder(out)
        env = wrap_preprocessing(make_base_env(self.cfg.stage, frame_sink=recorder), pre)
        try:
            result = run_episode(env, act, seed=self.cfg.seed, max_steps=self.cfg.video_steps)
        finally:
            env.close()
            recorder.close()
        self.log_scalars(step, "eval", video_x=result["x"], video_flag=int(result["cleared"]))
        return out

    # --- the loop ---

    def loop(self, learner: Learner, stop: Callable[[int], bool] | None = None) -> int:
        """Drive `learner.updates()` to --steps, checkpointing whenever the step passes a multiple of
        --checkpoint-every; `stop(step)` returning True ends it early. Then the final checkpoint, and
        the learner and the run are closed however the loop ended. Returns the last step."""
        step = self.start_step
        every, t_loop = self.cfg.checkpoint_every, time.perf_counter()
        try:
            for now in learner.updates():
                passed, step = now // every > step // every, now
                if stop is not None and stop(step):
                    break
                if passed and step < self.cfg.steps:
                    self.save(step, learner)
            self._finish(step, t_loop, learner)
        finally:
            learner.close()
            self.close()
        return step

    def _finish(self, step: int, loop_start: float, learner: Learner) -> None:
        """After the training loop: final plots (drawn while the last checkpoint is written), the
        last checkpoint, and the loop's speed (bench reads this line)."""
        seconds = time.perf_counter() - loop_start
        self.plot(final=True)
        self.save(step, learner)
        trained = step - self.start_step
        print(
            f"trained {trained:,} agent steps in {seconds:.1f} s ({trained / max(seconds, 1e-9):.1f} steps/s)",
            flush=True,
        )

    def close(self) -> None:
        """Finish: the final plots (started earlier by plot(final=True), or now), events, files."""
        if self._plotter is None or self._final_plot_step != self.progress.last_step:
            self.plot(final=True)
        self._plotter.wait()
        self.progress.close()
        self.tb.close()
        self._csv_file.close()
