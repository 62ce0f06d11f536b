"""Kill a real training process with SIGKILL, then resume it."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from mario_rl.storage import load_tensors

from conftest import run_cli


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    every = 150
    cmd = [
        sys.executable,
        "-m",
        "mario_rl.cli",
        "train",
        "1-1",
        "--algo",
        "ddqn",
        "--steps",
        "100000",
        "--burnin",
        "100",
        "--batch-size",
        "8",
        "--memory-size",
        "3000",
        "--checkpoint-every",
        str(every),
        "--video-steps",
        "0",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run_dir / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    saved = 0
    while time.monotonic() < deadline and saved < 2 * every:
        time.sleep(0.5)
        if ckpt.exists():
            try:
                saved = load_tensors(ckpt, "checkpoint")[1]["step"]
            except Exception:  # noqa: BLE001 - a checkpoint is never half-written; retry anyway
                pass
    assert saved >= 2 * every, "no second checkpoint within 5 minutes"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    _, state = load_tensors(ckpt, "checkpoint")  # intact after the kill
    killed_at = state["step"]
    assert killed_at % every == 0 and killed_at >= 2 * every
    total = killed_at + 2 * every
    resumed = run_cli("train", "1-1", "--algo", "ddqn", "--run-dir", run_dir, "--resume", "--steps", total)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {run_dir} at step {killed_at:,}" in resumed.stdout
    tensors, state = load_tensors(ckpt, "checkpoint")
    assert state["step"] == total
    assert state["config"]["batch_size"] == 8  # the saved config, not the defaults
    assert any(k.startswith("replay.frames") for k in tensors)
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "episodes.csv"))]
    assert steps == sorted(steps) and steps[-1] <= total
    assert json.loads((run_dir / "config.json").read_text())["steps"] == total


def test_resume_needs_a_run(tmp_path):
    proc = run_cli("train", "1-1", "--resume", "--run-dir", tmp_path / "none")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def test_settings_as_key_value_take_their_fields_types(tmp_path):
    """--resume-set and solve's --ppo-set: KEY=VALUE parsed by the field's type, None where allowed."""
    from pathlib import Path

    from mario_rl.agents.ppo import PPOConfig
    from mario_rl.errors import UserError
    from mario_rl.training import parse_settings

    items = ("target_kl=0.02", "ent_coef_final=none", "sil_updates=8", "clip_vloss=false", "init_policy=p.safetensors")
    assert parse_settings(items, PPOConfig, ("stage",), "--x") == {
        "target_kl": 0.02,
        "ent_coef_final": None,
        "sil_updates": 8,
        "clip_vloss": False,
        "init_policy": Path("p.safetensors"),
    }
    for bad, why in (("ent_coef=much", "ent_coef is float"), ("lr=none", "lr is float"), ("stage=1-2", "KEY=VALUE")):
        with pytest.raises(UserError, match=why):
            parse_settings((bad,), PPOConfig, ("stage",), "--x")
    proc = run_cli("solve", "1-1", "--out", tmp_path / "s", "--ppo-set", "target_kl=much")
    assert proc.returncode == 2 and "--ppo-set 'target_kl=much'" in proc.stderr and not (tmp_path / "s").exists()
    for own in ("envs=4", "sticky=0.1", "algo=ddqn"):  # solve's own flags, and solve trains PPO
        proc = run_cli("solve", "1-1", "--out", tmp_path / "s", "--ppo-set", own)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--ppo-set" in proc.stderr, proc.stderr
        assert not (tmp_path / "s").exists()


def test_plot_refreshes_wait_ten_times_the_cpu_time_the_last_one_took(tmp_path, monkeypatch):
    """A long run's refresh redraws every episode (seconds of CPU): the next waits 10x that, not just --plot-every."""
    from mario_rl.training import Run, TrainConfig

    run = Run(TrainConfig(stage="1-1", run_dir=str(tmp_path / "run"), plot_every=0.0, video_steps=0))
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    slow = subprocess.Popen([sys.executable, "-c", busy])  # a refresh that burns 1 s of CPU
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args) or slow)
    try:
        run.tick(1)  # --plot-every 0: a refresh starts at once
        assert len(started) == 1
        deadline = time.monotonic() + 60
        while run._plot_unmeasured and time.monotonic() < deadline:
            run.tick(2)  # while it draws no other starts; once it ends its CPU time is its cost
            time.sleep(0.05)
        assert len(started) == 1 and run._plot_cost >= 0.9, run._plot_cost
        run._last_plot -= 10 * run._plot_cost  # as if that long had passed
        run.tick(3)
        assert len(started) == 2
    finally:
        run.close()


def test_a_resumed_run_writes_paths_under_the_working_folder_relative(tmp_path, monkeypatch):
    """A checkpoint's config may hold an absolute path of this machine (init_policy): config.json is committed,
    so a resume writes it relative to the working folder, and the setting is a Path again."""
    from pathlib import Path

    import torch

    from mario_rl.agents.ppo import PPOConfig
    from mario_rl.checkpoint import save_checkpoint
    from mario_rl.training import Run

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = PPOConfig(stage="1-1", algo="ppo", init_policy=tmp_path / "models" / "1-1.safetensors").to_json()
    assert config["init_policy"] == "models/1-1.safetensors"  # a new run writes it relative too
    config["init_policy"] = str(tmp_path / "models" / "1-1.safetensors")  # as an older version wrote it
    state = {"algo": "ppo", "step": 64, "episode": 1, "best_x": 40, "config": config, "optim": {}}
    save_checkpoint(run_dir / "checkpoint.safetensors", {"rng.torch": torch.get_rng_state()}, state)
    run = Run(PPOConfig(stage="1-1", algo="ppo", run_dir="run", resume=True, video_steps=0))
    try:
        assert run.cfg.init_policy == Path(tmp_path / "models" / "1-1.safetensors")
        written = json.loads((run_dir / "config.json").read_text())
        assert written["init_policy"] == "models/1-1.safetensors"
        outside = "/elsewhere/p.safetensors"
        assert PPOConfig(init_policy=Path(outside)).to_json()["init_policy"] == outside  # elsewhere: kept as is
    finally:
        run.close()
