"""Live training progress: a rich progress bar on a terminal, a plain line every 30 s in a log file."""

from __future__ import annotations

import math
import sys
import time
from collections import deque


class ProgressDisplay:
    """A live rich progress bar on a terminal; a plain line every 30 s in a log file."""

    def __init__(self, total: int, start: int):
        self.total, self.start = total, start
        self.last_step = start
        self.t0 = time.monotonic()
        self.sps = 0.0
        self._window = deque(maxlen=50)
        self._last_print = 0.0
        self.live = sys.stdout.isatty()
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self._task = self._bar.add_task("train", total=total, completed=start, status="")
            self._bar.start()

    def update(self, step: int, **status) -> None:
        self.last_step = step
        now = time.monotonic()
        self._window.append((now, step))
        if len(self._window) > 1 and now > self._window[0][0]:
            self.sps = (step - self._window[0][1]) / (now - self._window[0][0])
        text = format_status(sps=self.sps, **status)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=text)
        elif now - self._last_print > 30 or step >= self.total:
            self._last_print = now
            print(f"step {step:,}/{self.total:,} | {text}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def format_status(**status) -> str:
    parts = []
    for key, value in status.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if key == "sps":
            parts.append(f"{value:.0f} steps/s")
        elif isinstance(value, float):
            parts.append(f"{key.replace('_', ' ')} {value:.3g}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return " | ".join(parts)
