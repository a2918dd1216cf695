"""Predicted PSNR of a candidate: its proxy, corrected by the runs already made.

The proxy (:mod:`ditcache.search.candidates`) ranks configs of one kind well and
configs of different kinds less well: how an error injected at a region's
output reaches the video depends on where the region ends, on the interval and
on the reuse mode (and a component schedule's proxy is in units of its own).
Every real run shows how far off the proxy was for its kind. A candidate's
predicted PSNR is its proxy in dB plus the offsets measured on runs of its
family (:func:`~ditcache.search.candidates.family`), weighted by how close their
regions end to its own (component schedules of one family weigh alike), with the mean offset of all runs as a weak prior; a
family not run yet is taken to be as good as the best family run, so that it
gets tried. Each round of the search re-ranks with what the previous rounds measured.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

from ..config import DitCacheConfig
from .candidates import AnyConfig, Candidate, family
from .records import RunRecord

Kind = Tuple[tuple, int]  # (family, where a region ends; 0 for a component schedule)

PRIOR_WEIGHT = 0.1  # weight of the mean offset over all runs (a run 3 blocks away weighs 0.125)


def proxy_db(proxy: float) -> float:
    """The proxy as a PSNR-like figure: higher is better."""
    return -10.0 * math.log10(max(proxy, 1e-30))


def _kind(config: AnyConfig) -> Kind:
    return family(config), config.cache_block_end if isinstance(config, DitCacheConfig) else 0


def _likeness(a: Kind, b: Kind) -> float:
    """Within one family, halved per block between the region ends; else 0."""
    if a[0] != b[0]:
        return 0.0
    return 0.5 ** abs(a[1] - b[1])


class QualityModel:
    """Callable: candidate -> predicted PSNR in dB. With no runs, the proxy's order."""

    def __init__(self, records: Sequence[RunRecord]) -> None:
        self._offsets: List[Tuple[Kind, float]] = [
            (_kind(r.config), r.psnr - proxy_db(r.proxy)) for r in records if math.isfinite(r.psnr)
        ]
        self._mean = sum(o for _, o in self._offsets) / len(self._offsets) if self._offsets else 0.0
        families: Dict[tuple, List[float]] = {}
        for kind, offset in self._offsets:
            families.setdefault(kind[0], []).append(offset)
        self._best_family = max((sum(o) / len(o) for o in families.values()), default=0.0)
        self._by_kind: Dict[Kind, float] = {}

    def offset(self, config: AnyConfig) -> float:
        kind = _kind(config)
        if kind not in self._by_kind:
            weights = [_likeness(kind, other) for other, _ in self._offsets]
            if sum(weights) == 0:  # a family not run yet: as good as the best family run, so it gets tried
                self._by_kind[kind] = self._best_family
            else:
                total = sum(w * o for w, (_, o) in zip(weights, self._offsets)) + PRIOR_WEIGHT * self._mean
                self._by_kind[kind] = total / (sum(weights) + PRIOR_WEIGHT)
        return self._by_kind[kind]

    def __call__(self, candidate: Candidate) -> float:
        return proxy_db(candidate.proxy) + self.offset(candidate.config)
