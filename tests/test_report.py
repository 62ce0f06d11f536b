"""`mario-rl report`: per-block clears from a real reset, kept apart from demonstration starts and retries."""

import json

import pytest
from test_cli import assert_one_line_error

from mario_rl.report import format_report, run_report
from mario_rl.training import EPISODE_FIELDS

from conftest import run_cli


def write_csv(path, rows, fields=EPISODE_FIELDS):
    lines = [",".join(fields)]
    for r in rows:
        lines.append(",".join(str(r.get(f, "")) for f in fields))
    path.write_text("\n".join(lines) + "\n")


def test_report_counts_clears_from_real_resets_only(tmp_path):
    rows = [
        {"step": 100, "x": 3000, "flag": 1, "start": 0},  # reset, cleared
        {"step": 200, "x": 950, "flag": 0, "start": 0},  # reset, died at 950
        {"step": 300, "x": 3000, "flag": 1, "start": 1600},  # demonstration start: not a reset clear
        {"step": 400, "x": 1640, "flag": 0, "start": -1},  # retry: not a reset death
        {"step": 500, "x": 1700, "flag": 0, "start": 1900},  # demonstration start, failed
        {"step": 1100, "x": 1650, "flag": 0, "start": 0},  # next block
        {"step": 1200, "x": 1601, "flag": 0, "start": 0},
        {"step": 1300, "x": 980, "flag": 0, "start": 0},
        {"step": 1400, "x": 3000, "flag": 1, "start": 0},
    ]
    write_csv(tmp_path / "episodes.csv", rows)
    r = run_report(tmp_path, block=1000, bin=100, top=2)
    first, second = r["blocks"]
    assert (first["from"], first["episodes"], first["resets"], first["reset_clears"]) == (0, 5, 2, 1)
    assert first["starts"] == {"reset": 2, "demo": 2, "retry": 1}
    assert first["reset_clear_rate"] == 0.5 and first["died_at"] == [(900, 1, 1.0)]
    assert (second["from"], second["resets"], second["reset_clears"]) == (1000, 4, 1)
    assert second["died_at"] == [(1600, 2, 2 / 3), (900, 1, 1 / 3)]
    assert (r["total"]["resets"], r["total"]["reset_clears"]) == (6, 2)
    # Demonstration starts by start frame (bins of 400): 1600 cleared, 1900 did not; both in 1600-1999.
    assert r["from_demo"] == [{"from_frame": 1600, "episodes": 2, "clears": 1, "clear_rate": 0.5}]
    assert run_report(tmp_path, frames=100)["from_demo"][1] == {
        "from_frame": 1900,
        "episodes": 1,
        "clears": 0,
        "clear_rate": 0.0,
    }
    later = run_report(tmp_path / "episodes.csv", block=1000, since=1000)
    assert [b["from"] for b in later["blocks"]] == [1000] and later["total"]["episodes"] == 4
    assert later["from_demo"] == []


def test_report_without_a_start_column_counts_every_episode_as_a_reset(tmp_path):
    fields = [f for f in EPISODE_FIELDS if f != "start"]  # runs without a demonstration, or older ones
    write_csv(
        tmp_path / "episodes.csv", [{"step": 10, "x": 400, "flag": 0}, {"step": 20, "x": 3100, "flag": 1}], fields
    )
    t = run_report(tmp_path)["total"]
    assert (t["resets"], t["reset_clears"], t["died_at"]) == (2, 1, [(400, 1, 1.0)])


@pytest.mark.slow
def test_report_cli_prints_a_table_json_and_one_line_errors(tmp_path):
    write_csv(
        tmp_path / "episodes.csv",
        [{"step": 10, "x": 950, "flag": 0, "start": 0}, {"step": 20, "x": 3000, "flag": 1, "start": 0}],
    )
    proc = run_cli("report", tmp_path, "--block", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "1/2" in proc.stdout and "0.50" in proc.stdout and "900-999 100%" in proc.stdout
    proc = run_cli("report", tmp_path, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["total"]["reset_clear_rate"] == 0.5
    assert_one_line_error(run_cli("report", tmp_path / "nope"), "does not exist")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert_one_line_error(run_cli("report", tmp_path / "other.csv"), "not a run's episodes.csv")
    (tmp_path / "empty").mkdir()
    write_csv(tmp_path / "empty" / "episodes.csv", [])
    assert_one_line_error(run_cli("report", tmp_path / "empty"), "no episodes yet")
    assert_one_line_error(run_cli("report", tmp_path, "--block", "0"), "--block")


def test_report_replays_where_the_backward_window_began_after_each_block(tmp_path):
    """With the run's config.json and demo.json beside episodes.csv, each block says where the backward
    curriculum's window began at its end, replayed as PPO recorded the episodes."""
    (tmp_path / "config.json").write_text(
        json.dumps({"demo_order": "backward", "demo_back": 1, "demo_success": 0.2, "demo_stall": 0})
    )
    (tmp_path / "demo.json").write_text(json.dumps({"frames": [0] * 65}))  # start states at frames 0..64
    # The window starts at the last start state (frame 64); 16 clears from there (>= 80%) move it back by
    # twice demo_back, to frame 32: 9 of them in the first block (steps 10-90), 7 in the second.
    rows = [{"step": 10 * (i + 1), "x": 3000, "flag": 1, "start": 64} for i in range(16)]
    rows.append({"step": 200, "x": 500, "flag": 0, "start": 0})  # a reset, outside the window: no move
    write_csv(tmp_path / "episodes.csv", rows)
    r = run_report(tmp_path, block=100)
    assert [b["window"] for b in r["blocks"]] == [64, 32, 32]
    assert r["total"]["window"] is None
    # From frame 32 the window reaches frame 0 (the reset's state, still a window) after 16 more clears, and
    # after 16 clears from there the curriculum is done: real resets only.
    rows += [{"step": 300 + i, "x": 3000, "flag": 1, "start": 32} for i in range(16)]
    rows += [{"step": 400 + i, "x": 3000, "flag": 1, "start": 0} for i in range(16)]
    write_csv(tmp_path / "episodes.csv", rows)
    done = run_report(tmp_path, block=100)
    assert [b["window"] for b in done["blocks"]] == [64, 32, 32, 0, "reset"]
    table = format_report(done).splitlines()
    assert "window" in table[1] and " reset " in table[6] and table[7].split()[5] == "-"  # the total's
    (tmp_path / "config.json").write_text(json.dumps({"demo_order": "uniform"}))
    assert [b["window"] for b in run_report(tmp_path, block=100)["blocks"]] == [None] * 5
