"""Prompt fidelity of a moving-shapes clip, judged from its pixels.

Colour: which RGB channels are lit in the foreground's mean colour (the seven prompt colours are
exactly the seven non-black corners of the RGB cube). Shape: the foreground's silhouette, per frame:
a triangle (apex up) puts most of its mass in the lower half of its bounding box; otherwise the
fill ratio of the box separates squares (~1) from circles (~0.785). Direction: the dominant axis
and sign of the centroid's displacement from the first to the last frame.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .shapes import COLOURS, DIRECTIONS, parse_prompt

FOREGROUND_LEVEL = 100  # a pixel is foreground if its brightest channel reaches this (of 255)
TRIANGLE_ASYMMETRY = 0.25  # (lower - upper) / total mass in the box: triangle ~0.5, others ~0
SQUARE_FILL = 0.89  # fill ratio of the box: square ~1, circle ~0.785
MIN_TRAVEL_PX = 2.0  # less centroid motion than this over the clip is "no direction"
ATTRIBUTES = ("colour", "shape", "direction")

_COLOUR_BY_CHANNELS: Dict[Tuple[bool, bool, bool], str] = {
    tuple(c > 0 for c in rgb): name for name, rgb in COLOURS.items()
}


@dataclass(frozen=True)
class Fidelity:
    """What the clip shows (None when undetectable) next to what the prompt asked for."""

    expected: Tuple[str, str, str]
    found: Tuple[Optional[str], Optional[str], Optional[str]]

    @property
    def hits(self) -> Dict[str, bool]:
        return {a: e == f for a, e, f in zip(ATTRIBUTES, self.expected, self.found)}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean (H, W) mask: drops stray specks of noise."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else mask


def _frame_shape_features(mask: np.ndarray) -> Optional[Tuple[float, float]]:
    """(fill ratio, lower-half asymmetry) of a silhouette, or None if it is too small to judge."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 6:
        return None
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = len(ys) / float((bottom - top) * (right - left))
    middle = (top + bottom) / 2.0
    rows = ys + 0.5
    lower, upper = np.sum(rows > middle), np.sum(rows < middle)
    return fill, (lower - upper) / float(len(ys))


def classify_clip(clip: np.ndarray) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(colour, shape, direction) shown by a uint8 (T, H, W, 3) clip; None where undetectable."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"clip must be uint8 (T, H, W, 3); got {clip.dtype} {clip.shape}")
    masks = [_largest_component(frame.max(axis=-1) >= FOREGROUND_LEVEL) for frame in clip]
    present = [m for m in masks if m.any()]
    if not present:
        return None, None, None

    pixels = np.concatenate([frame[m] for frame, m in zip(clip, masks) if m.any()]).astype(np.float64)
    mean = pixels.mean(axis=0)
    colour = _COLOUR_BY_CHANNELS.get(tuple(bool(c) for c in mean >= 0.5 * mean.max()))

    features = [f for f in (_frame_shape_features(m) for m in present) if f is not None]
    shape = None
    if features:
        fill, asym = np.median(np.array(features), axis=0)
        shape = "triangle" if asym > TRIANGLE_ASYMMETRY else ("square" if fill > SQUARE_FILL else "circle")

    direction = None
    if masks[0].any() and masks[-1].any():
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (masks[0], masks[-1]))
        dx, dy = x1 - x0, y1 - y0
        if max(abs(dx), abs(dy)) >= MIN_TRAVEL_PX:
            step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
            direction = next(name for name, unit in DIRECTIONS.items() if unit == step)
    return colour, shape, direction


def check_clip(clip: Union[np.ndarray, str], prompt: str) -> Fidelity:
    """Compare a clip (uint8 array or a video file path) with the prompt it was made from."""
    if isinstance(clip, str):
        from ..video import read_video

        clip = read_video(clip)
    return Fidelity(expected=tuple(parse_prompt(prompt)), found=classify_clip(clip))


def hit_rates(results: Sequence[Fidelity]) -> Dict[str, float]:
    """Per-attribute hit rate over many clips, plus their mean under "mean"."""
    if not results:
        raise ValueError("results is empty: at least one clip is needed for a hit rate")
    rates = {a: float(np.mean([r.hits[a] for r in results])) for a in ATTRIBUTES}
    rates["mean"] = float(np.mean(list(rates.values())))
    return rates


def misses(results: Sequence[Fidelity]) -> List[Fidelity]:
    return [r for r in results if not all(r.hits.values())]


def evaluate_pipeline(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 84, **call_kwargs: Any
) -> List[Fidelity]:
    """Generate every prompt once per seed (in batches, one seeded call per batch) and check each clip."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: must be >= 1")
    results = []
    for seed in seeds:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            videos = pipe(chunk, seed=seed, **call_kwargs).images
            results.extend(check_clip(video, p) for video, p in zip(videos, chunk))
    return results
