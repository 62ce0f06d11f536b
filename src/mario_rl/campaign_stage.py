"""One stage of the campaign (`mario_rl.campaign`): its demonstration, its warm start, its training with
`solve`'s pipeline, and its result in the registry.

Its state is campaign/W-S/state.json (phase, wall seconds so far, warm start, the latest result), written
atomically, so that a rerun after any stop carries on from there: the PPO run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mario_rl import registry as reg_mod
from mario_rl.envs import STAGES
from mario_rl.errors import UserError
from mario_rl.registry import relative
from mario_rl.storage import atomic_write

if TYPE_CHECKING:
    from mario_rl.campaign import CampaignConfig

REPO = reg_mod.REPO
FINAL_SEED = 500_000_000
"""First seed of a stage's final evaluations: far above the checks' 100,000 + 10 x step, and each
stage and attempt gets its own block (FINAL_SEED + 1,000,000 x stage index + 1,000 x attempt)."""
STOP_REQUESTED = threading.Event()
"""Set by SIGTERM during `campaign` (campaign.stop_on_sigterm): a stage's training stops as at its deadline."""


def default_envs() -> int:
    return max(16, 8 * (os.cpu_count() or 1))


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


CAMPAIGN_SETS = (
    *("stage", "algo", "actions", "envs", "steps", "seed", "sticky", "noop_max", "demo", "run_dir", "resume"),
    *("resume_set", "checkpoint_every", "device", "video_steps", "init_policy"),
)
"""PPOConfig fields that the campaign sets itself, not --ppo-set"""


def campaign_ppo_settings(items: tuple[str, ...]) -> dict:
    """--ppo-set's KEY=VALUE items as PPOConfig fields (UserError for a bad one)."""
    from mario_rl.agents.ppo import PPOConfig
    from mario_rl.training import parse_settings

    return parse_settings(items, PPOConfig, CAMPAIGN_SETS, "--ppo-set")


def _changed_settings(items: tuple[str, ...], run_dir: Path) -> tuple[str, ...]:
    """The --ppo-set items that change the saved run's settings: the rest it already has (a run that began
    with crop_top=32 resumes under --ppo-set crop_top=32, which --resume-set alone would refuse)."""
    from mario_rl.training import json_value

    saved = json.loads((run_dir / "config.json").read_text())
    changed = []
    for item in items:
        ((key, value),) = campaign_ppo_settings((item,)).items()
        if saved.get(key, object()) != json_value(value):
            changed.append(item)
    # Self-imitation turned off (sil_coef=0) takes its own-episode source with it, as in a new run
    # (solve._ppo_config): a resumed run saved with sil_own=true would otherwise refuse the change.
    asked = campaign_ppo_settings(items)
    if asked.get("sil_coef", saved.get("sil_coef")) == 0 and saved.get("sil_own") and "sil_own" not in asked:
        changed.append("sil_own=false")
    return tuple(changed)


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


def skip_search(stage: str, cfg: CampaignConfig) -> bool:
    """A stage whose search already ran for --explore-minutes without a flag is not searched again."""
    state = read_state(cfg.root / stage)
    return (
        state["phase"] == "no demo"
        and state.get("explore_minutes", 0) >= cfg.explore_minutes
        and not (cfg.root / stage / "explore" / "demo.json").exists()
        and not (cfg.demos / f"{stage}.json").exists()
    )


# --- the stage: demonstration, training, result ---


def _demo_end_x(demo: dict) -> int:
    from mario_rl.demonstration import replay

    return int(replay(demo)["x"])


SLOW_PATH_TIME = 50
"""a furthest path that ends with less than this on the game's timer (about 20 frames a unit) is too slow to
go on from: a longer search starts afresh"""


def _earlier_search(stage: str, cfg: CampaignConfig, folder: Path, furthest: Path) -> tuple[Path | None, float]:
    """A shorter search that found no flag: its furthest path (where a longer search starts, so that its
    minutes are not spent again) and its minutes. (None, 0.0) when there is none to go on from."""
    from mario_rl.demonstration import load_demo, replay

    state = read_state(folder)
    spent = float(state.get("explore_minutes", 0.0))
    if state["phase"] != "no demo" or not 0 < spent < cfg.explore_minutes or not furthest.exists():
        return None, 0.0
    demo = load_demo(furthest)
    if demo["stage"] != stage or int(demo["seed"]) != cfg.seed:
        return None, 0.0  # a path from another reset is no place to go on from
    if replay(demo)["time"] < SLOW_PATH_TIME:
        return None, 0.0  # too slow to build on (8-1's 8-minute path ended at x 5,190 with 10 left)
    return furthest, spent


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
        if entry["demo"] != relative(shared) or not entry["demo_flag"]:
            reg_mod.update_stage(
                stage,
                cfg.registry,
                demo=relative(shared),
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
                demo=relative(shared),
                demo_flag=True,
                stage_x=check["x"],
                status="explored" if status == "not started" else status,
            )
            return demo
        echo(f"{stage}: {shared} does not replay to the flag; searching anew")
    furthest = cfg.demos / f"{stage}-furthest.json"
    start, spent = _earlier_search(stage, cfg, folder, furthest)
    minutes = cfg.explore_minutes - spent if minutes is None else min(minutes, cfg.explore_minutes - spent)
    echo(
        f"{stage}: exploring for up to {minutes:.3g} minutes"
        + (f", from the furthest path of {spent:.3g} minutes of search earlier" if start else "")
    )
    result = run_explore(
        ExploreConfig(stage, minutes=minutes, actions=cfg.actions, seed=cfg.seed, start=start),
        folder / "explore",
        video=False,
        echo=lambda line: None,
    )
    minutes += spent  # the search's minutes in all, so that --explore-minutes counts them once
    if not result.solved:
        best_x = result.best_x
        prior_x = int(read_state(folder).get("best_x", -1)) if start is not None else -1
        if start is None or (best_x > prior_x and result.frames):
            save_demo(furthest, result.demo())
        else:  # no further than the path it went on from (cut short before its workers reported): that stays
            best_x = prior_x
        write_state(folder, read_state(folder) | {"phase": "no demo", "best_x": best_x, "explore_minutes": minutes})
        reg_mod.update_stage(
            stage,
            cfg.registry,
            status="explored",
            demo=relative(furthest),
            demo_flag=False,
            note=f"the search found no flag in {minutes:.3g} minutes; furthest x {best_x} ({relative(furthest)})",
        )
        echo(
            f"{stage}: no flag in {result.seconds:.0f} s of search (best x {best_x}); furthest path in "
            f"{relative(furthest)}"
        )
        return None
    demo = result.demo()
    save_demo(shared, demo)
    x = _demo_end_x(demo)
    reg_mod.update_stage(
        stage,
        cfg.registry,
        status="explored",
        demo=relative(shared),
        demo_flag=True,
        stage_x=x,
        note=f"demonstration found in {result.seconds:.0f} s of search ({len(demo['frames']):,} frames)",
    )
    # An earlier, shorter search's furthest path and "no demo" are superseded by the flag (after the
    # registry stops naming that file).
    (cfg.demos / f"{stage}-furthest.json").unlink(missing_ok=True)
    state = read_state(folder)
    if state["phase"] in ("new", "no demo"):
        state.pop("best_x", None)
        # the minutes it took, not the limit: a search that finds the flag stops there
        write_state(folder, state | {"phase": "explored", "explore_minutes": round(spent + result.seconds / 60, 2)})
    echo(f"{stage}: demonstration of {len(demo['frames']):,} frames after {result.seconds:.0f} s of search")
    return demo


def run_stage(stage: str, cfg: CampaignConfig, deadline: float | None = None, echo=print) -> str:
    """Work on one stage until it passes, its step budget is spent, or `deadline` (time.time()) passes.
    Returns what happened: "skipped", "cleared", "not cleared", "not better" (a retrained bundled stage, --goal),
    "no demo", "explored" (--explore-only) or "stopped"."""
    from mario_rl.solve import SolveConfig, SolveFailed, solve

    registry = reg_mod.load_registry(cfg.registry)
    entry = registry["stages"][stage]
    if skip_search(stage, cfg):
        echo(f"{stage}: no flag within {cfg.explore_minutes:g} minutes of search earlier; skipped")
        return "no demo"
    # A bundled stage under --goal is trained again; until a new policy clears more, the registry keeps
    # the bundled one as it is (status, steps, recipe): the board and `mario-rl status` show what is shipped.
    bundled = entry["status"] == "cleared" and reg_mod.check_policy(entry) is None
    if bundled and reg_mod.clear_rate(entry.get("protocol")) >= cfg.goal:
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
    state.update({k: v for k, v in read_state(folder).items() if k != "seconds"})  # what the search recorded
    if demo is None:
        save_state(phase="no demo")
        return "no demo"
    if cfg.explore_only:
        return "explored"
    run_dir = folder / "run"
    resuming = (run_dir / "checkpoint.safetensors").exists()
    # No checkpoint videos: they cost CPU, and the final evaluation records one.
    overrides: dict = {"device": cfg.device, "video_steps": 0}
    changes = _changed_settings(cfg.ppo_set, run_dir) if resuming else ()
    if not resuming:
        overrides |= campaign_ppo_settings(cfg.ppo_set)
        warm = None if cfg.from_scratch else related_policy(stage, registry, cfg.actions)
        if warm is not None:
            # config.json writes it relative to the working folder (TrainConfig.to_json): it is committed.
            overrides["init_policy"] = reg_mod.resolve(registry["stages"][warm]["policy"]).resolve()
        state["warm_start"] = warm
        state["attempt"] = int(state.get("attempt", 0)) + (state["phase"] in ("cleared", "spent"))
    save_state(phase="training", steps_budget=cfg.steps)
    if not bundled:
        reg_mod.update_stage(
            stage,
            cfg.registry,
            status="training",
            algorithm="ppo",
            actions=cfg.actions,
            warm_start=state.get("warm_start"),
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
        "resume_set": changes,
        "check_rate": cfg.goal,
    } | cfg.train
    last_save = [time.monotonic()]

    def stop(step: int) -> bool:
        if time.monotonic() - last_save[0] > 60:  # wall time so far survives a kill -9
            last_save[0] = time.monotonic()
            save_state(step=step)
        return STOP_REQUESTED.is_set() or (deadline is not None and time.time() >= deadline)

    try:
        result = solve(SolveConfig(**settings), echo=echo, stop=stop, ppo_overrides=overrides)
    except SolveFailed as e:
        save_state(phase="no demo", result=str(e))
        return "no demo"
    if result.get("stopped"):
        save_state(step=result["step"])
        if not bundled:
            _record_training(stage, cfg, folder, state)
        echo(f"{stage}: stopped at step {result['step']:,}; resumes from {run_dir}")
        return "stopped"
    return _finish_stage(stage, cfg, folder, state, result, save_state, echo, entry if bundled else None)


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


def _finish_stage(
    stage: str, cfg: CampaignConfig, folder: Path, state: dict, result: dict, save_state, echo, bundled: dict | None
) -> str:
    """Record a final evaluation: bundle a passing policy, unless `bundled` (the registry entry of the policy
    this run was to replace) cleared as large a share or more."""
    from mario_rl.policy import bundle_policy

    summary = _train_summary(folder / "run")
    protocol = reg_mod.protocol_record(result)
    passed = bool(result["passed"])
    text = f"{result['clears']}/{result['episodes']} on seeds {protocol['seeds']}"
    phase, checks = "cleared" if passed else "spent", result.get("checks", [])
    if bundled is not None and (
        not passed or reg_mod.clear_rate(result) <= reg_mod.clear_rate(bundled.get("protocol"))
    ):
        kept = reg_mod.rate_text(bundled["protocol"])
        save_state(phase=phase, result=f"{text}; kept the bundled policy ({kept})", checks=checks)
        echo(f"{stage}: {text} does not beat the bundled policy ({kept}); kept it")
        return "not better"
    save_state(phase=phase, result=text, checks=checks)
    fields = dict(
        algorithm="ppo",
        actions=cfg.actions,  # a retrained stage's new policy may use another action set than the bundled one
        warm_start=state.get("warm_start"),
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
            policy=relative(dst),
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
