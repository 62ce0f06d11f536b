"""The distributed backend: run_tasks on a stand-in for Ray (what it asks Ray for), without Ray (a clear
error), and the campaign's two tiny stages on a real local Ray."""

import os
import sys
from types import SimpleNamespace

import pytest

from mario_rl import registry as reg
from mario_rl.campaign import run_campaign
from mario_rl.distributed import run_tasks
from mario_rl.errors import UserError

from conftest import tiny_campaign


def square(x: int) -> int:
    return x * x


def fake_ray(calls: list) -> SimpleNamespace:
    """Just enough of Ray: tasks run when submitted, and finish in the reverse order."""

    def remote(**options):
        calls.append(("remote", options))
        return lambda fn: SimpleNamespace(remote=lambda *args: fn(*args))

    def wait(pending, num_returns):
        return pending[-1:], pending[:-1]

    return SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kwargs: calls.append(("init", kwargs)),
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"CPU": 2.0}}],
        remote=remote,
        wait=wait,
        get=lambda ref: ref,
        shutdown=lambda: calls.append(("shutdown",)),
    )


def test_run_tasks_on_a_stand_in_for_ray(monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "")
    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV")
    calls, seen = [], []
    monkeypatch.setitem(sys.modules, "ray", fake_ray(calls))
    assert run_tasks(square, [(2,), (3,), (4,)], on_result=seen.append) == [16, 9, 4]  # as they finish
    assert seen == [16, 9, 4]
    assert os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0"  # set before Ray is imported: no `uv run` workers
    assert calls[0] == ("init", {"address": None, "include_dashboard": False, "num_cpus": os.cpu_count()})
    assert calls[1] == ("remote", {"num_cpus": 8, "max_retries": 0})  # a whole live node per task by default
    assert calls[-1] == ("shutdown",)  # started here, so stopped here
    calls.clear()
    assert run_tasks(square, [(5,)], address="ray://head:10001", cpus_per_task=2) == [25]
    assert calls == [
        ("init", {"address": "ray://head:10001", "include_dashboard": False}),
        ("remote", {"num_cpus": 2, "max_retries": 0}),
        ("shutdown",),
    ]


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError, match=r"--backend ray needs Ray: install the extra, `uv sync --extra ray`"):
        run_tasks(square, [(1,)])


def test_campaign_stages_travel_to_ray_tasks_as_plain_values(tmp_path, monkeypatch):
    import mario_rl.campaign as campaign

    calls, ran, said = [], [], []
    monkeypatch.setitem(sys.modules, "ray", fake_ray(calls))
    monkeypatch.setattr(campaign, "run_stage", lambda stage, cfg, deadline, echo: ran.append((stage, cfg)) or "cleared")
    cfg = tiny_campaign(tmp_path, stages=("1-1", "1-2"), backend="ray", ray_cpus_per_stage=3)
    assert campaign._run_ray(cfg, ["1-1", "1-2"], 123.0, said.append) == {"1-2": "cleared", "1-1": "cleared"}
    assert said == ["campaign: 1-2 cleared", "campaign: 1-1 cleared"]
    assert calls[1] == ("remote", {"num_cpus": 3, "max_retries": 0})
    assert [stage for stage, _ in ran] == ["1-1", "1-2"]
    task_cfg = ran[0][1]
    assert task_cfg.stages == ("1-1", "1-2") and task_cfg.root == cfg.root.resolve() and task_cfg.root.is_absolute()
    assert task_cfg.train == cfg.train and task_cfg.steps == cfg.steps and task_cfg.backend == "ray"


@pytest.mark.slow
def test_two_tiny_stages_on_a_real_local_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as the campaign does before importing Ray
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cfg = tiny_campaign(tmp_path, stages=("1-1", "1-2"), backend="ray", ray_cpus_per_stage=1, steps=512)
        outcomes = run_campaign(cfg)
    finally:
        ray.shutdown()
    assert set(outcomes) == {"1-1", "1-2"} and set(outcomes.values()) <= {"cleared", "not cleared"}
    stages = reg.load_registry(cfg.registry)["stages"]
    for stage in ("1-1", "1-2"):
        assert stages[stage]["agent_steps"] >= 512
        assert (cfg.root / stage / "state.json").exists()
