"""Component schedules as search candidates: SmoothCache's thresholds swept, each with a predicted speed and error.

The calibration's component measurement (:func:`~ditcache.component_calibration.calibrate_components`,
with each sub-layer's own time) gives every schedule its predictions:

* speed: the uncached time minus the measured time of every sub-layer call a
  schedule skips, plus the extrapolating rule's own arithmetic (measured on the
  calibration's tensors, like the region rules');
* error ("proxy"): at each step, the L1 error of the outputs it reuses
  (SmoothCache's relative error times the output's size) over the size of every
  sub-layer's output at that step, squared, summed over steps (each times its
  measured sensitivity, when probed). ``taylor1`` is ranked by the same lag
  errors as ``delta``: the real runs, through the ranking's per-family offsets
  (:mod:`ditcache.search.ranking`), tell how far extrapolation moves it.

Schedules are SmoothCache's scan at thresholds ``alpha`` taken from the measured
errors themselves, for every subset of the sub-layers, one line per sub-layer
shared by the blocks (as SmoothCache) or one per block; identical schedules are kept once.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..component_calibration import ComponentErrors
from ..component_config import ComponentCacheConfig, parse_key
from .recording import Calibration

ALPHAS = 48  # thresholds swept, at evenly spaced quantiles of the measured errors


def component_key(config: ComponentCacheConfig) -> str:
    """A schedule's name in the journal and tables, e.g. ``components-attn1+ff-block-delta-3f2a9c01d4e6``:
    what it governs and a digest of its lines (never a region key, which starts with ``s<block>``)."""
    digest = hashlib.sha1(json.dumps(sorted(config.schedule.items())).encode()).hexdigest()[:12]
    layout = "block" if is_per_block(config) else "shared"
    return f"components-{'+'.join(config.components)}-{layout}-{config.reuse}-{digest}"


def is_per_block(config: ComponentCacheConfig) -> bool:
    return any(parse_key(key)[1] is not None for key in config.schedule)


def reused_share(config: ComponentCacheConfig, blocks: int) -> float:
    """The share of the governed sub-layers' calls a schedule reuses."""
    lines = [config.line(name, block) for name in config.components for block in range(blocks)]
    lines = [line for line in lines if line is not None]
    return sum(line.count(0) for line in lines) / max(1, sum(len(line) for line in lines))


def describe(config: ComponentCacheConfig, blocks: int) -> str:
    layout = "per block" if is_per_block(config) else "shared by the blocks"
    return (f"sub-layers {', '.join(config.components)} ({layout}, {config.reuse}) reused at "
            f"{100 * reused_share(config, blocks):.0f}% of their calls")


def _arithmetic_seconds(cal: Calibration, reuse: str, computed: int, reused: int) -> float:
    """What ``reuse`` adds per forward pass to a sub-layer's calls: ``delta`` keeps and hands back the output
    itself; ``taylor1`` also makes a slope when it computes and adds it when it reuses (the part of the region
    rule's measured cost beyond ``delta``'s)."""
    if reuse == "delta":
        return 0.0
    ops = cal.op_seconds
    slope = max(0.0, ops.get(f"{reuse}_store", 0.0) - ops.get("delta_store", 0.0))
    extrapolate = max(0.0, ops.get(f"{reuse}_reuse", 0.0) - ops.get("delta_reuse", 0.0))
    return computed * slope + reused * extrapolate


def predicted_seconds(cal: Calibration, errors: ComponentErrors, config: ComponentCacheConfig) -> float:
    """Run time of ``config`` predicted from the measured sub-layer times."""
    seconds = cal.full_seconds
    for (block, name), spent in errors.seconds.items():
        line = config.line(name, block)
        if line is None:
            continue
        reused = line.count(0)
        seconds += -spent * reused / len(line) + cal.passes * _arithmetic_seconds(cal, config.reuse,
                                                                                  len(line) - reused, reused)
    return seconds


class ErrorModel:
    """The predicted error of a schedule (see the module docstring), each line's share computed once."""

    def __init__(self, errors: ComponentErrors, step_weights: Optional[np.ndarray] = None) -> None:
        self.errors, self.step_weights = errors, step_weights
        self.total = np.sum(list(errors.magnitudes.values()), axis=0)  # (steps,): every sub-layer's output size
        self._wrong: Dict[Tuple[int, str, Tuple[int, ...]], np.ndarray] = {}

    def wrong(self, block: int, name: str, line: Tuple[int, ...]) -> np.ndarray:
        """By step, the L1 error the line's reused outputs of one sub-layer carry."""
        key = (block, name, line)
        if key not in self._wrong:
            errors = self.errors
            table, size = errors.errors[(block, name)], errors.magnitudes[(block, name)]
            wrong = np.zeros(errors.steps)
            last = 0
            for step, computes in enumerate(line):
                if computes or step == 0:
                    last = step
                else:
                    wrong[step] = np.nan_to_num(table[min(step - last, errors.lookahead), step]) * size[step]
            self._wrong[key] = wrong
        return self._wrong[key]

    def __call__(self, config: ComponentCacheConfig) -> float:
        wrong = np.zeros(self.errors.steps)
        for block, name in self.errors.errors:
            line = config.line(name, block)
            if line is not None:
                wrong += self.wrong(block, name, line)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(self.total > 0, wrong / self.total, 0.0) ** 2
        if self.step_weights is not None:
            relative = relative * self.step_weights
        return float(relative.sum())


def _alphas(errors: ComponentErrors) -> np.ndarray:
    values = np.concatenate([table[1:].ravel() for table in errors.errors.values()])
    values = values[np.isfinite(values)]
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, ALPHAS)))


def schedules(errors: ComponentErrors, reuse_modes: Sequence[str]) -> List[ComponentCacheConfig]:
    """Every distinct schedule of the sweep (alpha, sub-layer subset, shared or per block, reuse mode)
    that reuses anything."""
    names = errors.components
    blocks = errors.num_blocks
    found: Dict[str, ComponentCacheConfig] = {}
    for alpha in _alphas(errors).tolist():
        shared = {name: tuple(errors.line(errors.mean_over_blocks(name), alpha)) for name in names}
        own = {(name, block): tuple(errors.line(errors.errors[(block, name)], alpha))
               for name in names for block in range(blocks)}
        for size in range(1, len(names) + 1):
            for subset in itertools.combinations(names, size):
                layouts: List[Dict[str, Tuple[int, ...]]] = [
                    {name: shared[name] for name in subset},
                    {f"{name}-{block}": own[(name, block)] for name in subset for block in range(blocks)},
                ]
                for lines in layouts:
                    if all(0 not in line for line in lines.values()):
                        continue
                    for reuse in reuse_modes:
                        config = ComponentCacheConfig(lines, reuse=reuse)
                        found.setdefault(component_key(config), config)
    return list(found.values())
