"""Wall-clock timing that is honest on accelerators: synchronise before reading the clock."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import steps
from ._patch import InstancePatch, observe_forwards


def synchronize(device: Optional[torch.device] = None) -> None:
    """Wait for queued work on ``device`` (cuda, npu, xpu, mps...); a no-op on the CPU."""
    if device is None or device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize()


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def timed(fn: Callable[[], Any], device: Optional[torch.device] = None) -> Tuple[Any, float]:
    """``fn()``'s result and the seconds it took, with the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


class BlockTimer:
    """Time spent inside each block of a list over the calls it sees.

    Each block's ``forward`` is wrapped (as the cache patches it, so direct
    ``block.forward(...)`` calls count too) to read the clock around it,
    synchronising the device, so the time of block ``i`` is what a caller waits
    for it; everything else in a run is the "rest". Use as a context manager
    around one or more runs.

    A block's time is the median of its calls times their number: a call slowed by
    another process on the host (noise only ever slows) does not inflate it.
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        self.calls: List[List[float]] = [[] for _ in self.blocks]
        self.call_steps: List[List[Optional[int]]] = [[] for _ in self.blocks]  # the denoising step of each call
        self._device = module_device(self.blocks[0])
        self._patch: Optional[InstancePatch] = None
        self._started: List[float] = [0.0] * len(self.blocks)

    def __enter__(self) -> "BlockTimer":
        self._patch = observe_forwards(self.blocks, self._after, self._before)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._patch is not None:
            self._patch.restore()
            self._patch = None

    def _before(self, index: int) -> None:
        synchronize(self._device)
        self._started[index] = time.perf_counter()

    def _after(self, index: int, block: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        synchronize(self._device)
        self.calls[index].append(time.perf_counter() - self._started[index])
        self.call_steps[index].append(steps.current_step())

    @property
    def seconds(self) -> List[float]:
        """Per block: the median call's time times the calls."""
        return [statistics.median(calls) * len(calls) if calls else 0.0 for calls in self.calls]


def steady_seconds(wall_seconds: float, passes: Sequence[float], kinds: Sequence[Hashable]) -> float:
    """A run's seconds with each forward pass of the model at the median pass of its kind.

    ``passes`` are the seconds of the model's forward passes in the run, ``kinds`` what each pass
    did (steps a cache treats alike are one kind). Another process on the host slows stretches of a
    run, and only ever slows them: a kind's median pass is what a quiet run's passes of that kind
    take, so this is the run's time without the stretches, where the whole run's clock swings with
    them. The time outside the passes (encoding, scheduler steps, decoding) is taken as measured.
    """
    if not passes:
        return wall_seconds
    by_kind: Dict[Hashable, List[float]] = {}
    for seconds, kind in zip(passes, kinds):
        by_kind.setdefault(kind, []).append(seconds)
    steady = sum(statistics.median(times) * len(times) for times in by_kind.values())
    return wall_seconds - sum(passes) + steady
