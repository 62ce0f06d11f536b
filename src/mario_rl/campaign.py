"""`mario-rl campaign [STAGES...]`: every stage, unattended, resumable after any stop.

A queue over stages. Per stage: explore if there is no demonstration, train with
`solve`'s pipeline (PPO from the demonstration, protocol checks, confirmation),
evaluate the result on seeds no check used, bundle a passing policy into models/,
and record everything in the registry (models/index.json, mario_rl.registry).

State lives on disk, under one folder (`--root`, default campaign/):

    campaign/W-S/explore/   the search's demo.json (or furthest.json) and explore.json
    campaign/W-S/run/       the PPO run: checkpoint.safetensors, config.json, demo.json, episodes.csv
                            (tb/, plots/, videos/ and policy.safetensors are regenerable and not committed)
    campaign/W-S/state.json the stage's phase, wall seconds so far, warm start, the latest result
    campaign/logs/          plain-text logs (not committed)

A rerun after `kill -9` resumes the PPO run from its last checkpoint, so at most one
checkpoint interval (`--checkpoint-every` agent steps) is lost; an interrupted search
starts again (searches take minutes). A stage whose bundled policy passes is skipped;
so is one whose step budget is spent without a pass (raise `--steps` to go on).
A finished stage keeps only its policy (models/), demonstration (demos/) and summary
(state.json): its run folder is removed.

Order (default, all 32): stages with no bundled policy first, in game order (1-1 ...
8-4), so that each can warm-start from the stage before it; then stages whose bundled
policy does not pass yet. Warm start: a new run starts from the registry's most related
cleared policy with the same action set: the previous stage of the same world, else the
same stage number of an earlier world (castles from castles), else the nearest cleared
stage before it; `--from-scratch` turns this off.

Backends: local (one stage at a time, every core) or ray (`--backend ray`: each stage a
Ray task, all resuming from the same state folder, so the folder must be shared by the
cluster's machines).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from mario_rl import registry as reg_mod
from mario_rl.envs import STAGES, env_id
from mario_rl.errors import UserError
from mario_rl.storage import atomic_write

REPO = reg_mod.REPO
FINAL_SEED = 500_000_000
"""First seed of a stage's final evaluations: far above the checks' 100,000 + 10 x step, and each
stage and attempt gets its own block (FINAL_SEED + 1,000,000 x stage index + 1,000 x attempt)."""


@dataclass
class CampaignConfig:
    """Options of `mario-rl campaign`."""

    stages: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="STAGES")] = ()
    """stages to work on, in this order (default: all 32, in the campaign's order)"""
    root: Path = Path("campaign")
    """folder of the campaign's resumable state"""
    registry: Path = REPO / "models" / "index.json"
    """the registry to read and update"""
    models: Path = REPO / "models"
    """where passing policies are bundled (<stage>.safetensors, <stage>.eval.json)"""
    demos: Path = REPO / "demos"
    """demonstrations: demos/<stage>.json is used when present, and a new one is written there"""
    budget_hours: float | None = None
    """stop cleanly (checkpoint written) after this many hours of wall clock; None: run the whole queue"""
    steps: int = 4_000_000
    """agent-step budget per stage (the learning rate decays to 0 there)"""
    envs: int = 0
    """parallel emulators per stage (0: 8 per core, at least 16)"""
    actions: str = "complex"
    """action set of the search and the policies (complex has down for pipes and up for vines)"""
    explore_minutes: float = 30.0
    """wall-clock limit of a stage's search for a demonstration"""
    final_episodes: int = 100
    """protocol episodes of a stage's final evaluation, on seeds no check used"""
    from_scratch: bool = False
    """never warm-start a stage from another stage's policy"""
    checkpoint_every: int = 50_000
    """agent steps between checkpoints: what a kill -9 loses at most"""
    seed: int = 0
    """seed of the searches and training runs"""
    device: str = "auto"
    """where the learner runs: auto (cuda when a GPU is present, else cpu), cpu or cuda"""
    backend: str = "local"
    """local (one stage at a time on this machine) or ray (stages as Ray tasks)"""
    ray_address: str | None = None
    """address of a running Ray cluster (None: start a local Ray instance)"""
    ray_cpus_per_stage: int = 0
    """CPUs a Ray stage task asks for (0: all of one node's, one stage per node)"""
    train: tyro.conf.Suppress[dict] = field(default_factory=dict)
    """further SolveConfig settings for every stage (tests: tiny budgets); not a command-line option"""

    def validate(self) -> None:
        for s in self.stages:
            env_id(s)
            if s == "game":
                raise UserError("the campaign works on stages (1-1 ... 8-4), not on game")
        if self.budget_hours is not None and not self.budget_hours > 0:
            raise UserError(f"--budget-hours must be positive, got {self.budget_hours:g}")
        if self.steps <= 0 or self.envs < 0 or self.final_episodes < 1 or not self.explore_minutes > 0:
            raise UserError("--steps, --final-episodes and --explore-minutes must be positive, --envs >= 0")
        if self.backend not in ("local", "ray"):
            raise UserError(f"--backend must be local or ray, got {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")


def default_envs() -> int:
    return max(16, 8 * (os.cpu_count() or 1))


def stage_order(stages: tuple[str, ...], registry: dict, models: Path) -> list[str]:
    """The campaign's queue: the given stages as given; by default all 32, those with no bundled policy
    first (in game order), then those whose bundled policy has not passed."""
    if stages:
        return list(stages)
    all_stages = [s for s in STAGES if s != "game"]
    bundled = {s for s in all_stages if (models / f"{s}.safetensors").is_file()}
    return [s for s in all_stages if s not in bundled] + [s for s in all_stages if s in bundled]


def related_policy(stage: str, registry: dict, actions: str, root: Path = REPO) -> str | None:
    """The registry's most related cleared stage with a usable policy, or None: one with the same action set
    if any (all weights carry over), else one with another (its torso and value head carry over)."""
    w, s = map(int, stage.split("-"))
    usable = {
        k
        for k, e in registry["stages"].items()
        if e["status"] == "cleared" and k != stage and reg_mod.check_policy(e, root) is None
    }
    same = {k for k in usable if registry["stages"][k].get("actions") == actions}
    ok = same or usable
    candidates = [f"{w}-{s - 1}"] if s > 1 else []
    candidates += [f"{ww}-{s}" for ww in range(w - 1, 0, -1)]
    order = [k for k in STAGES if k != "game"]
    candidates += sorted(
        ok, key=lambda k: (order.index(k) > order.index(stage), abs(order.index(k) - order.index(stage)))
    )
    return next((k for k in candidates if k in ok), None)


# --- per-stage state ---


def read_state(folder: Path) -> dict:
    path = folder / "state.json"
    if not path.exists():
        return {"phase": "new", "seconds": 0.0, "attempt": 0}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable campaign state ({e})") from None


def write_state(folder: Path, state: dict) -> None:
    atomic_write(folder / "state.json", lambda tmp: Path(tmp).write_text(json.dumps(state, indent=1) + "\n"))


def _demo_end_x(demo: dict) -> int:
    from mario_rl.demonstration import replay

    return int(replay(demo)["x"])


def ensure_demo(stage: str, cfg: CampaignConfig, folder: Path, echo, minutes: float | None = None) -> dict | None:
    """The stage's demonstration in folder/explore/demo.json: the one there, else demos/<stage>.json, else a
    new search (written to demos/ too when it reaches the flag). None when no search found the flag."""
    from mario_rl.demonstration import load_demo, replay, save_demo
    from mario_rl.explore import ExploreConfig, run_explore

    path = folder / "explore" / "demo.json"
    shared = cfg.demos / f"{stage}.json"
    if path.exists():
        demo = load_demo(path)
        if not shared.exists():  # found by an earlier run of the search here: share it
            save_demo(shared, demo)
        entry = reg_mod.load_registry(cfg.registry)["stages"][stage]
        if entry["demo"] != _rel(shared) or not entry["demo_flag"]:
            reg_mod.update_stage(
                stage,
                cfg.registry,
                demo=_rel(shared),
                demo_flag=True,
                stage_x=_demo_end_x(demo),
                status="explored" if entry["status"] == "not started" else entry["status"],
            )
        return demo
    if shared.exists():
        demo = load_demo(shared)
        check = replay(demo)
        if check["flag"]:
            save_demo(path, demo)
            status = reg_mod.load_registry(cfg.registry)["stages"][stage]["status"]
            reg_mod.update_stage(
                stage,
                cfg.registry,
                demo=_rel(shared),
                demo_flag=True,
                stage_x=check["x"],
                status="explored" if status == "not started" else status,
            )
            return demo
        echo(f"{stage}: {shared} does not replay to the flag; searching anew")
    minutes = cfg.explore_minutes if minutes is None else min(minutes, cfg.explore_minutes)
    echo(f"{stage}: exploring for up to {minutes:.3g} minutes")
    result = run_explore(
        ExploreConfig(stage, minutes=minutes, actions=cfg.actions, seed=cfg.seed),
        folder / "explore",
        video=False,
        echo=lambda line: None,
    )
    if not result.solved:
        furthest = cfg.demos / f"{stage}-furthest.json"
        write_state(
            folder, read_state(folder) | {"phase": "no demo", "best_x": result.best_x, "explore_minutes": minutes}
        )
        save_demo(furthest, result.demo())
        reg_mod.update_stage(
            stage,
            cfg.registry,
            status="explored",
            demo=_rel(furthest),
            demo_flag=False,
            note=f"the search found no flag in {minutes:.3g} minutes; furthest x {result.best_x} ({_rel(furthest)})",
        )
        echo(
            f"{stage}: no flag in {result.seconds:.0f} s of search (best x {result.best_x}); furthest path in "
            f"{_rel(furthest)}"
        )
        return None
    demo = result.demo()
    save_demo(shared, demo)
    x = _demo_end_x(demo)
    reg_mod.update_stage(
        stage,
        cfg.registry,
        status="explored",
        demo=_rel(shared),
        demo_flag=True,
        stage_x=x,
        note=f"demonstration found in {result.seconds:.0f} s of search ({len(demo['frames']):,} frames)",
    )
    echo(f"{stage}: demonstration of {len(demo['frames']):,} frames after {result.seconds:.0f} s of search")
    return demo


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def run_stage(stage: str, cfg: CampaignConfig, deadline: float | None = None, echo=print) -> str:
    """Work on one stage until it passes, its step budget is spent, or `deadline` (time.time()) passes.
    Returns what happened: "skipped", "cleared", "not cleared", "no demo" or "stopped"."""
    from mario_rl.solve import SolveConfig, SolveFailed, solve

    registry = reg_mod.load_registry(cfg.registry)
    entry = registry["stages"][stage]
    if _skip_search(stage, cfg):
        echo(f"{stage}: no flag within {cfg.explore_minutes:g} minutes of search earlier; skipped")
        return "no demo"
    if entry["status"] == "cleared" and reg_mod.check_policy(entry) is None:
        echo(f"{stage}: cleared ({reg_mod.rate_text(entry['protocol'])}); skipped")
        return "skipped"
    folder = cfg.root / stage
    state = read_state(folder)
    if state["phase"] in ("cleared", "spent") and state.get("steps_budget", 0) >= cfg.steps:
        echo(f"{stage}: {state['phase']} earlier ({state.get('result', '')}); skipped")
        return "skipped"
    t_start = time.time()
    seconds0 = float(state.get("seconds", 0.0))

    def save_state(**changes) -> None:
        state.update(changes, seconds=round(seconds0 + time.time() - t_start, 1))
        write_state(folder, state)

    folder.mkdir(parents=True, exist_ok=True)
    demo = ensure_demo(stage, cfg, folder, echo)
    if demo is None:
        save_state(phase="no demo")
        return "no demo"
    run_dir = folder / "run"
    resuming = (run_dir / "checkpoint.safetensors").exists()
    # No checkpoint videos: they cost CPU, and the final evaluation records one.
    overrides: dict = {"device": cfg.device, "video_steps": 0}
    if not resuming:
        warm = None if cfg.from_scratch else related_policy(stage, registry, cfg.actions)
        if warm is not None:
            overrides["init_policy"] = reg_mod.resolve(registry["stages"][warm]["policy"])
        state["warm_start"] = warm
        state["attempt"] = int(state.get("attempt", 0)) + (state["phase"] in ("cleared", "spent"))
    save_state(phase="training", steps_budget=cfg.steps)
    reg_mod.update_stage(
        stage, cfg.registry, status="training", algorithm="ppo", actions=cfg.actions, warm_start=state.get("warm_start")
    )
    index = STAGES.index(stage)
    settings = {
        "stage": stage,
        "out": folder,
        "steps": cfg.steps,
        "envs": cfg.envs or default_envs(),
        "actions": cfg.actions,
        "seed": cfg.seed,
        "explore_minutes": cfg.explore_minutes,
        "eval_episodes": cfg.final_episodes,
        "checkpoint_every": cfg.checkpoint_every,
        "eval_seed": FINAL_SEED + 1_000_000 * index + 1_000 * int(state.get("attempt", 0)),
    } | cfg.train
    last_save = [time.monotonic()]

    def stop(step: int) -> bool:
        if time.monotonic() - last_save[0] > 60:  # wall time so far survives a kill -9
            last_save[0] = time.monotonic()
            save_state(step=step)
        return deadline is not None and time.time() >= deadline

    try:
        result = solve(SolveConfig(**settings), echo=echo, stop=stop, ppo_overrides=overrides)
    except SolveFailed as e:
        save_state(phase="no demo", result=str(e))
        return "no demo"
    if result.get("stopped"):
        save_state(step=result["step"])
        _record_training(stage, cfg, folder, state)
        echo(f"{stage}: stopped at step {result['step']:,} (budget); resumes from {run_dir}")
        return "stopped"
    return _finish_stage(stage, cfg, folder, state, result, save_state, echo)


def _skip_search(stage: str, cfg: CampaignConfig) -> bool:
    """A stage whose search already ran for --explore-minutes without a flag is not searched again."""
    state = read_state(cfg.root / stage)
    return (
        state["phase"] == "no demo"
        and state.get("explore_minutes", 0) >= cfg.explore_minutes
        and not (cfg.root / stage / "explore" / "demo.json").exists()
        and not (cfg.demos / f"{stage}.json").exists()
    )


def _train_summary(run_dir: Path) -> dict:
    """Steps, best x from a real reset and clears from a real reset, from the run's episodes.csv."""
    from mario_rl.plots import read_episodes

    try:
        eps = read_episodes(run_dir / "episodes.csv", extra=("flag", "start"))
    except (OSError, ValueError, KeyError):
        return {}
    steps = eps.get("step", [])
    starts = eps.get("start", [0] * len(steps))
    reset_x = [x for x, s in zip(eps.get("x", []), starts) if s == 0]
    reset_flags = [f for f, s in zip(eps.get("flag", []), starts) if s == 0]
    return {
        "steps": _checkpoint_step(run_dir) or (int(steps[-1]) if len(steps) else 0),
        "best_reset_x": int(max(reset_x, default=0)),
        "reset_episodes": len(reset_flags),
        "reset_clears": int(sum(reset_flags)),
    }


def _checkpoint_step(run_dir: Path) -> int:
    """The agent step of the run's checkpoint (read from its header alone), 0 without one."""
    from safetensors import safe_open

    try:
        with safe_open(run_dir / "checkpoint.safetensors", framework="pt") as f:
            return int(json.loads(f.metadata()["mario_rl"])["step"])
    except Exception:  # no checkpoint yet, or an unreadable one: the episodes say how far it got
        return 0


def _record_training(stage: str, cfg: CampaignConfig, folder: Path, state: dict) -> None:
    s = _train_summary(folder / "run")
    reg_mod.update_stage(
        stage,
        cfg.registry,
        agent_steps=s.get("steps", 0),
        wall_hours=round(state["seconds"] / 3600, 2),
        best_x=s.get("best_reset_x", 0),
        recipe=_recipe(folder / "run"),
    )


def _recipe(run_dir: Path) -> dict:
    """The run's PPO settings that differ from PPOConfig's defaults (what the registry calls its recipe)."""
    from mario_rl.agents.ppo import PPOConfig

    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    defaults = PPOConfig().to_json()
    skip = {"run_dir", "resume", "resume_set", "stage", "demo", "init_policy", "video_steps", "device", "threads"}
    return {k: v for k, v in saved.items() if k not in skip and defaults.get(k, object()) != v}


def protocol_record(result: dict) -> dict:
    """The registry's record of an evaluate() result: clears, episodes, seeds, mean x, failure points."""
    seeds = result["seeds"]
    return {
        "clears": result["clears"],
        "episodes": result["episodes"],
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "mean_x": round(result["mean_x"], 1),
        "temperature": result.get("temperature"),
        "failures_x": sorted(r["x"] for r in result["results"] if not r["cleared"]),
        "measured": time.strftime("%Y-%m-%d"),
    }


def _finish_stage(stage: str, cfg: CampaignConfig, folder: Path, state: dict, result: dict, save_state, echo) -> str:
    from mario_rl.policy import bundle_policy

    summary = _train_summary(folder / "run")
    protocol = protocol_record(result)
    passed = bool(result["passed"])
    text = f"{result['clears']}/{result['episodes']} on seeds {protocol['seeds']}"
    save_state(phase="cleared" if passed else "spent", result=text, checks=result.get("checks", []))
    fields = dict(
        agent_steps=summary.get("steps", 0),
        wall_hours=round(state["seconds"] / 3600, 2),
        recipe=_recipe(folder / "run"),
        best_x=max(summary.get("best_reset_x", 0), int(max(r["x"] for r in result["results"]))),
    )
    if passed:
        dst = bundle_policy(folder / "policy.safetensors", stage, folder=cfg.models)
        atomic_write(cfg.models / f"{stage}.eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        reg_mod.update_stage(
            stage,
            cfg.registry,
            status="cleared",
            policy=_rel(dst),
            sha256=reg_mod.file_sha256(dst),
            protocol=protocol,
            **fields,
        )
        # A finished stage keeps its policy, demonstration and summary; the run is regenerable history.
        shutil.rmtree(folder / "run", ignore_errors=True)
        for name in ("eval.mp4", "eval.gif"):
            (folder / name).unlink(missing_ok=True)
        echo(f"{stage}: CLEARED {text}; bundled as {dst}")
        return "cleared"
    reg_mod.update_stage(
        stage,
        cfg.registry,
        status="training",
        protocol=None,
        note=f"step budget of {cfg.steps:,} spent without a pass; final evaluation {text}",
        **fields,
    )
    echo(f"{stage}: not cleared within {cfg.steps:,} steps ({text})")
    return "not cleared"


# --- registry upkeep ---


def sync_registry(cfg: CampaignConfig) -> dict:
    """Bring the registry up to date with what is on disk: demonstrations in demos/ and bundled policies
    with their eval.json (a stage the registry has never seen)."""
    from mario_rl.demonstration import load_demo

    registry = reg_mod.load_registry(cfg.registry)
    for stage in STAGES:
        if stage == "game":
            continue
        e = registry["stages"][stage]
        demo_path = cfg.demos / f"{stage}.json"
        if e["demo"] is None and demo_path.exists():
            from mario_rl.demonstration import replay

            check = replay(load_demo(demo_path))
            x, flag = int(check["x"]), bool(check["flag"])
            reg_mod.update_stage(
                stage,
                cfg.registry,
                demo=_rel(demo_path),
                demo_flag=flag,
                stage_x=x if flag else None,
                status="explored" if e["status"] == "not started" else e["status"],
            )
        policy = cfg.models / f"{stage}.safetensors"
        ev = cfg.models / f"{stage}.eval.json"
        if e["policy"] is None and policy.is_file() and ev.is_file():
            from mario_rl.policy import load_policy

            meta = load_policy(policy).meta
            data = json.loads(ev.read_text())
            results = data.get("results") or []
            failures = sorted(r["x"] for r in results if not r.get("cleared"))
            protocol = {
                "clears": data["clears"],
                "episodes": data["episodes"],
                "seeds": data.get("seeds_text") or _seed_text(data),
                "mean_x": data.get("mean_x"),
                "temperature": data.get("temperature"),
                "failures_x": failures,
            }
            passed = data["episodes"] >= 20 and data["clears"] / data["episodes"] >= 0.9
            reg_mod.update_stage(
                stage,
                cfg.registry,
                status="cleared" if passed else "training",
                policy=_rel(policy),
                sha256=reg_mod.file_sha256(policy),
                algorithm=meta["algorithm"],
                actions=meta["preprocessing"]["actions"],
                agent_steps=int(meta.get("steps", 0)),
                protocol=protocol,
                best_x=int(max((r["x"] for r in results), default=0)),
            )
    return reg_mod.load_registry(cfg.registry)


def _seed_text(data: dict) -> str:
    sets = data.get("sets_detail") or data.get("by_seeds")
    if isinstance(sets, list):
        return ", ".join(str(s.get("seeds")) for s in sets if isinstance(s, dict))
    seeds = data.get("seeds")
    if isinstance(seeds, list) and seeds:
        return f"{seeds[0]}..{seeds[-1]}"
    return str(seeds or "")


# --- the queue ---


def run_campaign(cfg: CampaignConfig, echo=print) -> dict[str, str]:
    """Work through the queue until it is done or the budget runs out; returns {stage: outcome}."""
    cfg.validate()
    cfg.root.mkdir(parents=True, exist_ok=True)
    registry = sync_registry(cfg)
    queue = stage_order(cfg.stages, registry, cfg.models)
    deadline = None if cfg.budget_hours is None else time.time() + 3600 * cfg.budget_hours
    echo(
        f"campaign: {len(queue)} stages ({', '.join(queue)}); state in {cfg.root}; "
        f"budget {'none' if deadline is None else f'{cfg.budget_hours:g} h'}"
    )
    if cfg.backend == "ray":
        return _run_ray(cfg, queue, deadline, echo)
    # Demonstrations for every stage first: searches take minutes, training takes hours, and the board
    # shows a demonstration where no policy passes yet.
    for stage in queue:
        if deadline is not None and time.time() >= deadline:
            break
        registry = reg_mod.load_registry(cfg.registry)
        if registry["stages"][stage]["status"] != "cleared" and not _skip_search(stage, cfg):
            (cfg.root / stage).mkdir(parents=True, exist_ok=True)
            left = None if deadline is None else (deadline - time.time()) / 60  # a search ends with the budget
            ensure_demo(stage, cfg, cfg.root / stage, echo, minutes=left)
    outcomes = {}
    for stage in queue:
        if deadline is not None and time.time() >= deadline:
            echo("campaign: budget spent; stopping")
            break
        outcomes[stage] = run_stage(stage, cfg, deadline, echo)
        if outcomes[stage] == "stopped":
            break
    return outcomes


def _ray_stage(stage: str, cfg_dict: dict, deadline: float | None) -> tuple[str, str]:
    cfg = CampaignConfig(
        **{
            k: (Path(v) if k in ("root", "registry", "models", "demos") else tuple(v) if k == "stages" else v)
            for k, v in cfg_dict.items()
        }
    )
    return stage, run_stage(stage, cfg, deadline, echo=lambda line: print(line, flush=True))


def _run_ray(cfg: CampaignConfig, queue: list[str], deadline: float | None, echo) -> dict[str, str]:
    # Ray would otherwise start each worker with `uv run` when the driver runs under uv, and that re-syncs
    # the environment (dropping extras such as Ray itself). Ray reads this when it is first imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray needs Ray: install the extra, `uv sync --extra ray` (or pip install 'mario-rl[ray]')"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=cfg.ray_address,
            include_dashboard=False,
            **({} if cfg.ray_address else {"num_cpus": os.cpu_count()}),
        )
    try:
        cpus = cfg.ray_cpus_per_stage or max(
            1, int(min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"]))
        )
        task = ray.remote(num_cpus=cpus, max_retries=0)(_ray_stage)
        # Absolute paths: a Ray worker's working folder is not the driver's.
        cfg_dict = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        pending = [task.remote(stage, cfg_dict, deadline) for stage in queue]
        outcomes = {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            stage, outcome = ray.get(done[0])
            outcomes[stage] = outcome
            echo(f"campaign: {stage} {outcome}")
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def eval_all(
    registry_path: Path = reg_mod.DEFAULT_PATH, episodes: int = 20, seed: int | None = None, echo=print
) -> list[str]:
    """`mario-rl eval --all`: every stage with a policy in the registry, on fresh seeds; the registry gets
    each result. A stage whose policy file is missing or changed is reported and left as it is; the rest go
    on. Returns the problems."""
    from mario_rl.evaluate import CLEAR_RATE, PROTOCOL, evaluate
    from mario_rl.policy import load_policy

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
        protocol = protocol_record(r)
        passed = r["episodes"] >= PROTOCOL["episodes"] and r["clear_rate"] >= CLEAR_RATE
        best_x = max(int(entry.get("best_x") or 0), int(max(x["x"] for x in r["results"])))
        reg_mod.update_stage(
            stage, registry_path, protocol=protocol, status="cleared" if passed else "training", best_x=best_x
        )
        echo(f"{stage}: {reg_mod.rate_text(protocol)} (95% Wilson) -> {'cleared' if passed else 'not cleared'}")
    return problems
