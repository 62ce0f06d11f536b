import numpy as np
import pytest
import torch

from mario_rl import make_env
from mario_rl.agents.ddqn import DDQNAgent, DDQNConfig, double_dqn_target
from mario_rl.envs import Preprocessing
from mario_rl.errors import UserError


def test_double_dqn_target_by_hand():
    # Two transitions, three actions.
    reward = torch.tensor([1.0, 2.0])
    terminated = torch.tensor([False, True])
    q_online_next = torch.tensor(
        [
            [0.1, 0.9, 0.3],  # online net picks action 1
            [5.0, 1.0, 2.0],
        ]
    )  # picks action 0 (but terminal)
    q_target_next = torch.tensor(
        [
            [10.0, 4.0, 20.0],  # target net scores action 1: 4.0
            [7.0, 8.0, 9.0],
        ]
    )
    target = double_dqn_target(reward, terminated, 0.9, q_online_next, q_target_next)
    # 1 + 0.9 * 4.0 = 4.6 (plain DQN would use max 20.0 -> 19.0); terminal: just the reward 2.0
    assert torch.allclose(target, torch.tensor([4.6, 2.0]))


def test_double_dqn_target_is_not_plain_dqn():
    reward, terminated = torch.zeros(1), torch.zeros(1, dtype=torch.bool)
    target = double_dqn_target(reward, terminated, 1.0, torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 7.0]]))
    assert target.item() == pytest.approx(3.0)  # not 7.0


def test_tutorial_hyperparameters_are_the_defaults():
    c = DDQNConfig()
    assert (c.exploration_rate, c.exploration_decay, c.exploration_min) == (1.0, 0.99999975, 0.1)
    assert (c.burnin, c.learn_every, c.sync_every, c.batch_size) == (10_000, 3, 10_000, 32)
    assert (c.gamma, c.lr, c.memory_size, c.actions) == (0.9, 2.5e-4, 100_000, "right")


def _first_steps(seed, n=90):
    cfg = DDQNConfig(seed=seed, burnin=30, batch_size=4, memory_size=500, exploration_rate=0.5, sync_every=40)
    env = make_env("1-1")
    agent = DDQNAgent(cfg, 2, Preprocessing())
    obs, _ = env.reset(seed=seed)
    agent.replay.start_episode(obs)
    actions, losses = [], []
    for step in range(1, n + 1):
        a = agent.explore()
        a = agent.greedy(obs) if a is None else a
        obs2, r, term, trunc, info = env.step(a)
        agent.replay.add(a, r, term, obs2)
        out = agent.learn(step)
        if out:
            losses.append(out[1])
        actions.append(a)
        obs = obs2
        if term or trunc:
            obs, _ = env.reset()
            agent.replay.start_episode(obs)
    env.close()
    return actions, losses


@pytest.mark.slow
def test_same_seed_same_actions_and_losses():
    a1, l1 = _first_steps(7)
    a2, l2 = _first_steps(7)
    a3, _ = _first_steps(8)
    assert a1 == a2 and len(l1) == 21  # learns at steps 30, 33, ..., 90
    assert l1 == l2  # bitwise: same seed, same numbers
    assert a1 != a3


def test_agent_state_round_trip():
    cfg = DDQNConfig(burnin=5, batch_size=4, memory_size=100)
    agent = DDQNAgent(cfg, 2, Preprocessing())
    agent.replay.start_episode(np.zeros((4, 84, 84), np.uint8))
    for i in range(10):
        agent.replay.add(i % 2, 1.0, False, np.full((4, 84, 84), i, np.uint8))
    agent.learn(6)
    tensors, state = agent.state()
    other = DDQNAgent(DDQNConfig(seed=99, burnin=5, batch_size=4, memory_size=100), 2, Preprocessing())
    other.load(tensors, state, step=6)
    assert other.exploration_rate == agent.exploration_rate
    for p, q in zip(agent.online.parameters(), other.online.parameters()):
        assert torch.equal(p, q)
    exp_avg = agent.optimizer.state_dict()["state"][0]["exp_avg"]
    assert other.optimizer.state_dict()["state"][0]["exp_avg"].equal(exp_avg)
    # Same RNG states: both sample the same batch next.
    b1 = agent.replay.sample(4, agent.replay_rng)
    b2 = other.replay.sample(4, other.replay_rng)
    assert all(np.array_equal(x, y) for x, y in zip(b1, b2))


@pytest.mark.parametrize("field,value", [("burnin", 0), ("batch_size", -1), ("steps", 0), ("memory_size", 0)])
def test_non_positive_sizes_are_refused(field, value):
    with pytest.raises(UserError, match="must be positive"):
        DDQNConfig(**{field: value}).validate()
