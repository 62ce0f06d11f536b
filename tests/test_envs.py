import gc
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mario_rl import ACTION_SETS, STAGES, make_env
from mario_rl.demonstration import DEMO_STRIDE, demo_snapshots, demo_starts
from mario_rl.envs import DemoStart, GrayResize, Preprocessing, env_id, make_base_env, make_raw, make_vec_env
from mario_rl.envs.vector import _vector_worker_env
from mario_rl.errors import UserError

RIGHT = 0x80  # the controller byte for "right"


def test_stage_names():
    assert len(STAGES) == 32 and STAGES[0] == "1-1" and STAGES[-1] == "8-4"
    assert env_id("4-4") == "SuperMarioBros-4-4-v0"
    assert env_id("game") == "SuperMarioBros-v0"
    for bad in ["9-1", "1-5", "abc", "0-1", "1-1 ", ""]:
        with pytest.raises(UserError, match="unknown stage"):
            env_id(bad)


def test_the_raw_game_is_the_protocols_env():
    """make_raw is docs/protocol.md's gym_super_mario_bros.make("SuperMarioBros-W-S-v0"): nothing wrapped on top."""
    import gym_super_mario_bros

    ours, theirs = make_raw("4-4"), gym_super_mario_bros.make("SuperMarioBros-4-4-v0")
    assert ours.spec == theirs.spec and type(ours) is type(theirs)
    assert np.array_equal(ours.reset(seed=3)[0], theirs.reset(seed=3)[0])
    ours.close(), theirs.close()


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


def test_the_score_bar_cropped():
    """crop_top cuts the screen's top rows before the resize, on the native and the foreign path alike; the
    whole pipeline (a policy's Preprocessing through a vector env) keeps it."""
    from PIL import Image

    env, uncropped = make_env("1-1", crop_top=32), make_env("1-1")
    env.reset(seed=0)
    screen = env.unwrapped.screen
    cropped = env.env.observation(screen)
    whole = uncropped.env.observation(screen)
    gray = np.asarray(Image.fromarray(np.array(screen)).convert("L"))
    by_hand = np.asarray(Image.fromarray(gray[32:]).resize((84, 84), Image.BILINEAR))
    assert np.abs(cropped.astype(int) - by_hand.astype(int)).max() <= 2
    assert np.abs(env.env.observation(np.array(screen)).astype(int) - by_hand.astype(int)).max() <= 2
    assert np.abs(cropped.astype(int) - whole.astype(int)).mean() > 5  # not the whole screen
    env.close()
    uncropped.close()
    with pytest.raises(UserError, match="crop_top"):
        Preprocessing("simple", crop_top=240)
    envs = make_vec_env("1-1", 2, Preprocessing("simple", frame_skip=2, crop_top=32), asynchronous=False)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84)
        layers, env = {}, envs.envs[0]
        while hasattr(env, "env"):
            layers[type(env).__name__], env = env, env.env
        assert layers["SkipFrame"].skip == 2 and layers["GrayResize"].crop_top == 32
    finally:
        envs.close()


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
    from mario_rl.envs import lean_game

    demo = json.loads((Path(__file__).parents[1] / "demos" / f"{stage}.json").read_text())
    full = make_raw(stage)
    lean = lean_game(make_raw(stage))
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


def test_demo_start_restores_states_along_the_demonstration():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 100}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, slack=10)
    assert len(env.snapshots) == demo_starts(100) == 7
    # Where the demonstration is after 64 frames, by plain replay:
    ref = make_base_env("1-1")
    ref.reset(seed=0)
    for _ in range(64):
        _, _, _, _, info = ref.step(RIGHT)
    env.set_demo_window(4, 4)
    obs, info_start = env.reset(seed=1)
    assert info_start["demo_start"] == 64 and info_start["x_pos"] == info["x_pos"] > 40
    assert np.array_equal(obs, ref.unwrapped.screen)
    # The game's reward bookkeeping follows the restored state, not the previous episode's.
    assert env.unwrapped._x_position_max == info_start["x_pos"]
    _, reward, _, _, _ = env.step(0)
    assert 0 <= reward <= 5  # momentum carries Mario a pixel or two
    # Twice the demonstration's remaining 36 frames, plus the slack of 10, then truncated.
    truncations = [env.step(0)[3] for _ in range(2 * 36 + 10 - 1)]
    assert not any(truncations[:-1]) and truncations[-1]
    env.set_demo_window(2, 2, behind=0.5)  # half the starts from anywhere after the window
    starts = {env.reset(seed=10 + i)[1]["demo_start"] for i in range(40)}
    assert 32 in starts and len(starts) > 2 and min(starts) == 32
    env.set_demo_window(0, -1)  # empty window: ordinary resets
    _, info = env.reset(seed=2)
    assert info["demo_start"] == 0 and info["x_pos"] < 60
    # Snapshots replayed once elsewhere (as make_vec_env does for its workers) start the same states.
    snapshots = demo_snapshots(None, demo)
    gc.collect()  # the emulator that took them must outlive them (loading after it is freed crashes)
    shared = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, snapshots=snapshots)
    shared.set_demo_window(4, 4)
    obs_shared, info_shared = shared.reset(seed=1)
    assert np.array_equal(obs_shared, ref.unwrapped.screen) and info_shared["x_pos"] == info_start["x_pos"]


def test_demo_start_retries_from_before_the_agents_own_deaths():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 40}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0, slack=300)

    def run_right():
        steps, terminated = 0, False
        while not terminated:  # holding right runs into the first Goomba
            _, _, terminated, truncated, info = env.step(RIGHT)
            steps += 1
            assert not truncated and steps < 1000
        return steps, info

    # A death after a demonstration start is the demonstration's states, not the agent's: not kept.
    env.set_demo_window(2, 2, retry=1.0)
    assert env.reset(seed=0)[1]["demo_start"] == 2 * DEMO_STRIDE
    assert not run_right()[1]["flag_get"] and len(env._retries) == 0
    env.set_demo_window(0, -1, retry=1.0)  # no demonstration starts: a real reset until a death
    _, info = env.reset(seed=0)
    assert info["demo_start"] == 0
    _, info = run_right()
    death_x = info["x_pos"]
    assert not info["flag_get"] and len(env._retries) == 1
    _, info = env.reset(seed=1)
    # Restored from 33..128 frames before the death: behind it, with the Goomba still ahead.
    assert info["demo_start"] == -1 and death_x - 300 < info["x_pos"] < death_x
    assert env.unwrapped._x_position_max == info["x_pos"]
    steps, info = run_right()
    assert 32 < steps <= 128 and info["x_pos"] == death_x  # the same death, replayed without sticky buttons
    env.set_demo_window(0, -1, retry=0.0)
    assert env.reset(seed=2)[1]["demo_start"] == 0


def test_demo_start_draws_states_by_weights():
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 100}
    env = DemoStart(make_base_env("1-1"), demo, p_reset=0.0)
    n = len(env.snapshots)
    env.set_demo_window(0, n - 1, weights=[0] * (n - 2) + [1, 1])
    starts = {env.reset(seed=i)[1]["demo_start"] for i in range(20)}
    assert starts == {(n - 2) * DEMO_STRIDE, (n - 1) * DEMO_STRIDE}
    with pytest.raises(ValueError, match="weights"):
        env.set_demo_window(0, n - 1, weights=[1.0])


def test_ppos_16_envs_in_two_parts_step_apart_and_reset_on_their_own():
    """The vector env as agents.ppo builds it from solve's and the campaign's settings (16 envs, simple
    actions, the protocol's perturbations, a demonstration, two parts): each part steps with its own
    actions, an episode that ends restarts in the same step, and the demonstration's starts reach every
    env through its worker process."""
    from mario_rl.agents.ppo import PPOConfig
    from mario_rl.envs import GroupedVectorEnv, finished_episodes

    cfg = PPOConfig(stage="1-1", sticky=0.25, noop_max=30)
    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 100}
    parts = cfg.env_parts or (2 if cfg.envs % 2 == 0 and cfg.envs >= 4 else 1)  # as agents.ppo.train
    assert (cfg.envs, cfg.actions, parts) == (16, "simple", 2)
    envs = make_vec_env(
        cfg.stage, cfg.envs, cfg.actions, sticky=cfg.sticky, noop_max=cfg.noop_max, demo=demo, parts=parts
    )
    try:
        assert isinstance(envs, GroupedVectorEnv) and envs.parts == (slice(0, 8), slice(8, 16))
        assert envs.single_observation_space.shape == (4, 84, 84) and envs.single_action_space.n == 7
        obs, info = envs.reset(seed=0)
        assert obs.shape == (16, 4, 84, 84) and obs.dtype == np.uint8 and info["x_pos"].shape == (16,)
        noops = envs.call("last_noops")  # one value per env: 16 emulators, each with its own seed
        assert len(noops) == 16 and len(set(noops)) > 8
        # Part 0 stands still (NOOP), part 1 runs right (action 1) into the first Goomba.
        ended, standing = {}, []
        for p in range(2):
            envs.step_part_async(p, np.full(8, p))
        for t in range(1, 61):
            for p in range(2):
                o, reward, terminated, truncated, info = envs.step_part_wait(p)
                assert o.shape == (8, 4, 84, 84) and o.dtype == np.uint8 and reward.shape == terminated.shape == (8,)
                assert terminated.dtype == truncated.dtype == np.bool_ and not truncated.any()
                if p == 0:
                    standing.append(info["x_pos"].max())
                    assert not terminated.any()
                for i, episode in finished_episodes(info):
                    # Same-step autoreset: the observation is already the next episode's first.
                    assert p == 1 and terminated[i] and info["x_pos"][i] < 60 and (o[i] == o[i][0]).all()
                    ended[i] = (t, episode)
                if t < 60:
                    envs.step_part_async(p, np.full(8, p))
            if len(ended) == 8:
                break
        assert max(standing) < 60 and sorted(ended) == list(range(8))
        for step, episode in ended.values():
            assert episode["l"] == step and episode["flag"] == 0 and episode["x"] > 250 and episode["start"] == 0
        if t < 60:  # both parts have a step in flight
            for p in range(2):
                envs.step_part_wait(p)
        # Starts along the demonstration (frame 64 of running right), as agents.ppo sets them.
        envs.call("set_demo_window", 4, 4)
        obs, info = envs.reset(seed=1)
        assert (info["x_pos"] > 100).sum() >= 12  # all but the occasional real reset (p_reset)
        obs, reward, terminated, truncated, info = envs.step(np.zeros(16, np.int64))  # both parts at once
        assert obs.shape == (16, 4, 84, 84) and reward.shape == (16,) and info["x_pos"].shape == (16,)
    finally:
        envs.close()


def test_vector_workers_also_start_by_spawn():
    """Under spawn (macOS's and Windows' default) a worker imports its env functions by module path, and
    replays the demonstration itself: its snapshots cannot be pickled."""
    import gymnasium as gym

    from mario_rl.envs import EnvGroup

    demo = {"stage": "1-1", "seed": 0, "frames": [RIGHT] * 40}
    pre = Preprocessing("simple")
    fn = partial(_vector_worker_env, "1-1", pre, 0.25, 30, demo, None)  # what make_vec_env hands over
    envs = gym.vector.AsyncVectorEnv([partial(EnvGroup, [fn, fn])], shared_memory=True, context="spawn")
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (1, 2, 4, 84, 84) and obs.dtype == np.uint8
        obs, _, _, _, info = envs.step(np.ones((1, 2), np.int64))
        ((rewards, terminated, truncated), inner), *_ = info["group"]  # one group: its two envs' step
        assert obs.shape == (1, 2, 4, 84, 84) and rewards.shape == terminated.shape == (2,)
        assert (inner["x_pos"] >= 40).all()
    finally:
        envs.close()


def test_vector_infos_of_groups_keep_none_for_envs_that_did_not_end():
    """final_obs is an object array with None for envs that did not end; a group whose envs all went on has no
    final_obs at all. The merged info must say None there, not 0: PPO's truncation bootstrap stacks the
    final observations and took a 0 for one (a crash after 225k steps of 1-3)."""
    from mario_rl.envs.vector import _concat_infos

    ended = np.full(2, None, dtype=object)
    ended[1] = np.ones((4, 84, 84), np.uint8)
    infos = [{"final_obs": ended, "_final_obs": np.array([False, True])}, {}, {"x": np.array([3, 4])}]
    out = _concat_infos(infos, k=2)
    assert out["final_obs"].dtype == object and out["final_obs"].shape == (6,)
    assert [o is None for o in out["final_obs"]] == [True, False, True, True, True, True]
    assert out["_final_obs"].tolist() == [False, True, False, False, False, False]
    assert out["x"].tolist() == [0, 0, 0, 0, 3, 4]
