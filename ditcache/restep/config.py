"""ReStepSearchConfig: the settings of a timestep search, a value checked when made (no file is touched)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

METHODS = ("klub", "dp")
NEIGHBOUR_TYPES = ("uniform", "random")
MIN_VIDEOS, MAX_VIDEOS = 5, 20
MIN_STEPS = 3  # the first and last point stay fixed, so fewer steps leave nothing to search
MAX_TEACHER_STEPS = 1000  # the noise schedule's training timesteps


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_path(name: str, value: object, what: str) -> None:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name}={value!r} is invalid: must be {what}")


@dataclass(frozen=True)
class ReStepSearchConfig:
    """Where the calibration videos are, where results go, and how to search.

    ``method`` picks the search: ``"klub"`` is the spec's "Align Your Steps" sweep, where
    ``monte_carlo_iters`` calibration clips (each with fresh noise) score every candidate position
    (``neighbour_type`` says how candidates are spread); ``"dp"`` picks the steps by dynamic
    programming against a ``teacher_steps``-step Euler solution from the prompts of
    ``monte_carlo_iters`` calibration clips. ``guidance_scale`` should be the one you sample with
    (1 = the conditional model alone, half the cost); ``seed`` makes the search repeatable.
    The calibration directory and ``save_dir`` are checked when the search starts.
    """

    videos_path: Optional[str] = None
    save_dir: Optional[str] = None
    neighbour_type: str = "uniform"
    monte_carlo_iters: int = 5
    num_sampling_steps: int = 50
    guidance_scale: float = 1.0
    seed: int = 0
    method: str = "klub"
    teacher_steps: int = 200

    def __post_init__(self) -> None:
        _check_path("videos_path", self.videos_path, "a directory of calibration videos")
        _check_path("save_dir", self.save_dir, "a directory path")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is invalid: allowed values are {list(METHODS)}")
        if self.neighbour_type not in NEIGHBOUR_TYPES:
            raise ValueError(f"neighbour_type={self.neighbour_type!r} is invalid: allowed values are {list(NEIGHBOUR_TYPES)}")
        if not _is_int(self.num_sampling_steps) or self.num_sampling_steps < MIN_STEPS:
            raise ValueError(f"num_sampling_steps={self.num_sampling_steps!r} is invalid: must be an int >= {MIN_STEPS}")
        low = self.num_sampling_steps + 1 if self.method == "dp" else 2  # the dp picks its steps among the teacher's
        if not _is_int(self.teacher_steps) or not low <= self.teacher_steps <= MAX_TEACHER_STEPS:
            raise ValueError(
                f"teacher_steps={self.teacher_steps!r} is invalid: must be an int in [{low}, {MAX_TEACHER_STEPS}]"
                + (" (more than num_sampling_steps)" if self.method == "dp" else "")
            )
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or not (
            1.0 <= self.guidance_scale < math.inf
        ):
            raise ValueError(f"guidance_scale={self.guidance_scale!r} is invalid: must be a finite number >= 1 (1 = no guidance)")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} is invalid: must be an int >= 0")
        if not _is_int(self.monte_carlo_iters) or not 1 <= self.monte_carlo_iters <= MAX_VIDEOS:
            raise ValueError(
                f"monte_carlo_iters={self.monte_carlo_iters!r} is invalid: must be an int in [1, {MAX_VIDEOS}] "
                f"and at most the number of calibration videos"
            )
