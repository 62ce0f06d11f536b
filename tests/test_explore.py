import json
from pathlib import Path

import pytest

from mario_rl.demonstration import FORMAT, replay

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
