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
were made from, and made again only when that changes.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mario_rl.envs import STAGES, env_id
from mario_rl.errors import UserError
from mario_rl.registry import DEFAULT_PATH, REPO, STATUSES, file_sha256, load_registry, wilson
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
STATUS_COLOURS = {
    "not started": ("#eceff1", "#607d8b"),
    "explored": ("#fff4d6", "#b7791f"),
    "training": ("#e3efff", "#2b6cb0"),
    "cleared": ("#e3f6e8", "#237a3b"),
}
"""Cell background and accent per status; the status is always written out too, not shown by colour alone."""
STATUS_MEANING = {
    "not started": "nothing yet",
    "explored": "a demonstration exists, no policy trained",
    "training": "a policy is training or does not yet pass the protocol",
    "cleared": "the bundled policy passes the protocol",
}


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


def progress(entry: dict) -> float:
    """How far along the stage the best policy gets, 0..1.

    The registry's progress, except that a policy with any protocol clear has reached the flag: the
    registry's progress comes from best_x, which a bundled policy's entry may lack (1-2's says 0 while
    it clears 70 of 80).
    """
    value = float(entry.get("progress") or 0.0)
    if (entry.get("protocol") or {}).get("clears"):
        value = 1.0
    return max(0.0, min(1.0, value))


def seeds_text(seeds) -> str:
    """Seeds as ranges ('0..19, 1000..1019'); a string is shown as written; '' for none."""
    if isinstance(seeds, str):
        return seeds
    seeds = sorted(int(s) for s in seeds or [])
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


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


# --- HTML ------------------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2933;background:#fafbfc}
main{max-width:1280px;margin:0 auto;padding:14px 16px}
h1{font-size:24px;margin:4px 0}
a{color:#1a56a0}
.sub{color:#52606d;margin:0 0 10px}
.legend{display:flex;flex-wrap:wrap;gap:8px 18px;margin:8px 0 14px;padding:0;list-style:none}
.legend li{display:flex;align-items:center;gap:6px}
.swatch{display:inline-block;width:14px;height:14px;border-radius:3px;border:2px solid}
table.grid{border-collapse:separate;border-spacing:8px 6px;width:100%;table-layout:fixed;margin-left:-8px}
.grid th{font-size:13px;color:#52606d;font-weight:600}
.grid th.world{width:46px;text-align:right;padding-right:2px;line-height:1.2}
.cell{display:flex;gap:8px;height:150px;padding:6px;border-radius:6px;border:2px solid;border-left-width:7px;
      text-decoration:none;color:inherit;overflow:hidden;box-sizing:border-box}
.cell:hover{box-shadow:0 1px 6px rgba(0,0,0,.25)}
.thumb{flex:none;width:128px;display:flex;flex-direction:column;gap:2px}
.thumb img{width:128px;height:104px;object-fit:cover;object-position:bottom;image-rendering:pixelated;
           border-radius:3px;display:block;background:#000}
.thumb .none{width:128px;height:104px;border-radius:3px;
             background:repeating-linear-gradient(45deg,#0000 0 6px,#0001 6px 12px);
             display:flex;align-items:center;justify-content:center;font-size:11px;color:#7b8794;text-align:center}
.label{font-size:10.5px;line-height:12px;color:#52606d;max-height:24px;overflow:hidden}
.label.demo{color:#9a5b00;font-weight:600}
.info{min-width:0;display:flex;flex-direction:column;gap:2px}
.name{font-size:17px;font-weight:700}
.status{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.rate{font-size:12.5px;white-space:nowrap}
.ci{color:#52606d;font-size:11.5px;white-space:nowrap}
.bar{height:7px;background:#0001;border-radius:4px;overflow:hidden;margin-top:auto}
.bar span{display:block;height:100%}
.pct{font-size:11.5px;color:#52606d}
.warn{font-size:11px;color:#b42318;font-weight:600}
.page{max-width:900px}
.page video{max-width:100%;border-radius:4px;background:#000}
.curves{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.curves img{width:100%;border:1px solid #e4e7eb;border-radius:4px}
.page video{width:512px;image-rendering:pixelated}
.page .status{font-size:13px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:8px 0}
dl.facts dt{color:#52606d}
dl.facts dd{margin:0}
.strip{position:relative;height:22px;background:#eceff1;border-radius:4px;margin:6px 0 2px}
.strip .tick{position:absolute;top:0;width:2px;height:22px;background:#b42318}
.strip .flag{position:absolute;right:0;top:0;width:3px;height:22px;background:#237a3b}
.axis{display:flex;justify-content:space-between;font-size:11px;color:#52606d}
footer{margin-top:18px;font-size:12px;color:#7b8794}
"""


def _page(title: str, body: str, css_class: str = "") -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style></head>\n"
        f'<body><main class="{css_class}">\n{body}\n</main></body></html>\n'
    )


def _rate_html(protocol: dict | None) -> tuple[str, str]:
    """('rate 0.93 (93/100)', '95% CI 0.86–0.97') for a protocol result, or ('', ''): short enough for a cell."""
    if not protocol or not protocol.get("episodes"):
        return "", ""
    k, n = protocol["clears"], protocol["episodes"]
    lo, hi = wilson(k, n)
    return f"rate {k / n:.2f} ({k}/{n})", f"95% CI {lo:.2f}–{hi:.2f}"


def goal(stage: str) -> str:
    """What ends the stage: the flag, or in a castle (W-4) the axe."""
    return "axe" if stage.endswith("-4") else "flag"


def _preview_label(stage: str, result: dict, entry: dict) -> tuple[str, str]:
    """The caption under a preview and its CSS class: a demonstration is always called one."""

    def end(r: dict) -> str:
        return goal(stage) if r["cleared"] else f"x {r['x']:,}" + (" (cut)" if r.get("cut") else "")

    if result["source"] == "demo":
        return f"demonstration (not a policy) → {end(result)}", "label demo"
    who = "policy" if entry["status"] == "cleared" else "policy, not passing yet"
    runs = result["episodes"]
    if len(runs) == 1:
        return f"{who}, seed {runs[0]['seed']} → {end(result)}", "label"
    if result["cleared"]:
        failed = len(runs) - 1
        return (
            f"{who}, seed {runs[-1]['seed']} → {goal(stage)}, after {failed} failed episode{'s' * (failed > 1)}",
            "label",
        )
    return (
        f"{who}, seeds {runs[0]['seed']}–{runs[-1]['seed']} → no clear, best x {max(r['x'] for r in runs):,}",
        "label",
    )


def cell_html(stage: str, entry: dict, files: dict, result: dict | None) -> str:
    bg, accent = STATUS_COLOURS[entry["status"]]
    rate, ci = _rate_html(entry.get("protocol"))
    share = progress(entry)
    if result is not None:
        text, cls = _preview_label(stage, result, entry)
        thumb = (
            f'<img src="media/{stage}.gif" alt="{html.escape(text)}" width="128">'
            f'<div class="{cls}" title="{html.escape(text)}">{html.escape(text)}</div>'
        )
    else:
        why = "no policy or demonstration yet" if not (files["policy"] or files["demo"]) else "no preview built"
        thumb = f'<div class="none">{why}</div>'
    lines = [f'<div class="name">{stage}</div>', f'<div class="status" style="color:{accent}">{entry["status"]}</div>']
    if rate:
        title = "clear rate over the protocol episodes, with its 95% Wilson interval"
        lines += [f'<div class="rate" title="{title}">{rate}</div>', f'<div class="ci" title="{title}">{ci}</div>']
    if files["problem"]:
        lines.append(f'<div class="warn">⚠ {html.escape(files["problem"])}</div>')
    if share or entry.get("policy") or entry.get("best_x"):
        lines.append(f'<div class="pct">progress {100 * share:.0f}%</div>')
    elif entry["status"] != "not started":
        lines.append('<div class="pct">no policy yet</div>')
    lines.append(
        f'<div class="bar" title="progress {100 * share:.0f}%"><span style="width:{100 * share:.1f}%;'
        f'background:{accent}"></span></div>'
    )
    return (
        f'<a class="cell" id="stage-{stage}" data-stage="{stage}" data-status="{entry["status"]}" '
        f'href="stage/{stage}.html" style="background:{bg};border-color:{accent}">'
        f'<div class="thumb">{thumb}</div><div class="info">{"".join(lines)}</div></a>'
    )


def index_html(reg: dict, cells: dict[str, str], built: str) -> str:
    counts = {s: sum(e["status"] == s for e in reg["stages"].values()) for s in STATUSES}
    legend = "".join(
        f'<li><span class="swatch" style="background:{STATUS_COLOURS[s][0]};border-color:{STATUS_COLOURS[s][1]}">'
        f"</span><b>{s}</b> ({counts[s]}): {STATUS_MEANING[s]}</li>"
        for s in STATUSES
    )
    head = "".join(f"<th>stage {s}</th>" for s in range(1, 5))
    rows = "".join(
        f'<tr><th class="world" scope="row">world {w}</th>'
        + "".join(f"<td>{cells[f'{w}-{s}']}</td>" for s in range(1, 5))
        + "</tr>\n"
        for w in range(1, 9)
    )
    return _page(
        "mario_rl: stage board",
        f"""<h1>Super Mario Bros: the stage board</h1>
<p class="sub">{counts["cleared"]} of 32 stages cleared. A stage is <b>cleared</b> when its bundled policy passes the
evaluation protocol (sticky actions 0.25, 0..30 no-op frames, a clear rate of at least 0.9); the clear rate is
shown with its 95% Wilson interval. <b>Progress</b> is how far along the stage the best policy gets. The preview is one
protocol episode of the policy, or where there is none the replay of a <b>demonstration</b>: a path found with save
states, not a policy. Click a stage for its video, protocol result and learning curve.</p>
<ul class="legend">{legend}</ul>
<table class="grid"><thead><tr><th class="world"></th>{head}</tr></thead><tbody>
{rows}</tbody></table>
<footer>Registry updated {html.escape(str(reg.get("updated") or "never"))}; board built {built} by
<code>mario-rl board</code>.</footer>""",
    )


def _failure_strip(stage: str, protocol: dict, stage_x: int | None) -> str:
    xs = [int(x) for x in protocol.get("failures_x") or []]
    failed = protocol["episodes"] - protocol["clears"]
    if not failed:
        return "<p>No failed episodes.</p>"
    if not xs:
        return f"<p>{failed} failed episodes; where they ended was not recorded.</p>"
    end = max(stage_x or 0, *xs)
    ticks = "".join(f'<span class="tick" style="left:{100 * x / end:.2f}%" title="x {x:,}"></span>' for x in xs)
    return (
        f"<p>Where the {failed} failed episodes ended (x, one mark each):</p>"
        f'<div class="strip">{ticks}<span class="flag" title="{goal(stage)}"></span></div>'
        f'<div class="axis"><span>start</span><span>{html.escape(", ".join(f"{x:,}" for x in sorted(xs)))}'
        f"</span><span>{goal(stage) + ' ' + format(stage_x, ',') if stage_x else goal(stage)}</span></div>"
    )


def stage_html(stage: str, entry: dict, files: dict, result: dict | None, curves: list[Path]) -> str:
    bg, accent = STATUS_COLOURS[entry["status"]]
    parts = [
        '<p><a href="../index.html">← all stages</a></p>',
        f"<h1>Stage {stage}</h1>",
        f'<p class="sub"><span class="status" style="color:{accent}">{entry["status"]}</span>: '
        f"{STATUS_MEANING[entry['status']]}. Progress {100 * progress(entry):.0f}%"
        + (
            f" (best x {entry['best_x']:,} of {entry['stage_x']:,})"
            if entry.get("best_x") and entry.get("stage_x")
            else ""
        )
        + ".</p>",
    ]
    if files["problem"]:
        parts.append(f'<p class="warn">⚠ {html.escape(files["problem"])}</p>')
    if result is not None:
        text, cls = _preview_label(stage, result, entry)
        if result["source"] == "demo":
            what = (
                "The replay of the demonstration: an open-loop path found with save states, "
                "<b>not a policy</b> and never a clear."
            )
        else:
            n = len(result["episodes"])
            what = (
                f"{'One episode' if n == 1 else f'{n} episodes, one after another,'} of the bundled policy "
                f"({result['mode']}"
                + (f", temperature {result['temperature']:g}" if result["mode"] == "sample" else "")
                + ") under the protocol's sticky actions and no-op starts"
                + (
                    f", seeds {result['episodes'][0]['seed']} on until one cleared (at most {result['tries']})."
                    if n > 1
                    else "."
                )
            )
        parts.append(
            f'<h2>Video</h2><video controls loop muted preload="metadata" src="../media/{stage}.mp4"></video>'
            f'<p class="{cls}" style="font-size:13px">{html.escape(text)}</p><p>{what} '
            f'{result["frames"]:,} frames. <a href="../media/{stage}.mp4">MP4</a></p>'
        )
    protocol = entry.get("protocol")
    if protocol and protocol.get("episodes"):
        lo, hi = wilson(protocol["clears"], protocol["episodes"])
        facts = {
            "clears": f"{protocol['clears']} of {protocol['episodes']} episodes "
            f"({protocol['clears'] / protocol['episodes']:.2f})",
            "95% Wilson interval": f"{lo:.2f} – {hi:.2f}",
            "seeds": seeds_text(protocol.get("seeds")) or "not recorded",
            "temperature": protocol.get("temperature"),
            "mean x": f"{protocol['mean_x']:,.0f}" if protocol.get("mean_x") is not None else None,
        }
        parts.append("<h2>Protocol result</h2>" + _facts(facts) + _failure_strip(stage, protocol, entry.get("stage_x")))
    else:
        parts.append("<h2>Protocol result</h2><p>None yet: no bundled policy has been evaluated.</p>")
    training = {
        "algorithm": entry.get("algorithm"),
        "action set": entry.get("actions"),
        "agent steps": f"{entry['agent_steps']:,}" if entry.get("agent_steps") else None,
        "wall clock": f"{entry['wall_hours']:g} h" if entry.get("wall_hours") else None,
        "warm start from": entry.get("warm_start"),
        "recipe": ", ".join(
            f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
            for k, v in (entry.get("recipe") or {}).items()
        )
        or None,
        "policy file": Path(entry["policy"]).name if entry.get("policy") else None,
        "demonstration": (
            Path(entry["demo"]).name
            + (f", reaches the {goal(stage)}" if entry.get("demo_flag") else f", does not reach the {goal(stage)}")
        )
        if entry.get("demo")
        else None,
    }
    if any(v is not None for v in training.values()):
        parts.append("<h2>Training</h2>" + _facts(training))
    if curves:
        images = "".join(
            f'<img class="curve" src="../media/{c.name}" alt="{c.stem.split("-curve-")[1]} of {stage}">' for c in curves
        )
        parts.append(
            f"<h2>Learning curves</h2><p>The campaign run (<code>campaign/{stage}/run/episodes.csv</code>), "
            f"every training episode (they sample at temperature 1 and may start along the demonstration, "
            f'so they are not protocol episodes):</p><div class="curves">{images}</div>'
        )
    if entry.get("note"):
        parts.append(f"<h2>Note</h2><p>{html.escape(entry['note'])}</p>")
    return _page(f"mario_rl: stage {stage}", "\n".join(parts), "page")


def _facts(facts: dict) -> str:
    rows = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items() if v is not None
    )
    return f'<dl class="facts">{rows}</dl>'


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
