"""The game's per-frame reward, termination and info, reimplemented to read the RAM once (`lean_game`)."""

from __future__ import annotations

import gymnasium as gym

_STAGE_OVER_ENEMIES = (0x2D, 0x31)  # Bowser and the flagpole, as gym-super-mario-bros reads them
_GAME_STATE = (
    "_get_reward",
    "_get_terminated",
    "_get_info",
    "ram",
    "is_single_stage_env",
    "_x_position_max",
    "_time_last",
    "_score_last",
    "_coins_last",
    "_status_last",
    "_completion_rewarded",
)


def _digits(m: bytes, address: int, n: int) -> int:
    """A number the game keeps as one decimal digit per byte (score, clock, coins)."""
    v = 0
    for d in m[address : address + n]:
        if d > 9:  # not a digit: decode as gym-super-mario-bros does, by string concatenation
            return int("".join(str(d) for d in m[address : address + n]))
        v = v * 10 + d
    return v


def _flag(m: bytes) -> bool:
    """gym-super-mario-bros' _flag_get: end of world, or the flagpole/Bowser loaded while Mario slides."""
    return m[0x0770] == 2 or (any(m[a] in _STAGE_OVER_ENEMIES for a in range(0x16, 0x1B)) and m[0x1D] == 3)


def _dying_or_dead(m: bytes) -> bool:
    return m[0x0E] in (0x0B, 0x06) or m[0xB5] > 1


def lean_game(env: gym.Env) -> gym.Env:
    """Make the game's per-frame reward, termination and info cheap; same values, fewer RAM reads.

    gym-super-mario-bros computes its reward, termination and a ~40-key info dict after
    every emulator frame through ~100 property reads of single RAM bytes (score, clock and
    coins decoded through strings), and the frame skip throws three of every four infos
    away: about a tenth of a frame's time, and in a vector env the emulator's time is all
    there is. There is no option for it, so this replaces the env's `_get_reward`,
    `_get_terminated` and `_get_info` on this instance with versions that read one copy
    of the RAM per call. The reward and termination are the game's own, value for value
    (the same sums in the same order; a test compares whole trajectories, a cleared stage
    included); the info keeps only x_pos and flag_get, what EpisodeStats reads. The
    reward's per-component diagnostics are not kept. If a future version renames these
    internals, the env is left as it is.
    """
    base = env.unwrapped
    if not all(hasattr(base, name) for name in _GAME_STATE):
        return env
    ram = base.ram

    def reward() -> float:
        m = ram.tobytes()
        x = m[0x6D] * 0x100 + m[0x86]
        progress = x - base._x_position_max
        if progress <= 0:
            progress = 0
        else:
            base._x_position_max = x
            if progress > 5:
                progress = 0
        t = _digits(m, 0x07F8, 3)
        clock, base._time_last = min(t - base._time_last, 0), t
        s = _digits(m, 0x07DE, 6)
        score, base._score_last = s - base._score_last, s
        c = _digits(m, 0x07ED, 2)
        coins, base._coins_last = c - base._coins_last, c
        if coins < -50:
            coins += 100
        p = min(m[0x0756], 2)
        powerup, base._status_last = (p - base._status_last) * 5, p
        completion = 0
        if _flag(m) and not base._completion_rewarded:
            base._completion_rewarded, completion = True, 50
        total = 0.0
        for part in (
            progress,
            clock,
            score / 100 if score > 0 else 0,
            coins * 5 if coins > 0 else 0,
            powerup,
            completion,
            -25 if _dying_or_dead(m) else 0,
        ):
            total += float(part)
        return total

    def terminated() -> bool:
        m = ram.tobytes()
        if base.is_single_stage_env:
            return _dying_or_dead(m) or _flag(m)
        return m[0x075A] == 0xFF

    def info() -> dict:
        m = ram.tobytes()
        return {"x_pos": m[0x6D] * 0x100 + m[0x86], "flag_get": _flag(m)}

    base._get_reward, base._get_terminated, base._get_info = reward, terminated, info
    return env
