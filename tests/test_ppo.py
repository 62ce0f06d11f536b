import json

import numpy as np
import pytest
import torch

from mario_rl import make_vec_env
from mario_rl.agents.ppo import PPOConfig, gae, minibatch_backward, ppo_loss, truncation_bonus
from mario_rl.demonstration import DEMO_STRIDE, demo_starts
from mario_rl.envs import finished_episodes
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic

from conftest import run_cli


def test_gae_by_hand():
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [1.0]])
    dones = torch.zeros(2, 1)
    # The episode ends after the last step: no bootstrap from next_value.
    adv, ret = gae(rewards, values, dones, torch.tensor([2.0]), torch.tensor([1.0]), gamma=0.9, lam=0.8)
    # t=1: 2 - 1.0 = 1.0; t=0: delta 1 + 0.9*1.0 - 0.5 = 1.4, plus 0.9*0.8*1.0 -> 2.12
    assert torch.allclose(adv[:, 0], torch.tensor([2.12, 1.0]))
    assert torch.allclose(ret[:, 0], torch.tensor([2.62, 2.0]))
    # Bootstrapped: t=1: 2 + 0.9*2 - 1 = 2.8; t=0: 1.4 + 0.72*2.8 = 3.416
    adv, _ = gae(rewards, values, dones, torch.tensor([2.0]), torch.tensor([0.0]), gamma=0.9, lam=0.8)
    assert torch.allclose(adv[:, 0], torch.tensor([3.416, 2.8]))
    # A new episode starts at t=1: step 0 neither bootstraps nor sees step 1's advantage.
    adv, _ = gae(
        rewards, values, torch.tensor([[0.0], [1.0]]), torch.tensor([2.0]), torch.tensor([0.0]), gamma=0.9, lam=0.8
    )
    assert adv[0, 0].item() == pytest.approx(0.5)


def test_truncated_episodes_bootstrap_from_their_final_value():
    # Two envs end at the last step of a 2-step rollout: env 0 truncated (alive), env 1 terminated (dead).
    terminated, truncated = np.array([False, True]), np.array([True, False])
    bonus = truncation_bonus(terminated, truncated, torch.tensor([2.0, 5.0]), gamma=0.9)
    assert torch.allclose(bonus, torch.tensor([1.8, 0.0]))  # gamma x V(final obs) only where truncated
    rewards = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    rewards[1] += bonus
    values = torch.full((2, 2), 0.5)
    adv, ret = gae(
        rewards, values, torch.zeros(2, 2), torch.tensor([9.0, 9.0]), torch.tensor([1.0, 1.0]), gamma=0.9, lam=1.0
    )
    # Truncated: returns 2.8 = 1 + 0.9 x 2 and 3.52 = 1 + 0.9 x 2.8; advantages 2.3 and 3.02.
    assert torch.allclose(ret[:, 0], torch.tensor([3.52, 2.8])) and torch.allclose(adv[:, 0], torch.tensor([3.02, 2.3]))
    # Terminated: the episode's value ends with it, 1 and 1.9.
    assert torch.allclose(ret[:, 1], torch.tensor([1.9, 1.0]))


def test_clipped_loss_by_hand():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))
    adv = torch.tensor([1.0, -1.0])
    # ratio 1.5 with A=+1 is clipped to 1.2 -> -1.2; ratio 0.5 with A=-1: max(0.5, 0.8) = 0.8
    assert ppo_loss(new, old, adv, 0.2).item() == pytest.approx((-1.2 + 0.8) / 2)
    # Inside the clip range it is the plain surrogate.
    loss = ppo_loss(torch.log(torch.tensor([1.1])), torch.zeros(1), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(-2.2)


def test_micro_batches_give_the_minibatch_gradient():
    from mario_rl.nets import ActorCritic

    torch.manual_seed(0)
    agent = ActorCritic(in_channels=4, n_actions=7, frame_size=84)
    n = 40
    batch = (
        torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8),
        torch.randint(0, 7, (n,)),
        -2 + 0.1 * torch.randn(n),
        0.1 * torch.randn(n),
        torch.randn(n),
        torch.randn(n),
    )

    def grads(micro_batch):
        agent.zero_grad()
        parts = minibatch_backward(agent, PPOConfig(micro_batch=micro_batch), *batch)
        return parts, [p.grad.clone() for p in agent.parameters()]

    whole, g_whole = grads(n)
    split, g_split = grads(16)  # chunks of 16, 16 and 8
    assert torch.allclose(whole, split, atol=1e-5)
    for a, b in zip(g_whole, g_split):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in g_whole)


def test_bf16_convolutions_keep_the_float32_gradient():
    torch.manual_seed(0)
    agent = ActorCritic()
    n = 64
    batch = (
        torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8),
        torch.randint(0, 7, (n,)),
        -2 + 0.1 * torch.randn(n),
        0.1 * torch.randn(n),
        torch.randn(n),
        torch.randn(n),
    )

    def grad(bf16):
        agent.zero_grad()
        minibatch_backward(agent, PPOConfig(), *batch, bf16=bf16)
        return torch.cat([p.grad.flatten() for p in agent.parameters()])

    g32, g16 = grad(False), grad(True)
    assert not torch.equal(g32, g16)  # the convolutions did run in bfloat16
    assert torch.nn.functional.cosine_similarity(g32, g16, 0) > 0.99
    assert abs(g16.norm() / g32.norm() - 1) < 0.05
    with pytest.raises(UserError):
        PPOConfig(precision="fp16").validate()


def test_vector_env_shapes_autoreset_and_statistics():
    envs = make_vec_env("1-1", num_envs=2, actions="right")
    try:
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        rng = np.random.default_rng(0)
        finished = []
        for _ in range(600):
            obs, reward, terminated, truncated, info = envs.step(rng.integers(0, 2, size=2))
            assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and reward.shape == (2,)
            assert info["x_pos"].shape == (2,)
            for i, ep in finished_episodes(info):
                assert terminated[i] or truncated[i]
                # Same-step autoreset: the observation is already the next episode's first stack.
                assert all(np.array_equal(obs[i][0], obs[i][k]) for k in range(1, 4))
                finished.append(ep)
            if len(finished) >= 2:
                break
        assert len(finished) >= 2
        for ep in finished:
            assert ep["l"] > 0 and ep["x"] > 0 and ep["flag"] in (0, 1)
    finally:
        envs.close()


@pytest.mark.slow
def test_grouped_vector_env_matches_one_process_per_env():
    """Envs grouped two to a process, or stepped in two parts, step exactly as envs one to a process
    (no sticky actions: deterministic)."""
    single, grouped = make_vec_env("1-1", 4, "right", per_process=1), make_vec_env("1-1", 4, "right", per_process=2)
    parted = make_vec_env("1-1", 4, "right", per_process=1, parts=2)
    try:
        assert parted.parts == (slice(0, 2), slice(2, 4))
        for other in (grouped, parted):
            assert other.single_observation_space == single.single_observation_space
            assert other.single_action_space == single.single_action_space and other.num_envs == 4
            assert other.call("get_action_meanings") == single.call("get_action_meanings")
        obs_a, _ = single.reset(seed=0)
        obs_b, _ = grouped.reset(seed=0)
        obs_c, _ = parted.reset(seed=0)
        assert np.array_equal(obs_a, obs_b) and np.array_equal(obs_a, obs_c)
        rng, finished = np.random.default_rng(1), []
        for n in range(1500):
            actions = rng.integers(0, 2, size=4)
            a, b = single.step(actions), grouped.step(actions)
            if n % 2:  # the whole vector env's step, and each part's on its own, second part first
                c = parted.step(actions)
            else:
                parted.step_part_async(1, actions[2:])
                parted.step_part_async(0, actions[:2])
                c1, c0 = parted.step_part_wait(1), parted.step_part_wait(0)
                assert len(c0[0]) == 2 and c0[4]["x_pos"].shape == (2,)
                c = (
                    *(np.concatenate([x, y]) for x, y in zip(c0[:4], c1[:4])),
                    {
                        "x_pos": np.concatenate([c0[4]["x_pos"], c1[4]["x_pos"]]),
                        "eps": finished_episodes(c0[4]) + [(i + 2, ep) for i, ep in finished_episodes(c1[4])],
                    },
                )
            for x, y, z in zip(a[:4], b[:4], c[:4]):
                assert np.array_equal(x, y) and np.array_equal(x, z)
            assert np.array_equal(a[4]["x_pos"], b[4]["x_pos"]) and np.array_equal(a[4]["x_pos"], c[4]["x_pos"])
            assert finished_episodes(a[4]) == finished_episodes(b[4])
            assert finished_episodes(a[4]) == c[4].get("eps", finished_episodes(c[4]))
            finished += finished_episodes(b[4])
            if {i // 2 for i, _ in finished} == {0, 1}:
                break
        assert {i // 2 for i, _ in finished} == {0, 1}  # episodes ended in both groups
    finally:
        single.close()
        grouped.close()
        parted.close()
    with pytest.raises(UserError, match="per_process"):
        make_vec_env("1-1", 4, per_process=3)
    with pytest.raises(UserError, match="parts"):
        make_vec_env("1-1", 4, per_process=2, parts=4)


def test_entropy_decay_and_the_kl_early_stop():
    """--ent-coef-final by hand; --target-kl ends an update after the first epoch whose approximate KL to the
    rollout's policy is over it (a real update on a random rollout whose log-probabilities are the agent's)."""
    from types import SimpleNamespace

    from mario_rl.agents.ppo import PPO
    from mario_rl.agents.ppo_setup import Rollout

    cfg = PPOConfig(steps=1000, ent_coef=0.01, ent_coef_final=0.0001)
    assert PPO.ent_coef(SimpleNamespace(cfg=cfg), 0) == 0.01
    assert PPO.ent_coef(SimpleNamespace(cfg=cfg), 500) == pytest.approx(0.00505)
    assert PPO.ent_coef(SimpleNamespace(cfg=cfg), 2000) == pytest.approx(0.0001)  # past --steps: the final value
    assert PPO.ent_coef(SimpleNamespace(cfg=PPOConfig(ent_coef=0.03)), 10**9) == 0.03
    for bad in ({"target_kl": 0.0}, {"ent_coef_final": -1.0}):
        with pytest.raises(UserError, match="--target-kl|--ent-coef"):
            PPOConfig(**bad).validate()

    def update(target_kl):
        torch.manual_seed(0)
        cfg = PPOConfig(envs=2, num_steps=8, num_minibatches=2, update_epochs=4, target_kl=target_kl, lr=1e-3)
        agent = ActorCritic()
        r = Rollout.zeros(8, 2, (4, 84, 84))
        r.obs.random_(0, 256)
        with torch.no_grad():
            logits, values = agent(r.obs.reshape(16, 4, 84, 84))
            r.actions.copy_(torch.distributions.Categorical(logits=logits).sample().reshape(8, 2))
            r.logprobs.copy_(logits.log_softmax(1).gather(1, r.actions.reshape(16, 1))[:, 0].reshape(8, 2))
            r.values.copy_(values.reshape(8, 2))
        r.rewards.normal_()
        learner = SimpleNamespace(
            cfg=cfg,
            rollout=r,
            dev=torch.device("cpu"),
            agent=agent,
            bf16=False,
            batch_size=16,
            step=0,
            next_done=torch.zeros(2),
            optimizer=torch.optim.Adam(agent.parameters(), lr=cfg.lr),
        )
        learner.ent_coef = lambda step: PPO.ent_coef(learner, step)
        learner.sil_data = learner.flag_memory = None
        learner.self_imitate = lambda: PPO.self_imitate(learner)
        return PPO.update(learner, torch.zeros(2))

    every = update(None)
    assert every["epochs"] == 4 and every["approx_kl"] > 0
    stopped = update(1e-9)
    assert stopped["epochs"] == 1 and stopped["approx_kl"] > 1e-9


def test_ppo_config_checks():
    with pytest.raises(UserError, match="divisible"):
        PPOConfig(envs=3, num_steps=5, num_minibatches=4).validate()
    with pytest.raises(UserError, match="--envs must be positive"):
        PPOConfig(envs=0).validate()


@pytest.mark.slow
def test_tiny_ppo_training_through_the_cli(tmp_path):
    run_dir = tmp_path / "ppo"
    proc = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        256,
        "--checkpoint-every",
        128,
        "--video-steps",
        20,
        "--run-dir",
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "trained 256 agent steps" in proc.stdout
    for name in ("checkpoint.safetensors", "policy.safetensors", "config.json", "episodes.csv"):
        assert (run_dir / name).exists()
    assert len(list((run_dir / "videos").glob("*.mp4"))) == 2
    from mario_rl.storage import load_tensors

    tensors, _ = load_tensors(run_dir / "checkpoint.safetensors")
    moments = [t for k, t in tensors.items() if k.startswith("optim.") and "exp_avg" in k]
    assert moments and all(t.dtype == torch.bfloat16 for t in moments)  # a small checkpoint; weights stay float32
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.startswith("agent."))
    from mario_rl import load_policy

    policy = load_policy(run_dir / "policy.safetensors")
    assert policy.meta["algorithm"] == "ppo" and policy.actions == "simple"
    assert 0 <= policy.act(np.zeros((4, 84, 84), np.uint8)) < 7
    for bad in ("actions=complex", "no_such=1", "ent_coef=much", "ent_coef"):
        proc = run_cli("train", "1-1", "--algo", "ppo", "--run-dir", run_dir, "--resume", "--resume-set", bad)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--resume-set" in proc.stderr, proc.stderr
    resumed = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--run-dir",
        run_dir,
        "--resume",
        "--steps",
        320,
        "--ent-coef",
        0.5,
        "--resume-set",
        "ent_coef=0.02",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "trained 64 agent steps" in resumed.stdout
    # --resume-set changes a setting; a plain flag (--ent-coef) does not, on a resume.
    assert "--resume-set: ent_coef 0.01 -> 0.02" in resumed.stdout
    assert json.loads((run_dir / "config.json").read_text())["ent_coef"] == 0.02
    # The last update ran at step 192 of 256; the new total, 320, puts step 256 at 1 - 256/320 of 2.5e-4.
    assert "learning rate 6.25e-05 -> 5.00e-05" in resumed.stdout


RIGHT = 0x80  # the controller byte for "right"


@pytest.mark.slow
def test_ppo_from_a_demonstration_through_the_cli(tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"stage": "1-1", "seed": 0, "frames": [RIGHT] * 120}))
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--actions",
        "complex",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        128,
        "--checkpoint-every",
        64,
        "--video-steps",
        0,
        "--sticky",
        0.25,
        "--run-dir",
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "start frame" in proc.stdout or "start reset" in proc.stdout
    assert json.loads((run_dir / "demo.json").read_text())["frames"] == [RIGHT] * 120
    from mario_rl.storage import load_tensors

    _, state = load_tensors(run_dir / "checkpoint.safetensors", "checkpoint")
    assert 0 <= state["curriculum"]["lo"] < demo_starts(120)
    import csv

    with open(run_dir / "episodes.csv", newline="") as f:
        assert f.readline().strip().endswith(",time,start")
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert all(int(r["start"]) == -1 or int(r["start"]) % DEMO_STRIDE == 0 for r in rows)
    bad = run_cli("train", "1-1", "--algo", "ppo", "--demo", demo, "--demo-retry", 1.5, "--run-dir", tmp_path / "rb")
    assert bad.returncode == 2 and "--demo-retry" in bad.stderr
    uniform = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--demo-order",
        "uniform",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        64,
        "--video-steps",
        0,
        "--run-dir",
        tmp_path / "ru",
    )
    assert uniform.returncode == 0, uniform.stderr
    assert "start anywhere" in uniform.stdout
    _, state = load_tensors(tmp_path / "ru" / "checkpoint.safetensors", "checkpoint")
    assert state["curriculum"] is None  # uniform starts keep no curriculum (version 1 always has the field)
    # Prioritized starts, resumed: the clear rates behind the weights are read back from episodes.csv.
    prio = run_cli(
        "train",
        "1-1",
        "--algo",
        "ppo",
        "--demo",
        demo,
        "--demo-order",
        "prioritized",
        "--envs",
        2,
        "--num-steps",
        32,
        "--steps",
        64,
        "--video-steps",
        0,
        "--run-dir",
        tmp_path / "rp",
    )
    assert prio.returncode == 0 and "start prioritized" in prio.stdout, prio.stderr
    again = run_cli(
        "train", "1-1", "--algo", "ppo", "--run-dir", tmp_path / "rp", "--resume", "--steps", 128, "--video-steps", 0
    )
    assert again.returncode == 0 and "start prioritized" in again.stdout, again.stderr
    bad_order = run_cli(
        "train", "1-1", "--algo", "ppo", "--demo", demo, "--demo-order", "random", "--run-dir", tmp_path / "rx"
    )
    assert bad_order.returncode == 2 and "--demo-order must be one of" in bad_order.stderr
    wrong = run_cli("train", "1-2", "--algo", "ppo", "--demo", demo, "--run-dir", tmp_path / "r2", "--steps", 64)
    assert wrong.returncode == 2 and "demonstration of 1-1" in wrong.stderr


def test_warm_start_needs_the_same_frames(tmp_path):
    """Another action set: the torso and value head load. Other frames (crop, skip): a one-line refusal."""
    from mario_rl.agents.ppo_setup import warm_start
    from mario_rl.envs import Preprocessing

    from conftest import tiny_policy

    path = tiny_policy(tmp_path / "p.safetensors", "1-1", "simple")
    agent = ActorCritic(n_actions=12)
    warm_start(agent, path, Preprocessing("complex"))
    from mario_rl.policy import load_policy

    source = load_policy(path).net.state_dict()
    assert torch.equal(agent.state_dict()["torso.0.weight"], source["torso.0.weight"])
    for pre in (Preprocessing("complex", crop_top=32), Preprocessing("complex", frame_skip=2)):
        with pytest.raises(UserError, match="its frames are not this run's"):
            warm_start(ActorCritic(n_actions=12), path, pre)
