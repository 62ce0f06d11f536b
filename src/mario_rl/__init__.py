"""mario_rl: deep RL agents that play Super Mario Bros, fast on a CPU, and show you what they do."""

__version__ = "0.1.0"

from mario_rl.envs import ACTION_SETS, STAGES, make_env, make_vec_env  # noqa: E402

__all__ = ["ACTION_SETS", "STAGES", "__version__", "load_policy", "make_env", "make_vec_env"]


def __getattr__(name):
    # Lazy, so that emulator worker processes (which import mario_rl.envs) never load torch.
    if name == "load_policy":
        from mario_rl.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'mario_rl' has no attribute {name!r}")
