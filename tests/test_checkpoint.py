"""Versioned checkpoints: every committed checkpoint (format version 0) migrates, loads and resumes; a resumed
DDQN run is the uninterrupted one."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mario_rl.checkpoint import VERSION, load_checkpoint, load_optimizer, migrate, save_checkpoint, unprefixed
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic
from mario_rl.storage import load_tensors, save_tensors

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(
    [*ROOT.glob("checkpoints/**/checkpoint.safetensors"), *ROOT.glob("campaign/*/run/checkpoint.safetensors")]
)
CURRENT = f"mario_rl.checkpoint/{VERSION}"


def _name(path: Path) -> str:
    return str(path.parent.relative_to(ROOT))


def test_committed_checkpoints_are_found():
    names = {_name(p) for p in COMMITTED}
    # campaign/W-S/run checkpoints come and go with the campaign (a cleared stage keeps only its policy).
    assert {"checkpoints/1-1-ppo", "checkpoints/1-1-solve/run", "checkpoints/4-4-solve/run"} <= names


@pytest.mark.parametrize("path", COMMITTED, ids=_name)
def test_committed_checkpoint_migrates_and_loads(path):
    raw_tensors, raw = load_tensors(path, "checkpoint")
    tensors, state = load_checkpoint(path)
    assert state["format"] == CURRENT and state["algo"] == raw["config"]["algo"] == "ppo"
    assert state["step"] == raw["step"] and state["episode"] == raw["episode"] and "curriculum" in state
    cfg = state["config"]
    agent = ActorCritic(n_actions=tensors["agent.policy.weight"].shape[0])
    agent.load_state_dict(unprefixed("agent", tensors))
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg["lr"], eps=1e-5)
    load_optimizer(optimizer, state["optim"], tensors)
    # Adam's moments come back as float32 whether the file kept them in float32 (these) or bfloat16.
    moments = [st["exp_avg_sq"] for st in optimizer.state_dict()["state"].values()]
    assert len(moments) == len(list(agent.parameters())) and all(m.dtype == torch.float32 for m in moments)
    assert torch.equal(moments[0], raw_tensors["optim.state.0.exp_avg_sq"].float())


def _v0(tensors: dict, state: dict) -> dict:
    """What the code before versions wrote for the same run: no format, algo or version; no curriculum field
    without a curriculum; best_x as logged."""
    state = {k: v for k, v in state.items() if k not in ("format", "algo", "mario_rl_version")}
    return {k: v for k, v in state.items() if not (k == "curriculum" and v is None)}


def test_version_0_migrates_and_bad_versions_are_refused(tmp_path):
    tensors = {"rng.torch": torch.get_rng_state(), "optim.x": torch.zeros(2, dtype=torch.bfloat16)}
    v0 = {"optim": {}, "episode": 3, "step": 96, "best_x": 65_535, "config": {"algo": "ppo", "stage": "4-4"}}
    _, state = migrate(tensors, v0)
    assert state["format"] == CURRENT and state["algo"] == "ppo"
    assert state["best_x"] == -1  # 4-4's wrapped x, as envs.level_x reads it
    assert state["curriculum"] is None
    assert migrate(tensors, state)[1] == state  # the current version is left as it is
    path = tmp_path / "checkpoint.safetensors"
    for header, match in (
        ({**state, "format": f"mario_rl.checkpoint/{VERSION + 1}"}, "reads versions up to"),
        ({**state, "format": "mario_rl.policy/1"}, "not a mario_rl checkpoint"),
        ({k: v for k, v in v0.items() if k != "optim"}, "lacks optim"),
    ):
        save_tensors(path, tensors, header)
        with pytest.raises(UserError, match=match):
            load_checkpoint(path)
    save_tensors(path, {"optim.x": tensors["optim.x"]}, v0)
    with pytest.raises(UserError, match="lacks rng.torch"):
        load_checkpoint(path)
    save_checkpoint(path, tensors, state)
    assert load_checkpoint(path)[1]["format"] == CURRENT


# --- resuming for real ---


def _copy_run(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in ("checkpoint.safetensors", "config.json", "episodes.csv", "demo.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    _, state = load_tensors(src / "checkpoint.safetensors", "checkpoint")
    demo = state["config"].get("demo")
    if demo and not (dst / "demo.json").exists():  # the campaign keeps its demonstrations in demos/
        shutil.copy(ROOT / "demos" / f"{state['config']['stage']}.json", dst / "demo.json")


@pytest.mark.slow
@pytest.mark.parametrize("path", COMMITTED, ids=_name)
def test_committed_checkpoint_resumes(tmp_path, path):
    """Each committed run resumes for one update (a rollout of --envs x --num-steps steps, fixed on resume).
    Settings newer than the run take their defaults, whatever the flags say, unless --resume-set names them."""
    from mario_rl.agents.ppo import PPOConfig, train

    run_dir = tmp_path / "run"
    _copy_run(path.parent, run_dir)
    _, saved = load_tensors(path, "checkpoint")
    changes = ["video_steps=0", "plot_every=1e9"]  # the device is this machine's (campaign/1-3 was saved on cuda)
    newer = "target_kl" not in saved["config"]  # a run from before --target-kl and --ent-coef-final
    changes += ["target_kl=0.5"] if newer else []
    cfg = PPOConfig(
        run_dir=run_dir, resume=True, steps=saved["step"] + 1, resume_set=tuple(changes), ent_coef_final=0.001
    )
    train(cfg)
    tensors, state = load_checkpoint(run_dir / "checkpoint.safetensors")
    if newer:
        assert state["config"]["target_kl"] == 0.5 and state["config"]["ent_coef_final"] is None
    batch = saved["config"]["envs"] * saved["config"]["num_steps"]
    assert state["step"] == saved["step"] + batch and state["format"] == CURRENT
    assert tensors["optim.state.0.exp_avg"].dtype == torch.bfloat16
    assert (state["curriculum"] is None) == (saved.get("curriculum") is None)


@pytest.mark.slow
def test_version_0_with_bf16_moments_resumes(tmp_path):
    """What the code before versions writes today (the campaign): PPO with Adam's moments in bfloat16."""
    from mario_rl.agents.ppo import PPOConfig, train

    run_dir = tmp_path / "run"
    base = {"envs": 2, "num_steps": 16, "video_steps": 0, "plot_every": 1e9, "run_dir": run_dir}
    train(PPOConfig(steps=32, **base))
    tensors, state = load_tensors(run_dir / "checkpoint.safetensors", "checkpoint")
    save_tensors(run_dir / "checkpoint.safetensors", tensors, _v0(tensors, state))
    assert load_tensors(run_dir / "checkpoint.safetensors")[1].keys() == {
        "optim",
        "episode",
        "step",
        "best_x",
        "config",
    }
    train(PPOConfig(steps=64, resume=True, **base))
    _, state = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert state["step"] == 64 and state["format"] == CURRENT


# --- a resumed DDQN run is the uninterrupted one ---


def _ddqn(run_dir: Path, steps: int, resume: bool = False, stop_at: int | None = None):
    from mario_rl.agents import ddqn

    cfg = ddqn.DDQNConfig(
        stage="1-1",
        steps=steps,
        burnin=40,
        learn_every=2,
        sync_every=50,
        batch_size=4,
        memory_size=1000,
        exploration_rate=0.5,
        checkpoint_every=10**9,
        video_steps=0,
        plot_every=1e9,
        seed=5,
        run_dir=run_dir,
        resume=resume,
    )
    return ddqn.train(cfg, stop=None if stop_at is None else lambda step: step >= stop_at)


def _episodes(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run_dir / "episodes.csv")))
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.slow
def test_resumed_ddqn_run_equals_the_uninterrupted_one(tmp_path):
    """N steps straight, or stopped at an episode's end near N/2 and resumed: the same networks, optimizer,
    replay and episodes, bit for bit. A resume restarts the episode it stopped in (the emulator's state is
    not in the checkpoint), so a run stopped mid-episode goes on differently; hence the episode's end."""
    n = 300
    _ddqn(tmp_path / "straight", n)
    ends = [int(r["step"]) for r in _episodes(tmp_path / "straight")]
    split = min((s for s in ends if s < n), key=lambda s: abs(s - n // 2))
    _ddqn(tmp_path / "split", n, stop_at=split)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")[1]["step"] == split
    _ddqn(tmp_path / "split", n, resume=True)
    assert _episodes(tmp_path / "split") == _episodes(tmp_path / "straight")
    a, state_a = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")
    b, state_b = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("config", "mario_rl_version")
    assert {k: v for k, v in state_a.items() if k not in drop} == {k: v for k, v in state_b.items() if k not in drop}
    assert json.loads((tmp_path / "split" / "config.json").read_text())["steps"] == n


@pytest.mark.slow
def test_a_run_saved_on_a_gpu_resumes_on_this_machines_device(tmp_path):
    """The device belongs to the machine: a checkpoint whose config says cuda resumes on --device cpu (the
    campaign's 1-3 run, trained on a lent GPU, stopped here with '--device cuda: PyTorch sees no GPU')."""
    from mario_rl.agents.ppo import PPOConfig, train

    run_dir = tmp_path / "run"
    base = {"envs": 2, "num_steps": 16, "video_steps": 0, "plot_every": 1e9, "run_dir": run_dir}
    train(PPOConfig(steps=32, **base))
    path = run_dir / "checkpoint.safetensors"
    tensors, state = load_tensors(path, "checkpoint")
    state["config"]["device"] = "cuda"
    save_tensors(path, tensors, state)
    train(PPOConfig(steps=64, resume=True, device="cpu", run_dir=run_dir))
    _, state = load_checkpoint(path)
    assert state["step"] == 64 and state["config"]["device"] == "cpu"
