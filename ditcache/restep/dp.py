"""Optimal-stepsize search: the N steps of a fine Euler teacher chosen by dynamic programming.

A ``teacher_steps``-step Euler solution from seeded noise, for the prompts of a few calibration
clips, gives the states x_k and denoiser estimates D_k at a fine grid of timesteps. One Euler step
of a coarse sampler from grid point i straight to point j (or to the end, sigma = 0) lands at
``x_i + (sigma_j - sigma_i) (x_i - D_i) / sigma_i``; its mean squared distance from the teacher's
x_j is the cost of that step. These costs need no model call beyond the teacher's, and the N-step
path from the first grid point to the end with the least total cost is found exactly by dynamic
programming. (Root-mean-square costs, or costs scaled by how much of an error at sigma_j a Gaussian
model says reaches the final sample, chose worse schedules: bench/restep.py.) The teacher's costs
are journalled, so a finished teacher is never run again, and they serve a search for any other
step count in the same ``save_dir``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .journal import ReStepJournal
from .objective import Denoiser


@torch.no_grad()
def teacher_costs(
    denoiser: Denoiser, noise: torch.Tensor, clips: torch.Tensor, teacher_steps: int
) -> Tuple[List[float], List[List[float]]]:
    """The teacher's timesteps (high noise first) and ``costs[i][j - i - 1]``, the cost of a step from i to j.

    Point ``teacher_steps`` is the end of sampling (sigma = 0).
    """
    scheduler = denoiser.scheduler
    scheduler.set_timesteps(teacher_steps)
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas.to(noise.device)
    rest = [1] * (noise.ndim - 1)
    states = [noise * scheduler.init_noise_sigma]
    slopes = []
    for k in tqdm(range(teacher_steps), desc="timestep search (dp teacher)", unit="step"):
        x = states[-1]
        d = denoiser.estimate(x, sigmas[k].expand(len(x)).view(-1, *rest), timesteps[k].expand(len(x)), clips)
        slopes.append((x - d) / sigmas[k])
        states.append(x + (sigmas[k + 1] - sigmas[k]) * slopes[-1])
    return [float(t) for t in timesteps], step_costs(torch.stack(states), torch.stack(slopes), sigmas)


def step_costs(states: torch.Tensor, slopes: torch.Tensor, sigmas: torch.Tensor) -> List[List[float]]:
    """``costs[i][j - i - 1]``: mean squared distance of the Euler jump from state i (along ``slopes[i]``) to j.

    Expanded into inner products, so all pairs cost three matrix products (in float64, as the
    expansion subtracts large, nearly equal terms) instead of one pass over the states per pair.
    """
    x, s = states.flatten(1).double(), slopes.flatten(1).double()
    sigma = sigmas.double().to(x.device)
    gram, cross = x @ x.T, s @ x.T  # <x_i, x_j>, <s_i, x_j>
    norms, own = gram.diagonal(), cross.diagonal()
    slope_norms = (s * s).sum(1)
    costs = []
    for i in range(len(s)):
        jump = sigma[i + 1 :] - sigma[i]
        squared = (norms[i] + norms[i + 1 :] - 2 * gram[i, i + 1 :] + 2 * jump * (own[i] - cross[i, i + 1 :])
                   + jump**2 * slope_norms[i])
        costs.append((squared.clamp_min(0) / x.shape[1]).tolist())
    return costs


def cheapest_path(costs: Sequence[Sequence[float]], steps: int) -> List[int]:
    """The grid points (from 0, the end point excluded) of the ``steps``-step path of least total cost."""
    points = len(costs)
    if not 1 <= steps <= points:
        raise ValueError(f"num_sampling_steps={steps} is invalid: the teacher grid has {points} points")
    matrix = np.full((points + 1, points + 1), np.inf)
    for i, row in enumerate(costs):
        matrix[i, i + 1 :] = row
    best = np.full(points + 1, np.inf)
    best[0] = 0.0
    parents = []
    for _ in range(steps):
        totals = best[:, None] + matrix
        parents.append(totals.argmin(0))
        best = totals.min(0)
    path, node = [], points
    for parent in reversed(parents):
        node = int(parent[node])
        path.append(node)
    return path[::-1]


def dp_search(
    denoiser: Denoiser, noise: torch.Tensor, clips: torch.Tensor, teacher_steps: int, steps: int, journal: ReStepJournal
) -> List[float]:
    """The chosen ``steps`` timesteps, high noise first (the teacher is run unless the journal holds its costs)."""
    if journal.state is None:
        timesteps, costs = teacher_costs(denoiser, noise, clips, teacher_steps)
        journal.record({"timesteps": timesteps, "costs": costs})
    state = journal.state
    return [state["timesteps"][i] for i in cheapest_path(state["costs"], steps)]
