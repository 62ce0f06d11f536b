"""One stage of the campaign: the warm start's choice, the stage's state file, a search not repeated. (A whole
stage, killed with -9 and resumed, runs in tests/test_campaign.py.)"""

import pytest

from mario_rl import registry as reg
from mario_rl.campaign_stage import STOP_REQUESTED, read_state, related_policy, skip_search, write_state
from mario_rl.errors import UserError

from conftest import tiny_campaign, tiny_policy


def test_warm_start_choice(tmp_path):
    registry = reg.new_registry()
    models = tmp_path / "models"
    models.mkdir()
    for stage in ("1-1", "1-2", "4-4"):
        tiny_policy(models / f"{stage}.safetensors", stage, "simple")
    for stage, actions in (("1-1", "simple"), ("4-4", "simple"), ("1-2", "complex")):
        p = models / f"{stage}.safetensors"
        registry["stages"][stage].update(status="cleared", actions=actions, policy=str(p), sha256=reg.file_sha256(p))
    assert related_policy("1-3", registry, "complex", tmp_path) == "1-2"  # the same world's previous stage
    assert related_policy("1-3", registry, "simple", tmp_path) == "1-1"  # same action set first
    assert related_policy("8-4", registry, "simple", tmp_path) == "4-4"  # castles from castles
    assert related_policy("2-1", registry, "simple", tmp_path) == "1-1"  # the nearest before it
    (models / "4-4.safetensors").unlink()  # a missing file is never a warm start
    assert related_policy("8-4", registry, "simple", tmp_path) == "1-1"


def test_state_file_and_a_spent_search(tmp_path):
    cfg = tiny_campaign(tmp_path, explore_minutes=5.0)
    folder = cfg.root / "1-3"
    assert read_state(folder) == {"phase": "new", "seconds": 0.0, "attempt": 0}  # no file yet
    folder.mkdir(parents=True)
    write_state(folder, {"phase": "no demo", "seconds": 12.5, "attempt": 0, "explore_minutes": 5.0})
    assert read_state(folder)["seconds"] == 12.5
    assert skip_search("1-3", cfg)  # searched for --explore-minutes without a flag: not again
    assert not skip_search("1-3", tiny_campaign(tmp_path, explore_minutes=10.0))  # a longer search may find one
    (cfg.demos / "1-3.json").write_text("{}")
    assert not skip_search("1-3", cfg)  # a demonstration appeared: it is used
    (folder / "state.json").write_text("{broken")
    with pytest.raises(UserError, match="unreadable campaign state"):
        read_state(folder)


def test_a_longer_search_that_finds_the_flag_supersedes_the_shorter_ones_furthest_path(tmp_path, monkeypatch):
    """The search is a stand-in here; the path it returns is 1-1's real demonstration, replayed to the flag."""
    import json
    from types import SimpleNamespace

    import mario_rl.explore as explore_mod
    from mario_rl.campaign_stage import ensure_demo
    from mario_rl.demonstration import load_demo

    cfg = tiny_campaign(tmp_path, explore_minutes=8.0)
    reg.save_registry(cfg.registry, reg.new_registry())
    demo = load_demo(cfg.demos / "1-1.json")
    (cfg.demos / "1-1.json").rename(cfg.demos / "1-1-furthest.json")  # what a shorter search left
    folder = cfg.root / "1-1"
    folder.mkdir(parents=True)
    write_state(folder, {"phase": "no demo", "seconds": 0.0, "attempt": 0, "explore_minutes": 3.0})
    found = SimpleNamespace(solved=True, seconds=5.0, best_x=3161, demo=lambda: demo)
    monkeypatch.setattr(explore_mod, "run_explore", lambda *a, **k: found)
    assert ensure_demo("1-1", cfg, folder, echo=lambda line: None)["frames"] == demo["frames"]
    assert (cfg.demos / "1-1.json").exists() and not (cfg.demos / "1-1-furthest.json").exists()
    # the minutes the searches took (3, then 5 s), not the 8-minute limit
    assert read_state(folder) == {"phase": "explored", "seconds": 0.0, "attempt": 0, "explore_minutes": 3.08}
    entry = json.loads(cfg.registry.read_text())["stages"]["1-1"]
    assert entry["demo_flag"] and entry["status"] == "explored" and entry["stage_x"] > 3000


def test_a_longer_search_goes_on_from_the_shorter_ones_furthest_path(tmp_path, monkeypatch):
    """A 3-minute search found no flag; --explore-minutes 8 searches 5 more minutes from its furthest path,
    and the state counts 8 minutes in all, so that a rerun does not search again. --explore-only trains
    nothing. The search is a stand-in; the furthest path is a real one (1-1's first 600 frames)."""
    import json
    from types import SimpleNamespace

    import mario_rl.explore as explore_mod
    from mario_rl.campaign import run_campaign
    from mario_rl.campaign_stage import ensure_demo
    from mario_rl.demonstration import load_demo, save_demo

    cfg = tiny_campaign(tmp_path, explore_minutes=8.0, stages=("1-3",), explore_only=True)
    reg.save_registry(cfg.registry, reg.new_registry())
    short = load_demo(cfg.demos / "1-1.json") | {"stage": "1-3"}
    short["frames"] = short["frames"][:600]
    save_demo(cfg.demos / "1-3-furthest.json", short)
    folder = cfg.root / "1-3"
    folder.mkdir(parents=True)
    write_state(folder, {"phase": "no demo", "seconds": 0.0, "attempt": 0, "explore_minutes": 3.0, "best_x": 900})
    calls, reach = [], [1000]

    def search(explore_cfg, *args, **kwargs):
        calls.append(explore_cfg)
        frames = bytes(short["frames"]) if reach[0] else b""
        return SimpleNamespace(solved=False, seconds=300.0, best_x=reach[0], frames=frames, demo=lambda: short)

    monkeypatch.setattr(explore_mod, "run_explore", search)
    assert run_campaign(cfg, echo=lambda line: None) == {"1-3": "no demo"}
    assert len(calls) == 1 and calls[0].start == cfg.demos / "1-3-furthest.json" and calls[0].minutes == 5.0
    assert read_state(folder)["explore_minutes"] == 8.0 and read_state(folder)["best_x"] == 1000
    assert skip_search("1-3", cfg) and not (folder / "run").exists()
    entry = json.loads(cfg.registry.read_text())["stages"]["1-3"]
    assert "8 minutes" in entry["note"] and not entry["demo_flag"]
    # A search cut short before its workers reported keeps the path it went on from.
    write_state(folder, read_state(folder) | {"explore_minutes": 7.5})
    reach[0] = 0
    ensure_demo("1-3", cfg, folder, echo=lambda line: None)
    assert calls[-1].minutes == 0.5 and read_state(folder)["best_x"] == 1000
    assert load_demo(cfg.demos / "1-3-furthest.json")["frames"] == short["frames"]
    # A path too slow for the game's timer is no place to go on from either (the replay's timer, stood in for).
    import mario_rl.demonstration as demo_mod

    real_replay = demo_mod.replay
    assert 0 < real_replay(short)["time"] < 300  # 1-3's timer starts at 300 and runs down over 600 frames
    monkeypatch.setattr(demo_mod, "replay", lambda d: real_replay(d) | {"time": 10})
    write_state(folder, read_state(folder) | {"explore_minutes": 3.0})
    ensure_demo("1-3", cfg, folder, echo=lambda line: None)
    assert calls[-1].start is None and calls[-1].minutes == 8.0
    monkeypatch.setattr(demo_mod, "replay", real_replay)
    # A path from another reset is no place to go on from: that search starts afresh, with all its minutes.
    write_state(folder, read_state(folder) | {"explore_minutes": 3.0})
    save_demo(cfg.demos / "1-3-furthest.json", short | {"seed": 7})
    ensure_demo("1-3", cfg, folder, echo=lambda line: None)
    assert calls[-1].start is None and calls[-1].minutes == 8.0
    # With a demonstration, --explore-only stops before training.
    assert run_campaign(tiny_campaign(tmp_path, explore_only=True), echo=lambda line: None) == {"1-1": "explored"}
    assert not (cfg.root / "1-1" / "run").exists()


def test_ppo_settings_reach_a_new_run_and_change_a_resumed_one(tmp_path, monkeypatch):
    """--ppo-set: a new run gets the settings as PPO overrides; a resumed run gets the ones that change its
    saved settings as --resume-set (crop_top=32, which it already has, is left out: resuming refuses it).
    solve is a stand-in that stops at once."""
    import json

    import mario_rl.solve as solve_mod
    from mario_rl.campaign_stage import run_stage

    calls = []

    def fake_solve(cfg, echo, stop, ppo_overrides):
        calls.append((cfg, ppo_overrides))
        return {"stopped": True, "step": 0}

    monkeypatch.setattr(solve_mod, "solve", fake_solve)
    items = ("sil_coef=0.1", "sil_own=true", "crop_top=32")
    cfg = tiny_campaign(tmp_path, ppo_set=items)
    cfg.validate()
    reg.save_registry(cfg.registry, reg.new_registry())
    assert run_stage("1-1", cfg, echo=lambda line: None) == "stopped"
    solve_cfg, overrides = calls[-1]
    assert overrides["sil_coef"] == 0.1 and overrides["sil_own"] is True and overrides["crop_top"] == 32
    assert solve_cfg.resume_set == ()
    run = cfg.root / "1-1" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint.safetensors").write_bytes(b"")  # what makes it a resume
    (run / "config.json").write_text(json.dumps({"sil_coef": 0.0, "crop_top": 32}))  # no sil_own: an older run
    assert run_stage("1-1", cfg, echo=lambda line: None) == "stopped"
    solve_cfg, overrides = calls[-1]
    assert solve_cfg.resume_set == ("sil_coef=0.1", "sil_own=true") and "sil_coef" not in overrides
    # Self-imitation off on a run saved with it on: its own-episode source goes too (else PPO refuses).
    (run / "config.json").write_text(json.dumps({"sil_coef": 0.1, "sil_own": True}))
    assert run_stage("1-1", tiny_campaign(tmp_path, ppo_set=("sil_coef=0",)), echo=lambda line: None) == "stopped"
    assert calls[-1][0].resume_set == ("sil_coef=0", "sil_own=false")
    for bad in (("seed=3",), ("bogus=1",), ("sil_coef=lots",)):
        with pytest.raises(UserError, match="--ppo-set"):
            tiny_campaign(tmp_path, ppo_set=bad).validate()


def test_goal_retrains_a_bundled_stage_and_keeps_the_better_policy(tmp_path, monkeypatch):
    """--goal 0.95: 1-1, bundled at 93/100, is trained again. While it trains and when its new policy clears
    no more (90/100), the registry keeps the bundled policy; a new one that clears more (97/100) replaces it.
    solve is a stand-in that returns a final evaluation at once."""
    import json

    import mario_rl.solve as solve_mod
    from mario_rl.campaign_stage import run_stage

    outcome = {}
    shipped = ("status", "policy", "sha256", "protocol", "actions", "agent_steps", "recipe", "warm_start")

    def entry(cfg):
        return {k: v for k, v in reg.load_registry(cfg.registry)["stages"]["1-1"].items() if k in shipped}

    def fake_solve(cfg, echo, stop, ppo_overrides):
        assert cfg.check_rate == 0.95  # the goal also stops training: 19 of 20 in a check
        if outcome.get("stopped"):
            return {"stopped": True, "step": 100}
        tiny_policy(cfg.out / "policy.safetensors", "1-1", "complex")
        clears = outcome["clears"]
        results = [{"seed": i, "cleared": i < clears, "x": 3161 if i < clears else 300} for i in range(100)]
        seeds = list(range(100))
        return {"passed": True, "clears": clears, "episodes": 100, "seeds": seeds, "mean_x": 3000.0, "results": results}

    monkeypatch.setattr(solve_mod, "solve", fake_solve)

    def setup(folder):
        folder.mkdir()
        cfg = tiny_campaign(folder, goal=0.95, actions="complex")
        cfg.models.mkdir(parents=True)
        policy = tiny_policy(cfg.models / "1-1.safetensors", "1-1", "simple")
        registry = reg.new_registry()
        protocol = {"clears": 93, "episodes": 100, "seeds": "0..99"}
        registry["stages"]["1-1"].update(
            status="cleared", actions="simple", policy=str(policy), sha256=reg.file_sha256(policy), protocol=protocol
        )
        reg.save_registry(cfg.registry, registry)
        return cfg, entry(cfg)

    cfg, before = setup(tmp_path / "a")
    quiet = dict(echo=lambda line: None)
    assert run_stage("1-1", tiny_campaign(tmp_path / "a"), **quiet) == "skipped"  # the default goal: 0.9
    outcome["stopped"] = True
    assert run_stage("1-1", cfg, **quiet) == "stopped"
    assert entry(cfg) == before  # still the shipped policy, as it was
    outcome.update(stopped=False, clears=90)
    assert run_stage("1-1", cfg, **quiet) == "not better"
    assert entry(cfg) == before
    assert "kept the bundled policy" in json.loads((cfg.root / "1-1" / "state.json").read_text())["result"]
    assert run_stage("1-1", cfg, **quiet) == "skipped"  # done is done, at this step budget

    cfg, before = setup(tmp_path / "b")
    outcome["clears"] = 97
    assert run_stage("1-1", cfg, **quiet) == "cleared"
    after = entry(cfg)
    assert after["protocol"]["clears"] == 97 and after["actions"] == "complex" and after["sha256"] != before["sha256"]
    assert after["sha256"] == reg.file_sha256(cfg.models / "1-1.safetensors")
    with pytest.raises(UserError, match="--goal"):
        tiny_campaign(tmp_path, goal=1.5).validate()
    with pytest.raises(UserError, match="--goal"):
        tiny_campaign(tmp_path, goal=0.8).validate()


def test_sigterm_stops_the_campaign_as_its_budget_does(tmp_path, monkeypatch):
    """SIGTERM while a stage trains: solve's stop callback says stop from then on, the campaign ends there
    with the stage's state saved, and the previous handler is back afterwards; a second SIGTERM quits at once.
    (solve is a stand-in.)"""
    import json
    import os
    import signal

    import mario_rl.solve as solve_mod
    from mario_rl.campaign import run_campaign

    answers = []

    def fake_solve(cfg, echo, stop, ppo_overrides):
        answers.append(stop(10))
        os.kill(os.getpid(), signal.SIGTERM)
        answers.append(stop(20))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        return {"stopped": True, "step": 20}

    monkeypatch.setattr(solve_mod, "solve", fake_solve)
    before = signal.getsignal(signal.SIGTERM)
    lines = []
    cfg = tiny_campaign(tmp_path)
    (cfg.demos / "1-2.json").unlink()  # one replay fewer when the campaign reads demos/ (the test's time)
    assert run_campaign(cfg, echo=lines.append) == {"1-1": "stopped"}
    assert answers == [False, True]
    assert signal.getsignal(signal.SIGTERM) is before
    state = json.loads((cfg.root / "1-1" / "state.json").read_text())
    assert state["phase"] == "training" and state["step"] == 20
    assert lines[-1] == "campaign: SIGTERM; stopped"
    assert not STOP_REQUESTED.is_set()  # a later campaign in this process starts unstopped


def test_under_the_sigterm_handler_a_forked_emulator_process_still_dies_on_sigterm():
    """Emulator processes forked while the campaign's handler is set die on SIGTERM as without it, and their
    signal does not stop the campaign."""
    import multiprocessing
    import os
    import signal
    import time

    from mario_rl.campaign import stop_on_sigterm

    fork = multiprocessing.get_context("fork")
    running = fork.Event()

    def emulator():
        running.set()
        time.sleep(60)

    with stop_on_sigterm():
        child = fork.Process(target=emulator)
        child.start()
        # Python drops a signal that lands before a forked child has finished forking, so wait for it to run
        assert running.wait(30)
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
        assert child.exitcode == -signal.SIGTERM
        assert not STOP_REQUESTED.is_set()
