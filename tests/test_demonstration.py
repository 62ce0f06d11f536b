import json
from pathlib import Path

import pytest

from mario_rl.demonstration import FORMAT, load_demo, new_demo, replay, save_demo, upgrade
from mario_rl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(ROOT.glob("demos/*.json")) + sorted(ROOT.glob("checkpoints/*/run/demo.json"))


def test_a_demonstration_round_trips_with_its_format(tmp_path):
    demo = new_demo("1-2", 7, bytes([0x80, 0x81, 0]))
    save_demo(tmp_path / "sub" / "demo.json", demo)
    stored = json.loads((tmp_path / "sub" / "demo.json").read_text())
    assert list(stored) == ["format", "stage", "seed", "frames"] and stored["format"] == FORMAT == "mario_rl.demo/1"
    assert load_demo(tmp_path / "sub" / "demo.json") == demo == {**stored}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["demo.json"]  # no temporary file left behind


def test_a_file_without_a_format_is_version_1(tmp_path):
    old = {"stage": "1-1", "seed": 0, "frames": [128, 129]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_demo(tmp_path / "old.json") == {"format": FORMAT, **old} == upgrade(old)
    save_demo(tmp_path / "again.json", old)  # written back in this version's format
    assert json.loads((tmp_path / "again.json").read_text())["format"] == FORMAT


@pytest.mark.parametrize(
    "text, why",
    [
        ("not json", "Expecting value"),
        ('{"format": "mario_rl.demo/9", "stage": "1-1", "seed": 0, "frames": []}', "this version reads"),
        ('{"stage": "9-9", "seed": 0, "frames": []}', "unknown stage"),
        ('{"stage": "1-1", "seed": 0, "frames": [256]}', "frames must be bytes"),
        ('{"stage": "1-1", "frames": []}', "seed"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, text, why):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(UserError, match="bad.json: not a demonstration") as e:
        load_demo(tmp_path / "bad.json")
    assert why in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="missing.json: not a demonstration"):
        load_demo(tmp_path / "missing.json")


def test_every_committed_demonstration_loads():
    """demos/ and the bundled runs' copies (written before the format field), loaded as they are."""
    assert len(COMMITTED) >= 20
    for path in COMMITTED:
        demo = load_demo(path)
        # a furthest path can be short (6-2's ends in a bonus room after 852 frames); a path to the flag is not
        assert demo["format"] == FORMAT and len(demo["frames"]) > (100 if "furthest" in path.name else 1000)
        assert path.name == "demo.json" or path.name.startswith(demo["stage"])
    # The shortest one that reaches the axe, replayed per docs/protocol.md.
    check = replay(load_demo(ROOT / "demos" / "3-4.json"))
    assert check["flag"] and check["ended"] and check["frames"] == check["of"]


def test_replay_reports_where_a_path_ends():
    frames = [0x80] * 200  # running right into the first Goomba
    check = replay(new_demo("1-1", 0, frames))
    assert not check["flag"] and check["ended"] and check["frames"] < 200 and check["of"] == 200
    assert 250 < check["x"] < 400
    seen = []
    check = replay(new_demo("1-1", 0, frames[:30]), frame_sink=seen.append)
    assert not check["ended"] and check["frames"] == 30 and len(seen) == 31  # the reset screen, then each frame
    assert seen[0].shape == (240, 256, 3) and not (seen[0] == seen[-1]).all()
