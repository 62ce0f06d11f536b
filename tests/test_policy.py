import pickle

import gym_super_mario_bros
import gymnasium as gym
import numpy as np
import pytest
import torch

from mario_rl import load_policy
from mario_rl.envs import Preprocessing, StickyButtons
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic, MarioNet
from mario_rl.policy import MAX_BUNDLED_BYTES, REPO_MODELS, save_policy


def write_policy(path, net_class=MarioNet, algorithm="ddqn"):
    """A policy file for 1-1 with `simple` actions and a freshly initialized (seed 0) network."""
    torch.manual_seed(0)
    net = net_class(4, 7)
    save_policy(
        path,
        net,
        algorithm=algorithm,
        network=net_class.__name__,
        network_kwargs={"in_channels": 4, "n_actions": 7, "frame_size": 84},
        preprocessing=Preprocessing("simple"),
        stage="1-1",
        steps=123,
    )
    return path, net


@pytest.fixture()
def policy_file(tmp_path):
    return write_policy(tmp_path / "p.safetensors")


def test_round_trip_same_actions(policy_file):
    path, net = policy_file
    policy = load_policy(path)
    assert policy.meta["steps"] == 123 and policy.actions == "simple"
    assert policy.meta["algorithm"] == "ddqn" and policy.meta["mario_rl_version"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
        with torch.no_grad():
            expected = int(net(torch.from_numpy(obs)[None]).argmax())
        assert policy.act(obs) == expected


def test_wrap_any_base_env_with_outside_perturbations(policy_file):
    policy = load_policy(policy_file[0])

    class OutsideSticky(gym.Wrapper):  # an evaluator's own wrapper, not ours
        def step(self, action):
            return self.env.step(action)

    env = policy.wrap(OutsideSticky(StickyButtons(gym_super_mario_bros.make("SuperMarioBros-1-1-v0"), 0.25)))
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and env.action_space.n == 7
    for _ in range(20):
        obs, r, term, trunc, info = env.step(policy.act(obs))
    assert info["x_pos"] > 0


def test_wrap_refuses_an_env_that_is_not_raw(policy_file):
    from mario_rl import make_env

    with pytest.raises(UserError, match="raw env"):
        load_policy(policy_file[0]).wrap(make_env("1-1"))


def test_action_set_mismatch(policy_file):
    with pytest.raises(UserError, match="trained with the 'simple' action set, not 'right'"):
        load_policy(policy_file[0]).check_actions("right")


def test_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    pt = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2)}, pt)  # a PyTorch .pt file: a zip holding a pickle
    for path in (raw, pt):
        with pytest.raises(UserError, match="never unpickles"):
            load_policy(path)
    assert not marker.exists()


def test_safetensors_header_lengths_that_look_like_a_pickle_still_load(tmp_path):
    """A header length of 0x..80 (or 0x4B50, "PK") starts the file like a pickle (or a zip); it must load."""
    from mario_rl.storage import load_tensors, save_tensors

    def write(pad):
        path = tmp_path / f"t{pad}.safetensors"
        save_tensors(path, {"w": torch.arange(3.0)}, {"pad": "x" * pad})
        return path

    base = int.from_bytes(write(0).read_bytes()[:8], "little")  # grows about one byte per padding character
    for first, length in ((b"\x80", 0x1F80), (b"PK", 0x4B50)):
        path = next(
            p
            for pad in range(length - base - 16, length - base + 16)
            if (p := write(pad)).read_bytes()[: len(first)] == first
        )
        tensors, meta = load_tensors(path)
        assert torch.equal(tensors["w"], torch.arange(3.0)) and meta["pad"].startswith("x")


def test_tampered_file_is_refused(policy_file, tmp_path):
    path = policy_file[0]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits in the weights
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt or was modified"):
        load_policy(bad)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_policy(junk)
    with pytest.raises(UserError, match="not found"):
        load_policy(tmp_path / "missing.safetensors")


def test_no_bundled_policy_message():
    from mario_rl.policy import bundled_policy_path

    if bundled_policy_path("8-4") is None:
        with pytest.raises(UserError, match="no bundled policy for stage 8-4"):
            load_policy("8-4")


def test_sampling_policy_is_seeded_and_greedy_is_not_random(tmp_path):
    import torch

    from mario_rl.envs import Preprocessing
    from mario_rl.nets import ActorCritic
    from mario_rl.policy import load_policy, save_policy

    net = ActorCritic(in_channels=4, n_actions=12, frame_size=84)
    path = tmp_path / "p.safetensors"
    save_policy(
        path,
        net,
        algorithm="ppo",
        network="ActorCritic",
        network_kwargs={"in_channels": 4, "n_actions": 12, "frame_size": 84},
        preprocessing=Preprocessing("complex"),
        stage="1-1",
        steps=0,
        extra={"act": "sample"},
    )
    obs = np.zeros((4, 84, 84), np.uint8)
    p = load_policy(path)
    assert p.mode == "sample"
    p.seed(5)
    a = [p.act(obs) for _ in range(40)]
    p.seed(5)
    assert [p.act(obs) for _ in range(40)] == a and len(set(a)) > 3  # near-uniform at init
    g = load_policy(path, "greedy")
    assert len({g.act(obs) for _ in range(10)}) == 1
    with pytest.raises(UserError):
        load_policy(path, "softmax")
    assert torch.is_grad_enabled()


def test_sampling_temperature_sharpens_towards_greedy(tmp_path):
    import torch

    from mario_rl.envs import Preprocessing
    from mario_rl.nets import ActorCritic
    from mario_rl.policy import load_policy, save_policy

    torch.manual_seed(0)
    net = ActorCritic(in_channels=4, n_actions=7, frame_size=84)
    with torch.no_grad():
        net.policy.weight.mul_(300.0)  # logits a few units apart, so that the temperature matters
    path = tmp_path / "p.safetensors"
    save_policy(
        path,
        net,
        algorithm="ppo",
        network="ActorCritic",
        network_kwargs={"in_channels": 4, "n_actions": 7, "frame_size": 84},
        preprocessing=Preprocessing("simple"),
        stage="1-1",
        steps=0,
        extra={"act": "sample", "temperature": 0.01},
    )
    obs = np.random.default_rng(0).integers(0, 256, (4, 84, 84), dtype=np.uint8)
    greedy = load_policy(path, "greedy").act(obs)
    cold = load_policy(path)  # the file's temperature, 0.01
    assert cold.temperature == 0.01 and {cold.act(obs) for _ in range(50)} == {greedy}
    warm = load_policy(path, temperature=1.0)
    assert len({warm.act(obs) for _ in range(200)}) > 1
    with pytest.raises(UserError, match="temperature must be positive"):
        load_policy(path, temperature=0.0)


def test_bundle_policy_writes_how_to_play_it(policy_file, tmp_path):
    from mario_rl.policy import bundle_policy

    big, _ = policy_file  # the tutorial's MarioNet: 6.7 MB, too big to ship
    with pytest.raises(UserError, match="over the 2,097,152"):
        bundle_policy(big, "1-1", folder=tmp_path / "models")
    assert not (tmp_path / "models" / "1-1.safetensors").exists()
    path, net = write_policy(tmp_path / "ppo.safetensors", ActorCritic, "ppo")
    dst = bundle_policy(path, "1-1", act="sample", temperature=0.5, folder=tmp_path / "models")
    assert dst == tmp_path / "models" / "1-1.safetensors"
    bundled = load_policy(dst)
    assert (bundled.mode, bundled.temperature) == ("sample", 0.5) and bundled.meta["steps"] == 123
    assert all(torch.equal(a, b) for a, b in zip(bundled.net.state_dict().values(), net.state_dict().values()))
    # A file over the limit leaves the policy already bundled in place.
    with pytest.raises(UserError, match="over the 2,097,152"):
        bundle_policy(big, "1-1", folder=tmp_path / "models")
    assert load_policy(dst).meta["network"] == "ActorCritic"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["1-1.safetensors"]
    with pytest.raises(UserError, match="trained on 1-1, not 1-2"):
        bundle_policy(path, "1-2", folder=tmp_path / "models")
    with pytest.raises(UserError, match="temperature must be positive"):
        bundle_policy(path, "1-1", act="sample", temperature=0.0, folder=tmp_path / "models")
    assert not (tmp_path / "models" / "1-2.safetensors").exists()


@pytest.mark.parametrize("path", sorted(REPO_MODELS.glob("*.safetensors")), ids=lambda p: p.stem)
def test_bundled_policies_load_by_stage_name(path):
    """Every file in models/ is a policy for the stage it is named after, small enough to ship."""
    assert path.stat().st_size <= MAX_BUNDLED_BYTES
    policy = load_policy(path.stem)
    assert policy.meta["stage"] == path.stem and policy.meta["format"] == "mario_rl.policy/1"
    env = policy.wrap(gym_super_mario_bros.make(f"SuperMarioBros-{path.stem}-v0"))
    obs, _ = env.reset(seed=0)
    assert 0 <= policy.act(obs) < env.action_space.n
    env.close()


@pytest.mark.slow
def test_evaluate_from_a_frame_of_the_demonstration_starts_every_episode_there():
    """`eval --demo --from-frame`: the bundled 1-1 policy, started 80 frames before the demonstration's flag
    frame, reaches the flag within a few dozen agent steps; from the stage's start it takes about 280."""
    from pathlib import Path

    from mario_rl.demonstration import demo_state, load_demo
    from mario_rl.envs import make_base_env
    from mario_rl.evaluate import evaluate

    demo = load_demo(Path(__file__).resolve().parents[1] / "demos" / "1-1.json")
    frame = len(demo["frames"]) - 80
    ref = gym_super_mario_bros.make("SuperMarioBros-1-1-v0")
    ref.reset(seed=demo["seed"])
    for b in demo["frames"][:frame]:
        ref.step(b)
    env = make_base_env("1-1", start_state=demo_state(demo, frame))
    obs, info = env.reset(seed=0)
    assert np.array_equal(obs, ref.unwrapped.screen) and info["x_pos"] == ref.unwrapped._x_position > 2900
    result = evaluate(load_policy("1-1"), "1-1", episodes=2, seed=3, demo=demo, from_frame=frame)
    assert result["from_frame"] == frame and result["noop_max"] == 0
    assert result["clears"] == 2 and not result["cleared_stage"]
    assert all(r["steps"] < 60 and r["x"] > 2900 for r in result["results"])
    with pytest.raises(UserError, match="must be in 1.."):
        demo_state(demo, len(demo["frames"]))
    with pytest.raises(UserError, match="of stage 1-1, not 1-2"):
        evaluate(load_policy("1-1"), "1-2", demo=demo, from_frame=10)
