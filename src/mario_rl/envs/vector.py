"""Vector envs: emulators in worker processes, several per process, stepped in independent parts."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from mario_rl.envs.make import Preprocessing, make_base_env, wrap_preprocessing
from mario_rl.envs.reward import lean_game
from mario_rl.envs.stages import env_id
from mario_rl.envs.wrappers import EpisodeStats
from mario_rl.errors import UserError


def _vector_worker_env(
    stage: str,
    pre: Preprocessing,
    sticky: float,
    noop_max: int,
    demo: dict | None = None,
    demo_states: list | None = None,
) -> gym.Env:
    # Module level, so that a worker started by any method (fork, spawn) can import it by name.
    base = make_base_env(stage, sticky=sticky, noop_max=noop_max, demo=demo, demo_states=demo_states)
    return EpisodeStats(lean_game(wrap_preprocessing(base, pre)))


class EnvGroup(gym.Env):
    """`k` envs stepped one after another in one process, which an AsyncVectorEnv sees as one env.

    Written by hand because neither Gymnasium's AsyncVectorEnv nor SB3's SubprocVecEnv runs
    several envs per process, and on a 2-core machine 16 processes of one env spend their time
    in pipe round trips and context switches (docs/performance.md). Its observation is the k
    observations stacked; rewards, ends and the k envs' own (vector) info travel in info["group"],
    and it never ends itself: each env inside resets on its own (same-step autoreset).
    `GroupedVectorEnv` turns a set of groups back into one vector env.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        self.inner = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.k = len(env_fns)
        single = self.inner.single_observation_space
        self.observation_space = gym.spaces.Box(0, 255, (self.k, *single.shape), single.dtype)
        self.action_space = gym.spaces.MultiDiscrete([self.inner.single_action_space.n] * self.k)

    def reset(self, *, seed=None, options=None):
        seeds = None if seed is None else [seed * self.k + j for j in range(self.k)]
        obs, info = self.inner.reset(seed=seeds, options=options)
        return obs, {"group": (None, info)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return obs, 0.0, False, False, {"group": ((reward, terminated, truncated), info)}

    def call_inner(self, name: str, *args, **kwargs) -> tuple:
        return self.inner.call(name, *args, **kwargs)

    def close(self):
        self.inner.close()


def _concat_infos(infos: list[dict], k: int) -> dict:
    """Vector infos of groups of k envs (arrays of length k, "_key" masks, nested dicts) -> one vector info."""
    out = {}
    for key in dict.fromkeys(key for info in infos for key in info):
        parts = [info.get(key) for info in infos]
        first = next(p for p in parts if p is not None)
        if isinstance(first, dict):
            out[key] = _concat_infos([p if p is not None else {} for p in parts], k)
        else:
            # An absent key: masked out (False, 0), or None where the values are objects (final_obs: the code
            # reading it takes None as "this env did not end", as Gymnasium's own vector infos do).
            blank = np.full((k, *first.shape[1:]), None if first.dtype == object else 0, first.dtype)
            out[key] = np.concatenate([p if p is not None else blank for p in parts])
    return out


class GroupedVectorEnv(gym.vector.VectorEnv):
    """One vector env over `EnvGroup` processes of k envs each (env i is env i % k of group i // k).

    With `parts` > 1 the groups are split into that many AsyncVectorEnvs that step
    independently: `step_part_async(p, actions)` sends part p its actions and
    `step_part_wait(p)` collects its step, so that a learner can pick one part's
    actions while the other parts' emulators run (EnvPool's asynchronous mode does the
    same). `parts` lists each part's env indices as a slice. `step` steps every part.
    """

    def __init__(self, group_fns: list[Callable[[], gym.Env]], k: int, parts: int = 1):
        if parts < 1 or len(group_fns) % parts:
            raise UserError(f"{len(group_fns)} env groups cannot be split into {parts} parts")
        n = len(group_fns) // parts
        self._parts = [
            gym.vector.AsyncVectorEnv(
                group_fns[i * n : (i + 1) * n], shared_memory=True, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
            )
            for i in range(parts)
        ]
        self.k, self._groups_per_part, self.num_envs = k, n, len(group_fns) * k
        self.parts = tuple(slice(i * n * k, (i + 1) * n * k) for i in range(parts))
        space = self._parts[0].single_observation_space
        self.single_observation_space = gym.spaces.Box(0, 255, space.shape[1:], space.dtype)
        self.single_action_space = gym.spaces.Discrete(int(self._parts[0].single_action_space.nvec[0]))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def _flat(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(-1, *obs.shape[2:])

    def reset(self, *, seed=None, options=None):
        for p, part in enumerate(self._parts):
            # Group g gets seed + g whatever the parts, so that env i's seed depends on i alone.
            part.reset_async(seed=None if seed is None else seed + p * self._groups_per_part, options=options)
        results = [part.reset_wait() for part in self._parts]
        infos = [inner for _, info in results for _, inner in info["group"]]
        return np.concatenate([self._flat(obs) for obs, _ in results]), _concat_infos(infos, self.k)

    def step_part_async(self, p: int, actions) -> None:
        self._parts[p].step_async(np.asarray(actions).reshape(-1, self.k))

    def step_part_wait(self, p: int):
        """The step of part p's envs: (obs, rewards, terminated, truncated, info), each over those envs only."""
        obs, _, _, _, info = self._parts[p].step_wait()
        outs, infos = zip(*info["group"])
        rewards, terminated, truncated = zip(*outs)
        return (
            self._flat(obs),
            np.concatenate(rewards),
            np.concatenate(terminated),
            np.concatenate(truncated),
            _concat_infos(list(infos), self.k),
        )

    def step(self, actions):
        actions = np.asarray(actions)
        for p, part in enumerate(self.parts):
            self.step_part_async(p, actions[part])
        results = [self.step_part_wait(p) for p in range(len(self.parts))]
        if len(results) == 1:
            return results[0]
        obs, rewards, terminated, truncated = (np.concatenate(x) for x in zip(*(r[:4] for r in results)))
        # Each part's info is already one vector info; a part's arrays cover its envs only.
        infos = _concat_infos([r[4] for r in results], self.num_envs // len(self.parts))
        return obs, rewards, terminated, truncated, infos

    def call(self, name: str, *args, **kwargs) -> tuple:
        return tuple(
            r for part in self._parts for group in part.call("call_inner", name, *args, **kwargs) for r in group
        )

    def close_extras(self, **kwargs):
        for part in self._parts:
            part.close(**kwargs)


def make_vec_env(
    stage: str = "1-1",
    num_envs: int = 2,
    actions: str | Preprocessing = "right",
    *,
    sticky: float = 0.0,
    noop_max: int = 0,
    asynchronous: bool = True,
    demo: dict | None = None,
    per_process: int = 0,
    parts: int = 1,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of make_env in emulator processes, observations in shared memory. `actions` is an
    action set's name (the default preprocessing) or a whole Preprocessing.

    `per_process` envs share a process (`EnvGroup`); 0 picks one process per core when
    num_envs divides evenly, else one process per env. With `parts` > 1 the envs
    step in that many independent parts (a `GroupedVectorEnv`, see its
    step_part_async), one process per core in each. Autoreset happens in the same
    step (Gymnasium's SAME_STEP mode): when an episode ends, the returned observation
    is already the next episode's first one; the finished episode's statistics are in
    info["final_info"], read them with `finished_episodes(info)`.
    """
    import multiprocessing
    import os
    from functools import partial

    env_id(stage)
    pre = actions if isinstance(actions, Preprocessing) else Preprocessing(actions)
    if num_envs < 1:
        raise UserError(f"num_envs must be positive, got {num_envs}")
    if per_process < 0 or (per_process and num_envs % per_process):
        raise UserError(f"per_process must divide num_envs ({num_envs}), got {per_process}")
    if parts < 1 or num_envs % parts or (per_process and (num_envs // per_process) % parts):
        raise UserError(f"parts must divide num_envs ({num_envs}) and the number of processes, got {parts}")
    states = None
    if demo is not None and (not asynchronous or multiprocessing.get_start_method() == "fork"):
        # Replay the demonstration once here rather than in every worker (16 replays of 1-1's
        # 4,620 frames took a minute and a half on 2 cores); forked workers inherit the snapshots,
        # which cannot be pickled for other start methods.
        from mario_rl.demonstration import demo_snapshots  # imported here: it imports this package

        states = demo_snapshots(None, demo)
    fns = [partial(_vector_worker_env, stage, pre, sticky, noop_max, demo, states) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if not asynchronous:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    if not per_process:
        cores = os.cpu_count() or 1
        per_part = num_envs // parts
        per_process = per_part // cores if per_part > cores and per_part % cores == 0 else 1
    # The platform's default start method (fork on Linux): workers start fast and scripts need
    # no __main__ guard; a worker never runs torch, so forking the learner's threads is harmless.
    if per_process == 1 and parts == 1:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=True, autoreset_mode=mode)
    groups = [partial(EnvGroup, fns[i : i + per_process]) for i in range(0, num_envs, per_process)]
    return GroupedVectorEnv(groups, per_process, parts)


def finished_episodes(info: dict) -> list[tuple[int, dict]]:
    """(env index, {"r", "l", "x", "flag"}) for each episode that ended in this vector step."""
    final = info.get("final_info")
    if not final or "episode" not in final:
        return []
    mask = final.get("_episode", info.get("_final_info"))
    return [(int(i), {k: v[i].item() for k, v in final["episode"].items()}) for i in np.flatnonzero(mask)]
