import json
from types import SimpleNamespace

import imageio.v3 as iio
import pytest

from conftest import run_cli


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture
def cli(capsys):
    """`mario-rl ARGS` in this process (mario_rl.cli.main): the error paths need no fresh interpreter."""
    from mario_rl.cli import main

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def test_play_random_records_a_video_of_moving_frames(tmp_path):
    out = tmp_path / "v.mp4"
    proc = run_cli("play", "1-1", "--random", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "random agent" in proc.stdout and "x reached" in proc.stdout
    frames = iio.imread(out)
    assert frames.shape[0] > 20 and frames.shape[1:3] == (240, 256)
    distinct = {hash(f.tobytes()) for f in frames[::5]}
    assert len(distinct) > frames.shape[0] // 10  # not one repeated frame
    gif = tmp_path / "v.gif"
    assert gif.exists() and iio.imread(gif).shape[0] > 5


def test_play_defaults_to_the_bundled_1_1_policy_which_clears_under_the_protocol(tmp_path):
    """`mario-rl play` with no options plays models/1-1.safetensors. Seed 1 (sticky actions 0.25, no-op
    start) is one of its cleared episodes in models/1-1.eval.json; this one must clear too."""
    proc = run_cli("play", "--sticky", "0.25", "--noop-max", "30", "--seed", "1", "--out", tmp_path / "p.mp4")
    assert proc.returncode == 0, proc.stderr
    assert "the bundled policy for 1-1" in proc.stdout and "CLEARED" in proc.stdout, proc.stdout


@pytest.mark.parametrize("stage", ["9-1", "1-5", "abc"])
@pytest.mark.parametrize("command", ["play", "train", "eval"])
def test_unknown_stage(cli, command, stage, tmp_path):
    args = {
        "play": ["play", stage, "--random", "--out", tmp_path / "v.mp4"],
        "train": ["train", stage, "--algo", "ddqn", "--run-dir", tmp_path / "r"],
        "eval": ["eval", "1-1", stage],
    }[command]
    assert_one_line_error(cli(*args), f"unknown stage '{stage}'")


def test_unknown_action_set(cli, tmp_path):
    assert_one_line_error(
        cli("play", "1-1", "--actions", "jump", "--out", tmp_path / "v.mp4"), "unknown action set 'jump'"
    )
    assert_one_line_error(
        cli("train", "1-1", "--actions", "jump", "--run-dir", tmp_path / "r"), "unknown action set 'jump'"
    )


def test_unknown_algorithm(cli, tmp_path):
    assert_one_line_error(cli("train", "1-1", "--algo", "sarsa"), "unknown algorithm 'sarsa'")


def test_missing_and_corrupt_policy(cli, tmp_path):
    assert_one_line_error(cli("eval", tmp_path / "nope.safetensors", "1-1"), "policy file not found")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert_one_line_error(cli("play", "1-1", "--policy", bad, "--out", tmp_path / "v.mp4"), "not a valid safetensors")


@pytest.mark.parametrize("flag", ["--steps", "--burnin", "--batch-size", "--checkpoint-every"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_counts(cli, flag, value, tmp_path):
    assert_one_line_error(cli("train", "1-1", flag, value, "--run-dir", tmp_path / "r"), "must be positive")


def test_bad_values_and_unknown_options(cli, tmp_path):
    assert_one_line_error(cli("play", "1-1", "--episodes", "abc"), "--episodes")
    assert_one_line_error(cli("play", "1-1", "--episodes", "0", "--out", tmp_path / "v.mp4"), "must be positive")
    assert_one_line_error(cli("eval", "x.safetensors", "1-1", "--bogus", "1"), "Unrecognized options")
    assert_one_line_error(run_cli("fly"), "unknown command 'fly'")


def test_unwritable_output_keeps_what_exists(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert_one_line_error(cli("play", "1-1", "--random", "--out", blocker / "v.mp4"), "cannot write")
    assert_one_line_error(cli("play", "1-1", "--random", "--out", tmp_path / "v.avi"), ".mp4 or .gif")
    assert blocker.read_text() == "keep me"
    assert_one_line_error(cli("train", "1-1", "--run-dir", blocker / "run"), "cannot")


@pytest.mark.slow
def test_train_leaves_events_metrics_plots_checkpoint_video(tiny_run):
    run_dir, proc = tiny_run
    assert "step 400/400" in proc.stdout
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    rows = (run_dir / "episodes.csv").read_text().splitlines()
    assert rows[0].startswith("step,episode,return,length,x,flag") and len(rows) > 2
    for name in ("reward", "length", "loss", "q", "x", "learning_curves"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "checkpoint.safetensors").exists() and (run_dir / "policy.safetensors").exists()
    videos = sorted((run_dir / "videos").glob("step_*.mp4"))
    assert [v.name for v in videos] == ["step_000000300.mp4", "step_000000400.mp4"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 400 and config["algo"] == "ddqn"


@pytest.mark.slow
def test_train_refuses_to_overwrite_a_run(tiny_run):
    run_dir, _ = tiny_run
    assert_one_line_error(run_cli("train", "1-1", "--run-dir", run_dir), "already holds a run")


@pytest.mark.slow
def test_eval_and_play_a_trained_policy(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    policy = run_dir / "policy.safetensors"
    out = tmp_path / "eval.json"
    proc = run_cli("eval", policy, "1-1", "--episodes", "2", "--seed", "5", "--json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["episodes"] == 2 and result["seeds"] == [5, 6]
    assert result["sticky"] == 0.25 and result["noop_max"] == 30
    assert 0.0 <= result["clear_rate"] <= 1.0 and result["mean_x"] > 0
    assert json.loads(out.read_text())["seeds"] == [5, 6]
    proc = run_cli("play", "1-1", "--policy", policy, "--out", tmp_path / "p.gif")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.mp4").exists() and (tmp_path / "p.gif").exists()
    assert_one_line_error(
        run_cli("play", "1-1", "--policy", policy, "--actions", "simple", "--out", tmp_path / "q.mp4"),
        "trained with the 'right' action set, not 'simple'",
    )


def test_eval_from_a_frame_needs_its_demonstration(tmp_path):
    assert_one_line_error(run_cli("eval", "1-1", "1-1", "--from-frame", "100"), "--demo and --from-frame go together")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert_one_line_error(run_cli("eval", "1-1", "1-1", "--demo", bad, "--from-frame", "5"), "not a demonstration")


def test_bench_reports_rates_against_the_emulator_ceiling():
    proc = run_cli("bench", "--seconds", "0.5", "--no-tutorial", "--ppo-steps", "0", "--vec-envs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["emulator_fps"] > 0 and report["env_steps_per_s"] > 0
    assert report["ceiling_steps_per_s"] == pytest.approx(report["emulator_fps"] / 4)
    assert report["vec_env_steps_per_s"] > 0 and report["emulator_fps_all_cores"] > 0
    assert report["replay"]["ours"] < report["replay"]["tutorial"] / 25


def test_window_without_a_display_is_a_clear_error(tmp_path):
    proc = run_cli(
        "play", "1-1", "--random", "--window", "--out", tmp_path / "w.mp4", drop_env=("DISPLAY", "WAYLAND_DISPLAY")
    )
    assert_one_line_error(proc, "--window needs a display")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_play_writes_under_videos_by_default():
    """`mario-rl play` keeps its videos out of the checkout's top level (videos/ is git-ignored)."""
    import inspect
    from pathlib import Path

    from mario_rl.cli import PlayArgs
    from mario_rl.play import play

    assert PlayArgs().out == Path("videos/mario.mp4")
    assert inspect.signature(play).parameters["out"].default == Path("videos/mario.mp4")
