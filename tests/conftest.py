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
