"""ReStepAdaptor: better sampling timesteps from calibration videos, by "Align Your Steps" KLUB descent.

The search starts from the pipeline's own evenly spaced schedule and sweeps its interior points
once, from low to high noise. Each point may move anywhere strictly between its neighbours: 10
evenly spaced (or random) candidates plus where it is now are scored by the KLUB of the two steps
they create, averaged over ``monte_carlo_iters`` calibration clips with fresh noise, and the lowest
score wins. Progress is journalled in ``save_dir`` after every point, so an interrupted search
continues where it stopped; clip choice and noise depend only on the seed and the point, so a
resumed search ends exactly where an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import CalibrationClip, encode_clips, find_clips, read_clips
from .config import ReStepSearchConfig
from .journal import SearchJournal
from .objective import Denoiser, klub
from .schedule import SCHEDULE_FILE, TIME_SCALE, timesteps_to_schedule, write_schedule
from .scheduler import TimestepEulerAncestralScheduler

CANDIDATES = 10  # new positions tried per point, besides the current one
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
        clips = find_clips(config.videos_path)
        start = self.uniform_schedule()
        journal = SearchJournal(config.save_dir, self._fingerprint(clips, start), start)
        schedule, last = journal.schedule, config.num_sampling_steps - 2
        if journal.next_point <= last:
            latents = encode_clips(self.pipeline, read_clips(clips))
            prompts = [clip.prompt for clip in clips]
            denoiser = Denoiser(self.pipeline, self.scheduler, prompts, BATCH_SIZE, config.guidance_scale)
            with tqdm(total=last, initial=journal.next_point - 1, desc="timestep search", unit="point") as bar:
                for i in range(journal.next_point, last + 1):
                    schedule[i] = self._best_position(schedule, i, latents, denoiser)
                    journal.record(schedule, i + 1)
                    bar.update()
        write_schedule(os.path.join(config.save_dir, SCHEDULE_FILE), schedule)
        return schedule

    def _fingerprint(self, clips: Sequence[CalibrationClip], start: List[float]) -> Dict[str, Any]:
        config = self.config
        return {
            "num_sampling_steps": config.num_sampling_steps,
            "neighbour_type": config.neighbour_type,
            "monte_carlo_iters": config.monte_carlo_iters,
            "guidance_scale": config.guidance_scale,
            "seed": config.seed,
            "start": start,
            "prediction_type": self.scheduler.config.prediction_type,
            "clips": [[os.path.basename(c.path), os.path.getsize(c.path), c.prompt] for c in clips],
        }

    def _candidates(self, low: float, up: float, current: float, rng: np.random.Generator) -> List[float]:
        """Positions strictly between the neighbours ``low`` and ``up``, ascending, the current one included."""
        if self.config.neighbour_type == "uniform":
            inside = np.linspace(low, up, CANDIDATES + 2)[1:-1]
        else:
            inside = rng.uniform(low, up, CANDIDATES)
        return sorted({round(float(v), 6) for v in inside if low < round(float(v), 6) < up} | {current})

    def _best_position(self, schedule: List[float], i: int, latents: torch.Tensor, denoiser: Denoiser) -> float:
        """The candidate for point ``i`` with the least mean KLUB over its two steps."""
        rng = np.random.default_rng([self.config.seed, i])
        clips = torch.from_numpy(np.sort(rng.choice(len(latents), self.config.monte_carlo_iters, replace=False)))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x0 = latents[clips.to(latents.device)]
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        candidates = self._candidates(schedule[i - 1], schedule[i + 1], schedule[i], rng)
        points = [schedule[i + 1], *reversed(candidates), schedule[i - 1]]  # high noise first
        d, sigma = denoiser(x0, noise, clips, [round(v * TIME_SCALE, 6) for v in points])
        scores = {
            points[k]: float((klub(d[-1], d[k], sigma[-1], sigma[k]) + klub(d[k], d[0], sigma[k], sigma[0])).mean())
            for k in range(1, len(points) - 1)
        }
        return min(scores, key=lambda v: (scores[v], v != schedule[i]))  # ties keep the current position
