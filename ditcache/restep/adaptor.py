"""ReStepAdaptor: better sampling timesteps for a pipeline, searched from calibration videos.

Two methods (``ReStepSearchConfig.method``): the spec's "Align Your Steps" KLUB sweep
(:mod:`.klub`) and an optimal-stepsize dynamic programme against a fine-step teacher (:mod:`.dp`).
Both journal their progress in ``save_dir``, so an interrupted search continues where it stopped,
and both write the same ``searched_schedule.txt``.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ..schedulers import TimestepEulerAncestralScheduler
from .calibration import CalibrationClip, encode_clips, find_clips, read_clips
from .config import MAX_VIDEOS, MIN_VIDEOS, ReStepSearchConfig
from .dp import dp_search
from .journal import ReStepJournal
from .klub import klub_sweep
from .objective import Denoiser
from .schedule import SCHEDULE_FILE, timesteps_to_schedule, write_schedule

BATCH_SIZE = 8  # noisy clips per transformer call
_REQUIRED = ("transformer", "scheduler", "encode_prompt", "device")


class ReStepAdaptor:
    """Searches a ``num_sampling_steps`` schedule for ``pipeline`` and saves it in ``config.save_dir``.

    The pipeline needs ``transformer``, ``scheduler``, ``device``, ``encode_prompt(prompts) ->
    (states, mask)`` and a way into latent space (``encode_videos`` or ``vae.encode``).
    """

    def __init__(self, pipeline: Any, config: ReStepSearchConfig) -> None:
        if not isinstance(config, ReStepSearchConfig):
            raise ValueError(f"config must be a ReStepSearchConfig, got {type(config).__name__}")
        missing = [name for name in _REQUIRED if not hasattr(pipeline, name)]
        if missing:
            raise ValueError(f"pipeline {type(pipeline).__name__} lacks {missing}; the timestep search needs {list(_REQUIRED)}")
        self.pipeline = pipeline
        self.config = config
        # a private scheduler on the pipeline's noise schedule: the search never disturbs the pipeline's own
        self.scheduler = TimestepEulerAncestralScheduler.from_config(pipeline.scheduler.config)

    def uniform_schedule(self) -> List[float]:
        """The schedule the pipeline samples by default with ``num_sampling_steps`` steps (t/1000, ascending)."""
        self.scheduler.set_timesteps(self.config.num_sampling_steps)
        return timesteps_to_schedule(self.scheduler.timesteps.tolist())

    def search(self) -> List[float]:
        """Run (or resume) the search, write ``save_dir/searched_schedule.txt`` and return the schedule."""
        config = self.config
        clips = self._check_files()
        start = self.uniform_schedule()
        journal = ReStepJournal(config.save_dir, self._fingerprint(clips, start))
        latents = encode_clips(self.pipeline, read_clips(clips))
        denoiser = Denoiser(self.pipeline, self.scheduler, [clip.prompt for clip in clips], BATCH_SIZE,
                            config.guidance_scale)
        if config.method == "klub":
            schedule = klub_sweep(config, start, latents, denoiser, journal)
        else:
            rng = np.random.default_rng(config.seed)
            chosen = torch.from_numpy(np.sort(rng.choice(len(clips), config.monte_carlo_iters, replace=False)))
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = torch.randn((len(chosen), *latents.shape[1:]), generator=generator).to(latents.device)
            steps = dp_search(denoiser, noise, chosen, config.teacher_steps, config.num_sampling_steps, journal)
            schedule = timesteps_to_schedule(steps)
        write_schedule(os.path.join(config.save_dir, SCHEDULE_FILE), schedule)
        return schedule

    def _check_files(self) -> List[CalibrationClip]:
        """The calibration clips, after checking their count and that ``save_dir`` can be made and written."""
        config = self.config
        clips = find_clips(config.videos_path)
        if not MIN_VIDEOS <= len(clips) <= MAX_VIDEOS:
            raise ValueError(
                f"videos_path={config.videos_path!r} is invalid: it holds {len(clips)} calibration videos; "
                f"{MIN_VIDEOS} to {MAX_VIDEOS} are needed (*.mp4, or the files listed in its prompts.json)"
            )
        if config.monte_carlo_iters > len(clips):
            raise ValueError(
                f"monte_carlo_iters={config.monte_carlo_iters!r} is invalid: must be an int in [1, {len(clips)}] "
                f"(the number of calibration videos)"
            )
        if os.path.exists(config.save_dir) and not os.path.isdir(config.save_dir):
            raise ValueError(f"save_dir={config.save_dir!r} is invalid: it exists and is not a directory")
        try:
            os.makedirs(config.save_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=config.save_dir):
                pass
        except OSError as err:
            raise ValueError(f"save_dir={config.save_dir!r} is invalid: cannot write there ({err})") from None
        return clips

    def _fingerprint(self, clips: Sequence[CalibrationClip], start: List[float]) -> Dict[str, Any]:
        config = self.config
        fingerprint = {
            "method": config.method,
            "monte_carlo_iters": config.monte_carlo_iters,
            "guidance_scale": config.guidance_scale,
            "seed": config.seed,
            "prediction_type": self.scheduler.config.prediction_type,
            "clips": [[os.path.basename(c.path), os.path.getsize(c.path), c.prompt] for c in clips],
        }
        if config.method == "klub":
            fingerprint.update(num_sampling_steps=config.num_sampling_steps, neighbour_type=config.neighbour_type,
                               start=start)
        else:  # the teacher's costs serve every step count
            fingerprint.update(teacher_steps=config.teacher_steps)
        return fingerprint
