"""The stage board: built through the CLI from a small registry in tmp_path, then opened in a real headless
browser (Debian's chromium): all 32 stages render, the previews load and show the game, a stage's link
leads to its page."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mario_rl import registry as reg
from mario_rl.board import BoardConfig, build_board
from mario_rl.cli import main
from mario_rl.envs import STAGES

from conftest import ROOT, run_cli, tiny_policy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NES_SKY = np.array([104, 136, 252])
"""The sky of 1-1 and of 1-2's walk to the pipe in nes-py's palette; the board's own CSS has no such colour."""


def need_chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    message = "chromium is not installed: apt-get install -y --no-install-recommends chromium (.ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)  # CI must open the board in a browser, not skip it
    pytest.skip(message)


def chromium(tmp: Path, url: str, *args: str) -> str:
    """Run headless chromium on a file:// url; returns its stdout (the DOM, with --dump-dom)."""
    cmd = [
        need_chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A registry of four stages (cleared with a policy; explored with a demonstration; training with a
    campaign run; a policy file gone missing), and the board built from it through the CLI."""
    tmp = tmp_path_factory.mktemp("board")
    models, demos, campaign = tmp / "models", tmp / "demos", tmp / "campaign"
    models.mkdir()
    demos.mkdir()
    policy = tiny_policy(models / "1-1.safetensors")  # untrained: runs into the first Goomba, short episodes
    demo = json.loads((ROOT / "demos" / "1-2.json").read_text())
    demo["frames"] = demo["frames"][:400]  # the walk to the pipe: fast to replay, and it shows the sky
    (demos / "1-2.json").write_text(json.dumps(demo))
    run = campaign / "2-1" / "run"
    run.mkdir(parents=True)
    rows = ["step,episode,return,length,x,flag,epsilon,loss,q,time,start"]
    rows += [f"{64 * i},{i},{i % 7}.0,{50 + i},{300 + 10 * i},0,,,,{1.7e9 + i},0" for i in range(1, 40)]
    (run / "episodes.csv").write_text("\n".join(rows) + "\n")

    registry = tmp / "index.json"
    r = reg.new_registry()
    r["stages"]["1-1"].update(
        status="cleared",
        policy="models/1-1.safetensors",
        sha256=sha256(policy),
        algorithm="ppo",
        actions="right",
        agent_steps=1234,
        protocol={
            "clears": 18,
            "episodes": 20,
            "seeds": list(range(20)),
            "mean_x": 3000.0,
            "temperature": 0.25,
            "failures_x": [315, 1650],
        },
        demo=None,
        stage_x=3161,
        progress=1.0,
    )
    r["stages"]["1-2"].update(status="explored", demo="demos/1-2.json", demo_flag=True, stage_x=3161)
    r["stages"]["2-1"].update(
        status="training", algorithm="ppo", agent_steps=2496, best_x=1278, stage_x=3193, progress=0.4, warm_start="1-1"
    )
    r["stages"]["3-1"].update(status="training", policy="models/3-1.safetensors", sha256="0" * 64)
    reg.save_registry(registry, r)

    site = tmp / "site"
    args = [
        "--out",
        site,
        "--registry",
        registry,
        "--models",
        models,
        "--demos",
        demos,
        "--campaign",
        campaign,
        "--max-frames",
        600,
    ]
    start = time.monotonic()
    proc = run_cli("board", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    print(f"board built in {time.monotonic() - start:.1f} s")
    return {"tmp": tmp, "site": site, "args": args, "stdout": proc.stdout}


def test_board_in_a_browser(board):
    site, tmp = board["site"], board["tmp"]
    dom = chromium(tmp, (site / "index.html").as_uri(), "--dump-dom")

    # All 32 stages, in order, each with its status from the registry.
    cells = re.findall(
        r'<a class="cell" id="stage-([1-8]-[1-4])" data-stage="\1" data-status="([a-z ]+)" '
        r'href="([^"]+)"',
        dom,
    )
    assert [c[0] for c in cells] == list(STAGES)
    status = {c[0]: c[1] for c in cells}
    assert (status["1-1"], status["1-2"], status["2-1"], status["3-1"]) == (
        "cleared",
        "explored",
        "training",
        "training",
    )
    assert sum(s == "not started" for s in status.values()) == 28
    raw = (site / "index.html").read_text()
    assert "<script" not in raw and "http" not in raw  # works from file://, fetches nothing
    for name in reg.STATUSES:  # the legend
        assert f"<b>{name}</b>" in dom

    # The clear rate with its Wilson interval; progress; the missing policy file said, not hidden.
    lo, hi = reg.wilson(18, 20)
    cell = {stage: dom[dom.index(f'id="stage-{stage}"') :] for stage in ("1-1", "1-2", "2-1", "3-1")}
    assert "rate 0.90 (18/20)" in cell["1-1"] and f"95% CI {lo:.2f}–{hi:.2f}" in cell["1-1"]
    assert "progress 40%" in cell["2-1"]
    assert "policy file missing: 3-1.safetensors" in cell["3-1"]

    # Previews: the policy's run for 1-1, the demonstration's replay for 1-2, labelled as such; each a small
    # animated GIF that decodes.
    images = re.findall(r'<img src="([^"]+)"', dom)
    assert images == ["media/1-1.gif", "media/1-2.gif"]
    for src in images:
        with Image.open(site / src) as gif:
            assert gif.format == "GIF" and gif.size[0] == 128 and gif.n_frames > 5, (src, gif.size)
        assert (site / src).stat().st_size < 300_000
    assert "demonstration (not a policy)" in cell["1-2"].split("</a>")[0]
    assert "demonstration" not in cell["1-1"].split("</a>")[0]

    # What the browser drew: not blank, and the previews' game frames on screen (the NES sky).
    shot = tmp / "board.png"
    chromium(tmp, (site / "index.html").as_uri(), f"--screenshot={shot}", "--window-size=1280,1500")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    sky = (np.abs(pixels - NES_SKY).sum(axis=2) < 12).sum()
    assert sky > 2 * 128 * 20, f"the previews do not show in the screenshot ({sky} sky pixels): {shot}"
    print(f"screenshot: {shot}")
    if os.environ.get("MARIO_RL_ARTIFACTS"):  # CI can keep it
        Path(os.environ["MARIO_RL_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["MARIO_RL_ARTIFACTS"]) / "board.png")

    # A stage's link leads to its page: heading, video, protocol result with seeds, interval, failure points.
    href = dict((c[0], c[2]) for c in cells)["1-1"]
    page = chromium(tmp, (site / href).as_uri(), "--dump-dom")
    assert "<h1>Stage 1-1</h1>" in page
    assert f"{lo:.2f} – {hi:.2f}" in page and "0..19" in page and 'title="x 315"' in page and "1,650" in page
    video = re.search(r'<video [^>]*src="\.\./(media/1-1\.mp4)"', page)
    assert video and (site / video.group(1)).stat().st_size > 1000
    assert 'href="../index.html"' in page
    demo_page = chromium(tmp, (site / "stage" / "1-2.html").as_uri(), "--dump-dom")
    assert "<h1>Stage 1-2</h1>" in demo_page and "not a policy" in demo_page
    curve_page = chromium(tmp, (site / "stage" / "2-1.html").as_uri(), "--dump-dom")
    curves = re.findall(r'<img class="curve" src="\.\./(media/2-1-curve-([a-z]+)\.png)"', curve_page)
    assert [name for _, name in curves] == ["reward", "length", "x"]  # no TD loss or Q in this run: no empty plots
    assert all(Image.open(site / src).size[0] > 300 for src, _ in curves)


def test_board_reuses_previews_and_rejects_bad_input(board, tmp_path, capsys):
    # A second build finds the previews made from the same files and settings, and plays nothing.
    said = []
    a = board["args"]
    opts = {a[i].removeprefix("--").replace("-", "_"): a[i + 1] for i in range(0, len(a), 2)}
    cfg = BoardConfig(
        out=Path(opts["out"]),
        registry=Path(opts["registry"]),
        models=Path(opts["models"]),
        demos=Path(opts["demos"]),
        campaign=Path(opts["campaign"]),
        max_frames=int(opts["max_frames"]),
    )
    build_board(cfg, echo=said.append)
    assert len(said) == 1 and "2 previews" in said[0], said

    for args, message in [
        (["--max-frames", "0"], "--max-frames must be positive"),
        (["--only", "9-1"], "9-1"),
        (["--registry", str(ROOT / "pyproject.toml")], "unreadable registry"),
    ]:
        code = main(["board", "--out", str(tmp_path / "site"), "--no-previews", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
