"""The registry (models/index.json): round trip and validation, Wilson intervals, its record of a result."""

import json

import pytest

from mario_rl import registry as reg
from mario_rl.errors import UserError


def test_registry_round_trip_and_validation(tmp_path):
    path = tmp_path / "index.json"
    fresh = reg.load_registry(path)  # no file: every stage not started
    assert len(fresh["stages"]) == 32 and {e["status"] for e in fresh["stages"].values()} == {"not started"}
    entry = reg.update_stage("2-3", path, status="training", agent_steps=1234, best_x=1500, stage_x=3000)
    assert entry["progress"] == 0.5
    loaded = reg.load_registry(path)
    assert loaded["schema"] == reg.SCHEMA and loaded["updated"]
    assert loaded["stages"]["2-3"]["agent_steps"] == 1234 and loaded["stages"]["1-1"]["status"] == "not started"
    reg.save_registry(path, loaded)
    assert reg.load_registry(path)["stages"] == loaded["stages"]
    with pytest.raises(ValueError):
        reg.update_stage("2-3", path, status="won")
    path.write_text(json.dumps({"schema": "something/9", "stages": {}}))
    with pytest.raises(UserError, match="schema"):
        reg.load_registry(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        reg.load_registry(path)


def test_wilson_interval():
    lo, hi = reg.wilson(18, 20)
    assert 0.69 < lo < 0.71 and 0.97 < hi < 0.98
    lo, hi = reg.wilson(100, 100)
    assert hi == pytest.approx(1.0) and 0.96 < lo < 0.97
    assert reg.rate_text({"clears": 18, "episodes": 20}).startswith("18/20 0.90 [0.70, 0.97]")
    assert reg.clear_rate({"clears": 93, "episodes": 100}) == pytest.approx(0.93)
    assert reg.clear_rate(None) == 0.0 and reg.clear_rate({"clears": 0, "episodes": 0}) == 0.0


def test_protocol_record_and_relative_paths(tmp_path):
    result = {
        "clears": 2,
        "episodes": 3,
        "seeds": [500, 501, 502],
        "mean_x": 2345.678,
        "temperature": 0.25,
        "results": [{"x": 3161, "cleared": True}, {"x": 900, "cleared": False}, {"x": 315, "cleared": False}],
    }
    record = reg.protocol_record(result)
    assert {k: v for k, v in record.items() if k != "measured"} == {
        "clears": 2,
        "episodes": 3,
        "seeds": "500..502",
        "mean_x": 2345.7,
        "temperature": 0.25,
        "failures_x": [315, 900],
    }
    assert len(record["measured"]) == len("2025-01-31")
    assert reg.relative(reg.REPO / "demos" / "1-1.json") == "demos/1-1.json"
    assert reg.relative(tmp_path / "x.json") == str((tmp_path / "x.json").resolve())  # outside: absolute
    assert reg.resolve(reg.relative(reg.REPO / "models" / "1-1.safetensors")) == reg.REPO / "models" / "1-1.safetensors"


def test_status_table_marks_stages_whose_search_found_no_flag(tmp_path):
    registry = reg.new_registry()
    registry["stages"]["1-3"].update(status="explored", demo="demos/1-3.json", demo_flag=True)
    registry["stages"]["4-2"].update(status="explored", demo="demos/4-2-furthest.json", demo_flag=False)
    text = reg.format_status(registry, tmp_path)
    rows = {line.split(" | ")[0].strip(): line.split(" | ")[1:] for line in text.splitlines() if " | " in line}
    assert rows["1"][2].strip() == "explored" and rows["4"][1].strip() == "explored (no flag)"
    assert "30 not started, 2 explored, 0 training, 0 cleared; 1 with a demonstration to the flag" in text
