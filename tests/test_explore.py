import json
from pathlib import Path

import pytest

from mario_rl.demonstration import DEMO_STRIDE, FORMAT, demo_starts, replay

from conftest import run_cli

RIGHT = 0x80  # the controller byte for "right"


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


def test_a_search_from_late_in_a_stage_finds_the_flag_and_its_path_replays_there(tmp_path):
    """The success path: the search goes on from a path that stops 80 frames short of 3-4's axe, finds the
    axe, writes demo.json (superseding an earlier furthest.json) and the path replays to the flag per
    docs/protocol.md. One worker with a seeded stream: the same path every time."""
    from mario_rl.demonstration import load_demo, new_demo, save_demo
    from mario_rl.explore import ExploreConfig, run_explore

    demo = load_demo(Path(__file__).parent / "data" / "3-4-demo.json")
    start = new_demo(demo["stage"], demo["seed"], demo["frames"][:-80])  # the axe is its last frame
    save_demo(tmp_path / "start.json", start)
    out = tmp_path / "ex"
    out.mkdir()
    (out / "furthest.json").write_text("{}")
    cfg = ExploreConfig("3-4", minutes=2.0, workers=1, actions="right", seed=demo["seed"], polish=0.0)
    cfg.start = tmp_path / "start.json"
    lines = []
    result = run_explore(cfg, out, video=False, echo=lines.append)
    assert result.solved and any("flag reached" in line for line in lines)
    assert not (out / "furthest.json").exists()
    found = load_demo(out / "demo.json")
    assert found["frames"] == list(result.frames) and found["frames"][:1000] == demo["frames"][:1000]
    check = replay(found)
    assert check["flag"] and check["ended"] and check["frames"] == len(found["frames"])
    assert json.loads((out / "explore.json").read_text())["verified"]
