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

It also keeps each sub-layer's output size (L1, by step), so the search can
weigh an error by how much the sub-layer adds to its block's hidden state, and,
when asked, each sub-layer's own measured time (what skipping it saves).
"""
from __future__ import annotations

import contextlib
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
from .timing import BlockTimer

Key = Tuple[int, str]


class ComponentErrors:
    """``errors[(block, name)][k, t]``: the relative L1 error of reusing step ``t - k``'s output at ``t``.

    ``magnitudes[(block, name)][t]``: the L1 size of the output at step ``t`` (summed over passes);
    ``seconds[(block, name)]``: the sub-layer's time over the run, when it was measured.
    """

    def __init__(self, errors: Dict[Key, np.ndarray], lookahead: int,
                 magnitudes: Optional[Dict[Key, np.ndarray]] = None, seconds: Optional[Dict[Key, float]] = None) -> None:
        self.errors, self.lookahead = errors, lookahead
        self.magnitudes, self.seconds = magnitudes, seconds
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

    def state_dict(self) -> Dict[str, Any]:
        """Tensors, names and numbers only (a journal reads it back with ``weights_only=True``)."""
        keys = sorted(self.errors)
        state: Dict[str, Any] = {
            "keys": [[block, name] for block, name in keys], "lookahead": self.lookahead,
            "errors": torch.from_numpy(np.stack([self.errors[key] for key in keys])),
        }
        if self.magnitudes is not None:
            state["magnitudes"] = torch.from_numpy(np.stack([self.magnitudes[key] for key in keys]))
        if self.seconds is not None:
            state["seconds"] = [self.seconds[key] for key in keys]
        return state

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> "ComponentErrors":
        keys = [(int(block), str(name)) for block, name in state["keys"]]
        errors = dict(zip(keys, state["errors"].numpy()))
        magnitudes = dict(zip(keys, state["magnitudes"].numpy())) if "magnitudes" in state else None
        seconds = dict(zip(keys, map(float, state["seconds"]))) if "seconds" in state else None
        return cls(errors, int(state["lookahead"]), magnitudes, seconds)


class _Recorder:
    """Per thread: the step and pass counts and the last ``lookahead`` outputs of each sub-layer and pass."""

    def __init__(self, lookahead: int, steps_: int) -> None:
        self.lookahead, self.steps = lookahead, steps_
        self.local = threading.local()
        self.numerators: Dict[Key, np.ndarray] = {}
        self.denominators: Dict[Key, np.ndarray] = {}
        self.magnitudes: Dict[Key, np.ndarray] = {}
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
        size = torch.norm(current, p=1).item()
        with self.lock:
            self.magnitudes.setdefault(key, np.zeros(self.steps))[step] += size
            numerator = self.numerators.setdefault(key, np.zeros((self.lookahead + 1, self.steps)))
            denominator = self.denominators.setdefault(key, np.zeros((self.lookahead + 1, self.steps)))
            for lag in range(1, self.lookahead + 1):
                previous = history.get(step - lag)
                if previous is not None and previous.shape == current.shape:
                    numerator[lag, step] += torch.norm(current - previous, p=1).item()
                    denominator[lag, step] += size
        history[step] = current.clone()
        history.pop(step - self.lookahead, None)

    def errors(self, seconds: Optional[Dict[Key, float]] = None) -> ComponentErrors:
        tables = {}
        for key, numerator in self.numerators.items():
            denominator = self.denominators[key]
            with np.errstate(invalid="ignore", divide="ignore"):
                tables[key] = np.where(denominator > 0, numerator / denominator, np.nan)
        return ComponentErrors(tables, self.lookahead, dict(self.magnitudes), seconds)


def calibrate_components(
    blocks: nn.ModuleList, run: Callable[[], Any], num_sampling_steps: int, lookahead: int = 3,
    time_components: bool = False,
) -> ComponentErrors:
    """Run ``run()`` once uncached with every sub-layer of ``blocks`` recorded; the blocks are restored after.

    ``time_components=True`` also times every sub-layer call (the clock is read inside the recording,
    so the recording is not billed to the sub-layers).
    """
    check_int("num_sampling_steps", num_sampling_steps, 2)
    check_int("lookahead", lookahead, 1, num_sampling_steps - 1)
    names = active_components(blocks)
    keys = [(index, name) for index in range(len(blocks)) for name in names]
    modules = [getattr(blocks[index], name) for index, name in keys]
    recorder = _Recorder(lookahead, num_sampling_steps)
    timer = BlockTimer(modules) if time_components else None
    patch = InstancePatch()
    with timer if timer is not None else contextlib.nullcontext():
        try:
            for key, module in zip(keys, modules):
                patch.set(module, "forward", _recording(recorder, key, module.forward))
            run()
        finally:
            patch.restore()
    if not recorder.numerators:
        raise ValueError("calibration recorded nothing: run() never called the blocks' sub-layers")
    return recorder.errors(None if timer is None else dict(zip(keys, timer.seconds)))


def _recording(recorder: _Recorder, key: Key, original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        recorder.record(key, output)
        return output

    return forward
