"""The spec's search: one "Align Your Steps" KLUB sweep over the interior points of a schedule.

The sweep starts from the pipeline's own evenly spaced schedule and visits its interior points once,
from low to high noise. Each point may move anywhere strictly between its neighbours: 10 evenly
spaced (or random) candidates plus where it is now are scored by the KLUB of the two steps they
create, averaged over ``monte_carlo_iters`` calibration clips with fresh noise, and the lowest score
wins. Clip choice and noise depend only on the seed and the point, so a resumed sweep ends exactly
where an uninterrupted one would.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ReStepSearchConfig
from .journal import ReStepJournal
from .objective import Denoiser, klub
from .schedule import TIME_SCALE

CANDIDATES = 10  # new positions tried per point, besides the current one


def klub_sweep(
    config: ReStepSearchConfig, start: List[float], latents: torch.Tensor, denoiser: Denoiser, journal: ReStepJournal
) -> List[float]:
    """``start`` (t/1000, ascending) with every interior point moved to its best KLUB position."""
    state = journal.state or {"schedule": list(start), "next_point": 1}
    schedule, last = list(state["schedule"]), config.num_sampling_steps - 2
    with tqdm(total=last, initial=state["next_point"] - 1, desc="timestep search (klub)", unit="point") as bar:
        for i in range(state["next_point"], last + 1):
            schedule[i] = _best_position(config, schedule, i, latents, denoiser)
            journal.record({"schedule": schedule, "next_point": i + 1})
            bar.update()
    return schedule


def _candidates(config: ReStepSearchConfig, low: float, up: float, current: float, rng: np.random.Generator) -> List[float]:
    """Positions strictly between the neighbours ``low`` and ``up``, ascending, the current one included."""
    if config.neighbour_type == "uniform":
        inside = np.linspace(low, up, CANDIDATES + 2)[1:-1]
    else:
        inside = rng.uniform(low, up, CANDIDATES)
    return sorted({round(float(v), 6) for v in inside if low < round(float(v), 6) < up} | {current})


def _best_position(
    config: ReStepSearchConfig, schedule: List[float], i: int, latents: torch.Tensor, denoiser: Denoiser
) -> float:
    """The candidate for point ``i`` with the least mean KLUB over its two steps."""
    rng = np.random.default_rng([config.seed, i])
    clips = torch.from_numpy(np.sort(rng.choice(len(latents), config.monte_carlo_iters, replace=False)))
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x0 = latents[clips.to(latents.device)]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    candidates = _candidates(config, schedule[i - 1], schedule[i + 1], schedule[i], rng)
    points = [schedule[i + 1], *reversed(candidates), schedule[i - 1]]  # high noise first
    d, sigma = denoiser(x0, noise, clips, [round(v * TIME_SCALE, 6) for v in points])
    scores = {
        points[k]: float((klub(d[-1], d[k], sigma[-1], sigma[k]) + klub(d[k], d[0], sigma[k], sigma[0])).mean())
        for k in range(1, len(points) - 1)
    }
    return min(scores, key=lambda v: (scores[v], v != schedule[i]))  # ties keep the current position
