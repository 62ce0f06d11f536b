"""Behaviour cloning from a demonstration (mario_rl.bc): PPO's optional warm start."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mario_rl.bc import SIL_VALUE_COEF, FlagMemory, clone, demo_dataset, sil_loss
from mario_rl.demonstration import demo_labels, load_demo
from mario_rl.envs import action_bytes
from mario_rl.errors import UserError

from conftest import run_cli

DEMO = Path(__file__).parent / "data" / "1-1-demo.json"


def short_demo(frames: int = 160) -> dict:
    demo = load_demo(DEMO)
    return {**demo, "frames": demo["frames"][:frames]}


def test_labels_are_the_demonstrations_buttons_per_agent_step():
    demo = short_demo()
    labels = demo_labels(demo, "complex")
    assert len(labels) == 40
    assert [action_bytes("complex")[a] for a in labels] == demo["frames"][::4]
    with pytest.raises(UserError, match="not in the 'right' action set"):
        demo_labels(demo, "right")  # it presses buttons the tutorial's set has not


def test_dataset_holds_the_replay_and_perturbed_stretches():
    demo = short_demo()
    data = demo_dataset(demo, "complex", passes=1, span=4, gamma=0.9, reward_scale=0.05, seed=0)
    labels = demo_labels(demo, "complex")
    starts = 160 // 16  # start states at frames 0, 16, ..., 144
    assert data.obs.dtype == torch.uint8 and data.obs.shape == (40 + 4 * starts, 4, 84, 84)
    # The clean replay comes first, labelled with the demonstration's buttons, then each start's 4 steps.
    assert data.actions[:40].tolist() == labels
    assert data.actions[40:44].tolist() == labels[:4] and data.actions[44:48].tolist() == labels[4:8]
    # Value targets: the game's own rewards along the demonstration, summed per agent step, scaled and
    # discounted; a perturbed stretch gets the target of the same moment of the replay.
    import gym_super_mario_bros

    env = gym_super_mario_bros.make("SuperMarioBros-1-1-v0")
    env.reset(seed=demo["seed"])
    rewards = [0.05 * sum(env.step(b)[1] for b in demo["frames"][t : t + 4]) for t in range(0, 160, 4)]
    env.close()
    expected = [sum(r * 0.9**k for k, r in enumerate(rewards[t:])) for t in (0, 20, 39)]
    assert data.returns[[0, 20, 39]].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(data.returns[44:48], data.returns[4:8])
    # A start state's first observation is that state's screen, stacked, as after DemoStart in training.
    first = data.obs[44]
    assert all(torch.equal(first[k], first[0]) for k in range(4))


@pytest.mark.slow
def test_cloning_fits_the_demonstrations_buttons():
    from mario_rl.nets import ActorCritic

    data = demo_dataset(short_demo(), "complex", gamma=0.99, reward_scale=0.01, passes=1, span=4, seed=0)
    torch.manual_seed(0)
    agent = ActorCritic(4, 12, 84)
    history = clone(agent, data, epochs=12, lr=1e-3, batch=32)
    # The search's presses are noisy (Mario stands at the start while it picks buttons at random), so
    # the fit can at best pick each screen's most common button: here the most common one overall.
    majority = torch.bincount(data.actions).max().item() / len(data.actions)
    assert history[-1]["policy_loss"] < history[0]["policy_loss"] - 0.3
    assert history[-1]["accuracy"] >= majority - 1e-6
    assert history[-1]["value_loss"] < 0.1 * history[0]["value_loss"]


@pytest.mark.slow
def test_ppo_clones_before_its_first_update(tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps(short_demo(96)))
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--bc-epochs",
        2,
        "--bc-passes",
        1,
        "--sil-coef",
        0.5,
        "--sil-updates",
        2,
        "--frame-skip",
        2,
        "--crop-top",
        32,
        "--actions",
        "complex",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        64,
        "--video-steps",
        0,
        "--run-dir",
        run,
    )
    assert proc.returncode == 0, proc.stderr
    assert "behaviour cloning:" in proc.stdout and "2 epochs" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["bc_epochs"] == 2 and config["sil_coef"] == 0.5
    tb = b"".join(f.read_bytes() for f in (run / "tb").rglob("*") if f.is_file())
    assert b"losses/sil_loss" in tb and b"losses/sil_active" in tb  # the update imitated
    from mario_rl.envs import make_raw
    from mario_rl.policy import load_policy

    policy = load_policy(run / "policy.safetensors")  # the preprocessing travels with the policy
    assert (policy.preprocessing.frame_skip, policy.preprocessing.crop_top) == (2, 32)
    env = policy.wrap(make_raw("1-1"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and 0 <= policy.act(obs) < len(action_bytes("complex"))
    env.close()
    bad = run_cli("train", "1-1", "--algo", "ppo", "--sil-coef", 0.1, "--run-dir", tmp_path / "nodemo")
    assert bad.returncode == 2 and "--sil-coef imitates a demonstration" in bad.stderr
    bad = run_cli("train", "1-1", "--algo", "ppo", "--bc-epochs", 2, "--run-dir", tmp_path / "nodemo")
    assert bad.returncode == 2 and "--bc-epochs clones a demonstration" in bad.stderr
    bad = run_cli("train", "1-1", "--algo", "ppo", "--demo", demo, "--bc-epochs", -1, "--run-dir", tmp_path / "neg")
    assert bad.returncode == 2 and "--bc-epochs" in bad.stderr


def test_self_imitation_by_hand():
    """Two samples: one whose return beats the value (it pulls), one below it (no gradient at all)."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.zeros(2, 3))
            self.value = torch.nn.Parameter(torch.tensor([1.0, 2.0]))

        def forward(self, obs, bf16=False):
            return self.logits, self.value

    agent = Fixed()
    loss, active = sil_loss(agent, torch.zeros(2, 1), torch.tensor([0, 2]), torch.tensor([3.0, 1.0]))
    # Sample 0: gap 2, log pi = log(1/3); sample 1: gap 0. Means over the two samples.
    expected = -(torch.log(torch.tensor(1 / 3)) * 2) / 2 + SIL_VALUE_COEF * 0.5 * 4 / 2
    assert loss.item() == pytest.approx(expected.item()) and active.item() == 0.5
    loss.backward()
    assert agent.logits.grad[1].abs().sum() == 0 and agent.value.grad[1] == 0
    assert agent.logits.grad[0, 0] < 0 < agent.logits.grad[0, 1]  # gradient descent raises action 0's logit
    assert agent.value.grad[0] == pytest.approx(-SIL_VALUE_COEF * 2 / 2)  # and the value towards the return


def test_flag_memory_by_hand():
    """Two envs, stacks of 2 one-pixel frames. Env 0 reaches the flag after two steps: its observations are
    rebuilt from the first one and the newest frames, its returns are discounted by hand. Env 1 dies: nothing
    kept. A third episode overflows the 3-sample memory, which keeps the newest samples."""
    memory = FlagMemory(n_envs=2, capacity=3, gamma=0.5)
    frame = lambda v: torch.full((1, 1), v, dtype=torch.uint8)  # noqa: E731
    stack = lambda *vs: torch.stack([frame(v) for v in vs])  # noqa: E731
    both = range(2)
    memory.acted(both, torch.stack([stack(1, 2), stack(7, 8)]), torch.tensor([4, 5]))
    memory.stepped(both, np.array([1.0, 1.0]), np.array([False, True]), np.array([False, False]))
    memory.acted(both, torch.stack([stack(2, 3), stack(9, 9)]), torch.tensor([6, 0]))
    memory.stepped(both, np.array([2.0, 0.0]), np.array([True, False]), np.array([True, False]))
    assert (memory.size, memory.episodes) == (2, 1)
    assert memory.obs[:2, :, 0, 0].tolist() == [[1, 2], [2, 3]] and memory.act[:2].tolist() == [4, 6]
    assert memory.ret[:2].tolist() == [1.0 + 0.5 * 2.0, 2.0]
    # env 1 began anew at (9, 9) after its death and acted on it above; one step more reaches the flag
    memory.acted(range(1, 2), stack(9, 10)[None], torch.tensor([1]))
    memory.stepped(range(1, 2), np.array([4.0]), np.array([True]), np.array([True]))
    assert (memory.size, memory.episodes) == (3, 2)
    # its two samples overwrote the oldest one: the ring now holds (9, 10), env 0's second sample, (9, 9)
    assert memory.obs[:, :, 0, 0].tolist() == [[9, 10], [2, 3], [9, 9]]
    assert memory.act.tolist() == [1, 6, 0] and memory.ret.tolist() == [4.0, 2.0, 0.5 * 4.0]


@pytest.mark.slow
def test_ppo_imitates_its_own_flag_episodes(tmp_path):
    """--sil-own: starting next to the flag (the backward curriculum's first start), episodes reach it and
    the memory keeps them for self-imitation, beside the demonstration's samples (its replay alone here:
    --bc-passes 0 keeps the test short)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    proc = run_cli(
        "train", "1-1", "--algo", "ppo", "--demo", DEMO, "--sil-coef", 0.5, "--sil-own", "--sil-memory", 256,
        "--sil-updates", 1, "--bc-passes", 0, "--actions", "complex", "--envs", 2, "--num-steps", 32,
        "--steps", 128, "--video-steps", 0, "--run-dir", run,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(run / "tb")).Reload()
    episodes = [e.value for e in events.Scalars("losses/sil_own_episodes")]
    samples = [e.value for e in events.Scalars("losses/sil_own_samples")]
    assert episodes[-1] >= 1 and 0 < samples[-1] <= 256
    bad = run_cli("train", "1-1", "--algo", "ppo", "--sil-own", "--run-dir", tmp_path / "nocoef")
    assert bad.returncode == 2 and "--sil-own is a source for self-imitation" in bad.stderr
