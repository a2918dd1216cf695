"""Component schedules from one uncached run: each sub-layer's output error over steps, then a threshold.

The calibration records, for every sub-layer of every block, the relative L1
error ``|out_t - out_{t-k}|_1 / |out_t|_1`` of reusing the output of step
``t - k`` at step ``t`` (``k = 1 .. lookahead``), summed over the forward
passes of a step (classifier-free guidance as one batched forward or as two
gives the same numbers). :meth:`ComponentErrors.schedule` turns a threshold
``alpha`` into a :class:`~ditcache.component_config.ComponentCacheConfig` as
SmoothCache does: scanning the steps, a sub-layer computes at step ``i`` and
skips the next ``k`` steps for the largest ``k`` whose error is at most
``alpha``; the first and last steps always compute. SmoothCache averages the
errors over blocks into one line per sub-layer; ``per_block=True`` gives each
block its own line instead.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import steps
from ._patch import InstancePatch
from .cache.components import active_components
from .component_config import ComponentCacheConfig
from .config import check_int

Key = Tuple[int, str]


class ComponentErrors:
    """``errors[(block, name)][k, t]``: the relative L1 error of reusing step ``t - k``'s output at ``t``."""

    def __init__(self, errors: Dict[Key, np.ndarray], lookahead: int) -> None:
        self.errors, self.lookahead = errors, lookahead
        self.steps = next(iter(errors.values())).shape[1]

    @property
    def components(self) -> List[str]:
        return sorted({name for _, name in self.errors})

    @property
    def num_blocks(self) -> int:
        return 1 + max(block for block, _ in self.errors)

    def mean_over_blocks(self, name: str) -> np.ndarray:
        return np.mean([table for (_, component), table in self.errors.items() if component == name], axis=0)

    def line(self, table: np.ndarray, alpha: float) -> List[int]:
        """SmoothCache's scan of one error table into a 0/1 line."""
        line = [1] * self.steps
        i = 0
        while i < self.steps:
            for lag in range(self.lookahead, 0, -1):
                if i + lag < self.steps and table[lag, i + lag] <= alpha:
                    line[i + 1 : i + lag + 1] = [0] * lag
                    i += lag + 1
                    break
            else:
                i += 1
        line[0] = line[-1] = 1
        return line

    def schedule(
        self, alpha: float, components: Optional[Sequence[str]] = None, per_block: bool = False, reuse: str = "delta"
    ) -> ComponentCacheConfig:
        """The schedule at threshold ``alpha`` for ``components`` (default: every sub-layer calibrated)."""
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < float("inf"):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        names = list(components) if components is not None else self.components
        unknown = sorted(set(names) - set(self.components))
        if unknown or not names:
            raise ValueError(f"components must be a non-empty subset of {self.components}, got {names}")
        lines: Dict[str, List[int]] = {}
        for name in names:
            if per_block:
                for block in range(self.num_blocks):
                    lines[f"{name}-{block}"] = self.line(self.errors[(block, name)], alpha)
            else:
                lines[name] = self.line(self.mean_over_blocks(name), alpha)
        return ComponentCacheConfig(lines, reuse=reuse)


class _Recorder:
    """Per thread: the step and pass counts and the last ``lookahead`` outputs of each sub-layer and pass."""

    def __init__(self, lookahead: int, steps_: int) -> None:
        self.lookahead, self.steps = lookahead, steps_
        self.local = threading.local()
        self.numerators: Dict[Key, np.ndarray] = {}
        self.denominators: Dict[Key, np.ndarray] = {}
        self.lock = threading.Lock()

    def record(self, key: Key, output: torch.Tensor) -> None:
        step = steps.current_step()
        if step is None or step >= self.steps:
            raise ValueError(
                f"calibration saw step {step}; it needs a run of exactly {self.steps} steps whose scheduler is "
                "tracked (or set_timestep_idx / @timestep_aware)"
            )
        local = self.local
        if getattr(local, "step", None) != step:
            local.step, local.calls = step, {}
            if not hasattr(local, "history"):
                local.history = {}
        pass_index = local.calls.get(key, 0)
        local.calls[key] = pass_index + 1
        history = local.history.setdefault((pass_index, *key), {})
        current = output.detach().float()
        with self.lock:
            numerator = self.numerators.setdefault(key, np.zeros((self.lookahead + 1, self.steps)))
            denominator = self.denominators.setdefault(key, np.zeros((self.lookahead + 1, self.steps)))
            for lag in range(1, self.lookahead + 1):
                previous = history.get(step - lag)
                if previous is not None and previous.shape == current.shape:
                    numerator[lag, step] += torch.norm(current - previous, p=1).item()
                    denominator[lag, step] += torch.norm(current, p=1).item()
        history[step] = current.clone()
        history.pop(step - self.lookahead, None)

    def errors(self) -> ComponentErrors:
        tables = {}
        for key, numerator in self.numerators.items():
            denominator = self.denominators[key]
            with np.errstate(invalid="ignore", divide="ignore"):
                tables[key] = np.where(denominator > 0, numerator / denominator, np.nan)
        return ComponentErrors(tables, self.lookahead)


def calibrate_components(
    blocks: nn.ModuleList, run: Callable[[], Any], num_sampling_steps: int, lookahead: int = 3
) -> ComponentErrors:
    """Run ``run()`` once uncached with every sub-layer of ``blocks`` recorded; the blocks are restored after."""
    check_int("num_sampling_steps", num_sampling_steps, 2)
    check_int("lookahead", lookahead, 1, num_sampling_steps - 1)
    names = active_components(blocks)
    recorder = _Recorder(lookahead, num_sampling_steps)
    patch = InstancePatch()
    try:
        for index, block in enumerate(blocks):
            for name in names:
                module = getattr(block, name)
                patch.set(module, "forward", _recording(recorder, (index, name), module.forward))
        run()
    finally:
        patch.restore()
    if not recorder.numerators:
        raise ValueError("calibration recorded nothing: run() never called the blocks' sub-layers")
    return recorder.errors()


def _recording(recorder: _Recorder, key: Key, original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        recorder.record(key, output)
        return output

    return forward
