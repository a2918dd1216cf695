"""A run of one config, as the search decides on it and its journal and report keep it.

A record holds the screening run (quality against the references, and its
timing against the calibration's uncached time) and the interleaved uncached /
cached pairs that confirmed its speed, if any. Noise on a shared host only ever
slows a run, and a pair runs both sides back to back under the same load, so a
pair's ratio is the confirmation's unit; the speed is their median and how sure
it is comes from how far they spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..adaptor import cache_config_from_dict
from .candidates import AnyConfig, Candidate, config_key, schedule_kind

PAIR_NOISE = 0.02  # the least relative uncertainty claimed for a confirmed speed, however close its pairs fell


@dataclass(frozen=True)
class RunRecord:
    config: AnyConfig  # a block region or a component schedule
    predicted_speedup: float
    proxy: float
    seconds: float  # the screening run
    measured_speedup: float  # the screening run against the calibration's uncached time
    psnr: float
    ssim: float
    mse: float
    runs: int = 1  # full runs it cost, confirmation pairs included
    pairs: Tuple[Tuple[float, float], ...] = ()  # (uncached s, cached s) of each interleaved confirmation pair

    @classmethod
    def of(cls, candidate: Candidate, seconds: float, uncached_seconds: float, scores: Mapping[str, float]) -> "RunRecord":
        return cls(candidate.config, candidate.predicted_speedup, candidate.proxy, seconds,
                   uncached_seconds / seconds, scores["psnr"], scores["ssim"], scores["mse"])

    def ranked_as(self, candidate: Candidate) -> "RunRecord":
        """This run with ``candidate``'s predicted speedup and proxy (the same config, ranked anew)."""
        return replace(self, predicted_speedup=candidate.predicted_speedup, proxy=candidate.proxy)

    @property
    def key(self) -> str:
        return config_key(self.config)

    @property
    def kind(self) -> str:
        """``"region"`` or ``"component"``."""
        return schedule_kind(self.config)

    @property
    def ratios(self) -> Tuple[float, ...]:
        return tuple(plain / cached for plain, cached in self.pairs)

    @property
    def confirmed_speedup(self) -> Optional[float]:
        """The median ratio of the confirmation pairs, or ``None`` before any."""
        return float(np.median(self.ratios)) if self.pairs else None

    @property
    def speed_uncertainty(self) -> Optional[float]:
        """Relative half-width of the confirmed speed: half the spread of the pairs' log ratios over sqrt(pairs),
        at least :data:`PAIR_NOISE`; ``None`` with fewer than two pairs (one pair says nothing of its noise)."""
        if len(self.pairs) < 2:
            return None
        logs = np.log(self.ratios)
        return max(PAIR_NOISE, float(logs.max() - logs.min()) / 2 / math.sqrt(len(logs)))

    def speed_bounds(self) -> Optional[Tuple[float, float]]:
        """(low, high) of the confirmed speed, or ``None`` without two pairs."""
        u = self.speed_uncertainty
        if u is None:
            return None
        return self.confirmed_speedup * math.exp(-u), self.confirmed_speedup * math.exp(u)

    def clears(self, target: float) -> Optional[bool]:
        """True / False once the confirmed speed is surely above / below ``target``; ``None`` while unsure."""
        bounds = self.speed_bounds()
        if bounds is None:
            return None
        if bounds[0] >= target:
            return True
        if bounds[1] < target:
            return False
        return None

    @property
    def speedup(self) -> float:
        """The record's best speed figure: confirmed by pairs when it was, else its screening timing."""
        confirmed = self.confirmed_speedup
        return self.measured_speedup if confirmed is None else confirmed

    def with_pair(self, plain_seconds: float, cached_seconds: float) -> "RunRecord":
        return replace(self, pairs=self.pairs + ((plain_seconds, cached_seconds),), runs=self.runs + 2)

    def to_dict(self) -> Dict[str, Any]:
        """JSON for the journal and the report; the derived figures are written too, for readers of the file."""
        out: Dict[str, Any] = {
            "key": self.key, "config": self.config.to_dict(), "predicted_speedup": self.predicted_speedup,
            "proxy": self.proxy, "seconds": self.seconds, "measured_speedup": self.measured_speedup,
            "psnr": self.psnr, "ssim": self.ssim, "mse": self.mse, "runs": self.runs,
        }
        if self.kind != "region":  # a region's record reads as it always did
            out["kind"] = self.kind
        if self.pairs:
            out.update(pairs=[list(pair) for pair in self.pairs], confirm_ratios=list(self.ratios),
                       confirmed_speedup=self.confirmed_speedup)
            bounds = self.speed_bounds()
            if bounds is not None:
                out["confirmed_bounds"] = list(bounds)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunRecord":
        return cls(
            cache_config_from_dict(data["config"], "a journalled run's config"), float(data["predicted_speedup"]), float(data["proxy"]),
            float(data["seconds"]), float(data["measured_speedup"]), float(data["psnr"]), float(data["ssim"]),
            float(data["mse"]), int(data["runs"]), tuple((float(p), float(c)) for p, c in data.get("pairs", ())),
        )

    def describe_speed(self) -> str:
        """E.g. ``1.462x (1.43-1.49x over 2 pairs)``: the speed and how sure it is."""
        if not self.pairs:
            return f"{self.measured_speedup:.3f}x (one screening run, not confirmed)"
        bounds = self.speed_bounds()
        if bounds is None:
            return f"{self.confirmed_speedup:.3f}x (one pair)"
        return f"{self.confirmed_speedup:.3f}x ({bounds[0]:.2f}-{bounds[1]:.2f}x over {len(self.pairs)} pairs)"


def enough_pairs(record: RunRecord, target: Optional[float], most: int) -> bool:
    """Whether ``record``'s confirmation is done: ``most`` pairs, or two and a sure verdict on ``target``
    (with no target, two pairs)."""
    if len(record.pairs) >= most:
        return True
    if len(record.pairs) < 2:
        return False
    return target is None or record.clears(target) is not None
