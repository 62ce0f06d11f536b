import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mario_rl import ACTION_SETS, STAGES, make_env
from mario_rl.envs import GrayResize, env_id
from mario_rl.errors import UserError


def test_stage_names():
    assert len(STAGES) == 32 and STAGES[0] == "1-1" and STAGES[-1] == "8-4"
    assert env_id("4-4") == "SuperMarioBros-4-4-v0"
    assert env_id("game") == "SuperMarioBros-v0"
    for bad in ["9-1", "1-5", "abc", "0-1", "1-1 ", ""]:
        with pytest.raises(UserError, match="unknown stage"):
            env_id(bad)


def test_unknown_action_set():
    with pytest.raises(UserError, match="unknown action set 'jump'"):
        make_env("1-1", "jump")


@pytest.mark.parametrize("actions", list(ACTION_SETS))
def test_observations_and_actions(actions):
    env = make_env("1-1", actions)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.action_space.n == len(ACTION_SETS[actions])
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert "x_pos" in info and "flag_get" in info
    env.close()


def test_check_env_with_protocol_perturbations():
    # skip_render_check: the NES env also declares "human" rendering, which needs a display.
    env = make_env("1-1", sticky=0.25, noop_max=30)
    check_env(env, skip_render_check=True)
    env.close()


def test_whole_game_env():
    env = make_env("game")
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and info["world"] == 1 and info["stage"] == 1
    env.close()


def _rollout(env, seed, n=60):
    obs, _ = env.reset(seed=seed)
    frames = [obs.copy()]
    for i in range(n):
        obs, _, terminated, truncated, _ = env.step(i % 2)
        frames.append(obs.copy())
        if terminated or truncated:
            break
    return np.stack(frames)


def test_same_seed_same_episode_under_sticky_actions_and_noops():
    env = make_env("1-1", sticky=0.25, noop_max=30)
    a, b, c = _rollout(env, 3), _rollout(env, 3), _rollout(env, 4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_noop_count_is_in_range_and_varies():
    env = make_env("1-1", noop_max=30)
    noops = set()
    for seed in range(12):
        env.reset(seed=seed)
        noops.add(env.get_wrapper_attr("last_noops"))
    assert all(0 <= n <= 30 for n in noops) and len(noops) > 3


def test_frames_move():
    env = make_env("1-1")
    frames = _rollout(env, 0, 30)
    assert len({f.tobytes() for f in frames}) > 10


def test_gray_resize_of_a_foreign_rgb_frame_matches_the_native_path():
    # An outside evaluator's wrapper may return its own RGB array: Pillow must agree with nes-py.
    env = make_env("1-1")
    env.reset(seed=0)
    gray = env.env  # FrameStackObservation -> GrayResize
    assert isinstance(gray, GrayResize)
    screen = env.unwrapped.screen
    native = gray.observation(screen)
    foreign = gray.observation(np.array(screen, copy=True))
    assert native.shape == foreign.shape == (84, 84)
    assert np.abs(native.astype(int) - foreign.astype(int)).max() <= 2


def test_sticky_probability_checked():
    with pytest.raises(UserError, match="sticky probability must be in \\[0, 1\\), got 1.5"):
        make_env("1-1", sticky=1.5)


def test_lean_game_changes_nothing_but_the_info():
    """The vector workers' lean per-frame info gives the same episode, frame for frame."""
    from mario_rl.envs import lean_game

    def play(env):
        rng = np.random.default_rng(7)
        obs, info = env.reset(seed=5)
        steps = [(obs.copy(), 0.0, False, info["x_pos"])]
        for _ in range(400):
            obs, reward, terminated, truncated, info = env.step(int(rng.integers(7)))
            steps.append((obs.copy(), reward, terminated, info["x_pos"], info["flag_get"]))
            if terminated or truncated:
                break
        return steps

    full = play(make_env("1-1", "simple", sticky=0.25, noop_max=30))
    lean_env = lean_game(make_env("1-1", "simple", sticky=0.25, noop_max=30))
    lean = play(lean_env)
    assert len(full) == len(lean) > 50
    for a, b in zip(full, lean):
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    lean_env.reset(seed=1)
    assert set(lean_env.step(0)[4]) == {"x_pos", "flag_get"}  # and the info really is the lean one


@pytest.mark.parametrize("stage", ["1-1", "4-4"])
@pytest.mark.slow
def test_lean_game_rewards_match_the_game_through_a_clear(stage):
    """Frame by frame along a demonstration that clears the stage (stomps, coins, the clock,
    the flag or axe): the lean game's rewards, ends and x equal the game's own."""
    import json
    from pathlib import Path

    import gym_super_mario_bros

    from mario_rl.envs import lean_game

    demo = json.loads((Path(__file__).parents[1] / "demos" / f"{stage}.json").read_text())
    full = gym_super_mario_bros.make(env_id(stage))
    lean = lean_game(gym_super_mario_bros.make(env_id(stage)))
    _, a = full.reset(seed=demo["seed"])
    _, b = lean.reset(seed=demo["seed"])
    kinds = set()
    for byte in demo["frames"]:
        _, ra, ta, ua, a = full.step(byte)
        _, rb, tb, ub, b = lean.step(byte)
        assert (ra, ta, ua, a["x_pos"], a["flag_get"]) == (rb, tb, ub, b["x_pos"], b["flag_get"])
        kinds |= {k for k, v in a["reward_components"].items() if v}
        if ta or ua:
            break
    assert a["flag_get"] and {"progress", "time", "completion"} <= kinds
    if stage == "1-1":
        assert "score" in kinds  # the demonstration stomps or bumps something on the way


def test_x_reached_reads_wrapped_pages_as_negative():
    """4-4's wrong turns move Mario back 1,024 pixels; from x 998 the game's x_pos wraps to 65,510 (page 255).
    x reached must stay 998, not jump to 65,510, in training's statistics and in evaluations."""
    import gymnasium as gym

    from mario_rl.envs import EpisodeStats, level_x
    from mario_rl.evaluate import run_episode

    class Loop(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (1,), np.uint8)
        action_space = gym.spaces.Discrete(1)
        xs = [40, 998, 65510, 65530, 200]

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return np.zeros(1, np.uint8), {"x_pos": self.xs[0], "flag_get": False}

        def step(self, action):
            self.t += 1
            done = self.t == len(self.xs) - 1
            return np.zeros(1, np.uint8), 0.0, done, False, {"x_pos": self.xs[self.t], "flag_get": False}

    assert (level_x(65510), level_x(998), level_x(0xEFFF)) == (-26, 998, 0xEFFF)
    env = EpisodeStats(Loop())
    env.reset()
    info = {}
    while "episode" not in info:
        info = env.step(0)[4]
    assert info["episode"]["x"] == 998
    assert run_episode(Loop(), lambda obs: 0)["x"] == 998
