"""The campaign: its options, its order, and a real kill -9 mid-run then a rerun that resumes (tests/
test_campaign_stage.py has one stage's parts, tests/test_distributed.py the Ray backend)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mario_rl import registry as reg
from mario_rl.campaign import stage_order
from mario_rl.errors import UserError

from conftest import tiny_campaign, tiny_policy


def test_order(tmp_path):
    registry = reg.new_registry()
    models = tmp_path / "models"
    models.mkdir()
    for stage in ("1-1", "1-2", "4-4"):
        tiny_policy(models / f"{stage}.safetensors", stage, "simple")
    queue = stage_order((), registry, models)
    assert queue[:3] == ["1-3", "1-4", "2-1"] and queue[-3:] == ["1-1", "1-2", "4-4"] and len(queue) == 32
    assert stage_order(("2-1", "1-1"), registry, models) == ["2-1", "1-1"]  # given stages as given


def test_options_are_checked_and_names_stay_importable(tmp_path):
    import mario_rl.campaign as campaign

    for changes, message in [
        ({"stages": ("game",)}, "not on game"),
        ({"stages": ("9-1",)}, "9-1"),
        ({"budget_hours": 0.0}, "--budget-hours must be positive"),
        ({"steps": 0}, "--steps, --final-episodes and --explore-minutes must be positive"),
        ({"backend": "slurm"}, "--backend must be local or ray"),
        ({"device": "tpu"}, "--device must be auto, cpu or cuda"),
    ]:
        with pytest.raises(UserError, match=message):
            tiny_campaign(tmp_path, **changes).validate()
    tiny_campaign(tmp_path).validate()
    # What mario_rl.campaign held before it was split, for scripts and notebooks that import it from there.
    for name in ("FINAL_SEED", "REPO", "default_envs", "ensure_demo", "eval_all", "protocol_record", "read_state"):
        assert hasattr(campaign, name), name
    for name in ("related_policy", "run_campaign", "run_stage", "sync_registry", "write_state", "CampaignConfig"):
        assert hasattr(campaign, name), name


CAMPAIGN_SCRIPT = """
import sys
from pathlib import Path
from mario_rl.campaign import CampaignConfig, run_campaign
t = Path(sys.argv[1])
cfg = CampaignConfig(stages=("1-1",), root=t / "campaign", registry=t / "models" / "index.json",
                     models=t / "models", demos=t / "demos", steps=3072, envs=2, actions="simple",
                     final_episodes=1, checkpoint_every=512, device="cpu", train={"eval_video": False, "sil_coef": 0.0})
print(run_campaign(cfg), flush=True)
"""


@pytest.mark.slow
def test_kill_9_then_rerun_continues_the_campaign(tmp_path):
    tiny_campaign(tmp_path)  # the demonstrations
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", CAMPAIGN_SCRIPT, str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    checkpoint = tmp_path / "campaign" / "1-1" / "run" / "checkpoint.safetensors"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), (tmp_path / "first.log").read_text()
    os.killpg(proc.pid, signal.SIGKILL)  # the campaign and its emulator processes, mid-run
    proc.wait()
    log.close()
    from safetensors import safe_open

    with safe_open(checkpoint, framework="pt") as f:
        killed_at = json.loads(f.metadata()["mario_rl"])["step"]
    assert 512 <= killed_at < 3072
    second = subprocess.run(
        [sys.executable, "-c", CAMPAIGN_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"at step {killed_at:,}" in second.stdout  # resumed from the checkpoint, not from scratch
    assert "exploring" not in second.stdout
    state = json.loads((tmp_path / "campaign" / "1-1" / "state.json").read_text())
    assert state["phase"] in ("spent", "cleared") and state["seconds"] > 0
    entry = reg.load_registry(tmp_path / "models" / "index.json")["stages"]["1-1"]
    assert entry["agent_steps"] >= 3072 and entry["demo"] and entry["stage_x"] > 3000
    third = subprocess.run(
        [sys.executable, "-c", CAMPAIGN_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert "skipped" in third.stdout  # done is done


@pytest.mark.slow
def test_a_new_stage_warm_starts_from_the_related_cleared_policy(tmp_path, monkeypatch):
    """1-2's run starts from the registry's cleared 1-1 policy; its committed config names that file relative
    to the working folder, as the run's other paths are. (Stopped by its deadline after the first update.)"""
    from mario_rl.campaign import run_stage

    monkeypatch.chdir(tmp_path)
    cfg = tiny_campaign(tmp_path, stages=("1-2",))
    cfg.models.mkdir()
    policy = tiny_policy(cfg.models / "1-1.safetensors", "1-1", "simple")
    registry = reg.new_registry()
    registry["stages"]["1-1"].update(
        status="cleared", actions="simple", policy=str(policy), sha256=reg.file_sha256(policy)
    )
    reg.save_registry(cfg.registry, registry)
    lines = []
    assert run_stage("1-2", cfg, deadline=time.time(), echo=lines.append) == "stopped", lines
    assert json.loads((cfg.root / "1-2" / "state.json").read_text())["warm_start"] == "1-1"
    assert json.loads((cfg.root / "1-2" / "run" / "config.json").read_text())["init_policy"] == "models/1-1.safetensors"
