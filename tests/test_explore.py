import json

import pytest

from mario_rl.demonstration import DEMO_STRIDE, FORMAT, demo_starts, replay
from mario_rl.explore import ExploreConfig, Explorer, mario_x

from conftest import run_cli

RIGHT = 0x80  # the controller byte for "right"


def test_explorer_paths_replay_to_their_cells():
    """Cells are reached by chaining snapshots; replaying a cell's frames from reset must land there too."""
    explorer = Explorer(ExploreConfig("1-1", moves=30, seed=3))
    for _ in range(40):
        explorer.round()
    assert len(explorer.archive) > 20
    best = explorer.best
    assert best.x > 100 and len(best.frames) > 0
    check = replay({"stage": "1-1", "seed": 3, "frames": list(best.frames)})
    assert check["frames"] == len(best.frames) and not check["ended"]
    # x is the furthest point of the replay; the cell's x is where the path ends.
    assert check["x"] >= best.x
    explorer.env.reset(seed=3)
    for b in best.frames:
        explorer.env.step(b)
    assert mario_x(explorer.env) == best.x


def test_cells_prefer_ways_in_that_stay_in_one_area():
    """The test demonstration of 1-1 takes the bonus pipe (two area changes); a way into the same cell
    without the detour replaces it even when longer, and becomes a frontier cell again."""
    from pathlib import Path

    demo = json.loads((Path(__file__).parent / "data" / "1-1-demo.json").read_text())
    explorer = Explorer(ExploreConfig("1-1", seed=demo["seed"]))
    explorer.follow(bytes(demo["frames"][:2400]))
    by_changes = {}
    for key, cell in explorer.archive.items():
        by_changes.setdefault(cell.changes, set()).add(key[0])
    assert sorted(by_changes) == [0, 1, 2]  # before the pipe, in the bonus room, after it
    assert by_changes[1].isdisjoint(by_changes[0]) and by_changes[2] == by_changes[0]
    after = max((c for c in explorer.archive.values() if c.changes == 2), key=lambda c: c.x)
    assert after.x > 2600
    key = next(k for k, c in explorer.archive.items() if c is after)
    newest = max(c.born for c in explorer.archive.values())
    # Not better: same number of changes, longer.
    explorer.env.load_state(after.snapshot)
    seen = after.seen
    explorer._visit(bytearray(after.frames + bytes(8)), 2)
    assert explorer.archive[key] is after and after.seen == seen + 1
    # Better: no detour, though longer; it is news to the frontier.
    explorer._visit(bytearray(after.frames + bytes(8)), 0)
    assert explorer.archive[key].changes == 0 and explorer.archive[key].born > newest
    # Shorter at the same count: replaced, keeping its age and counts.
    born = explorer.archive[key].born
    explorer._visit(bytearray(after.frames), 0)
    assert len(explorer.archive[key].frames) == len(after.frames) and explorer.archive[key].born == born
    # Much sooner, with --sooner: a frontier cell again.
    explorer.cfg.sooner = 8
    explorer._visit(bytearray(after.frames[:-8]), 0)
    assert len(explorer.archive[key].frames) == len(after.frames) - 8 and explorer.archive[key].born > born
    explorer.cfg.sooner = 0
    # Polishing a path with two changes: the frontier rounds start from cells with fewer.
    explorer.cfg.frontier_prob, explorer.cfg.moves, explorer.changes_bound = 1.0, 5, 2
    detour = [c for c in explorer.archive.values() if c.changes == 2]
    for _ in range(20):
        explorer.round()
    assert all(c.chosen == 0 for c in detour)


def test_furthest_rounds_start_on_the_last_screen_reached():
    """With every round drawn from the furthest cells, no cell more than `furthest` pixels left of the
    furthest x is picked (that x only grows, so the bound only tightens)."""
    from pathlib import Path

    demo = json.loads((Path(__file__).parent / "data" / "1-1-demo.json").read_text())
    explorer = Explorer(
        ExploreConfig("1-1", seed=demo["seed"], moves=5, frontier_prob=0.0, furthest_prob=1.0, furthest=64)
    )
    explorer.follow(bytes(demo["frames"][:1200]))
    far = max(c.x for c in explorer.archive.values()) - 64
    behind = [c for c in explorer.archive.values() if c.x < far]
    assert len(behind) > 50
    for _ in range(20):
        explorer.round()
    assert all(c.chosen == 0 for c in behind)
    assert sum(c.chosen for c in explorer.archive.values()) == 20


def test_explore_cli_writes_a_replayable_path(tmp_path):
    out = tmp_path / "ex"
    proc = run_cli("explore", "1-1", "--minutes", 0.15, "--workers", 1, "--out", out, "--no-video")
    # Nine seconds cannot reach the flag: exit code 1, and the furthest path is written.
    assert proc.returncode == 1, proc.stderr
    assert "no flag" in proc.stdout
    path = json.loads((out / "furthest.json").read_text())
    assert path["format"] == FORMAT and set(path) == {"format", "stage", "seed", "frames"} and len(path["frames"]) > 0
    summary = json.loads((out / "explore.json").read_text())
    assert summary["replay"]["frames"] == len(path["frames"]) and summary["best_x"] > 40


@pytest.mark.slow
def test_explore_starts_from_a_given_path(tmp_path):
    """--start: the workers follow the path first, so the search begins at least where it ends."""
    start = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 120}
    walked = replay(start)
    assert not walked["ended"] and walked["x"] > 100
    (tmp_path / "start.json").write_text(json.dumps(start))
    out = tmp_path / "ex"
    proc = run_cli(
        "explore",
        "1-1",
        "--minutes",
        0.1,
        "--workers",
        1,
        "--out",
        out,
        "--no-video",
        "--start",
        tmp_path / "start.json",
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((out / "explore.json").read_text())
    assert summary["best_x"] >= walked["x"] - 16 and summary["config"]["start"] == str(tmp_path / "start.json")
    # A path on another stage is refused before anything runs.
    (tmp_path / "other.json").write_text(json.dumps({**start, "stage": "1-2"}))
    proc = run_cli("explore", "1-1", "--out", tmp_path / "ex2", "--start", tmp_path / "other.json")
    assert proc.returncode == 2 and "not on 1-1" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["9-1"],
        ["game"],
        ["1-1", "--minutes", "0"],
        ["1-1", "--actions", "warp"],
        ["1-1", "--sooner", "-1"],
        ["1-1", "--furthest-prob", "0.8"],
        ["1-1", "--furthest", "0"],
    ],
)
def test_explore_bad_input(tmp_path, args):
    proc = run_cli("explore", *args, "--out", tmp_path / "ex")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ppo_from_a_demonstration_through_the_cli(tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"stage": "1-1", "seed": 0, "frames": [RIGHT] * 120}))
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--actions",
        "complex",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        128,
        "--checkpoint-every",
        64,
        "--video-steps",
        0,
        "--sticky",
        0.25,
        "--run-dir",
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "start frame" in proc.stdout or "start reset" in proc.stdout
    assert json.loads((run_dir / "demo.json").read_text())["frames"] == [RIGHT] * 120
    from mario_rl.storage import load_tensors

    _, state = load_tensors(run_dir / "checkpoint.safetensors", "checkpoint")
    assert 0 <= state["curriculum"]["lo"] < demo_starts(120)
    import csv

    with open(run_dir / "episodes.csv", newline="") as f:
        assert f.readline().strip().endswith(",time,start")
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert all(int(r["start"]) == -1 or int(r["start"]) % DEMO_STRIDE == 0 for r in rows)
    bad = run_cli("train", "1-1", "--algo", "ppo", "--demo", demo, "--demo-retry", 1.5, "--run-dir", tmp_path / "rb")
    assert bad.returncode == 2 and "--demo-retry" in bad.stderr
    uniform = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--demo-order",
        "uniform",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        64,
        "--video-steps",
        0,
        "--run-dir",
        tmp_path / "ru",
    )
    assert uniform.returncode == 0, uniform.stderr
    assert "start anywhere" in uniform.stdout
    _, state = load_tensors(tmp_path / "ru" / "checkpoint.safetensors", "checkpoint")
    assert "curriculum" not in state
    # Prioritized starts, resumed: the clear rates behind the weights are read back from episodes.csv.
    prio = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--demo-order",
        "prioritized",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        64,
        "--video-steps",
        0,
        "--run-dir",
        tmp_path / "rp",
    )
    assert prio.returncode == 0 and "start prioritized" in prio.stdout, prio.stderr
    again = run_cli(
        "train", "1-1", "--algo", "ppo", "--run-dir", tmp_path / "rp", "--resume", "--steps", 128, "--video-steps", 0
    )
    assert again.returncode == 0 and "start prioritized" in again.stdout, again.stderr
    bad_order = run_cli(
        "train", "1-1", "--algo", "ppo", "--demo", demo, "--demo-order", "random", "--run-dir", tmp_path / "rx"
    )
    assert bad_order.returncode == 2 and "--demo-order must be one of" in bad_order.stderr
    wrong = run_cli("train", "1-2", "--algo", "ppo", "--demo", demo, "--run-dir", tmp_path / "r2", "--steps", 64)
    assert wrong.returncode == 2 and "demonstration of 1-1" in wrong.stderr


@pytest.mark.slow
def test_solve_resumes_from_a_demonstration_and_writes_its_evaluation(tmp_path):
    """solve with a demonstration already in its folder: no search, a tiny PPO run, the evaluation files."""
    import shutil
    from pathlib import Path

    out = tmp_path / "sol"
    (out / "explore").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "1-1-demo.json", out / "explore" / "demo.json")
    proc = run_cli(
        "solve",
        "1-1",
        "--out",
        out,
        "--steps",
        128,
        "--envs",
        2,
        "--checkpoint-every",
        64,
        "--eval-episodes",
        1,
        "--gamma",
        0.99,
        "--reward-scale",
        0.01,
    )
    assert "using the demonstration" in proc.stdout, proc.stderr
    # 128 steps of PPO do not clear 1-1: exit code 1, and the files say so.
    assert proc.returncode == 1, proc.stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["episodes"] == 1 and result["seeds"] == [1000] and result["passed"] is False
    assert (out / "policy.safetensors").exists() and (out / "eval.mp4").exists()
    assert (out / "run" / "checkpoint.safetensors").exists()
    saved = json.loads((out / "run" / "config.json").read_text())
    assert (saved["gamma"], saved["reward_scale"]) == (0.99, 0.01)
    assert result["temperature"] == 0.25  # solve's default, written into the policy file it evaluated
    from mario_rl.policy import load_policy

    assert load_policy(out / "policy.safetensors").temperature == 0.25
    bad = run_cli("solve", "1-1", "--out", out, "--check-from", 21)
    assert bad.returncode == 2 and "--check-from" in bad.stderr
    bad = run_cli("solve", "1-1", "--out", tmp_path / "g", "--gamma", 1.5)  # refused before any search
    assert bad.returncode == 2 and "--gamma must be in (0, 1]" in bad.stderr and not (tmp_path / "g").exists()
    fresh = run_cli("solve", "1-1", "--out", tmp_path / "none", "--resume-set", "demo_retry=0.5")
    assert fresh.returncode == 2 and "holds none" in fresh.stderr and not (tmp_path / "none").exists()
    bad = run_cli("solve", "1-1", "--out", tmp_path / "m", "--minutes", 0)
    assert bad.returncode == 2 and "--minutes must be positive" in bad.stderr and not (tmp_path / "m").exists()
    # A wall-clock limit: training stops after the first update past it, then the final evaluation runs.
    timed = tmp_path / "timed"
    shutil.copytree(out / "explore", timed / "explore")
    proc = run_cli(
        "solve", "1-1", "--out", timed, "--steps", 100_000, "--envs", 2, "--eval-episodes", 1, "--minutes", 0.01
    )
    assert proc.returncode == 1 and "--minutes 0.01 reached at step 256" in proc.stdout, proc.stderr
    result = json.loads((timed / "eval.json").read_text())
    assert result["timings"]["stopped_at_step"] == 256 and result["episodes"] == 1


def test_a_check_passes_only_when_its_confirmation_passes_too():
    """solve stops training on two passing 20-episode sets in a row, on seeds no other set used."""
    from mario_rl.evaluate import CLEAR_RATE
    from mario_rl.solve import run_check

    played = []

    def play(clears_by_seed):
        return lambda seed: (
            played.append(seed)
            or {
                "clears": clears_by_seed[seed],
                "episodes": 20,
                "cleared_stage": clears_by_seed[seed] / 20 >= CLEAR_RATE,
            }
        )

    assert run_check(play({500: 19, 520: 18}), 7, 500, confirm=True, echo=lambda _: None)[0]
    passed, records = run_check(play({500: 19, 520: 15}), 7, 500, confirm=True, echo=lambda _: None)
    assert not passed and [r["clears"] for r in records] == [19, 15] and records[1]["seed"] == 520
    passed, records = run_check(play({500: 17}), 7, 500, confirm=True, echo=lambda _: None)
    assert not passed and len(records) == 1  # a failed check is not repeated
    assert run_check(play({500: 18}), 7, 500, confirm=False, echo=lambda _: None) == (
        True,
        [{"step": 7, "seed": 500, "clears": 18, "episodes": 20}],
    )
    assert played == [500, 520, 500, 520, 500, 500]


def test_cells_tell_changed_blocks_near_mario_apart():
    """A block revealed near Mario (8-4's way on) is a new cell; one far away is not."""
    from mario_rl.explore import blocks_near, cell_key, mario_x, raw_env

    env = raw_env("1-1")
    env.reset(seed=0)
    for _ in range(60):
        env.step(0x80)  # run right, clear of the first goomba
    x = mario_x(env)
    base = cell_key(env)
    near = blocks_near(env, x)
    assert near.shape == (5, 13) and near[:, 11:].all() and not near[:, :3].any()  # ground below, sky above
    col = (x // 16) % 32
    addr = 0x0500 + (col >> 4) * 0xD0 + (col & 15) + 16 * 7  # Mario's column, row 7 (a block's height)
    env.ram[addr] = 0xC4  # a used block appears
    assert cell_key(env)[:4] == base[:4] and cell_key(env) != base
    env.ram[addr] = 0
    assert cell_key(env) == base
    far = (col + 10) % 32
    env.ram[0x0500 + (far >> 4) * 0xD0 + (far & 15) + 16 * 7] = 0xC4
    assert cell_key(env) == base
