"""`mario-rl game`: the whole game, stage by stage with each stage's bundled policy or a random agent."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from test_cli import assert_one_line_error

from mario_rl.envs import MidGame, make_base_env
from mario_rl.game import BAND, RANDOM_LABEL, PolicySchedule, Switcher, draw_overlay, overlay_mask

from conftest import run_cli


class FakePolicy:
    def __init__(self, path):
        self.path = path


def _info(world, stage, life=2, x=40):
    return {"world": world, "stage": stage, "life": life, "x_pos": x}


def test_each_stage_gets_its_bundled_policy_or_the_random_agent_and_restarts_at_stages_and_lost_lives():
    bundled = {
        "1-1": Path("models/1-1.safetensors"),
        "1-2": Path("models/1-2.safetensors"),
        "4-4": Path("models/4-4.safetensors"),
    }
    loads = []
    schedule = PolicySchedule(seed=0, find=bundled.get, load=lambda p: loads.append(p) or FakePolicy(p))
    switcher = Switcher(schedule)
    infos = [
        _info(1, 1),
        _info(1, 1, x=300),
        _info(1, 2),
        _info(1, 2, x=900),
        _info(1, 2, life=1, x=40),
        _info(1, 3, life=1),
        _info(1, 3, life=2, x=500),  # a 1-up: not a restart
        _info(1, 3, life=1),
        _info(4, 4, life=1),
        _info(4, 4, life=0),  # (a warp)
        _info(4, 4, life=0xFF),
    ]  # game over
    chosen = []
    for info in infos:
        agent = switcher.update(info)
        chosen.append(None if agent is None else getattr(agent, "path", None) or agent.label)
    assert chosen == [
        bundled["1-1"],
        None,
        bundled["1-2"],
        None,
        bundled["1-2"],
        RANDOM_LABEL,
        None,
        RANDOM_LABEL,
        bundled["4-4"],
        bundled["4-4"],
        None,
    ]
    assert loads == [bundled["1-1"], bundled["1-2"], bundled["4-4"]]  # each policy loaded once
    assert switcher.stages == ["1-1", "1-2", "1-3", "4-4"]
    assert switcher.x == {"1-1": 300, "1-2": 900, "1-3": 500, "4-4": 40}
    assert switcher.lives_lost == 4 and switcher.lives == 0  # three lives and the 1-up's
    assert [schedule.label(s) for s in switcher.stages] == ["policy 1-1", "policy 1-2", RANDOM_LABEL, "policy 4-4"]
    assert switcher.events[:3] == [
        "1-1: policy 1-1 (models/1-1.safetensors)",
        "1-2: policy 1-2 (models/1-2.safetensors)",
        "  life lost on 1-2 at x 900 (2 left)",
    ]


def test_the_overlay_changes_only_its_band_and_its_text_shows():
    frame = np.full((240, 256, 3), 200, np.uint8)
    a, b = overlay_mask("1-1  lives 3  policy 1-1", 256), overlay_mask("1-3  lives 2  " + RANDOM_LABEL, 256)
    assert a.shape == (BAND, 256) and a.sum() > 100 and (a != b).any()
    out = draw_overlay(frame.copy(), a)
    assert (out[:-BAND] == 200).all()
    assert (out[-BAND:][a] == 255).all() and (out[-BAND:][~a] == 50).all()


def test_mid_game_reset_keeps_the_game_where_it_is():
    base = make_base_env("1-1")
    base.reset(seed=0)
    for _ in range(80):
        screen, _, _, _, info = base.step(0x80)  # walk right
    obs, info2 = MidGame(base).reset()
    assert obs is base.unwrapped.screen and info2["x_pos"] == info["x_pos"] > 60 and info2["time"] == info["time"]
    base.close()


def test_game_plays_1_1_with_its_policy_into_1_2_and_records_the_overlay(tmp_path):
    """Seed 0 clears 1-1 in about 280 agent steps, so 320 steps also start 1-2 with its own policy."""
    out = tmp_path / "game.mp4"
    proc = run_cli("game", "--max-steps", 320, "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("1-1: policy 1-1 (") and lines[1].startswith("1-2: policy 1-2 ("), proc.stdout
    summary = next(line for line in lines if line.startswith("reached "))
    assert summary.startswith("reached 1-2 at x ") and "stopped at --max-steps 320" in summary, summary
    assert "lives lost 0 |" in summary and "(320 agent steps" in summary, summary
    frames = iio.imread(out)
    assert frames.shape[1:] == (240, 256, 3) and f"{frames.shape[0]:,} frames" in summary
    assert (tmp_path / "game.gif").is_file()

    # The first frame is the game's reset screen with the overlay's band along the bottom (MP4 is lossy).
    base = make_base_env("game")
    raw, _ = base.reset(seed=0)
    raw = raw.astype(np.int16)
    base.close()
    diff = np.abs(frames[0].astype(np.int16) - raw)
    assert diff[:-BAND].mean() < 4, diff[:-BAND].mean()
    assert diff[-BAND:].mean() > 40, diff[-BAND:].mean()
    # The band's white pixels spell the overlay's text, which follows the stage.
    for frame, text in ((frames[0], "1-1  lives 3  policy 1-1"), (frames[-1], "1-2  lives 3  policy 1-2")):
        written = frame[-BAND:].mean(axis=2) > 128
        assert (written == overlay_mask(text, 256)).mean() > 0.99, text


def test_game_bad_options(tmp_path):
    assert_one_line_error(run_cli("game", "--max-steps", -1, "--out", tmp_path / "g.mp4"), "--max-steps must be >= 0")
    assert_one_line_error(run_cli("game", "--out", tmp_path / "g.txt"), "output must end in .mp4 or .gif")
