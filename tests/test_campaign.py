"""The campaign: registry, status, eval --all, kill -9 and resume, and two stages on a real local Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mario_rl import registry as reg
from mario_rl.campaign import CampaignConfig, related_policy, run_campaign, stage_order
from mario_rl.envs import Preprocessing, check_action_set
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic
from mario_rl.policy import save_policy

from conftest import ROOT, run_cli


def tiny_policy(path: Path, stage: str = "1-1", actions: str = "right") -> Path:
    """An untrained ActorCritic policy (it runs right into the first Goomba: short episodes)."""
    pre = Preprocessing(actions)
    torch.manual_seed(0)
    kwargs = {"in_channels": pre.frame_stack, "n_actions": len(check_action_set(actions)), "frame_size": pre.frame_size}
    save_policy(
        path,
        ActorCritic(**kwargs),
        algorithm="ppo",
        network="ActorCritic",
        network_kwargs=kwargs,
        preprocessing=pre,
        stage=stage,
        steps=0,
        extra={"act": "greedy"},
    )
    return path


def test_registry_round_trip_and_validation(tmp_path):
    path = tmp_path / "index.json"
    fresh = reg.load_registry(path)  # no file: every stage not started
    assert len(fresh["stages"]) == 32 and {e["status"] for e in fresh["stages"].values()} == {"not started"}
    entry = reg.update_stage("2-3", path, status="training", agent_steps=1234, best_x=1500, stage_x=3000)
    assert entry["progress"] == 0.5
    loaded = reg.load_registry(path)
    assert loaded["schema"] == reg.SCHEMA and loaded["updated"]
    assert loaded["stages"]["2-3"]["agent_steps"] == 1234 and loaded["stages"]["1-1"]["status"] == "not started"
    reg.save_registry(path, loaded)
    assert reg.load_registry(path)["stages"] == loaded["stages"]
    with pytest.raises(ValueError):
        reg.update_stage("2-3", path, status="won")
    path.write_text(json.dumps({"schema": "something/9", "stages": {}}))
    with pytest.raises(UserError, match="schema"):
        reg.load_registry(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        reg.load_registry(path)


def test_wilson_interval():
    lo, hi = reg.wilson(18, 20)
    assert 0.69 < lo < 0.71 and 0.97 < hi < 0.98
    lo, hi = reg.wilson(100, 100)
    assert hi == pytest.approx(1.0) and 0.96 < lo < 0.97
    assert reg.rate_text({"clears": 18, "episodes": 20}).startswith("18/20 0.90 [0.70, 0.97]")


def test_order_and_warm_start_choice(tmp_path):
    registry = reg.new_registry()
    models = tmp_path / "models"
    models.mkdir()
    for stage in ("1-1", "1-2", "4-4"):
        tiny_policy(models / f"{stage}.safetensors", stage, "simple")
    queue = stage_order((), registry, models)
    assert queue[:3] == ["1-3", "1-4", "2-1"] and queue[-3:] == ["1-1", "1-2", "4-4"] and len(queue) == 32
    for stage, actions in (("1-1", "simple"), ("4-4", "simple"), ("1-2", "complex")):
        p = models / f"{stage}.safetensors"
        registry["stages"][stage].update(status="cleared", actions=actions, policy=str(p), sha256=reg.file_sha256(p))
    assert related_policy("1-3", registry, "complex", tmp_path) == "1-2"  # the same world's previous stage
    assert related_policy("1-3", registry, "simple", tmp_path) == "1-1"  # same action set first
    assert related_policy("8-4", registry, "simple", tmp_path) == "4-4"  # castles from castles
    assert related_policy("2-1", registry, "simple", tmp_path) == "1-1"  # the nearest before it
    (models / "4-4.safetensors").unlink()  # a missing file is never a warm start
    assert related_policy("8-4", registry, "simple", tmp_path) == "1-1"


@pytest.mark.slow
def test_status_and_eval_all_carry_on_past_a_bad_policy(tmp_path):
    path = tmp_path / "index.json"
    good = tiny_policy(tmp_path / "1-1.safetensors")
    changed = tiny_policy(tmp_path / "1-3.safetensors", "1-3")
    reg.update_stage("1-1", path, status="training", policy=str(good), sha256=reg.file_sha256(good))
    reg.update_stage(
        "1-2",
        path,
        status="cleared",
        policy=str(tmp_path / "gone.safetensors"),
        sha256="0" * 64,
        protocol={"clears": 19, "episodes": 20},
    )
    reg.update_stage("1-3", path, status="training", policy=str(changed), sha256="f" * 64)
    proc = run_cli("status", "--registry", path)
    assert proc.returncode == 0, proc.stderr
    assert "1-2: error: policy file missing" in proc.stdout and "1-3: error: policy file changed" in proc.stdout
    assert "19/20 0.95 [0.76, 0.99]" in proc.stdout  # 1-2's registered result, with its interval
    proc = run_cli("eval", "--all", "--episodes", "2", "--seed", "77", "--registry", path)
    assert proc.returncode == 1, proc.stderr  # problems found, but no traceback
    assert "Traceback" not in proc.stderr
    assert "1-2: error: policy file missing" in proc.stdout and "1-3: error: policy file changed" in proc.stdout
    after = reg.load_registry(path)["stages"]
    assert after["1-1"]["protocol"]["episodes"] == 2 and after["1-1"]["protocol"]["seeds"] == "77..78"
    assert after["1-1"]["status"] == "training"  # 2 episodes never clear a stage
    assert after["1-2"]["protocol"]["clears"] == 19  # untouched
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    for args in (("status",), ("eval", "--all")):
        proc = run_cli(*args, "--registry", bad)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def tiny_campaign(tmp_path: Path, **changes) -> CampaignConfig:
    """A campaign over copies of the repository's 1-1 and 1-2 demonstrations with tiny budgets."""
    demos = tmp_path / "demos"
    demos.mkdir(exist_ok=True)
    for stage in ("1-1", "1-2"):
        shutil.copy(ROOT / "demos" / f"{stage}.json", demos / f"{stage}.json")
    settings = dict(
        stages=("1-1",),
        root=tmp_path / "campaign",
        registry=tmp_path / "models" / "index.json",
        models=tmp_path / "models",
        demos=demos,
        steps=2048,
        envs=2,
        actions="simple",
        final_episodes=1,
        checkpoint_every=512,
        device="cpu",
        train={"eval_video": False},
    )
    return CampaignConfig(**(settings | changes))


CAMPAIGN_SCRIPT = """
import sys
from pathlib import Path
from mario_rl.campaign import CampaignConfig, run_campaign
t = Path(sys.argv[1])
cfg = CampaignConfig(stages=("1-1",), root=t / "campaign", registry=t / "models" / "index.json",
                     models=t / "models", demos=t / "demos", steps=3072, envs=2, actions="simple",
                     final_episodes=1, checkpoint_every=512, device="cpu", train={"eval_video": False})
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
def test_two_tiny_stages_on_a_real_local_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as the campaign does before importing Ray
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cfg = tiny_campaign(tmp_path, stages=("1-1", "1-2"), backend="ray", ray_cpus_per_stage=1, steps=512)
        outcomes = run_campaign(cfg)
    finally:
        ray.shutdown()
    assert set(outcomes) == {"1-1", "1-2"} and set(outcomes.values()) <= {"cleared", "not cleared"}
    stages = reg.load_registry(cfg.registry)["stages"]
    for stage in ("1-1", "1-2"):
        assert stages[stage]["agent_steps"] >= 512
        assert (cfg.root / stage / "state.json").exists()
