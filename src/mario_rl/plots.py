"""Learning curves from a run's episodes.csv (works for live, finished and resumed runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mario_rl.storage import atomic_write

CURVES = {
    "reward": ("return", "episode return"),
    "length": ("length", "episode length (agent steps)"),
    "loss": ("loss", "mean TD loss per episode"),
    "q": ("q", "mean Q value per episode"),
    "x": ("x", "x reached"),
}


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    # Few episodes yet: a shorter window, so that the mean is a line rather than one point.
    window = max(1, min(window, len(y) // 3))
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def read_episodes(path: Path, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """episodes.csv's numeric columns as arrays (NaN where a row has no value), plus the `extra` columns
    the file has (a run from before a column existed has none)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames or []

    def column(key):
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    keys = ["step", "return", "length", "loss", "q", "x"] + [k for k in extra if k in fields]
    return {key: column(key) for key in keys} if rows else {}


def plot_learning_curves(episodes_csv: Path, out_dir: Path, window: int = 20) -> list[Path]:
    """Write one PNG per curve (reward, length, loss, Q, x reached) plus all of them in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_episodes(episodes_csv) if Path(episodes_csv).exists() else {}
    if not data:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    steps = data["step"]
    fig_all, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax_all, (name, (key, label)) in zip(axes, CURVES.items()):
        y = data[key]
        ok = ~np.isnan(y)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for a in (ax, ax_all):
            if ok.any():
                a.plot(steps[ok], y[ok], alpha=0.3, lw=0.8, label="episode")
                ma = _moving_average(y[ok], window)
                a.plot(steps[ok][len(steps[ok]) - len(ma) :], ma, lw=1.8, label="moving mean")
            a.set_xlabel("agent steps")
            a.set_title(label)
            a.grid(alpha=0.3)
        if ok.any():
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        written.append(path)
    fig_all.tight_layout()
    path = out_dir / "learning_curves.png"
    atomic_write(path, lambda tmp: fig_all.savefig(tmp, format="png", dpi=80))
    plt.close(fig_all)
    written.append(path)
    return written


if __name__ == "__main__":  # `python -m mario_rl.plots EPISODES_CSV OUT_DIR`, used by training runs
    import sys

    plot_learning_curves(Path(sys.argv[1]), Path(sys.argv[2]))
