"""`mario-rl`: a thin command line over the library. It parses, calls, and prints.

    mario-rl play [STAGE] [--policy PATH | --random] [--episodes N] [--out FILE.mp4] [--window]
    mario-rl game [--out FILE.mp4] [--seed S] [--max-steps N] [--sticky P] [--noop-max N] [--no-gif]
    mario-rl train STAGE --algo ddqn|ppo [--steps N] [--run-dir DIR] [--resume] [--burnin ...|--envs N ...]
    mario-rl eval POLICY STAGE [--episodes N] [--sticky P] [--noop-max N] [--seed S] [--json] [--demo F --from-frame N]
    mario-rl bench [--seconds S] [--tutorial]
    mario-rl explore STAGE [--minutes M] [--workers N] --out DIR
    mario-rl solve STAGE [--out DIR] [--explore-minutes M] [--steps N] [--minutes M] [--bc-epochs N]
    mario-rl report RUN [--block N] [--bin PIXELS] [--since STEP] [--json]
    mario-rl campaign [STAGES...] [--budget-hours H] [--steps N] [--backend local|ray [--ray-address ADDR]]
    mario-rl status [--registry FILE] [--json]
    mario-rl eval --all [--episodes N] [--seed S] [--registry FILE]
    mario-rl board [--out DIR] [--no-previews] [--only STAGES...] [--max-frames N] [--registry FILE]

Bad input ends with one line, `error: ...`, and exit code 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from mario_rl.errors import UserError

ALGOS = ("ddqn", "ppo")


@dataclass
class PlayArgs:
    """Play a stage and record it: a trained policy (the bundled one by default) or a random agent."""

    stage: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STAGE")] = "1-1"
    """stage to play: 1-1 ... 8-4, or game"""
    policy: Path | None = None
    """policy file to play (default: the bundled policy for the stage, if there is one)"""
    random: bool = False
    """play a random agent even if a policy exists"""
    episodes: int = 1
    """episodes to play (all go into one video)"""
    out: Path = Path("videos/mario.mp4")
    """video to write (its folder is created): an MP4 and, beside it, an animated GIF preview of the same name"""
    window: bool = False
    """also show the game in a window while it plays (needs a display)"""
    seed: int = 0
    """seed of the first episode (episode i uses seed + i) and of the random agent"""
    actions: str | None = None
    """action set for a random agent (default: right); a policy uses its own"""
    sticky: float = 0.0
    """frame-level sticky-action probability"""
    noop_max: int = 0
    """up to this many random no-op frames at reset"""


@dataclass
class EvalArgs:
    """Evaluate a policy under docs/protocol.md (defaults: 20 episodes, sticky 0.25, 0..30 no-ops)."""

    policy: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="POLICY")]
    """policy file, or a stage name for its bundled policy"""
    stage: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STAGE")]
    """stage to evaluate on: 1-1 ... 8-4"""
    episodes: int = 20
    """episodes; episode i uses seed + i"""
    sticky: float = 0.25
    """frame-level sticky-action probability"""
    noop_max: int = 30
    """up to this many random no-op frames at reset"""
    seed: int = 0
    """seed of the first episode"""
    json: bool = False
    """print the full result as JSON"""
    act: str | None = None
    """greedy or sample (default: what the policy file says, greedy if nothing)"""
    temperature: float | None = None
    """sampling temperature of --act sample, below 1 sharpens (default: what the policy file says, else 1)"""
    out: Path | None = None
    """also write the result JSON to this file"""
    video: Path | None = None
    """also record every episode into this video (.mp4, with a .gif preview)"""
    demo: Path | None = None
    """a demonstration (explore's demo.json) to count --from-frame along"""
    from_frame: int = 0
    """start every episode from the demonstration's state after this many frames (sticky actions, no
    no-ops): where along the stage the policy fails; a diagnosis, never a protocol result"""


@dataclass
class BenchArgs:
    """Measure speed and memory: the raw emulator, the env pipeline, DDQN training, the replay."""

    seconds: float = 20.0
    """seconds per measurement"""
    tutorial: bool = True
    """also time DDQN training against the PyTorch tutorial's own loop (a few minutes)"""
    train_steps: int = 3000
    """agent steps of each timed training run"""
    burnin: int = 1000
    """burn-in steps of each timed training run"""
    vec_envs: int = 16
    """environments in the vector env and PPO measurements"""
    ppo_steps: int = 10240
    """agent steps of the timed PPO run, at least two updates of 128 steps per env (0 skips it)"""
    json: bool = False
    """print the results as JSON"""


def _parse(cls, args: list[str], prog: str):
    """tyro, with its boxed parse errors folded into our one-line `error: ...` (exit 2)."""
    import contextlib
    import io

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=args, prog=prog)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        # Keep the box's first paragraph (the message), drop borders and the help pointer.
        body = []
        for line in captured.getvalue().splitlines()[1:]:
            text = line.strip().strip("│╰╯─").strip()
            if not text or text.startswith("For full helptext"):
                continue
            if set(text) <= set("─"):
                break
            body.append(text)
        detail = " ".join(" ".join(body).split()) or "invalid arguments"
        raise UserError(f"{detail} (see {prog} --help)") from None


def cmd_play(args: list[str]) -> None:
    from mario_rl.play import play

    a = _parse(PlayArgs, args, "mario-rl play")
    play(
        a.stage,
        policy=a.policy,
        random=a.random,
        episodes=a.episodes,
        out=a.out,
        window=a.window,
        seed=a.seed,
        actions=a.actions,
        sticky=a.sticky,
        noop_max=a.noop_max,
        echo=print,
    )


def cmd_game(args: list[str]) -> None:
    from mario_rl.game import GameConfig, play_game

    play_game(_parse(GameConfig, args, "mario-rl game"), echo=lambda line: print(line, flush=True))


def cmd_train(args: list[str]) -> None:
    algo, rest = "ddqn", []
    it = iter(args)
    for arg in it:
        if arg == "--algo":
            algo = next(it, "")
        elif arg.startswith("--algo="):
            algo = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if algo not in ALGOS:
        raise UserError(f"unknown algorithm {algo!r}: choose one of {', '.join(ALGOS)}")
    import importlib

    module = importlib.import_module(f"mario_rl.agents.{algo}")
    config_class = {"ddqn": "DDQNConfig", "ppo": "PPOConfig"}[algo]
    cfg = _parse(getattr(module, config_class), rest, f"mario-rl train --algo {algo}")
    run = module.train(cfg)
    print(f"done: {run.dir} (policy: {run.policy_path})")


@dataclass
class EvalAllArgs:
    """Re-evaluate every bundled policy in the registry on fresh seeds and record the results there."""

    all: bool = True
    """evaluate every stage that has a policy"""
    episodes: int = 20
    """protocol episodes per stage"""
    seed: int | None = None
    """first seed of every stage's episodes (default: fresh ones from the clock, printed)"""
    registry: Path = Path(__file__).resolve().parents[2] / "models" / "index.json"
    """the registry to read and update"""


def cmd_eval(args: list[str]) -> None:
    if "--all" in args:
        return cmd_eval_all(args)
    from mario_rl.envs import env_id
    from mario_rl.evaluate import evaluate
    from mario_rl.policy import load_policy
    from mario_rl.registry import wilson
    from mario_rl.storage import atomic_write, check_writable

    a = _parse(EvalArgs, args, "mario-rl eval")
    env_id(a.stage)
    if a.out is not None:
        check_writable(a.out)
    if a.video is not None:
        from mario_rl.video import check_output_path

        check_output_path(a.video)
    demo = None
    if a.from_frame or a.demo is not None:
        from mario_rl.demonstration import load_demo

        if a.demo is None or not a.from_frame:
            raise UserError("--demo and --from-frame go together")
        demo = load_demo(a.demo)
    policy = load_policy(a.policy, a.act, a.temperature)

    def show(r):
        if not a.json:
            mark = "CLEAR" if r["cleared"] else "     "
            print(f"  seed {r['seed']:>6}  {mark}  x {r['x']:>5}  steps {r['steps']:>5}", flush=True)

    result = evaluate(
        policy,
        a.stage,
        episodes=a.episodes,
        sticky=a.sticky,
        noop_max=a.noop_max,
        seed=a.seed,
        video=a.video,
        on_episode=show,
        demo=demo,
        from_frame=a.from_frame,
    )
    if a.out is not None:
        atomic_write(a.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        lo, hi = wilson(result["clears"], result["episodes"])
        print(
            f"{a.stage}: cleared {result['clears']}/{result['episodes']} "
            f"(clear rate {result['clear_rate']:.2f}, 95% Wilson interval [{lo:.2f}, {hi:.2f}], "
            f"sticky {result['sticky']}, no-ops 0..{result['noop_max']}) | "
            f"x mean {result['mean_x']:.0f}, median {result['median_x']:.0f} | "
            f"steps mean {result['mean_steps']:.0f} | seeds {a.seed}..{a.seed + a.episodes - 1} | {policy.mode}"
            + (f" (temperature {policy.temperature:g})" if policy.mode == "sample" else "")
            + (f" | from frame {a.from_frame:,} of {a.demo}: not a protocol result" if a.from_frame else "")
        )


def cmd_eval_all(args: list[str]) -> None:
    from mario_rl.evaluate import eval_all

    a = _parse(EvalAllArgs, args, "mario-rl eval --all")
    if a.episodes < 1:
        raise UserError(f"--episodes must be positive, got {a.episodes}")
    problems = eval_all(a.registry, episodes=a.episodes, seed=a.seed)
    if problems:
        sys.exit(1)


@dataclass
class StatusArgs:
    """Where every stage stands: the registry as an 8x4 table, clear rates with 95% Wilson intervals."""

    registry: Path = Path(__file__).resolve().parents[2] / "models" / "index.json"
    """the registry to read"""
    json: bool = False
    """print one row per stage as JSON"""


def cmd_status(args: list[str]) -> None:
    from mario_rl.registry import format_status, load_registry, status_rows

    a = _parse(StatusArgs, args, "mario-rl status")
    reg = load_registry(a.registry)
    print(json.dumps(status_rows(reg), indent=1) if a.json else format_status(reg))


def cmd_board(args: list[str]) -> None:
    from mario_rl.board import BoardConfig, build_board

    build_board(_parse(BoardConfig, args, "mario-rl board"))


def cmd_campaign(args: list[str]) -> None:
    from mario_rl.campaign import CampaignConfig, run_campaign

    cfg = _parse(CampaignConfig, args, "mario-rl campaign")
    outcomes = run_campaign(cfg)
    print("campaign: " + (", ".join(f"{s} {o}" for s, o in outcomes.items()) or "nothing to do"))


def cmd_bench(args: list[str]) -> None:
    from mario_rl.bench import format_report, run_bench

    a = _parse(BenchArgs, args, "mario-rl bench")
    if a.seconds <= 0 or a.train_steps <= 0 or a.burnin <= 0:
        raise UserError("--seconds, --train-steps and --burnin must be positive")
    if a.vec_envs <= 0 or a.ppo_steps < 0:
        raise UserError("--vec-envs must be positive and --ppo-steps >= 0")
    if 0 < a.ppo_steps < 2 * 128 * a.vec_envs:
        raise UserError(
            f"--ppo-steps must be 0 or at least two PPO updates ({2 * 128 * a.vec_envs} steps with {a.vec_envs} envs)"
        )
    report = run_bench(
        seconds=a.seconds,
        tutorial=a.tutorial,
        train_steps=a.train_steps,
        burnin=a.burnin,
        vec_envs=a.vec_envs,
        ppo_steps=a.ppo_steps,
        echo=None if a.json else print,
    )
    print(json.dumps(report, indent=2) if a.json else format_report(report))


def cmd_explore(args: list[str]) -> None:
    from mario_rl.explore import ExploreConfig, run_explore

    @dataclass
    class ExploreArgs(ExploreConfig):
        """Search a stage over emulator save states for a path to the flag; write it as a demonstration."""

        out: Path = Path("explore")
        """folder for demo.json (or furthest.json when no flag was found), explore.json and the videos"""
        video: bool = True
        """record the demonstration's replay as MP4 + GIF"""

    a = _parse(ExploreArgs, args, "mario-rl explore")
    cfg = ExploreConfig(**{k: getattr(a, k) for k in ExploreConfig.__dataclass_fields__})
    result = run_explore(cfg, a.out, video=a.video)
    if result.solved:
        print(
            f"{cfg.stage}: flag reached after {result.frames_played:,} frames explored in {result.seconds:.0f} s "
            f"({result.cells:,} cells); demonstration of {len(result.frames):,} frames verified by replay: "
            f"{a.out / 'demo.json'}"
        )
    else:
        print(
            f"{cfg.stage}: no flag in {cfg.minutes:g} min ({result.frames_played:,} frames, {result.cells:,} cells); "
            f"best x {result.best_x}; the furthest path is in {a.out / 'furthest.json'}"
        )
        sys.exit(1)


def cmd_solve(args: list[str]) -> None:
    from mario_rl.solve import SolveConfig, SolveFailed, solve

    cfg = _parse(SolveConfig, args, "mario-rl solve")
    try:
        r = solve(cfg)
    except SolveFailed as e:
        print(f"{cfg.stage}: not solved: {e}")
        sys.exit(1)
    t = r["timings"]
    print(
        f"{cfg.stage}: cleared {r['clears']}/{r['episodes']} under docs/protocol.md "
        f"(seeds {r['seeds'][0]}..{r['seeds'][-1]}) -> {'PASSED' if r['passed'] else 'not passed'} | "
        f"explore {t['explore_s']:.0f} s, train {t['train_s']:.0f} s, total {t['total_s'] / 60:.1f} min"
    )
    if not r["passed"]:
        sys.exit(1)


@dataclass
class ReportArgs:
    """Summarize a training run's episodes.csv per block of agent steps: clears from a real reset, and where the
    failed ones got to (a run from a demonstration also starts episodes elsewhere; those are counted apart)."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """run folder (holding episodes.csv), or the episodes.csv itself"""
    block: int = 100_000
    """agent steps per row"""
    bin: int = 100
    """width in pixels of the x bins that failures are grouped into"""
    top: int = 3
    """x bins shown per row, the most frequent first"""
    frames: int = 400
    """width in emulator frames of the start-frame bins of episodes started along a demonstration"""
    since: int = 0
    """leave out episodes that ended before this agent step"""
    json: bool = False
    """print the report as JSON"""


def cmd_report(args: list[str]) -> None:
    from mario_rl.report import format_report, run_report

    a = _parse(ReportArgs, args, "mario-rl report")
    report = run_report(a.run, block=a.block, bin=a.bin, top=a.top, since=a.since, frames=a.frames)
    print(json.dumps(report, indent=2) if a.json else format_report(report))


COMMANDS = {
    "play": cmd_play,
    "game": cmd_game,
    "train": cmd_train,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "explore": cmd_explore,
    "solve": cmd_solve,
    "report": cmd_report,
    "campaign": cmd_campaign,
    "status": cmd_status,
    "board": cmd_board,
}
USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        COMMANDS[command](rest)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mario-rl ... | head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
