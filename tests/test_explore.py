import gc
import json

import numpy as np
import pytest

from mario_rl.curriculum import DEMO_STRIDE, BackwardCurriculum, demo_starts
from mario_rl.envs import DemoStart, demo_snapshots, make_base_env
from mario_rl.explore import ExploreConfig, Explorer, mario_x, replay

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


def test_backward_curriculum_moves_back_only_on_success():
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    assert c.window() == (29, 29) and c.start_frame == 29 * DEMO_STRIDE
    for _ in range(4):
        assert not c.record(29 * DEMO_STRIDE, cleared=False)  # failures never move it
    assert c.window() == (29, 29)
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    moved = [c.record(29 * DEMO_STRIDE + 3, cleared=i % 2 == 0) for i in range(4)]
    assert moved == [False, False, False, True] and c.window() == (21, 24)
    assert not c.record(0, cleared=True)  # a real reset is not a start in the window
    assert not c.record(29 * DEMO_STRIDE, cleared=True)  # nor a start behind it
    for lo in (5, 0):  # clearing every time: twice the step
        for _ in range(4):
            c.record(c.lo * DEMO_STRIDE, cleared=True)
        assert c.lo == lo
    for _ in range(4):
        c.record(0, cleared=True)  # at the start, real resets count
    assert c.done and c.window() == (0, -1) and c.start_frame == 0
    assert demo_starts(1) == 1 and demo_starts(17) == 2 and demo_starts(33) == 3
    # The rate is over the latest 2 x min_episodes: an early run of failures stops counting.
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    for _ in range(20):
        assert not c.record(29 * DEMO_STRIDE, cleared=False)
    moved = [c.record(29 * DEMO_STRIDE, cleared=True) for _ in range(4)]
    assert moved == [False, False, False, True] and c.lo == 21


def test_demo_start_restores_states_along_the_demonstration():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 100}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, slack=10)
    assert len(env.snapshots) == demo_starts(100) == 7
    # Where the demonstration is after 64 frames, by plain replay:
    ref = make_base_env("1-1")
    ref.reset(seed=0)
    for _ in range(64):
        _, _, _, _, info = ref.step(RIGHT)
    env.set_demo_window(4, 4)
    obs, info_start = env.reset(seed=1)
    assert info_start["demo_start"] == 64 and info_start["x_pos"] == info["x_pos"] > 40
    assert np.array_equal(obs, ref.unwrapped.screen)
    # The game's reward bookkeeping follows the restored state, not the previous episode's.
    assert env.unwrapped._x_position_max == info_start["x_pos"]
    _, reward, _, _, _ = env.step(0)
    assert 0 <= reward <= 5  # momentum carries Mario a pixel or two
    # Twice the demonstration's remaining 36 frames, plus the slack of 10, then truncated.
    truncations = [env.step(0)[3] for _ in range(2 * 36 + 10 - 1)]
    assert not any(truncations[:-1]) and truncations[-1]
    env.set_demo_window(2, 2, behind=0.5)  # half the starts from anywhere after the window
    starts = {env.reset(seed=10 + i)[1]["demo_start"] for i in range(40)}
    assert 32 in starts and len(starts) > 2 and min(starts) == 32
    env.set_demo_window(0, -1)  # empty window: ordinary resets
    _, info = env.reset(seed=2)
    assert info["demo_start"] == 0 and info["x_pos"] < 60
    # Snapshots replayed once elsewhere (as make_vec_env does for its workers) start the same states.
    snapshots = demo_snapshots(None, demo)
    gc.collect()  # the emulator that took them must outlive them (loading after it is freed crashes)
    shared = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, snapshots=snapshots)
    shared.set_demo_window(4, 4)
    obs_shared, info_shared = shared.reset(seed=1)
    assert np.array_equal(obs_shared, ref.unwrapped.screen) and info_shared["x_pos"] == info_start["x_pos"]


def test_demo_start_retries_from_before_the_agents_own_deaths():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 40}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, slack=300)

    def run_right():
        steps, terminated = 0, False
        while not terminated:  # holding right runs into the first Goomba
            _, _, terminated, truncated, info = env.step(RIGHT)
            steps += 1
            assert not truncated and steps < 1000
        return steps, info

    # A death after a demonstration start is the demonstration's states, not the agent's: not kept.
    env.set_demo_window(2, 2, retry=1.0)
    assert env.reset(seed=0)[1]["demo_start"] == 2 * DEMO_STRIDE
    assert not run_right()[1]["flag_get"] and len(env._retries) == 0
    env.set_demo_window(0, -1, retry=1.0)  # no demonstration starts: a real reset until a death
    _, info = env.reset(seed=0)
    assert info["demo_start"] == 0
    _, info = run_right()
    death_x = info["x_pos"]
    assert not info["flag_get"] and len(env._retries) == 1
    _, info = env.reset(seed=1)
    # Restored from 33..128 frames before the death: behind it, with the Goomba still ahead.
    assert info["demo_start"] == -1 and death_x - 300 < info["x_pos"] < death_x
    assert env.unwrapped._x_position_max == info["x_pos"]
    steps, info = run_right()
    assert 32 < steps <= 128 and info["x_pos"] == death_x  # the same death, replayed without sticky buttons
    env.set_demo_window(0, -1, retry=0.0)
    assert env.reset(seed=2)[1]["demo_start"] == 0


def test_explore_cli_writes_a_replayable_path(tmp_path):
    out = tmp_path / "ex"
    proc = run_cli("explore", "1-1", "--minutes", 0.15, "--workers", 1, "--out", out, "--no-video")
    # Nine seconds cannot reach the flag: exit code 1, and the furthest path is written.
    assert proc.returncode == 1, proc.stderr
    assert "no flag" in proc.stdout
    path = json.loads((out / "furthest.json").read_text())
    assert set(path) == {"stage", "seed", "frames"} and len(path["frames"]) > 0
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


def test_start_priorities_favour_stretches_cleared_only_sometimes():
    from mario_rl.curriculum import StartPriorities

    p = StartPriorities(starts=12, segment=4, floor=0.05, window=8, min_episodes=4)
    # Untried segments share the largest weight: uniform at first.
    assert p.weights() == pytest.approx([1 / 12] * 12) and p.segment_rates() == [None, None, None]
    for i in range(8):
        p.record(1 * DEMO_STRIDE, cleared=i % 2 == 0)  # segment 0: half
        p.record(5 * DEMO_STRIDE, cleared=False)  # segment 1: never
        p.record(9 * DEMO_STRIDE, cleared=True)  # segment 2: always
    assert p.segment_rates() == [0.5, 0.0, 1.0]
    w = p.weights()
    assert abs(sum(w) - 1) < 1e-9 and w[0] == w[3] and w[4] == w[11]
    assert w[0] == pytest.approx(0.30 / 0.40 / 4) and w[4] == pytest.approx(0.05 / 0.40 / 4)  # 0.25 + floor
    assert not p.record(0, True) and not p.record(-1, True) and not p.record(12 * DEMO_STRIDE, True)
    # The latest `window` episodes count: a segment the agent learns moves from the floor to the top.
    for _ in range(4):
        p.record(5 * DEMO_STRIDE, cleared=True)
    assert p.segment_rates()[1] == 0.5


def test_demo_start_draws_states_by_weights():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 100}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0)
    n = len(env.snapshots)
    env.set_demo_window(0, n - 1, weights=[0] * (n - 2) + [1, 1])
    starts = {env.reset(seed=i)[1]["demo_start"] for i in range(20)}
    assert starts == {(n - 2) * DEMO_STRIDE, (n - 1) * DEMO_STRIDE}
    with pytest.raises(ValueError, match="weights"):
        env.set_demo_window(0, n - 1, weights=[1.0])
