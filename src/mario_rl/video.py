"""Videos of Mario: an MP4 of every emulator frame and an animated GIF preview."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mario_rl.errors import UserError
from mario_rl.storage import check_writable

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_output_path(out: Path) -> Path:
    """Fail early, with one line, if `out` cannot be written; returns the path."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"output must end in .mp4 or .gif, got {str(out)!r}")
    return check_writable(out)


class VideoRecorder:
    """Collects emulator frames (already copied by FrameRecorder) and writes MP4 + GIF.

    The MP4 streams to disk as frames arrive (60 fps, every frame); the GIF keeps
    every `gif_every`-th frame, at most `gif_seconds` of it, in memory.
    """

    def __init__(self, out: Path, fps: int = 60, gif_every: int = 4, gif_seconds: float = 60.0, window: bool = False):
        import imageio.v2 as imageio

        self.out = check_output_path(out)
        self.mp4 = self.out.with_suffix(".mp4")
        self.gif = self.out.with_suffix(".gif")
        self.fps = fps
        self.gif_every = gif_every
        self.gif_max = int(gif_seconds * fps / gif_every)
        self.gif_frames: list[np.ndarray] = []
        self.count = 0
        self._viewer = _open_viewer() if window else None  # first: no display, no files left behind
        # ffmpeg picks the container from the extension, so the temp name keeps ".mp4".
        self._tmp_mp4 = self.mp4.with_name(f".{self.mp4.stem}.tmp.mp4")
        self._writer = imageio.get_writer(
            self._tmp_mp4,
            fps=fps,
            codec="libx264",
            quality=7,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )

    def __call__(self, frame: np.ndarray) -> None:
        self._writer.append_data(frame)
        if self.count % self.gif_every == 0 and len(self.gif_frames) < self.gif_max:
            self.gif_frames.append(frame)
        if self._viewer is not None:
            self._viewer.show(frame)
        self.count += 1

    def close(self) -> list[Path]:
        import imageio.v3 as iio

        self._writer.close()
        os.replace(self._tmp_mp4, self.mp4)
        written = [self.mp4]
        if self.gif_frames:
            tmp_gif = self.gif.with_name(f".{self.gif.stem}.tmp.gif")
            iio.imwrite(tmp_gif, np.stack(self.gif_frames), duration=1000 * self.gif_every / self.fps, loop=0)
            os.replace(tmp_gif, self.gif)
            written.append(self.gif)
        if self._viewer is not None:
            self._viewer.close()
        return written

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp_mp4.unlink(missing_ok=True)


def _open_viewer():
    """nes-py's pyglet window; needs a display."""
    try:
        from nes_py._image_viewer import ImageViewer

        return ImageViewer(caption="mario_rl", height=240, width=256)
    except Exception as e:  # pyglet raises its own types when there is no display
        raise UserError(f"--window needs a display ({type(e).__name__}: {str(e).splitlines()[0]})") from None
