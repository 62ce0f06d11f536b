import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, cwd=None, drop_env=()):
    """Run `mario-rl ARGS` as a user would, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env} | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mario_rl.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny DDQN training run through the CLI, shared by several tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli(
        "train",
        "1-1",
        "--algo",
        "ddqn",
        "--steps",
        400,
        "--burnin",
        200,
        "--batch-size",
        8,
        "--memory-size",
        2000,
        "--checkpoint-every",
        300,
        "--video-steps",
        40,
        "--run-dir",
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def tiny_policy(path: Path, stage: str = "1-1", actions: str = "right") -> Path:
    """An untrained ActorCritic policy (it runs right into the first Goomba: short episodes)."""
    import torch

    from mario_rl.envs import Preprocessing, check_action_set
    from mario_rl.nets import ActorCritic
    from mario_rl.policy import save_policy

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


def tiny_campaign(tmp_path: Path, **changes):
    """A CampaignConfig over copies of the repository's 1-1 and 1-2 demonstrations with tiny budgets."""
    import shutil

    from mario_rl.campaign import CampaignConfig

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
        # Self-imitation off: collecting its samples along the whole demonstration would take most of a
        # tiny run's time (test_solve.py checks that the recipe's settings reach PPO).
        train={"eval_video": False, "sil_coef": 0.0},
    )
    return CampaignConfig(**(settings | changes))
