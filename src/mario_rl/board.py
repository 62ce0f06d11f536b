"""`mario-rl board`: the stage board, a static site of where all 32 stages stand.

    index.html        the 8x4 grid (worlds down, stages across): status, clear rate with its 95% Wilson
                      interval, progress, and an animated preview of each stage
    stage/W-S.html    one page per stage: the run as MP4, the protocol result (seeds, interval, where the
                      failed episodes ended), the training, the learning curves of its campaign run
    media/            previews (GIF, 128 px wide), videos (MP4), learning curves (PNG)

Everything comes from the registry (`models/index.json`), the bundled policies, the demonstrations and
the campaign's run folders. The pages are plain HTML with inline CSS: no JavaScript, no fonts or files
from elsewhere, so they work from file:// and on GitHub Pages alike.

A preview is the stage's bundled policy playing protocol episodes (sticky actions and no-op starts, what
the clear rate counts) up to its first clear, or, where there is no policy, the replay of the
demonstration, labelled as such: a demonstration is an open-loop path found with save states, never a
clear. Previews are the slow part (an emulator run per stage), so they are kept in media/ with what they
were made from, and made again only when that changes. The pages' HTML is mario_rl.board_html.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mario_rl.board_html import cell_html, index_html, stage_html
from mario_rl.envs import STAGES, env_id
from mario_rl.errors import UserError
from mario_rl.registry import DEFAULT_PATH, REPO, file_sha256, load_registry
from mario_rl.storage import atomic_write

PREVIEW_VERSION = 1
"""Bump when previews change, so that cached ones are made again."""
GIF_FRAMES = 48
"""Frames of a preview GIF: the whole run as a time-lapse of this many frames..."""
GIF_FRAME_MS = 120
"""...shown this long each (about 6 s for the run), then the last frame held for HOLD_MS."""
HOLD_MS = 1500
HUD_ROWS = 32
"""Rows at the top of the screen that hold the score, coins, world and clock, left out of the previews."""
COLLECT_EVERY = 8
"""Keep every 8th emulator frame while the run plays: a time-lapse needs no more, and 8-4's 7,500 frames
then take 40 MB of memory rather than 300."""


@dataclass
class BoardConfig:
    """Build the stage board: a static site (index.html and a page per stage) from the registry."""

    out: Path = Path("board")
    """folder to write the site into (index.html, stage/, media/); publish it as is, e.g. on GitHub Pages"""
    registry: Path = DEFAULT_PATH
    """the registry to read (models/index.json)"""
    models: Path = REPO / "models"
    """folder of the bundled policies named in the registry (W-S.safetensors)"""
    demos: Path = REPO / "demos"
    """folder of the demonstrations named in the registry (W-S.json)"""
    campaign: Path = REPO / "campaign"
    """the campaign's folder: a stage's learning curve comes from campaign/W-S/run/episodes.csv"""
    previews: bool = True
    """play each stage for its preview and video (slow: an emulator run each); off, reuse those in OUT/media"""
    only: tuple[str, ...] = ()
    """play only these stages for previews (empty: all); the others keep the ones already in OUT/media"""
    max_frames: int = 12_000
    """emulator frames (60 a second) played at most per preview; a longer run is cut there"""
    width: int = 128
    """width in pixels of the preview GIFs (the game is 256 wide; the board shows them 128 wide)"""
    seed: int = 0
    """seed of the policy's first preview episode (played with the protocol's sticky actions and no-ops)"""
    # A 0.93 policy fails one episode in 14: one seed could hide that it clears, and skipping failed seeds
    # would hide that it fails, so the preview plays on to the first clear and shows every episode.
    tries: int = 3
    """policy episodes played at most for a preview, seeds --seed on, stopping at the first clear"""

    def __post_init__(self):
        if self.max_frames < 1:
            raise UserError(f"--max-frames must be positive, got {self.max_frames}")
        if self.tries < 1:
            raise UserError(f"--tries must be positive, got {self.tries}")
        if not 16 <= self.width <= 256:
            raise UserError(f"--width must be between 16 and 256 pixels, got {self.width}")
        for stage in self.only:
            env_id(stage)


# --- what each stage shows ------------------------------------------------------------------------------


def stage_files(stage: str, entry: dict, cfg: BoardConfig) -> dict:
    """The stage's policy and demonstration files, looked up in cfg's folders, and what is wrong with them."""
    found: dict = {"policy": None, "demo": None, "problem": None, "curve_csv": None}
    if entry.get("policy"):
        path = cfg.models / Path(entry["policy"]).name
        if not path.is_file():
            found["problem"] = f"policy file missing: {path.name}"
        elif entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            found["problem"] = f"policy file changed since it was registered: {path.name}"
        else:
            found["policy"] = path
    if entry.get("demo"):
        path = cfg.demos / Path(entry["demo"]).name
        found["demo"] = path if path.is_file() else None
        if found["demo"] is None and found["problem"] is None:
            found["problem"] = f"demonstration file missing: {path.name}"
    csv = cfg.campaign / stage / "run" / "episodes.csv"
    found["curve_csv"] = csv if csv.is_file() else None
    return found


# --- previews --------------------------------------------------------------------------------------------


class _Frames:
    """A frame sink: every frame to the MP4, every COLLECT_EVERY-th one, downscaled, kept for the GIF."""

    def __init__(self, recorder, width: int):
        self.recorder, self.width = recorder, width
        self.kept: list[np.ndarray] = []
        self.count = 0

    def __call__(self, frame: np.ndarray) -> None:
        if self.recorder is not None:
            self.recorder(frame)
        if self.count % COLLECT_EVERY == 0:
            self.kept.append(_downscale(frame, self.width))
        self.count += 1


def _downscale(frame: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    frame = frame[HUD_ROWS:]  # score and clock say little at 128 px; the MP4 keeps them
    h, w = frame.shape[:2]
    # BOX averages the pixels it folds together: sharper than bilinear, no dropped rows as with nearest.
    return np.asarray(Image.fromarray(frame).resize((width, round(h * width / w)), Image.Resampling.BOX))


def _write_gif(path: Path, frames: list[np.ndarray]) -> None:
    import imageio.v3 as iio

    pick = np.unique(np.linspace(0, len(frames) - 1, min(GIF_FRAMES, len(frames))).round().astype(int))
    durations = [GIF_FRAME_MS] * (len(pick) - 1) + [HOLD_MS]  # hold the end: the flag, or where it stopped
    atomic_write(
        path,
        lambda tmp: iio.imwrite(tmp, np.stack([frames[i] for i in pick]), extension=".gif", duration=durations, loop=0),
    )


def play_preview(stage: str, source: str, path: Path, media: Path, cfg: BoardConfig) -> dict:
    """Play the stage (`source` "policy": episodes up to the first clear; "demo": its replay; from file
    `path`) into media/W-S.mp4 and media/W-S.gif; returns what happened (cleared, x reached, frames
    played, cut short by max_frames)."""
    from mario_rl.video import VideoRecorder

    recorder = VideoRecorder(media / f"{stage}.mp4", gif_seconds=0)  # its full-size GIF is not wanted
    sink = _Frames(recorder, cfg.width)
    try:
        if source == "policy":
            from mario_rl.envs import make_base_env
            from mario_rl.evaluate import PROTOCOL, run_episode
            from mario_rl.policy import load_policy

            policy = load_policy(path)
            env = policy.wrap(
                make_base_env(stage, sticky=PROTOCOL["sticky"], noop_max=PROTOCOL["noop_max"], frame_sink=sink)
            )
            episodes, cut = [], False
            for seed in range(cfg.seed, cfg.seed + cfg.tries):
                # max_frames bounds all the episodes together; an agent step is frame_skip frames
                left = -(-(cfg.max_frames - sink.count) // policy.preprocessing.frame_skip)
                if left <= 0:
                    break
                policy.seed(seed)  # as evaluate does: the sampling is part of the episode's seed
                r = run_episode(env, policy.act, seed=seed, max_steps=left)
                cut = r["steps"] >= left and not r["cleared"]
                episodes.append({"seed": seed, "cleared": r["cleared"], "x": r["x"]})
                if r["cleared"] or cut:
                    break
            env.close()
            result = {
                "cleared": episodes[-1]["cleared"],
                "x": episodes[-1]["x"],
                "cut": cut,
                "episodes": episodes,
                "tries": cfg.tries,
                "mode": policy.mode,
                "temperature": policy.temperature,
            }
        else:
            from mario_rl.demonstration import load_demo, replay

            demo = load_demo(path)
            if demo["stage"] != stage:
                raise UserError(f"{path}: a demonstration of stage {demo['stage']}, not {stage}")
            cut = len(demo["frames"]) > cfg.max_frames
            r = replay({**demo, "frames": demo["frames"][: cfg.max_frames]}, frame_sink=sink)
            result = {"cleared": r["flag"], "x": r["x"], "cut": cut, "of": len(demo["frames"])}
    except BaseException:
        recorder.abort()
        raise
    recorder.close()
    _write_gif(media / f"{stage}.gif", sink.kept)
    return {**result, "source": source, "frames": sink.count}


def preview(stage: str, files: dict, media: Path, cfg: BoardConfig, make: bool = True, echo=print) -> dict | None:
    """The stage's preview: the one in media/ if it was made from the same file and settings, else one
    made now (if `make`), else None."""
    source = "policy" if files["policy"] else "demo" if files["demo"] else None
    if source is None:
        return None
    path = files[source]
    key = {
        "version": PREVIEW_VERSION,
        "source": source,
        "sha256": file_sha256(path),
        "max_frames": cfg.max_frames,
        "width": cfg.width,
        "seeds": [cfg.seed, cfg.tries] if source == "policy" else None,
    }
    sidecar = media / f"{stage}.json"
    try:
        cached = json.loads(sidecar.read_text())
        if cached["key"] == key and (media / f"{stage}.gif").is_file() and (media / f"{stage}.mp4").is_file():
            return cached["result"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not make:
        return None
    start = time.monotonic()
    result = play_preview(stage, source, path, media, cfg)
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps({"key": key, "result": result}, indent=1)))
    echo(f"  {stage}: {source} preview, {result['frames']:,} frames in {time.monotonic() - start:.0f} s")
    return result


def learning_curves(stage: str, csv: Path, media: Path) -> list[Path]:
    """media/W-S-curve-NAME.png from the campaign run's episodes.csv: the plots' curves that have data
    (a PPO run logs no TD loss or Q values; empty axes would only be noise)."""
    from mario_rl.plots import CURVES, plot_learning_curves, read_episodes

    data = read_episodes(csv)
    wanted = [name for name, (key, _) in CURVES.items() if data and not np.isnan(data[key]).all()]
    kept = []
    with tempfile.TemporaryDirectory(dir=media) as tmp:
        for path in plot_learning_curves(csv, Path(tmp)):
            if path.stem in wanted:
                kept.append(media / f"{stage}-curve-{path.stem}.png")
                shutil.move(path, kept[-1])
    return kept


# --- the build -------------------------------------------------------------------------------------------


def build_board(cfg: BoardConfig, echo=print) -> Path:
    """Write the site into cfg.out; returns its index.html."""
    reg = load_registry(cfg.registry)
    out = Path(cfg.out)
    media = out / "media"
    for folder in (out, media, out / "stage"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write {folder}: {e.strerror or e}") from None
    start = time.monotonic()
    cells = {}
    for stage in STAGES:
        entry = reg["stages"][stage]
        files = stage_files(stage, entry, cfg)
        make = cfg.previews and (not cfg.only or stage in cfg.only)
        result = preview(stage, files, media, cfg, make, echo)
        curves = learning_curves(stage, files["curve_csv"], media) if files["curve_csv"] else []
        cells[stage] = cell_html(stage, entry, files, result)
        page = stage_html(stage, entry, files, result, curves)
        atomic_write(out / "stage" / f"{stage}.html", lambda tmp, page=page: Path(tmp).write_text(page))
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # GitHub Pages would otherwise run Jekyll over the folder; the site is finished HTML.
    (out / ".nojekyll").touch()
    index = out / "index.html"
    atomic_write(index, lambda tmp: Path(tmp).write_text(index_html(reg, cells, built)))
    echo(f"board: {index} ({sum(1 for _ in media.glob('*.gif'))} previews, {time.monotonic() - start:.0f} s)")
    return index
