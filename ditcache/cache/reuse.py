"""The reuse rules: what a store step keeps and what a reuse step returns, one class per mode.

A rule works on per-stream tensors (by stream name). The adaptor applies it to
the region's real tensors; the search times it on the calibration's tensors
and scores configs with its error model on the calibration's sketches. A new
mode is one class here, registered in :data:`REUSE_RULES`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..timing import timed

Tensors = Dict[str, torch.Tensor]


@dataclass
class Stored:
    """What a store step kept for one forward pass: the residual, and for the extrapolating rules its
    divided differences over the last store steps (``slope`` from ``previous_step``, ``curvature``)."""

    step: int
    residual: Tensors
    slope: Optional[Tensors] = None
    previous_step: Optional[int] = None
    curvature: Optional[Tensors] = None

    def tensors(self) -> Tuple[Tensors, ...]:
        """Every tensor kept (for memory accounting)."""
        return tuple(kept for kept in (self.residual, self.slope, self.curvature) if kept is not None)

    def fits(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``inputs`` have the shapes the residual was stored for."""
        return all(inputs[name].shape == self.residual[name].shape for name in self.residual)


class ResidualHistory:
    """A region's residual over the calibration's steps, with the squared errors of guessing it.

    ``residual``: (passes, steps, m) sketches of ``out_e - in_s``; ``scale``: the
    squared size of the region's own output per step, the errors' denominator.
    Error tables are built on first use and shared by the rules.
    """

    def __init__(self, residual: torch.Tensor, scale: torch.Tensor, max_interval: int) -> None:
        self.residual, self.scale, self.max_interval = residual, scale, max_interval
        self.steps = residual.shape[1]
        self._tables: Dict[Tuple[str, int], np.ndarray] = {}

    def table(self, key: Tuple[str, int], build: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]

    def relative_error(self, guess: torch.Tensor, first: int) -> np.ndarray:
        """Squared error of ``guess`` for the residual at steps ``first..``, relative to the scale."""
        diff = self.residual[:, first:] - guess
        return ((diff * diff).sum(dim=(0, 2)) / self.scale[first:]).numpy()



@functools.lru_cache(maxsize=64)
def schedules(interval: int, end: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every schedule caching steps ``start..end-1`` at once, for ``start`` in ``0..end-2``.

    Returns (start, t, phase, reused), each of shape (starts, end): ``phase`` is step ``t``'s distance
    to the last store step, ``reused`` whether ``t`` is a reuse step of the schedule from ``start``.
    """
    start = np.arange(end - 1)[:, None]
    t = np.arange(end)[None, :]
    phase = np.where(t >= start, (t - start) % interval, 0)
    reused = (t >= start) & (phase != 0)
    for shared in (start, phase, reused):  # cached: callers share them
        shared.setflags(write=False)
    return start, np.broadcast_to(t, phase.shape), phase, reused


class ReuseRule:
    """One reuse mode. ``inputs`` are the region's first block's inputs, ``outputs`` its last block's."""

    name = ""

    def store(self, previous: Optional[Stored], step: int, inputs: Tensors, outputs: Tensors) -> Stored:
        return self.keep(previous, step, {name: outputs[name] - inputs[name] for name in outputs})

    def keep(self, previous: Optional[Stored], step: int, residual: Tensors) -> Stored:
        """What a store step keeps of ``residual`` (a region's, or a sub-layer's own output)."""
        raise NotImplementedError

    def guess(self, stored: Stored, step: int) -> Tensors:
        """The residual predicted at ``step``."""
        raise NotImplementedError

    def predict(self, stored: Stored, step: int, inputs: Tensors) -> Tensors:
        raise NotImplementedError

    def proxies(self, history: ResidualHistory, interval: int, end: int,
                weights: Optional[np.ndarray] = None) -> np.ndarray:
        """Predicted error of the schedules caching steps ``start..end-1``, by ``start`` (``0..end-2``): the
        guesses' squared errors summed over their reuse steps, each times its step's ``weights`` (how
        much an error at that step reaches the output; by default 1)."""
        raise NotImplementedError


class Delta(ReuseRule):
    """The spec's rule: a reuse step adds the residual of the last store step."""

    name = "delta"

    def keep(self, previous: Optional[Stored], step: int, residual: Tensors) -> Stored:
        return Stored(step, residual)

    def guess(self, stored: Stored, step: int) -> Tensors:
        return stored.residual

    def predict(self, stored: Stored, step: int, inputs: Tensors) -> Tensors:
        return {name: inputs[name] + stored.residual[name] for name in stored.residual}

    def proxies(self, history: ResidualHistory, interval: int, end: int,
                weights: Optional[np.ndarray] = None) -> np.ndarray:
        _, t, phase, reused = schedules(interval, end)
        return _summed(self.lagged_errors(history)[t, phase], t, reused, weights)

    @staticmethod
    def lagged_errors(history: ResidualHistory) -> np.ndarray:
        """``[t, k]``: the error of using the residual of step ``t - k`` at step ``t``."""

        def build() -> np.ndarray:
            errors = np.full((history.steps, history.max_interval), np.nan)
            for lag in range(1, min(history.max_interval, history.steps)):
                errors[lag:, lag] = history.relative_error(history.residual[:, :-lag], lag)
            return errors

        return history.table(("lagged", 0), build)


class Taylor1(Delta):
    """First-order extrapolation of the residual from the last two store steps, by step distance.

    Until two store steps exist (or when their shapes differ) it adds the
    constant residual, as :class:`Delta` does.
    """

    name = "taylor1"

    def keep(self, previous: Optional[Stored], step: int, residual: Tensors) -> Stored:
        stored = super().keep(previous, step, residual)
        if (
            previous is not None and previous.step < step
            and all(previous.residual[name].shape == residual[name].shape for name in residual)
        ):
            distance = step - previous.step
            stored.slope = {name: (residual[name] - previous.residual[name]) / distance for name in residual}
            stored.previous_step = previous.step
        return stored

    def guess(self, stored: Stored, step: int) -> Tensors:
        if stored.slope is None:
            return stored.residual
        distance = step - stored.step
        return {name: torch.add(stored.residual[name], stored.slope[name], alpha=distance) for name in stored.residual}

    def predict(self, stored: Stored, step: int, inputs: Tensors) -> Tensors:
        if stored.slope is None:
            return super().predict(stored, step, inputs)
        distance = step - stored.step
        return {
            name: torch.add(inputs[name] + stored.residual[name], stored.slope[name], alpha=distance)
            for name in stored.residual
        }

    def proxies(self, history: ResidualHistory, interval: int, end: int,
                weights: Optional[np.ndarray] = None) -> np.ndarray:
        start, t, phase, reused = schedules(interval, end)
        return _summed(self.step_errors(history, interval, start, t, phase), t, reused, weights)

    def step_errors(self, history: ResidualHistory, interval: int, start: np.ndarray, t: np.ndarray,
                    phase: np.ndarray) -> np.ndarray:
        """Each reuse step's error under each schedule of :func:`schedules` (NaN where it stores)."""
        errors = self.lagged_errors(history)[t, phase]
        extrapolated = t - phase - interval >= start  # two store steps exist before t
        return np.where(extrapolated, extrapolation_errors(history, interval, 1)[t, phase], errors)


class Taylor2(Taylor1):
    """Second-order extrapolation: the parabola through the residuals of the last three store steps.

    Newton's form over the store steps ``t0 < t1 < t2``: ``r2 + d1 (t - t2) + d2 (t - t2)(t - t1)``,
    ``d1`` the slope over ``t1..t2`` and ``d2`` the change of slope over ``t0..t2``. Until three
    store steps exist it falls back to :class:`Taylor1`.
    """

    name = "taylor2"

    def keep(self, previous: Optional[Stored], step: int, residual: Tensors) -> Stored:
        stored = super().keep(previous, step, residual)
        if stored.slope is not None and previous.slope is not None and all(
            previous.slope[name].shape == stored.slope[name].shape for name in residual
        ):
            span = step - previous.previous_step
            stored.curvature = {name: (stored.slope[name] - previous.slope[name]) / span for name in residual}
        return stored

    def guess(self, stored: Stored, step: int) -> Tensors:
        linear = super().guess(stored, step)
        if stored.curvature is None:
            return linear
        factor = (step - stored.step) * (step - stored.previous_step)
        return {name: torch.add(linear[name], stored.curvature[name], alpha=factor) for name in linear}

    def predict(self, stored: Stored, step: int, inputs: Tensors) -> Tensors:
        guess = self.guess(stored, step)
        return {name: inputs[name] + guess[name] for name in guess}

    def step_errors(self, history: ResidualHistory, interval: int, start: np.ndarray, t: np.ndarray,
                    phase: np.ndarray) -> np.ndarray:
        errors = super().step_errors(history, interval, start, t, phase)
        quadratic = t - phase - 2 * interval >= start  # three store steps exist before t
        return np.where(quadratic, extrapolation_errors(history, interval, 2)[t, phase], errors)


def extrapolation_errors(history: ResidualHistory, interval: int, order: int) -> np.ndarray:
    """``[t, k]``: the error at ``t`` of extrapolating to ``order`` 1 or 2 from the store steps
    ``t - k - order * interval, ..., t - k`` (one ``interval`` apart)."""

    def build() -> np.ndarray:
        steps, residual = history.steps, history.residual
        errors = np.full((steps, interval), np.nan)
        for lag in range(1, interval):
            back = lag + order * interval  # the oldest store step is t - back
            if back >= steps:
                continue
            points = [residual[:, j * interval : steps - lag - (order - j) * interval] for j in range(order + 1)]
            recent, older = points[-1], points[-2]
            guess = recent + (recent - older) * (lag / interval)
            if order == 2:
                curvature = ((recent - older) - (older - points[0])) / (2 * interval * interval)
                guess = guess + curvature * (lag * (lag + interval))
            errors[back:, lag] = history.relative_error(guess, back)
        return errors

    return history.table(("extrapolated", interval * 10 + order), build)


def _summed(errors: np.ndarray, t: np.ndarray, reused: np.ndarray, weights: Optional[np.ndarray]) -> np.ndarray:
    """Each schedule's errors over its reuse steps, weighted by step, summed."""
    if weights is not None:
        errors = errors * weights[t]
    return np.where(reused, errors, 0.0).sum(axis=1)


REUSE_RULES: Dict[str, ReuseRule] = {rule.name: rule for rule in (Delta(), Taylor1(), Taylor2())}


def reuse_rule(name: str) -> ReuseRule:
    """The rule of reuse mode ``name``."""
    if name not in REUSE_RULES:
        raise ValueError(f"reuse must be one of {list(REUSE_RULES)}, got {name!r}")
    return REUSE_RULES[name]


def _cost_key(mode: str, op: str) -> str:
    return f"{mode}_{op}"


def time_rules(inputs: Tensors, outputs: Tensors, device: Optional[torch.device], repeats: int = 5) -> Dict[str, float]:
    """Median seconds of each rule's store and predict on real tensors, by ``"<mode>_<store|reuse>"``."""
    costs = {}
    for name, rule in REUSE_RULES.items():
        previous = rule.store(rule.store(None, 0, inputs, outputs), 1, inputs, outputs)
        stored = rule.store(previous, 2, inputs, outputs)  # three store steps: every rule extrapolates fully
        work = {"store": lambda: rule.store(previous, 2, inputs, outputs), "reuse": lambda: rule.predict(stored, 3, inputs)}
        for op, compute in work.items():
            costs[_cost_key(name, op)] = float(np.median([timed(compute, device)[1] for _ in range(repeats)]))
    return costs


def arithmetic_seconds(costs: Mapping[str, float], mode: str, stores: int, reuses: int) -> float:
    """Time of a rule's own arithmetic over ``stores`` store and ``reuses`` reuse passes."""
    return stores * costs.get(_cost_key(mode, "store"), 0.0) + reuses * costs.get(_cost_key(mode, "reuse"), 0.0)
