"""Every cache config, with its predicted speedup and a predicted error, from one calibration.

Predicted speedup: the calibration's measured time minus the time of the
blocks a config skips, plus the cache's own arithmetic, both measured.

Predicted error ("proxy"): the error a config injects at its region's output,
summed over its reuse steps. On a reuse step ``t`` with store step ``t0`` the
region returns ``in_s(t) + delta(t0)`` instead of ``in_s(t) + delta(t)``; the
squared size of ``delta(t) - delta(t0)`` relative to the model's final hidden
state at ``t`` is that step's contribution. It ranks configs; the best few are
then run for real.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..config import DitCacheConfig
from .calibration import Calibration


@dataclass(frozen=True)
class Candidate:
    config: DitCacheConfig
    predicted_speedup: float
    proxy: float

    def key(self) -> str:
        c = self.config
        return f"s{c.cache_block_start}-n{c.cache_num_blocks}-t{c.cache_step_start}-i{c.cache_step_interval}"


def _step_counts(num_steps: int, start: int, interval: int) -> tuple:
    """(store steps, reuse steps) of a schedule."""
    cached = max(num_steps - start, 0)
    store = -(-cached // interval)
    return store, cached - store


def predicted_seconds(cal: Calibration, config: DitCacheConfig) -> float:
    """Run time of ``config`` predicted from the calibration's measured times."""
    store, reuse = _step_counts(cal.num_steps, config.cache_step_start, config.cache_step_interval)
    region = cal.block_seconds[config.cache_block_start : config.cache_block_end + 1]
    skipped = sum(region) * reuse / cal.num_steps
    arithmetic = cal.op_seconds * cal.passes * (store + reuse)
    return cal.full_seconds - skipped + arithmetic


def predicted_speedup(cal: Calibration, config: DitCacheConfig) -> float:
    return cal.full_seconds / predicted_seconds(cal, config)


def _lag_errors(cal: Calibration, max_interval: int) -> Dict[tuple, np.ndarray]:
    """For each region (s, e): errors[t, lag] of reusing the delta of step t - lag at step t."""
    steps = cal.num_steps
    final = cal.block_out[:, :, -1, :].double()
    scale = (final * final).sum(dim=(0, 2)).clamp_min(1e-30)  # (steps,)
    out: Dict[tuple, np.ndarray] = {}
    blocks = cal.block_in.shape[2]
    for s in range(blocks):
        start = cal.block_in[:, :, s, :].double()
        for e in range(s, blocks):
            delta = cal.block_out[:, :, e, :].double() - start  # (passes, steps, m)
            errors = np.zeros((steps, max_interval))
            for lag in range(1, min(max_interval, steps)):
                diff = delta[:, lag:, :] - delta[:, :-lag, :]
                errors[lag:, lag] = ((diff * diff).sum(dim=(0, 2)) / scale[lag:]).numpy()
            out[(s, e)] = errors
    return out


def enumerate_candidates(cal: Calibration, max_interval: int) -> List[Candidate]:
    """Every (region, step start, interval) with its predicted speedup and proxy error."""
    steps = cal.num_steps
    errors = _lag_errors(cal, max_interval)
    candidates = []
    t = np.arange(steps)
    for (s, e), lag_errors in errors.items():
        for interval in range(2, max_interval + 1):
            for start in range(0, steps - 1):
                phase = (t[start:] - start) % interval
                proxy = float(lag_errors[t[start:], phase].sum())
                config = DitCacheConfig(
                    cache_step_start=start, cache_step_interval=interval, cache_block_start=s,
                    cache_num_blocks=e - s + 1, num_sampling_steps=steps,
                )
                candidates.append(Candidate(config, predicted_speedup(cal, config), proxy))
    return candidates


def pareto_front(candidates: List[Candidate]) -> List[Candidate]:
    """Candidates no other beats on both predicted speedup and proxy, fastest last."""
    ordered = sorted(candidates, key=lambda c: (-c.predicted_speedup, c.proxy))
    front, best = [], float("inf")
    for candidate in ordered:
        if candidate.proxy < best:
            front.append(candidate)
            best = candidate.proxy
    return front[::-1]


def best_for_target(candidates: List[Candidate], target: float, count: int) -> List[Candidate]:
    """The ``count`` lowest-proxy candidates predicted to reach ``target``, one per (region, interval)."""
    reaching = [c for c in candidates if c.predicted_speedup >= target]
    best: Dict[tuple, Candidate] = {}
    for c in reaching:
        key = (c.config.cache_block_start, c.config.cache_num_blocks, c.config.cache_step_interval)
        if key not in best or c.proxy < best[key].proxy:
            best[key] = c
    return sorted(best.values(), key=lambda c: c.proxy)[:count]
