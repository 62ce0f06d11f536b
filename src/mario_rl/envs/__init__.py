"""The one place that builds environments.

The wrapper stack, read bottom (emulator) to top (agent):

    make_raw(stage): gym_super_mario_bros.make("SuperMarioBros-W-S-v0")   raw NES, one frame per step, byte actions
    FrameRecorder       (optional) copies every emulator frame for a video
    StickyButtons       (optional) frame-level sticky actions, as in docs/protocol.md
    NoopStart           (optional) 0..N random no-op frames at reset
    --- everything above here is the "base env"; everything below is the policy's own preprocessing ---
    ActionSet           a discrete action set -> controller byte
    SkipFrame           repeat the action for 4 frames, summing reward (the tutorial's SkipFrame)
    GrayResize          grayscale + resize to 84x84, uint8
    FrameStackObservation   the last 4 frames, shape (4, 84, 84), uint8

`wrap_preprocessing` applies the second half to *any* base env, which is how
`Policy.wrap` lets an outside evaluator put its own perturbations underneath.

The modules: `stages` (stage names, action sets, the raw game), `wrappers` (one change
each), `reward` (the game's reward read from one copy of the RAM), `demo_start` (starts
along a demonstration), `make` (the stacks above) and `vector` (the vector envs).
"""

from mario_rl.envs.demo_start import RETRY_KEEP, RETRY_TRAIL, DemoStart
from mario_rl.envs.make import Preprocessing, make_base_env, make_env, wrap_preprocessing
from mario_rl.envs.reward import lean_game
from mario_rl.envs.stages import (
    ACTION_SETS,
    BUTTONS,
    GAME,
    STAGES,
    STAGES_PER_WORLD,
    WORLDS,
    action_bytes,
    check_action_set,
    env_id,
    level_x,
    make_raw,
)
from mario_rl.envs.vector import EnvGroup, GroupedVectorEnv, finished_episodes, make_vec_env
from mario_rl.envs.wrappers import (
    ActionSet,
    EpisodeStats,
    FrameRecorder,
    GrayResize,
    MidGame,
    NoopStart,
    SkipFrame,
    StartFrom,
    StickyButtons,
    restore_state,
)

__all__ = [
    "ACTION_SETS",
    "BUTTONS",
    "GAME",
    "RETRY_KEEP",
    "RETRY_TRAIL",
    "STAGES",
    "STAGES_PER_WORLD",
    "WORLDS",
    "ActionSet",
    "DemoStart",
    "EnvGroup",
    "EpisodeStats",
    "FrameRecorder",
    "GrayResize",
    "GroupedVectorEnv",
    "MidGame",
    "NoopStart",
    "Preprocessing",
    "SkipFrame",
    "StartFrom",
    "StickyButtons",
    "action_bytes",
    "check_action_set",
    "env_id",
    "finished_episodes",
    "lean_game",
    "level_x",
    "make_base_env",
    "make_env",
    "make_raw",
    "make_vec_env",
    "restore_state",
    "wrap_preprocessing",
]
