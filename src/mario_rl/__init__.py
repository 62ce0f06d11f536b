"""mario_rl: deep RL agents that play Super Mario Bros, fast on a CPU, and show you what they do."""

__version__ = "0.1.0"

from mario_rl.envs import ACTION_SETS, STAGES, make_env  # noqa: E402
from mario_rl.policy import load_policy  # noqa: E402

__all__ = ["ACTION_SETS", "STAGES", "__version__", "load_policy", "make_env"]
