import pytest

from mario_rl.curriculum import BackwardCurriculum
from mario_rl.demonstration import DEMO_STRIDE, demo_starts


def test_backward_curriculum_moves_back_only_on_success():
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    assert c.window() == (29, 29) and c.start_frame == 29 * DEMO_STRIDE
    for _ in range(4):
        assert not c.record(29 * DEMO_STRIDE, cleared=False)  # failures never move it
    assert c.window() == (29, 29)
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    moved = [c.record(29 * DEMO_STRIDE + 3, cleared=i % 2 == 0) for i in range(4)]
    assert moved == [False, False, False, True] and c.window() == (21, 24)
    assert not c.record(0, cleared=True)  # a real reset is not a start in the window
    assert not c.record(29 * DEMO_STRIDE, cleared=True)  # nor a start behind it
    for lo in (5, 0):  # clearing every time: twice the step
        for _ in range(4):
            c.record(c.lo * DEMO_STRIDE, cleared=True)
        assert c.lo == lo
    for _ in range(4):
        c.record(0, cleared=True)  # at the start, real resets count
    assert c.done and c.window() == (0, -1) and c.start_frame == 0
    assert demo_starts(1) == 1 and demo_starts(17) == 2 and demo_starts(33) == 3
    # The rate is over the latest 2 x min_episodes: an early run of failures stops counting.
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4)
    for _ in range(20):
        assert not c.record(29 * DEMO_STRIDE, cleared=False)
    moved = [c.record(29 * DEMO_STRIDE, cleared=True) for _ in range(4)]
    assert moved == [False, False, False, True] and c.lo == 21


def test_start_priorities_favour_stretches_cleared_only_sometimes():
    from mario_rl.curriculum import StartPriorities

    p = StartPriorities(starts=12, segment=4, floor=0.05, window=8, min_episodes=4)
    # Untried segments share the largest weight: uniform at first.
    assert p.weights() == pytest.approx([1 / 12] * 12) and p.segment_rates() == [None, None, None]
    for i in range(8):
        p.record(1 * DEMO_STRIDE, cleared=i % 2 == 0)  # segment 0: half
        p.record(5 * DEMO_STRIDE, cleared=False)  # segment 1: never
        p.record(9 * DEMO_STRIDE, cleared=True)  # segment 2: always
    assert p.segment_rates() == [0.5, 0.0, 1.0]
    w = p.weights()
    assert abs(sum(w) - 1) < 1e-9 and w[0] == w[3] and w[4] == w[11]
    assert w[0] == pytest.approx(0.30 / 0.40 / 4) and w[4] == pytest.approx(0.05 / 0.40 / 4)  # 0.25 + floor
    assert not p.record(0, True) and not p.record(-1, True) and not p.record(12 * DEMO_STRIDE, True)
    # The latest `window` episodes count: a segment the agent learns moves from the floor to the top.
    for _ in range(4):
        p.record(5 * DEMO_STRIDE, cleared=True)
    assert p.segment_rates()[1] == 0.5


def test_backward_curriculum_moves_forward_again_after_a_stall():
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4, stall=6)
    for _ in range(4):
        c.record(29 * DEMO_STRIDE, cleared=True)
    assert c.lo == 13  # cleared every time: 16 back
    # A clear since the move: failures never move it forward, however many.
    c.record(13 * DEMO_STRIDE, cleared=True)
    assert not any(c.record(13 * DEMO_STRIDE, cleared=False) for _ in range(20)) and c.lo == 13
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4, stall=6, lo=13)
    moved = [c.record(14 * DEMO_STRIDE, cleared=False) for _ in range(6)]
    assert moved == [False] * 5 + [True] and c.lo == 21 and c.since == 0
    assert not c.record(13 * DEMO_STRIDE, cleared=False)  # before the window now: not counted
    # Clears from the window's later start states alone do not hold it (1-3's window at frames 352-400).
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4, stall=6, lo=13)
    moved = [c.record((13 + i % 4) * DEMO_STRIDE, cleared=i % 4 == 3) for i in range(6)]
    assert moved == [False] * 5 + [True] and c.lo == 21
    # At the last start state it stays, and without `stall` it never moves forward.
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4, stall=6, lo=25)
    assert [c.record(25 * DEMO_STRIDE, cleared=False) for _ in range(6)][-1] and c.lo == 29
    assert not any(c.record(29 * DEMO_STRIDE, cleared=False) for _ in range(12)) and c.lo == 29
    c = BackwardCurriculum(starts=30, span=4, back=8, success=0.5, min_episodes=4, lo=13)
    assert not any(c.record(13 * DEMO_STRIDE, cleared=False) for _ in range(100)) and c.lo == 13


def test_a_resumed_curriculum_moves_as_the_unbroken_one_does():
    """The checkpoint keeps the latest outcomes: a resume in the middle of a window's 16 episodes moves it
    at the same episode as a run that never stopped (and `mario-rl report` replays it the same way)."""
    import json

    frame = (demo_starts(100) - 1) * DEMO_STRIDE  # the first window's start state
    unbroken = BackwardCurriculum(demo_starts(100), back=1, success=0.2)
    first = BackwardCurriculum(demo_starts(100), back=1, success=0.2)
    outcomes = [i % 4 == 0 for i in range(20)]  # 3 clears in the first 10, 2 in the next 10: 25%
    moved = [unbroken.record(frame, c) for c in outcomes]
    for c in outcomes[:10]:
        first.record(frame, c)
    resumed = BackwardCurriculum(demo_starts(100), back=1, success=0.2)
    resumed.load(json.loads(json.dumps(first.state())))  # as a checkpoint's JSON
    assert [resumed.record(frame, c) for c in outcomes[10:]] == moved[10:] and any(moved[10:])
    assert resumed.state() == unbroken.state()
    old = {k: v for k, v in first.state().items() if k != "latest"}  # a checkpoint from before: starts again
    again = BackwardCurriculum(demo_starts(100), back=1, success=0.2)
    again.load(old)
    assert not any(again.record(frame, c) for c in outcomes[10:15])
