"""What the samplers write: one video per prompt, a grid of all of them, the prompts, and timings."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ditcache._atomic import atomic_write_text

TIMINGS = "timings.json"
PROMPTS = "prompts.json"


def video_grid(videos: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tile same-sized videos (frames, h, w, c) in a near-square grid, as Open-Sora-Plan's grid video does."""
    count = len(videos)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    frames, height, width, channels = videos[0].shape
    grid = np.zeros((frames, rows * height + (rows + 1) * gap, columns * width + (columns + 1) * gap, channels),
                    np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, columns)
        top, left = gap + r * (height + gap), gap + c * (width + gap)
        grid[:, top : top + height, left : left + width] = video
    # yuv420p needs even sizes
    return grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]


def output_names(method: str, guidance: float, steps: int, count: int, tag: str) -> List[str]:
    """Per-prompt file names, then the grid's: method, guidance and steps in each."""
    stem = f"{method}_gs{guidance:g}_s{steps}{tag}"
    return [f"{method}_{i}_gs{guidance:g}_s{steps}{tag}.mp4" for i in range(count)] + [f"{stem}.mp4"]


def write_outputs(folder: str, names: List[str], videos: Sequence[np.ndarray], prompts: Sequence[str],
                  fps: int) -> List[str]:
    """Write every video, the grid and ``prompts.json`` (file -> prompt, read by ReStep); returns the paths."""
    from ditcache.video import write_video

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, video in zip(names, videos):
        paths.append(os.path.join(folder, name))
        write_video(paths[-1], video, fps=fps)
    paths.append(os.path.join(folder, names[-1]))
    write_video(paths[-1], video_grid(videos), fps=fps)
    atomic_write_text(os.path.join(folder, PROMPTS), json.dumps(dict(zip(names, prompts)), indent=2) + "\n")
    return paths


def record_timing(folder: str, key: str, seconds: float, cached: bool) -> Optional[float]:
    """Remember uncached run times per setting; for a cached run, the speedup over the last uncached one."""
    path = os.path.join(folder, TIMINGS)
    timings: Dict[str, float] = {}
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as handle:
            timings = json.load(handle)
    if cached:
        return timings[key] / seconds if key in timings else None
    timings[key] = seconds
    atomic_write_text(path, json.dumps(timings, indent=2) + "\n")
    return None
