"""Procedural "moving shapes" clips: the bundled model's training data and its evaluation ground truth.

One shape of one colour on a black background moves in a straight line. Every clip is fully
described by its prompt ``a {colour} {shape} moving {direction}``, so a generated clip can be
checked against its prompt from pixels alone (see ``fidelity.py``).
"""
from __future__ import annotations

import itertools
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
# Unit motion per direction in image coordinates (x right, y down).
DIRECTIONS: Dict[str, Tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

MIN_SIZE = 32  # decord cannot read videos much smaller than this
# Shape size and travel as fractions of the frame: big enough for silhouettes to be told apart at
# 32x32 (8-14 px), and travel long enough (>= 10 px) for the direction to be unambiguous.
SIZE_RANGE = (0.25, 0.44)
MIN_TRAVEL = 0.3


class Prompt(NamedTuple):
    colour: str
    shape: str
    direction: str

    def __str__(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


ALL_PROMPTS: List[str] = [
    str(Prompt(c, s, d)) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)
]


def parse_prompt(prompt: str) -> Prompt:
    """Split ``a {colour} {shape} moving {direction}`` into its attributes."""
    words = prompt.strip().lower().split()
    if (
        len(words) != 5
        or words[0] != "a"
        or words[3] != "moving"
        or words[1] not in COLOURS
        or words[2] not in SHAPES
        or words[4] not in DIRECTIONS
    ):
        raise ValueError(
            f"prompt {prompt!r} is not of the form 'a {{colour}} {{shape}} moving {{direction}}' with "
            f"colour in {list(COLOURS)}, shape in {list(SHAPES)}, direction in {list(DIRECTIONS)}"
        )
    return Prompt(words[1], words[2], words[4])


def _check_size(num_frames: int, height: int, width: int) -> None:
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames} is invalid: at least 2 frames are needed to show motion")
    for name, value in (("height", height), ("width", width)):
        if value < MIN_SIZE:
            raise ValueError(f"{name}={value} is invalid: must be >= {MIN_SIZE}")


def shape_mask(shape: str, size: float, cx: float, cy: float, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of pixels whose centre lies inside the shape centred at (cx, cy)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    half = size / 2.0
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Apex up, base at the bottom: width shrinks linearly from `size` at the base to 0 at the apex.
        rel = (dy + half) / size  # 0 at the apex, 1 at the base
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= half * rel)
    raise ValueError(f"shape={shape!r} is unknown; allowed: {list(SHAPES)}")


def render_clip(
    prompt: str,
    rng: np.random.Generator,
    num_frames: int = 8,
    height: int = 32,
    width: int = 32,
) -> np.ndarray:
    """Draw one clip for ``prompt`` as uint8 (T, H, W, 3); random size, start and speed from ``rng``.

    The shape stays fully inside the frame in every frame.
    """
    _check_size(num_frames, height, width)
    p = parse_prompt(prompt)
    ux, uy = DIRECTIONS[p.direction]
    extent = min(height, width)
    size = rng.uniform(*SIZE_RANGE) * extent
    along = width if ux else height
    room = along - size  # how far the centre may travel along the motion axis
    travel = rng.uniform(MIN_TRAVEL * along, room)
    start = rng.uniform(size / 2, size / 2 + room - travel)  # coordinate that grows with the motion
    across = height if ux else width
    side = rng.uniform(size / 2, across - size / 2)
    steps = np.linspace(0.0, travel, num_frames)
    colour = np.array(COLOURS[p.colour], dtype=np.uint8)
    clip = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t, s in enumerate(steps):
        pos = start + s
        if ux:
            cx, cy = (pos if ux > 0 else width - pos), side
        else:
            cx, cy = side, (pos if uy > 0 else height - pos)
        clip[t][shape_mask(p.shape, size, cx, cy, height, width)] = colour
    return clip


def sample_batch(
    batch_size: int,
    rng: np.random.Generator,
    num_frames: int = 8,
    height: int = 32,
    width: int = 32,
    prompts: Optional[List[str]] = None,
) -> Tuple[np.ndarray, List[str]]:
    """``batch_size`` clips (B, T, H, W, 3) uint8 and their prompts (drawn uniformly if not given)."""
    if prompts is None:
        prompts = [ALL_PROMPTS[i] for i in rng.integers(0, len(ALL_PROMPTS), size=batch_size)]
    elif len(prompts) != batch_size:
        raise ValueError(f"prompts has {len(prompts)} entries; batch_size={batch_size} requires as many")
    clips = np.stack([render_clip(p, rng, num_frames, height, width) for p in prompts])
    return clips, list(prompts)
