"""The stage registry, `models/index.json`: where every one of the 32 stages stands.

One JSON file, versioned, written atomically under a lock (Ray tasks on one machine may
update it at once). Per stage:

    status       "not started" | "explored" | "training" | "cleared"
    policy       the bundled policy file (relative to the repository), or null
    sha256       that file's sha256, checked by `status` and `eval --all`
    algorithm    "ppo", ...; recipe: the training settings that differ from the defaults
    actions      the policy's action set (warm starts need the same one)
    agent_steps  agent steps trained so far (to pass, once cleared); wall_hours likewise
    warm_start   the stage whose policy the training started from, or null
    protocol     the latest protocol result of the bundled policy: clears, episodes, seeds,
                 mean_x, temperature, failures_x (where the failed episodes ended)
    demo         the demonstration (demos/W-S.json) and whether it reaches the flag
    stage_x      x of the flag or axe (the demonstration's end), for `progress`
    best_x       the furthest x a policy of the stage reached from the real start
    progress     best_x / stage_x, at most 1: how far along the stage the best policy gets

A cleared stage is one whose bundled policy passes the protocol (docs/protocol.md) over
`protocol.episodes` episodes on seeds no training check used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import time
from pathlib import Path

from mario_rl.envs import STAGES, env_id
from mario_rl.errors import UserError
from mario_rl.storage import atomic_write

SCHEMA = "mario_rl.registry/1"
STATUSES = ("not started", "explored", "training", "cleared")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO / "models" / "index.json"


def empty_entry() -> dict:
    return {
        "status": "not started",
        "policy": None,
        "sha256": None,
        "algorithm": None,
        "recipe": {},
        "actions": None,
        "agent_steps": 0,
        "wall_hours": 0.0,
        "warm_start": None,
        "protocol": None,
        "demo": None,
        "demo_flag": False,
        "stage_x": None,
        "best_x": 0,
        "progress": 0.0,
        "note": "",
    }


def new_registry() -> dict:
    return {"schema": SCHEMA, "updated": None, "stages": {s: empty_entry() for s in STAGES}}


def validate(reg: dict, where: str = "registry") -> dict:
    """Check a registry's shape; fill fields added since it was written; return it."""
    if not isinstance(reg, dict) or reg.get("schema") != SCHEMA:
        found = reg.get("schema") if isinstance(reg, dict) else type(reg).__name__
        raise UserError(f"{where}: not a mario_rl registry of schema {SCHEMA} (found {found!r})")
    stages = reg.get("stages")
    if not isinstance(stages, dict):
        raise UserError(f"{where}: 'stages' must be an object")
    for stage, entry in stages.items():
        env_id(stage)
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES:
            raise UserError(f"{where}: stage {stage} has no valid status (one of {', '.join(STATUSES)})")
        for key, value in empty_entry().items():
            entry.setdefault(key, value)
    for stage in STAGES:
        stages.setdefault(stage, empty_entry())
    reg["stages"] = {s: stages[s] for s in STAGES}
    return reg


def load_registry(path: Path = DEFAULT_PATH) -> dict:
    """The registry at `path`, or a new one (every stage not started) where there is no file."""
    path = Path(path)
    if not path.exists():
        return new_registry()
    try:
        reg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable registry ({e})") from None
    return validate(reg, str(path))


def save_registry(path: Path, reg: dict) -> None:
    reg = validate(reg, str(path))
    reg["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(reg, indent=1) + "\n"))


@contextlib.contextmanager
def locked(path: Path = DEFAULT_PATH):
    """Read-modify-write the registry under an exclusive lock: `with locked(p) as reg: reg[...] = ...`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            reg = load_registry(path)
            yield reg
            save_registry(path, reg)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_stage(stage: str, path: Path = DEFAULT_PATH, **fields) -> dict:
    """Set some fields of one stage's entry (under the lock); returns the entry."""
    env_id(stage)
    unknown = set(fields) - set(empty_entry())
    if unknown:
        raise ValueError(f"unknown registry fields: {sorted(unknown)}")
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"bad status {fields['status']!r}")
    with locked(path) as reg:
        entry = reg["stages"][stage]
        entry.update(fields)
        if entry["status"] == "cleared":
            entry["progress"] = 1.0
        elif entry.get("stage_x") and entry.get("best_x") is not None:
            entry["progress"] = round(min(1.0, entry["best_x"] / entry["stage_x"]), 3)
        return dict(entry)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(path_text: str | None, root: Path = REPO) -> Path | None:
    """A registry path (relative to the repository) as a Path."""
    if not path_text:
        return None
    p = Path(path_text)
    return p if p.is_absolute() else root / p


def relative(path: Path) -> str:
    """A path as the registry records it: relative to the repository when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def check_policy(entry: dict, root: Path = REPO) -> str | None:
    """Why the entry's policy file cannot be used (missing, changed), or None when it can."""
    path = resolve(entry.get("policy"), root)
    if path is None:
        return "no policy"
    if not path.is_file():
        return f"policy file missing: {entry['policy']}"
    if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
        return f"policy file changed since it was registered (sha256 differs): {entry['policy']}"
    return None


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


def wilson(clears: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a clear rate: 18 of 20 is about (0.70, 0.97)."""
    if episodes <= 0:
        return (0.0, 1.0)
    p = clears / episodes
    denom = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denom
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clear_rate(protocol: dict | None) -> float:
    """The share of a protocol result's episodes that cleared (0 without one)."""
    return protocol["clears"] / protocol["episodes"] if protocol and protocol.get("episodes") else 0.0


def rate_text(protocol: dict | None) -> str:
    """'93/100 0.93 [0.86, 0.97]' for a protocol result, '' for none."""
    if not protocol or not protocol.get("episodes"):
        return ""
    k, n = protocol["clears"], protocol["episodes"]
    lo, hi = wilson(k, n)
    return f"{k}/{n} {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def status_rows(reg: dict, root: Path = REPO) -> list[dict]:
    """One row per stage for `mario-rl status` and the board, with a problem for a bad policy file."""
    rows = []
    for stage, e in reg["stages"].items():
        problem = check_policy(e, root) if e.get("policy") else None
        rows.append(
            {
                "stage": stage,
                "status": e["status"],
                "rate": rate_text(e.get("protocol")),
                "progress": e.get("progress") or 0.0,
                "steps": e.get("agent_steps") or 0,
                "demo_flag": bool(e.get("demo_flag")),
                "problem": problem,
            }
        )
    return rows


def format_status(reg: dict, root: Path = REPO) -> str:
    """The 8x4 table of `mario-rl status`: worlds down, stages across."""
    rows = {r["stage"]: r for r in status_rows(reg, root)}
    short = {"not started": "-", "explored": "explored", "training": "training", "cleared": "CLEARED"}
    cells = {}
    for stage, r in rows.items():
        text = short[r["status"]]
        if r["status"] == "explored" and not r["demo_flag"]:
            text += " (no flag)"  # the search found no path to the flag: its furthest path only
        if r["rate"]:
            text += " " + r["rate"].split(" [")[0].split(" ")[0]
        if r["status"] != "cleared" and r["progress"]:
            text += f" {100 * r['progress']:.0f}%"
        if r["problem"]:
            text += " (!)"
        cells[stage] = text
    width = max(12, *(len(c) for c in cells.values()))
    lines = ["world | " + " | ".join(f"{'stage ' + str(s):<{width}}" for s in range(1, 5))]
    lines.append("-" * len(lines[0]))
    for w in range(1, 9):
        lines.append(f"{w:>5} | " + " | ".join(f"{cells[f'{w}-{s}']:<{width}}" for s in range(1, 5)))
    counts = {s: sum(r["status"] == s for r in rows.values()) for s in STATUSES}
    flags = sum(r["demo_flag"] for r in rows.values())
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {flags} with a demonstration to the flag")
    for r in rows.values():
        if r["problem"]:
            lines.append(f"{r['stage']}: error: {r['problem']}")
        if r["rate"]:
            lines.append(
                f"{r['stage']}: {r['status']}, protocol {r['rate']} (95% Wilson interval), {r['steps']:,} agent steps"
            )
    return "\n".join(lines)
