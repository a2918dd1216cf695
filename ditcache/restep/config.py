"""ReStepSearchConfig: the settings of a timestep search, checked when made."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from .calibration import find_clips

NEIGHBOUR_TYPES = ("uniform", "random")
MIN_VIDEOS, MAX_VIDEOS = 5, 20
MIN_STEPS = 3  # the first and last point stay fixed, so fewer steps leave nothing to search


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ReStepSearchConfig:
    """Where the calibration videos are, where results go, and how hard to search.

    ``monte_carlo_iters`` is how many calibration clips (each with fresh noise) score every
    candidate timestep; ``guidance_scale`` should be the one you sample with (1 = the conditional
    model alone, half the cost); ``seed`` makes the search repeatable.
    """

    videos_path: Optional[str] = None
    save_dir: Optional[str] = None
    neighbour_type: str = "uniform"
    monte_carlo_iters: int = 5
    num_sampling_steps: int = 50
    guidance_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.neighbour_type not in NEIGHBOUR_TYPES:
            raise ValueError(f"neighbour_type={self.neighbour_type!r} is invalid: allowed values are {list(NEIGHBOUR_TYPES)}")
        if not _is_int(self.num_sampling_steps) or self.num_sampling_steps < MIN_STEPS:
            raise ValueError(f"num_sampling_steps={self.num_sampling_steps!r} is invalid: must be an int >= {MIN_STEPS}")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or not (
            1.0 <= self.guidance_scale < float("inf")
        ):
            raise ValueError(f"guidance_scale={self.guidance_scale!r} is invalid: must be a finite number >= 1 (1 = no guidance)")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} is invalid: must be an int >= 0")
        count = len(find_clips(self.videos_path))
        if not MIN_VIDEOS <= count <= MAX_VIDEOS:
            raise ValueError(
                f"videos_path={self.videos_path!r} is invalid: it holds {count} calibration videos; "
                f"{MIN_VIDEOS} to {MAX_VIDEOS} are needed (*.mp4, or the files listed in its prompts.json)"
            )
        if not _is_int(self.monte_carlo_iters) or not 1 <= self.monte_carlo_iters <= count:
            raise ValueError(
                f"monte_carlo_iters={self.monte_carlo_iters!r} is invalid: must be an int in [1, {count}] "
                f"(the number of calibration videos)"
            )
        self._check_save_dir()

    def _check_save_dir(self) -> None:
        """Create ``save_dir`` if missing and prove it writable by writing a scratch file."""
        if not isinstance(self.save_dir, (str, os.PathLike)) or not os.fspath(self.save_dir):
            raise ValueError(f"save_dir={self.save_dir!r} is invalid: must be a directory path")
        if os.path.exists(self.save_dir) and not os.path.isdir(self.save_dir):
            raise ValueError(f"save_dir={self.save_dir!r} is invalid: it exists and is not a directory")
        try:
            os.makedirs(self.save_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.save_dir):
                pass
        except OSError as err:
            raise ValueError(f"save_dir={self.save_dir!r} is invalid: cannot write there ({err})") from None
