"""Watch Mario: play episodes with a policy or a random agent, record MP4 + GIF, summarize."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mario_rl.envs import check_action_set, env_id, make_base_env, make_env
from mario_rl.errors import UserError
from mario_rl.evaluate import random_actor, run_episode
from mario_rl.policy import bundled_policy_path, load_policy
from mario_rl.video import VideoRecorder


def play(
    stage: str = "1-1",
    *,
    policy: str | Path | None = None,
    random: bool = False,
    episodes: int = 1,
    out: Path = Path("videos/mario.mp4"),
    window: bool = False,
    seed: int = 0,
    actions: str | None = None,
    sticky: float = 0.0,
    noop_max: int = 0,
    echo: Callable[[str], None] = lambda s: None,
) -> dict:
    """Play `episodes` episodes of `stage` into one video; returns the summaries and the files written."""
    env_id(stage)
    if episodes < 1:
        raise UserError(f"--episodes must be positive, got {episodes}")
    if random and policy is not None:
        raise UserError("give either --policy or --random, not both")
    if actions is not None:
        check_action_set(actions)
    loaded = None
    if policy is not None:
        loaded = load_policy(policy)
        who = f"policy {policy} ({loaded.meta.get('algorithm')}, {loaded.meta.get('steps'):,} steps)"
    elif not random and stage != "game" and bundled_policy_path(stage) is not None:
        loaded = load_policy(stage)
        who = f"the bundled policy for {stage} ({bundled_policy_path(stage)})"
    else:
        why = "as asked" if random else f"no bundled policy for {stage} yet"
        who = f"a random agent ({why})"
    if loaded is not None:
        loaded.check_actions(actions)

    recorder = VideoRecorder(out, window=window)
    try:
        if loaded is not None:
            env = loaded.wrap(make_base_env(stage, sticky=sticky, noop_max=noop_max, frame_sink=recorder))
            act = loaded.act
        else:
            env = make_env(stage, actions or "right", sticky=sticky, noop_max=noop_max, frame_sink=recorder)
            act = random_actor(int(env.action_space.n), seed)
        echo(f"playing {stage} with {who}")
        results = []
        for i in range(episodes):
            if loaded is not None:
                loaded.seed(seed + i)
            r = run_episode(env, act, seed=seed + i)
            results.append(r)
            echo(
                f"  episode {i + 1}: {'CLEARED' if r['cleared'] else 'not cleared'} | x reached {r['x']} | "
                f"score {r['score']} | {r['steps']} steps"
            )
        env.close()
    except BaseException:
        recorder.abort()
        raise
    files = recorder.close()
    echo("wrote " + ", ".join(str(f) for f in files) + f" ({recorder.count} frames)")
    return {"stage": stage, "agent": who, "results": results, "files": [str(f) for f in files]}
