"""solve's phases around a stand-in for PPO, the search and the evaluations (no emulator, under a second):
the run's settings, when checks happen and on which seeds, a confirmed pass, the campaign's `stop`, the final
evaluation. The real pipeline runs at the end of this file (test_solve_resumes_from_a_demonstration...)."""

import json
from types import SimpleNamespace

import pytest

import mario_rl.agents.ppo as ppo_mod
import mario_rl.demonstration as demonstration_mod
import mario_rl.evaluate as evaluate_mod
import mario_rl.policy as policy_mod
from mario_rl.solve import SolveConfig, solve

from conftest import run_cli


def status(step: int, demo_done: bool = True, clears: int = 12) -> tuple[int, dict]:
    return step, {"demo_done": demo_done, "reset_flags": [1] * clears + [0] * (20 - clears), "save_policy": None}


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Stand-ins: a demonstration that replays to the flag, PPO that reports the given updates, evaluations
    that clear `clears[seed]` of 20."""
    seen = {"updates": [], "evaluated": [], "saved": 0}

    def train(cfg, after_update=None):
        seen["ppo"] = cfg
        for step, st in seen["script"]:
            st["save_policy"] = lambda: seen.__setitem__("saved", seen["saved"] + 1) or tmp_path / "current.safetensors"
            seen["updates"].append(step)
            if after_update(step, st):
                break
        return SimpleNamespace(policy_path=tmp_path / "run-policy.safetensors")

    def evaluate(policy, stage, episodes=20, sticky=0.25, noop_max=30, seed=0, video=None):
        seen["evaluated"].append((seed, episodes, policy.temperature, video is not None))
        seen.setdefault("sticky", []).append(sticky)
        clears = seen["clears"].get(seed, episodes)
        return {"episodes": episodes, "clears": clears, "cleared_stage": clears / episodes >= 0.9, "seeds": [seed]}

    def load_policy(path, temperature=None):
        return SimpleNamespace(path=path, temperature=temperature)

    monkeypatch.setattr(demonstration_mod, "load_demo", lambda path: {"stage": "1-1"})
    monkeypatch.setattr(demonstration_mod, "replay", lambda demo: {"flag": True, "x": 3161})
    monkeypatch.setattr(ppo_mod, "train", train)
    monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
    monkeypatch.setattr(policy_mod, "load_policy", load_policy)
    monkeypatch.setattr(policy_mod, "write_policy", lambda path, policy: path.write_text("policy"))
    out = tmp_path / "sol"
    (out / "explore").mkdir(parents=True)
    (out / "explore" / "demo.json").write_text("{}")
    return seen, out


def test_checks_then_a_confirmed_pass_then_the_final_evaluation(fakes):
    seen, out = fakes
    seen["script"] = [status(100, demo_done=False), status(200), status(250), status(300, clears=11), status(400)]
    seen["clears"] = {102_000: 17, 104_000: 19, 104_020: 18}
    said = []
    cfg = SolveConfig("1-1", out=out, gamma=0.9, eval_seed=7000, eval_episodes=20, check_every=100, eval_video=False)
    result = solve(cfg, echo=said.append)
    assert said[0] == f"using the demonstration in {out / 'explore' / 'demo.json'}"
    assert (
        seen["ppo"].gamma == 0.9
        and seen["ppo"].video_steps == 1500
        and seen["ppo"].demo == out / "explore" / "demo.json"
    )
    # The recipe's defaults reach the run (docs/experiments.md): self-imitation, own flags, the stall rule.
    assert (seen["ppo"].sil_coef, seen["ppo"].sil_own, seen["ppo"].demo_stall) == (0.1, True, 1024)
    # 100: the start has not reached the reset; 250: within check_every of 200; 300: 11 clears < check_from
    assert seen["updates"] == [100, 200, 250, 300, 400] and seen["saved"] == 2
    assert [s for s, *_ in seen["evaluated"]] == [102_000, 104_000, 104_020, 7000]
    assert all(t == 0.25 for _, _, t, _ in seen["evaluated"][:3])  # checks at --temperature
    assert [(c["step"], c["seed"], c["clears"]) for c in result["checks"]] == [
        (200, 102_000, 17),
        (400, 104_000, 19),
        (400, 104_020, 18),
    ]
    assert result["passed"] is True and result["protocol"]["episodes"] == 20
    assert set(result["timings"]) == {"explore_s", "train_s", "total_s"}
    assert json.loads((out / "eval.json").read_text())["checks"] == result["checks"]
    assert (out / "policy.safetensors").read_text() == "policy"


def test_stop_ends_training_without_a_final_evaluation(fakes):
    seen, out = fakes
    seen["script"] = [status(100), status(200), status(300)]
    seen["clears"] = {101_000: 10}
    asked = []
    overrides = {"device": "cpu", "video_steps": 0, "gamma": 0.95, "sil_coef": 0.0}
    cfg = SolveConfig("1-1", out=out, gamma=0.99, reward_scale=0.05)
    result = solve(
        cfg, echo=lambda line: None, stop=lambda step: asked.append(step) or step >= 200, ppo_overrides=overrides
    )
    assert (seen["ppo"].gamma, seen["ppo"].reward_scale) == (0.95, 0.05)  # ppo_overrides win over --gamma
    assert (seen["ppo"].device, seen["ppo"].video_steps) == ("cpu", 0)
    assert seen["ppo"].sil_own is False  # self-imitation off: the default --sil-own goes with it
    assert asked == [100, 200] and seen["updates"] == [100, 200]
    assert result["stopped"] is True and result["step"] == 200
    assert [c["seed"] for c in result["checks"]] == [101_000]  # the check at step 100 happened before the stop
    assert result["timings"]["stopped_at_step"] == 200 and "total_s" not in result["timings"]
    assert not (out / "eval.json").exists() and not (out / "policy.safetensors").exists()


def test_train_sticky_changes_training_only(fakes):
    seen, out = fakes
    seen["script"] = [status(200)]
    seen["clears"] = {}
    result = solve(SolveConfig("1-1", out=out, train_sticky=0.35, eval_video=False), echo=lambda line: None)
    assert seen["ppo"].sticky == 0.35  # the run trains under the harder perturbation ...
    assert seen["sticky"] == [0.25, 0.25, 0.25]  # ... its check, confirmation and final evaluation do not
    assert result["passed"] is True  # a protocol pass: the evaluation's sticky is the protocol's


def test_train_sticky_out_of_range_is_a_user_error(tmp_path):
    r = run_cli("solve", "1-1", "--out", tmp_path / "s", "--train-sticky", "1.5")
    assert r.returncode == 2 and "--train-sticky must be in [0, 1)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_solve_resumes_from_a_demonstration_and_writes_its_evaluation(tmp_path):
    """solve with a demonstration already in its folder: no search, a tiny PPO run, the evaluation files."""
    import shutil
    from pathlib import Path

    out = tmp_path / "sol"
    (out / "explore").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "1-1-demo.json", out / "explore" / "demo.json")
    proc = run_cli(
        "solve",
        "1-1",
        "--out",
        out,
        "--steps",
        128,
        "--envs",
        2,
        "--checkpoint-every",
        64,
        "--eval-episodes",
        1,
        "--gamma",
        0.9,
        "--reward-scale",
        0.05,
        "--sil-coef",  # self-imitation's samples along the whole demonstration would double this tiny run
        0,
    )
    assert "using the demonstration" in proc.stdout, proc.stderr
    # 128 steps of PPO do not clear 1-1: exit code 1, and the files say so.
    assert proc.returncode == 1, proc.stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["episodes"] == 1 and result["seeds"] == [1000] and result["passed"] is False
    assert (out / "policy.safetensors").exists() and (out / "eval.mp4").exists()
    assert (out / "run" / "checkpoint.safetensors").exists()
    saved = json.loads((out / "run" / "config.json").read_text())
    assert (saved["gamma"], saved["reward_scale"]) == (0.9, 0.05)
    assert result["temperature"] == 0.25  # solve's default, written into the policy file it evaluated
    from mario_rl.policy import load_policy

    assert load_policy(out / "policy.safetensors").temperature == 0.25
    bad = run_cli("solve", "1-1", "--out", out, "--check-from", 21)
    assert bad.returncode == 2 and "--check-from" in bad.stderr
    bad = run_cli("solve", "1-1", "--out", tmp_path / "g", "--gamma", 1.5)  # refused before any search
    assert bad.returncode == 2 and "--gamma must be in (0, 1]" in bad.stderr and not (tmp_path / "g").exists()
    fresh = run_cli("solve", "1-1", "--out", tmp_path / "none", "--resume-set", "demo_retry=0.5")
    assert fresh.returncode == 2 and "holds none" in fresh.stderr and not (tmp_path / "none").exists()
    bad = run_cli("solve", "1-1", "--out", tmp_path / "m", "--minutes", 0)
    assert bad.returncode == 2 and "--minutes must be positive" in bad.stderr and not (tmp_path / "m").exists()
    # A wall-clock limit: training stops after the first update past it, then the final evaluation runs.
    timed = tmp_path / "timed"
    shutil.copytree(out / "explore", timed / "explore")
    proc = run_cli(
        "solve",
        "1-1",
        "--out",
        timed,
        "--steps",
        100_000,
        "--envs",
        2,
        "--eval-episodes",
        1,
        "--minutes",
        0.01,
        "--sil-coef",
        0,
    )
    assert proc.returncode == 1 and "--minutes 0.01 reached at step 256" in proc.stdout, proc.stderr
    result = json.loads((timed / "eval.json").read_text())
    assert result["timings"]["stopped_at_step"] == 256 and result["episodes"] == 1


def test_a_check_passes_only_when_its_confirmation_passes_too():
    """solve stops training on two passing 20-episode sets in a row, on seeds no other set used."""
    from mario_rl.evaluate import CLEAR_RATE
    from mario_rl.solve import run_check

    played = []

    def play(clears_by_seed):
        return lambda seed: (
            played.append(seed)
            or {
                "clears": clears_by_seed[seed],
                "episodes": 20,
                "cleared_stage": clears_by_seed[seed] / 20 >= CLEAR_RATE,
            }
        )

    assert run_check(play({500: 19, 520: 18}), 7, 500, confirm=True, echo=lambda _: None)[0]
    passed, records = run_check(play({500: 19, 520: 15}), 7, 500, confirm=True, echo=lambda _: None)
    assert not passed and [r["clears"] for r in records] == [19, 15] and records[1]["seed"] == 520
    passed, records = run_check(play({500: 17}), 7, 500, confirm=True, echo=lambda _: None)
    assert not passed and len(records) == 1  # a failed check is not repeated
    assert run_check(play({500: 18}), 7, 500, confirm=False, echo=lambda _: None) == (
        True,
        [{"step": 7, "seed": 500, "clears": 18, "episodes": 20}],
    )
    assert played == [500, 520, 500, 520, 500, 500]
    # A stricter share (the campaign's --goal 0.95): 18 of 20 no longer stops training, 19 and 20 do.
    passed, records = run_check(play({500: 19, 520: 18}), 7, 500, confirm=True, echo=lambda _: None, rate=0.95)
    assert not passed and len(records) == 2
    assert run_check(play({500: 20, 520: 19}), 7, 500, confirm=True, echo=lambda _: None, rate=0.95)[0]
    assert not run_check(play({500: 18}), 7, 500, confirm=False, echo=lambda _: None, rate=0.95)[0]
    assert run_check(play({500: 19}), 7, 500, confirm=False, echo=lambda _: None, rate=0.95)[0]
