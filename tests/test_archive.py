import json

from mario_rl.archive import Explorer, mario_x
from mario_rl.demonstration import replay
from mario_rl.explore import ExploreConfig


def test_explorer_paths_replay_to_their_cells():
    """Cells are reached by chaining snapshots; replaying a cell's frames from reset must land there too."""
    explorer = Explorer(ExploreConfig("1-1", moves=30, seed=3))
    for _ in range(40):
        explorer.round()
    assert len(explorer.archive) > 20
    best = explorer.best
    assert best.x > 100 and len(best.frames) > 0
    check = replay({"stage": "1-1", "seed": 3, "frames": list(best.frames)})
    assert check["frames"] == len(best.frames) and not check["ended"]
    # x is the furthest point of the replay; the cell's x is where the path ends.
    assert check["x"] >= best.x
    explorer.env.reset(seed=3)
    for b in best.frames:
        explorer.env.step(b)
    assert mario_x(explorer.env) == best.x


def test_cells_prefer_ways_in_that_stay_in_one_area():
    """The test demonstration of 1-1 takes the bonus pipe (two area changes); a way into the same cell
    without the detour replaces it even when longer, and becomes a frontier cell again."""
    from pathlib import Path

    demo = json.loads((Path(__file__).parent / "data" / "1-1-demo.json").read_text())
    explorer = Explorer(ExploreConfig("1-1", seed=demo["seed"]))
    explorer.follow(bytes(demo["frames"][:2400]))
    by_changes = {}
    for key, cell in explorer.archive.items():
        by_changes.setdefault(cell.changes, set()).add(key[0])
    assert sorted(by_changes) == [0, 1, 2]  # before the pipe, in the bonus room, after it
    assert by_changes[1].isdisjoint(by_changes[0]) and by_changes[2] == by_changes[0]
    after = max((c for c in explorer.archive.values() if c.changes == 2), key=lambda c: c.x)
    assert after.x > 2600
    key = next(k for k, c in explorer.archive.items() if c is after)
    newest = max(c.born for c in explorer.archive.values())
    # Not better: same number of changes, longer.
    explorer.env.load_state(after.snapshot)
    seen = after.seen
    explorer._visit(bytearray(after.frames + bytes(8)), 2)
    assert explorer.archive[key] is after and after.seen == seen + 1
    # Better: no detour, though longer; it is news to the frontier.
    explorer._visit(bytearray(after.frames + bytes(8)), 0)
    assert explorer.archive[key].changes == 0 and explorer.archive[key].born > newest
    # Shorter at the same count: replaced, keeping its age and counts.
    born = explorer.archive[key].born
    explorer._visit(bytearray(after.frames), 0)
    assert len(explorer.archive[key].frames) == len(after.frames) and explorer.archive[key].born == born
    # Much sooner, with --sooner: a frontier cell again.
    explorer.cfg.sooner = 8
    explorer._visit(bytearray(after.frames[:-8]), 0)
    assert len(explorer.archive[key].frames) == len(after.frames) - 8 and explorer.archive[key].born > born
    explorer.cfg.sooner = 0
    # Polishing a path with two changes: the frontier rounds start from cells with fewer.
    explorer.cfg.frontier_prob, explorer.cfg.moves, explorer.changes_bound = 1.0, 5, 2
    detour = [c for c in explorer.archive.values() if c.changes == 2]
    for _ in range(20):
        explorer.round()
    assert all(c.chosen == 0 for c in detour)


def test_furthest_rounds_start_on_the_last_screen_reached():
    """With every round drawn from the furthest cells, no cell more than `furthest` pixels left of the
    furthest x is picked (that x only grows, so the bound only tightens)."""
    from pathlib import Path

    demo = json.loads((Path(__file__).parent / "data" / "1-1-demo.json").read_text())
    explorer = Explorer(
        ExploreConfig("1-1", seed=demo["seed"], moves=5, frontier_prob=0.0, furthest_prob=1.0, furthest=64)
    )
    explorer.follow(bytes(demo["frames"][:1200]))
    far = max(c.x for c in explorer.archive.values()) - 64
    behind = [c for c in explorer.archive.values() if c.x < far]
    assert len(behind) > 50
    for _ in range(20):
        explorer.round()
    assert all(c.chosen == 0 for c in behind)
    assert sum(c.chosen for c in explorer.archive.values()) == 20


def test_furthest_rounds_by_area_start_on_each_areas_last_screen():
    """With --furthest-by-area, an area whose cells all lie left of another's furthest x (the main
    stage, when a bonus room's x runs beyond it) still gets furthest rounds, from its own last screen."""
    from pathlib import Path

    demo = json.loads((Path(__file__).parent / "data" / "1-1-demo.json").read_text())
    cfg = ExploreConfig(
        "1-1", seed=demo["seed"], moves=5, frontier_prob=0.0, furthest_prob=1.0, furthest=64, furthest_by_area=True
    )
    explorer = Explorer(cfg)
    explorer.follow(bytes(demo["frames"][:1200]))
    cells = list(explorer.archive.values())
    main = max(cells, key=lambda c: c.x).area
    # Call the cells left of x 600 another area: a room the far end of the main one does not reach.
    room = [c for c in cells if c.area == main and c.x < 600]
    for c in room:
        c.area = 256  # the area pointer is a byte: no real area has this number
    room_far = max(c.x for c in room) - 64
    main_far = max(c.x for c in cells) - 64
    assert room_far < main_far and len(room) > 50
    for _ in range(40):
        explorer.round()
    assert all(c.chosen == 0 for c in room if c.x < room_far)
    assert all(c.chosen == 0 for c in cells if c.area == main and c.x < main_far)
    assert sum(c.chosen for c in room) > 0  # about half the rounds; none would be without the option
    cfg.furthest_by_area = False
    before = sum(c.chosen for c in room)
    for _ in range(20):
        explorer.round()
    assert sum(c.chosen for c in room) == before


def test_cells_tell_changed_blocks_near_mario_apart():
    """A block revealed near Mario (8-4's way on) is a new cell; one far away is not."""
    from mario_rl.archive import blocks_near, cell_key, raw_env

    env = raw_env("1-1")
    env.reset(seed=0)
    for _ in range(60):
        env.step(0x80)  # run right, clear of the first goomba
    x = mario_x(env)
    base = cell_key(env)
    near = blocks_near(env, x)
    assert near.shape == (5, 13) and near[:, 11:].all() and not near[:, :3].any()  # ground below, sky above
    col = (x // 16) % 32
    addr = 0x0500 + (col >> 4) * 0xD0 + (col & 15) + 16 * 7  # Mario's column, row 7 (a block's height)
    env.ram[addr] = 0xC4  # a used block appears
    assert cell_key(env)[:4] == base[:4] and cell_key(env) != base
    env.ram[addr] = 0
    assert cell_key(env) == base
    far = (col + 10) % 32
    env.ram[0x0500 + (far >> 4) * 0xD0 + (far & 15) + 16 * 7] = 0xC4
    assert cell_key(env) == base
