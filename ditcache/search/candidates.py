"""Every cache config, with its predicted speedup and a predicted error, from one calibration.

Predicted speedup: the calibration's measured time minus the time of the
blocks a config skips, plus the cache's own arithmetic, both measured.

Predicted error ("proxy"): the error a config injects at its region's output,
summed over its reuse steps: the squared size of what the reuse rule guesses
for the region's residual minus the residual itself, relative to the region's
own output at that step (relative to the model's final state instead, regions
ending in the last blocks look far worse than they are). Each rule's error
model is in :mod:`ditcache.cache.reuse`. It ranks configs; the best few are
then run for real.

Component schedules (:mod:`ditcache.search.component_candidates`) are
candidates too, beside regions: one more family, with its own predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..cache.reuse import ResidualHistory, arithmetic_seconds, reuse_rule
from ..component_config import ComponentCacheConfig
from ..config import DitCacheConfig
from . import component_candidates as components
from .recording import Calibration

AnyConfig = Union[DitCacheConfig, ComponentCacheConfig]

SPARED_ENDS = (0, 1, 2, 3)  # final steps a searched config may run in full


def config_key(config: AnyConfig) -> str:
    """A config's name in the search's journal and tables, e.g. ``s0-n12-t20-i2-delta`` (a component
    schedule's: :func:`~ditcache.search.component_candidates.component_key`)."""
    if isinstance(config, ComponentCacheConfig):
        return components.component_key(config)
    end = "" if config.cache_step_end is None else f"-e{config.cache_step_end}"
    return (f"s{config.cache_block_start}-n{config.cache_num_blocks}-t{config.cache_step_start}"
            f"-i{config.cache_step_interval}-{config.reuse}{end}")


def schedule_kind(config: AnyConfig) -> str:
    """``"component"`` or ``"region"``: the family of configs ``config`` belongs to."""
    return "component" if isinstance(config, ComponentCacheConfig) else "region"


def family(config: AnyConfig) -> tuple:
    """Configs whose proxies compare well with each other: a region's interval and reuse mode; a component
    schedule's reuse mode."""
    if isinstance(config, ComponentCacheConfig):
        return ("component", config.reuse)
    return config.cache_step_interval, config.reuse


def kind(config: AnyConfig) -> tuple:
    """Configs that differ only in where they start caching (a region) or how much (a component threshold)."""
    if isinstance(config, ComponentCacheConfig):
        return ("component", config.components, components.is_per_block(config), config.reuse)
    return config.cache_block_start, config.cache_num_blocks, config.cache_step_interval, config.reuse


def describe(config: AnyConfig, blocks: int) -> str:
    """A config in words, for messages."""
    if isinstance(config, ComponentCacheConfig):
        return components.describe(config, blocks)
    end = "" if config.cache_step_end is None else f" to {config.cache_step_end}"
    return (f"blocks {config.cache_block_start}..{config.cache_block_end}, from step {config.cache_step_start}{end}, "
            f"interval {config.cache_step_interval}")


@dataclass(frozen=True)
class Candidate:
    config: AnyConfig
    predicted_speedup: float
    proxy: float

    def key(self) -> str:
        return config_key(self.config)


def _step_counts(num_steps: int, config: DitCacheConfig) -> tuple:
    """(store steps, reuse steps) of a config's schedule."""
    end = num_steps if config.cache_step_end is None else min(config.cache_step_end, num_steps)
    interval = config.cache_step_interval
    cached = max(end - config.cache_step_start, 0)
    store = -(-cached // interval)
    return store, cached - store


def last_reuse_step(start: int, interval: int, end: int) -> Optional[int]:
    """The last step a schedule reuses at before ``end`` (``None``: it reuses at none)."""
    last = end - 1
    if (last - start) % interval == 0:  # a store step; the one before it reuses (interval >= 2)
        last -= 1
    return last if last > start else None


def predicted_seconds(cal: Calibration, config: DitCacheConfig) -> float:
    """Run time of ``config`` predicted from the calibration's measured times."""
    store, reuse = _step_counts(cal.num_steps, config)
    region = cal.block_seconds[config.cache_block_start : config.cache_block_end + 1]
    skipped = sum(region) * reuse / cal.num_steps
    arithmetic = cal.passes * arithmetic_seconds(cal.op_seconds, config.reuse, store, reuse)
    return cal.full_seconds - skipped + arithmetic


def predicted_speedup(cal: Calibration, config: DitCacheConfig) -> float:
    return cal.full_seconds / predicted_seconds(cal, config)


def enumerate_candidates(cal: Calibration, max_interval: int, reuse_modes: Sequence[str] = ("delta",),
                         spared_ends: Sequence[int] = SPARED_ENDS,
                         step_weights: Optional[np.ndarray] = None) -> List[Candidate]:
    """Every (region, step start, interval, reuse mode, spared last steps) with its predicted speedup and proxy.

    ``spared_ends``: how many final steps may run in full (0: cache to the end, no ``cache_step_end``).
    ``step_weights``: a measured sensitivity per step (:mod:`ditcache.search.sensitivity`) weighing
    each reuse step's error by how much of it reaches the videos.
    """
    steps = cal.num_steps
    blocks = cal.block_in.shape[2]
    outputs = [cal.block_out[:, :, e, :].double() for e in range(blocks)]
    scales = [(output * output).sum(dim=(0, 2)).clamp_min(1e-30) for output in outputs]  # (steps,) each
    candidates = []
    for s in range(blocks):
        start_state = cal.block_in[:, :, s, :].double()
        for e in range(s, blocks):
            history = ResidualHistory(outputs[e] - start_state, scales[e], max_interval)
            for reuse in reuse_modes:
                rule = reuse_rule(reuse)
                for interval in range(2, max_interval + 1):
                    schedules = set()  # (start, last reuse step): sparing only store steps changes nothing
                    for spared in sorted(spared_ends):
                        end = None if spared == 0 else steps - spared
                        proxies = rule.proxies(history, interval, end or steps, step_weights)
                        for start, proxy in enumerate(proxies.tolist()):
                            last = last_reuse_step(start, interval, end or steps)
                            if last is None or (start, last) in schedules:
                                continue
                            schedules.add((start, last))
                            config = DitCacheConfig(
                                cache_step_start=start, cache_step_interval=interval, cache_block_start=s,
                                cache_num_blocks=e - s + 1, num_sampling_steps=steps, reuse=reuse,
                                cache_step_end=end,
                            )
                            candidates.append(Candidate(config, predicted_speedup(cal, config), proxy))
    return candidates


def enumerate_component_candidates(cal: Calibration, reuse_modes: Sequence[str],
                                   step_weights: Optional[np.ndarray] = None) -> List[Candidate]:
    """Every component schedule of the sweep with its predicted speedup and proxy."""
    errors = cal.component_errors()
    error = components.ErrorModel(errors, step_weights)
    return [Candidate(config, cal.full_seconds / components.predicted_seconds(cal, errors, config), error(config))
            for config in components.schedules(errors, reuse_modes)]


def pareto_front(candidates: List[Candidate]) -> List[Candidate]:
    """Candidates no other beats on both predicted speedup and proxy, slowest first."""
    ordered = sorted(candidates, key=lambda c: (-c.predicted_speedup, c.proxy))
    front, best = [], float("inf")
    for candidate in ordered:
        if candidate.proxy < best:
            front.append(candidate)
            best = candidate.proxy
    return front[::-1]


def best_for_target(candidates: List[Candidate], target: float, count: int,
                    score: Optional[Callable[[Candidate], float]] = None,
                    exclude: Collection[str] = ()) -> List[Candidate]:
    """The ``count`` best-scored candidates predicted to reach ``target`` (default score: lowest proxy).

    One per :func:`kind`, taken in turn from each :func:`family`, best family first: the proxy compares configs of one family better than configs of
    different families, so one family it over-rates must not fill every slot. Keys in ``exclude``
    (configs already run) are skipped.
    """
    score = score or (lambda c: -c.proxy)
    best: Dict[tuple, Tuple[float, Candidate]] = {}
    for c in candidates:
        if c.predicted_speedup < target or c.key() in exclude:
            continue
        its_kind = kind(c.config)
        value = score(c)
        if its_kind not in best or value > best[its_kind][0]:
            best[its_kind] = (value, c)
    families: Dict[tuple, List[Candidate]] = {}
    for _, c in sorted(best.values(), key=lambda pair: -pair[0]):
        families.setdefault(family(c.config), []).append(c)
    picked: List[Candidate] = []
    for depth in range(max((len(f) for f in families.values()), default=0)):
        picked += [family[depth] for family in families.values() if depth < len(family)]
    return picked[:count]
