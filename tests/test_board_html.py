"""The board's HTML on its own (no emulator, no browser): seeds as ranges, progress, labels that never call a
demonstration a clear, the failure strip. tests/test_board.py builds a whole board and opens it in chromium."""

from pathlib import Path

from mario_rl import registry as reg
from mario_rl.board_html import cell_html, goal, index_html, progress, seeds_text, stage_html

NO_FILES = {"policy": None, "demo": None, "problem": None, "curve_csv": None}


def test_seeds_progress_and_goal():
    assert seeds_text(list(range(20)) + [1000, 1001, 1005]) == "0..19, 1000..1001, 1005"
    assert seeds_text("500..599") == "500..599" and seeds_text(None) == ""
    assert progress({"progress": 0.0, "protocol": {"clears": 70, "episodes": 80}}) == 1.0  # a clear reached the flag
    assert progress({"progress": 1.7}) == 1.0 and progress({"progress": None}) == 0.0
    assert (goal("1-4"), goal("8-4"), goal("1-1")) == ("axe", "axe", "flag")


def test_a_demonstration_is_never_called_a_clear():
    entry = reg.empty_entry() | {"status": "explored", "demo": "demos/1-4.json", "demo_flag": True}
    demo = {"source": "demo", "cleared": True, "x": 2400, "cut": False, "frames": 3000}
    files = NO_FILES | {"demo": Path("demos/1-4.json")}
    cell = cell_html("1-4", entry, files, demo)
    assert "demonstration (not a policy) → axe" in cell and 'class="label demo"' in cell
    page = stage_html("1-4", entry, files, demo, [])
    assert "<b>not a policy</b> and never a clear" in page and "3,000 frames" in page
    assert "demos/1-4.json" not in page and "1-4.json, reaches the axe" in page
    assert "None yet: no bundled policy has been evaluated." in page


def test_a_policy_page_tells_every_episode_and_where_failures_ended():
    protocol = {"clears": 18, "episodes": 20, "seeds": list(range(20)), "mean_x": 3000.0, "failures_x": [1650, 315]}
    entry = reg.empty_entry() | {"status": "cleared", "policy": "models/1-1.safetensors", "protocol": protocol}
    runs = [{"seed": 0, "cleared": False, "x": 315}, {"seed": 1, "cleared": True, "x": 3161}]
    result = {"source": "policy", "cleared": True, "x": 3161, "episodes": runs, "tries": 3, "mode": "sample"}
    result |= {"temperature": 0.25, "frames": 900}
    files = NO_FILES | {"policy": Path("models/1-1.safetensors")}
    assert "policy, seed 1 → flag, after 1 failed episode" in cell_html("1-1", entry, files, result)
    page = stage_html("1-1", entry, files, result, [Path("media/1-1-curve-x.png")])
    assert "2 episodes, one after another, of the bundled policy (sample, temperature 0.25)" in page
    assert "seeds 0 on until one cleared (at most 3)." in page and "0..19" in page
    assert 'title="x 315"' in page and "315, 1,650" in page and 'alt="x of 1-1"' in page
    no_failures = entry | {"protocol": protocol | {"clears": 20, "failures_x": []}}
    assert "<p>No failed episodes.</p>" in stage_html("1-1", no_failures, files, None, [])


def test_the_index_counts_and_escapes():
    registry = reg.new_registry()
    registry["stages"]["1-1"]["status"] = "cleared"
    registry["updated"] = "<never>"
    cells = {s: cell_html(s, e, NO_FILES, None) for s, e in registry["stages"].items()}
    page = index_html(registry, cells, "2025-01-01 00:00 UTC")
    assert "1 of 32 stages cleared" in page and "<b>not started</b> (31)" in page
    assert "&lt;never&gt;" in page and "<script" not in page
    assert page.count('<a class="cell"') == 32 and "no policy or demonstration yet" in page
