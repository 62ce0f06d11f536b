import numpy as np

from mario_rl import make_env
from mario_rl.replay import FrameReplay


def test_stacks_rebuilt_from_single_frames_equal_the_env_observations():
    env = make_env("1-1")
    replay = FrameReplay(capacity=300)  # small: the ring wraps around during the test
    rng = np.random.default_rng(0)
    truth = {}  # absolute frame index -> the env's stacked observation
    obs, _ = env.reset(seed=0)
    replay.start_episode(obs)
    truth[replay.total - 1] = obs.copy()
    for _ in range(700):
        a = int(rng.integers(2))
        nxt, r, term, trunc, info = env.step(a)
        replay.add(a, r, term, nxt)
        truth[replay.total - 1] = nxt.copy()
        if term or trunc:
            obs, _ = env.reset()
            replay.start_episode(obs)
            truth[replay.total - 1] = obs.copy()
    assert replay.total > replay.capacity  # wrapped
    # Sample and compare every state and next state with what the env produced.
    seen = 0
    for _ in range(20):
        s, a, r, s2, d = replay.sample(16, rng)
        for i in range(16):
            matches = [k for k, v in truth.items() if np.array_equal(v, s[i])]
            assert matches, "sampled state is not an observation the env produced"
            assert any(np.array_equal(truth.get(k + 1), s2[i]) for k in matches)
            seen += 1
    assert seen == 320


def test_episode_boundaries_are_never_crossed():
    replay = FrameReplay(capacity=50, frame_shape=(2, 2), stack=4)
    obs = lambda v: np.full((4, 2, 2), v, np.uint8)  # noqa: E731
    replay.start_episode(obs(1))
    for v in (2, 3):
        replay.add(0, 0.0, v == 3, obs(v))
    replay.start_episode(obs(10))
    for v in (11, 12, 13):
        replay.add(1, 1.0, False, obs(v))
    rng = np.random.default_rng(0)
    s, a, r, s2, d = replay.sample(200, rng)
    for i in range(200):
        firsts = s[i][:, 0, 0]
        assert set(firsts) <= {1, 2, 3} or set(firsts) <= {10, 11, 12, 13}
        assert s2[i][-1, 0, 0] == firsts[-1] + 1  # the next frame follows the state
    # The terminal transition 2 -> 3 is marked done; the padding repeats the first frame.
    done_rows = np.flatnonzero(d)
    assert len(done_rows) and all(s2[i][-1, 0, 0] == 3 for i in done_rows)
    start = [i for i in range(200) if s[i][-1, 0, 0] == 10]
    assert start and all((s[i][:, 0, 0] == 10).all() for i in start)


def test_100k_transitions_fit_in_1_gb():
    replay = FrameReplay(capacity=100_000)
    assert replay.nbytes < 1e9
    assert replay.nbytes / 100_000 < 2 * 4 * 84 * 84 * 4 / 25  # >25x smaller than the tutorial's


def test_state_dict_round_trip():
    replay = FrameReplay(capacity=20, frame_shape=(2, 2))
    replay.start_episode(np.zeros((4, 2, 2), np.uint8))
    for v in range(1, 30):
        replay.add(v % 2, float(v), False, np.full((4, 2, 2), v, np.uint8))
    other = FrameReplay(capacity=20, frame_shape=(2, 2))
    other.load_state_dict(replay.state_dict())
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    for x, y in zip(replay.sample(8, rng1), other.sample(8, rng2)):
        assert np.array_equal(x, y)
