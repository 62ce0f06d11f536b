"""Learning from one demonstration by moving the start backwards (Salimans and Chen, 2018).

An exploration result (mario_rl.explore) shows that a path to the flag exists, but
replaying it is not an agent: under sticky actions an open-loop replay falls off
the first ledge it is late for. So the policy is trained with ordinary PPO under
the protocol's perturbations, and the demonstration only chooses where episodes
*start*. First near the flag, where a few random presses finish the stage; once
the agent clears often enough from there, the start moves back along the
demonstration, until the agent plays the whole stage from a real reset, no-op
start included. Each stretch it must learn is short, and the stretch after it is
one it can already do.

`BackwardCurriculum` is that bookkeeping; `StartPriorities` is another order, which
draws the starts from where the agent clears only sometimes; envs.DemoStart restores
the states (mario_rl.demonstration takes and counts them) and agents.ppo trains with `--demo`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mario_rl.demonstration import DEMO_STRIDE


@dataclass
class BackwardCurriculum:
    """Which start states episodes use, moved back as the agent clears from them."""

    starts: int
    """start states along the demonstration (index 0 is the reset state)"""
    span: int = 4
    """start states in the window, from `lo` on"""
    back: int = 8
    """start states the window moves back each time the agent clears often enough (twice as many at 80%)"""
    success: float = 0.2
    """clear rate, over the latest episodes started in the window, that moves it back"""
    min_episodes: int = 16
    """episodes started in the window before its clear rate counts; the rate is over the latest
    2 x min_episodes of them, so that it follows an agent that is learning (docs/experiments.md)"""
    stall: int = 0
    """episodes started in the window, none of those from its first start state a clear, after which it
    moves forward again by `back` (0: never). The rate over the latest episodes is noisy: on 1-3 a run
    of clears passed a stretch the agent cleared 4% of the time, and the next one it then never cleared,
    in 6,905 episodes. Only the first start state counts because clears from the window's later ones
    alone kept it still: at frames 352-400 the last cleared 19-31% and the others 0 of 902
    (docs/experiments.md)"""
    lo: int = -1
    """first start state of the window (-1: the last one); 0 and done: only real resets"""
    done: bool = False
    since: int = 0
    """episodes started in the window since it last moved"""
    cleared_since: bool = False
    """whether one of them that started at `lo` reached the flag"""

    def __post_init__(self):
        if self.lo < 0:
            self.lo = max(0, self.starts - 1)
        self._latest: deque[bool] = deque(maxlen=2 * self.min_episodes)

    def window(self) -> tuple[int, int]:
        """(lo, hi) start-state indices for DemoStart; (0, -1) once done: real resets only."""
        if self.done:
            return 0, -1
        return self.lo, min(self.lo + self.span - 1, self.starts - 1)

    def record(self, start_frame: int, cleared: bool, stride: int = DEMO_STRIDE) -> bool:
        """Count one finished episode; return True when the window moved (back, or forward after a stall)."""
        lo, hi = self.window()
        if self.done or not (start_frame > 0 or lo == 0) or not lo <= start_frame // stride <= hi:
            return False
        self._latest.append(bool(cleared))
        self.since += 1
        self.cleared_since |= bool(cleared) and start_frame // stride == lo
        episodes, clears = len(self._latest), sum(self._latest)
        if self.stall and self.since >= self.stall and not self.cleared_since and self.lo < self.starts - 1:
            self._move(min(self.starts - 1, self.lo + self.back))
            return True
        if episodes < self.min_episodes or clears < self.success * episodes:
            return False
        if self.lo == 0:
            self.done = True
        # Twice as far when the agent already clears from here most of the time.
        back = 2 * self.back if clears >= 0.8 * episodes else self.back
        self._move(max(0, self.lo - back))
        return True

    def state(self) -> dict:
        """Its place, for checkpoints: JSON values."""
        # The latest outcomes too: without them a resumed window waits for min_episodes new ones before it can
        # move, and `mario-rl report`'s replay of episodes.csv would part from the run at every resume.
        latest = [bool(x) for x in self._latest]
        return {
            "lo": self.lo,
            "done": self.done,
            "since": self.since,
            "cleared_since": self.cleared_since,
            "latest": latest,
        }

    def load(self, state: dict) -> None:
        """Go on from state(); checkpoints from before --demo-stall have no count and those from before
        2026-12-07 no latest outcomes: those start again at the resume."""
        self.lo, self.done = state["lo"], state["done"]
        self.since, self.cleared_since = state.get("since", 0), state.get("cleared_since", False)
        self._latest.clear()
        self._latest.extend(bool(x) for x in state.get("latest", ()))

    def _move(self, lo: int) -> None:
        self.lo, self.since, self.cleared_since = lo, 0, False
        self._latest.clear()

    @property
    def start_frame(self) -> int:
        """The earliest frame episodes start from now (0 once done)."""
        return 0 if self.done else self.lo * DEMO_STRIDE


@dataclass
class StartPriorities:
    """Where episodes start along the demonstration under `--demo-order prioritized`: more often from the
    stretches the agent clears from only some of the time.

    Uniform starts spend their samples evenly, and late in training most go where the agent
    already succeeds: on 1-2 from 3.45M to 4.3M steps, episodes started from frame 2,560 on (but
    2,960-3,039) reached the flag 94-100% of the time, while starts at frames 1,200-1,279 (a Koopa under the brick
    ceiling) did 20% and at 2,080-2,159 (before the Piranha Plants' pipes) 25% (`mario-rl report`).
    The start states fall in segments of `segment`; each segment is drawn with weight p(1 - p) +
    `floor`, where p is the clear rate of its latest `window` episodes: a stretch the agent
    always or never clears teaches little, one it clears half the time teaches most (the
    "learning progress" of automatic curricula). Early in a run that is the stretches near the
    flag, where some random presses already clear; so, like the backward curriculum, the starts
    move back as the agent learns, without its schedule. A segment with fewer than
    `min_episodes` episodes gets the largest weight, 0.25 + `floor`, until it has been tried.
    """

    starts: int
    """start states along the demonstration (index 0 is the reset state)"""
    segment: int = 5
    """start states per segment (5 x 16 frames: 80 frames, a second and a third of play)"""
    floor: float = 0.05
    """weight added to every segment, so that none is dropped (p(1 - p) is at most 0.25)"""
    window: int = 32
    """latest episodes per segment that its clear rate is over, so that it follows a learning agent"""
    min_episodes: int = 8
    """episodes a segment needs before its clear rate counts"""

    def __post_init__(self):
        self._latest = [deque(maxlen=self.window) for _ in range(-(-self.starts // self.segment))]

    def record(self, start_frame: int, cleared: bool, stride: int = DEMO_STRIDE) -> bool:
        """Count one finished episode that started along the demonstration (others are ignored)."""
        i = start_frame // stride
        if start_frame <= 0 or i >= self.starts:
            return False
        self._latest[i // self.segment].append(bool(cleared))
        return True

    def segment_rates(self) -> list[float | None]:
        """Each segment's clear rate over its latest episodes (None: fewer than min_episodes)."""
        return [sum(d) / len(d) if len(d) >= self.min_episodes else None for d in self._latest]

    def weights(self) -> list[float]:
        """A probability per start state: its segment's weight, shared among the segment's states."""
        out = []
        for k, p in enumerate(self.segment_rates()):
            w = (0.25 if p is None else p * (1 - p)) + self.floor
            size = min(self.segment, self.starts - k * self.segment)
            out += [w / size] * size
        total = sum(out)
        return [w / total for w in out]
