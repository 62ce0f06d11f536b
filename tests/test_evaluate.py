"""Evaluation through the CLI: `eval` prints the clear rate's Wilson interval; `status` and `eval --all` carry on
past a missing or changed policy file."""

import pytest

from mario_rl import registry as reg
from mario_rl.cli import main

from conftest import run_cli, tiny_policy


def test_eval_prints_the_wilson_interval(tmp_path, capsys):
    policy = tiny_policy(tmp_path / "tiny.safetensors")  # runs into the first Goomba: a short episode
    assert main(["eval", str(policy), "1-1", "--episodes", "2"]) == 0
    lo, hi = reg.wilson(0, 2)
    assert f"cleared 0/2 (clear rate 0.00, 95% Wilson interval [{lo:.2f}, {hi:.2f}]," in capsys.readouterr().out


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
