"""Reading and writing videos: mp4 via imageio/libx264, decoding via decord, PNG contact sheets.

Videos are uint8 (T, H, W, C) arrays, as OSP's pipelines return per clip. Every write goes to a
temporary file in the target directory and is renamed into place, so a crash never leaves a
half-written video under the final name. The backends are optional extras, imported on use.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from ._atomic import atomic_write

_EXTRA_HINT = "pip install ditcache[video]"


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for video files; install it with `{_EXTRA_HINT}`") from err


def _check_video(video: np.ndarray, name: str = "video") -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] < 1:
        raise ValueError(f"{name} must be uint8 (T, H, W, 3) with T >= 1; got {video.dtype} {video.shape}")
    return video


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write through a temporary file beside ``path`` (its folder created if needed), then rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)


def write_video(path: str, video: np.ndarray, fps: int = 8) -> None:
    """Write an H.264 mp4 (yuv420p, so height and width must be even)."""
    video = _check_video(video)
    if video.shape[1] % 2 or video.shape[2] % 2:
        raise ValueError(f"video size {video.shape[2]}x{video.shape[1]} is invalid: yuv420p needs even width and height")
    if fps < 1:
        raise ValueError(f"fps={fps} is invalid: must be >= 1")
    imageio = _require("imageio")
    _require("imageio_ffmpeg")

    def write(tmp: str) -> None:
        # macro_block_size=1: keep the size as given instead of padding to multiples of 16
        with imageio.get_writer(
            tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
            output_params=["-crf", "10"],
        ) as writer:
            for frame in video:
                writer.append_data(frame)

    _atomic_write(path, write)


def read_video(path: str) -> np.ndarray:
    """Decode every frame of a video file into uint8 (T, H, W, 3).

    decord does the decoding; for the few frame sizes where decord's colour conversion returns
    misshapen frames (e.g. 48x32), imageio's ffmpeg reader decodes instead.
    """
    if not os.path.isfile(path):
        raise ValueError(f"path={path!r} is not a file")
    decord = _require("decord")
    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    try:
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    except decord.DECORDError:
        imageio = _require("imageio")
        return np.stack(imageio.mimread(path, format="FFMPEG", memtest=False))


def contact_sheet(video: np.ndarray, scale: int = 4, gap: int = 2) -> np.ndarray:
    """All frames side by side, each enlarged ``scale`` times (nearest), on a grey background."""
    video = _check_video(video)
    if scale < 1 or gap < 0:
        raise ValueError(f"scale={scale} and gap={gap} are invalid: scale must be >= 1 and gap >= 0")
    frames = video.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width, _ = frames.shape
    sheet = np.full((height, count * width + (count - 1) * gap, 3), 128, dtype=np.uint8)
    for i, frame in enumerate(frames):
        sheet[:, i * (width + gap) : i * (width + gap) + width] = frame
    return sheet


def write_contact_sheet(path: str, video: np.ndarray, scale: int = 4) -> None:
    """Save :func:`contact_sheet` as a PNG."""
    sheet = contact_sheet(video, scale=scale)
    imageio = _require("imageio")
    _atomic_write(path, lambda tmp: imageio.imwrite(tmp, sheet, format="PNG"))
