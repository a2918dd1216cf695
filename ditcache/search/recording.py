"""The calibration run: reference videos, measured block times, and sketches of block boundaries.

One uncached run of the user's callable yields everything the search needs to
rank candidates without running them:

* the time of every block and of the rest of the run (wall clock, device
  synchronised), with the time spent recording statistics subtracted: a
  typical forward pass of the model and each block's share of its own pass,
  both medians over the passes (:meth:`CalibrationRecorder.steady_times`);
* the time of each reuse rule's own arithmetic per forward pass, measured on
  the real tensors;
* at every step, a *sketch* of each block's input and output: a fixed random
  subset of token rows times a fixed random projection of the channels. A
  sketch is linear, so the sketch of a region's residual ``out_e - in_s`` is
  the difference of two sketches, and its norm estimates the full one's.

A search over component schedules adds one more uncached run
(:func:`~ditcache.component_calibration.calibrate_components`): each
sub-layer's error over steps and its own time, kept here as ``components``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import steps
from .._patch import InstancePatch, observe_forwards
from ..cache.reuse import time_rules
from ..component_calibration import ComponentErrors
from ..streams import BlockStreams, block_streams
from ..timing import BlockTimer, module_device, steady_seconds, synchronize

SKETCH_FLOATS = 32768  # floats kept per block boundary, per step and forward pass
MAX_SKETCH_ROWS = 1024


@dataclass
class Calibration:
    """What the calibration run measured. Tensors are on the CPU."""

    videos: List[np.ndarray]
    full_seconds: float  # the run without our instrumentation
    block_seconds: List[float]  # per block, summed over the run
    op_seconds: Dict[str, float]  # the cache's own arithmetic per forward pass, by "<reuse mode>_<store|reuse>"
    num_steps: int
    passes: int  # forward passes over the blocks per step, summed over the callable's runs
    block_in: torch.Tensor  # (passes, steps, blocks, m): sketches of block inputs
    block_out: torch.Tensor  # (passes, steps, blocks, m): sketches of block outputs
    calls: int = field(default=1)  # full runs this cost
    components: Optional[Dict[str, Any]] = None  # ComponentErrors.state_dict(), with sub-layer times, when measured

    def component_errors(self) -> ComponentErrors:
        """The sub-layers' measured errors and times (a calibration for component schedules only)."""
        if self.components is None:
            raise ValueError("this calibration did not measure the sub-layers (schedule_kind='region')")
        return ComponentErrors.from_state_dict(self.components)

    @classmethod
    def reference_only(cls, videos: List[np.ndarray], full_seconds: float, num_steps: int) -> "Calibration":
        """The part other ranks need to score runs: the reference videos and the time to beat."""
        empty = torch.zeros(0)
        return cls(videos, full_seconds, [], {}, num_steps, 0, empty, empty)

    def rebase(self, clean_seconds: float) -> None:
        """Take the faster of this run and a clean uncached one as the time to beat.

        Block times are scaled with it, so warm-up in the first run does not
        inflate the predicted savings.
        """
        base = min(self.full_seconds, clean_seconds)
        self.block_seconds = [seconds * base / self.full_seconds for seconds in self.block_seconds]
        self.full_seconds = base

    def state_dict(self) -> Dict[str, Any]:
        return {**self.__dict__, "videos": [torch.from_numpy(v) for v in self.videos]}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> "Calibration":
        return cls(**{**state, "videos": [v.numpy() for v in state["videos"]]})


class _Sketcher:
    """Fixed random row subsets and channel projections, one per tensor shape."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._plans: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        rows = tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(-1, 1)
        key = (rows.shape[0], rows.shape[1])
        if key not in self._plans:
            generator = torch.Generator().manual_seed(self._seed + 7919 * key[0] + key[1])
            count = min(key[0], MAX_SKETCH_ROWS)
            index = torch.randperm(key[0], generator=generator)[:count].sort().values
            width = min(key[1], max(4, SKETCH_FLOATS // count))
            projection = torch.randn(key[1], width, generator=generator, dtype=torch.float64) / width ** 0.5
            self._plans[key] = (index.to(rows.device), projection.to(rows.device, torch.float32))
        index, projection = self._plans[key]
        return (rows.index_select(0, index).float() @ projection).reshape(-1).cpu()


class CalibrationRecorder:
    """Wrappers on every block's ``forward`` that time them and sketch their inputs and outputs.

    Use as a context manager around the uncached calibration run.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.blocks = blocks
        self.timer = BlockTimer(blocks)
        self.device = module_device(blocks[0])
        self._sketch = _Sketcher()
        self._streams: List[Optional[BlockStreams]] = [None] * len(blocks)
        self._patch: Optional[InstancePatch] = None
        self.instrument_seconds = 0.0
        self.op_seconds: Optional[Dict[str, float]] = None
        # (run id, pass within step) -> step -> block -> (in sketch, out sketch)
        self._records: Dict[Tuple[int, int], Dict[int, Dict[int, Tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._pass_of_step: Dict[Tuple[int, int], int] = {}
        self._current: Optional[Tuple[int, int]] = None
        self._pass_instrument: List[float] = []  # per forward pass over the blocks: the seconds spent recording

    def __enter__(self) -> "CalibrationRecorder":
        # The timer's wrappers sit inside ours, so our work is not billed to the blocks.
        self.timer.__enter__()
        self._patch = observe_forwards(self.blocks, self._observe)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._patch is not None:
            self._patch.restore()
            self._patch = None
        self.timer.__exit__(*exc)

    def _observe(self, index: int, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
        started = time.perf_counter()
        self._record(index, module, args, kwargs, output)
        synchronize(self.device)
        spent = time.perf_counter() - started
        self.instrument_seconds += spent
        self._pass_instrument[-1] += spent

    def _record(self, index: int, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
        step = steps.require_step()
        run = steps.current_run()
        if index == 0:
            self._pass_instrument.append(0.0)
            key = (run, step)
            pass_index = self._pass_of_step.get(key, 0)
            self._pass_of_step[key] = pass_index + 1
            self._current = (run, pass_index)
        streams = self._streams[index]
        if streams is None:
            streams = self._streams[index] = block_streams(module, args, kwargs, output)
        names = self._streams[0].names
        inputs = streams.inputs(args, kwargs, names)
        outputs = streams.unpack(output)
        if not set(streams.names) <= set(names) or not all(isinstance(inputs.get(n), torch.Tensor) for n in names):
            raise ValueError(
                f"the cache search needs every block to carry the streams of the first ({list(names)}); block "
                f"{index} carries {list(streams.names)}: search the blocks of one list (dit_block_path=...)"
            )
        # a stream a block does not return (SD3's last joint block drops the text) counts as unchanged
        sketch_in = torch.cat([self._sketch(inputs[name]) for name in names])
        sketch_out = torch.cat([self._sketch(outputs.get(name, inputs[name])) for name in names])
        self._records.setdefault(self._current, {}).setdefault(step, {})[index] = (sketch_in, sketch_out)
        if self.op_seconds is None and index == len(self.blocks) - 1:
            self.op_seconds = time_rules(inputs, outputs, self.device)

    def steady_times(self, run_seconds: float, passes: Sequence[float]) -> Tuple[float, List[float]]:
        """The run's seconds and each block's, from the model's forward ``passes`` (seconds each, in order):
        a typical pass (the median), and each block's share of its own pass (the median over passes).

        Another process on the host slows a stretch of the run, blocks and the code between them
        alike: the share a block takes of its pass holds through it, and the predicted savings are
        that share of a typical pass (see :func:`~ditcache.timing.steady_seconds`).
        """
        calls = self.timer.calls
        if not passes or len(passes) != len(self._pass_instrument) or any(len(c) != len(passes) for c in calls):
            return run_seconds, list(self.timer.seconds)  # the model ran its blocks other than once a pass
        windows = [seconds - spent for seconds, spent in zip(passes, self._pass_instrument)]
        shares = np.median([[block_calls[k] / windows[k] for block_calls in calls] for k in range(len(windows))], axis=0)
        typical = float(np.median(windows))
        full = steady_seconds(run_seconds, windows, [None] * len(windows))
        return full, [float(share) * typical * len(windows) for share in shares]

    def stream_names(self) -> Tuple[str, ...]:
        """The streams the first block carries (known once it has run)."""
        if self._streams[0] is None:
            raise ValueError("the calibration run never called the blocks: does the callable run the pipeline?")
        return self._streams[0].names

    def result(self, videos: List[np.ndarray], run_seconds: float, num_steps: int,
               passes: Sequence[float] = ()) -> Calibration:
        """Assemble the measurements once the run is over; ``passes``: the seconds of the model's forward passes."""
        if not self._records:
            raise ValueError("the calibration run never called the blocks: does the callable run the pipeline?")
        num_blocks = len(self.blocks)
        trajectories = []
        for key, by_step in sorted(self._records.items()):
            run, pass_index = key
            first = self._records[(run, 0)]
            if pass_index == 0 and sorted(by_step) != list(range(num_steps)):
                raise ValueError(
                    f"the calibration run made {len(by_step)} denoising steps (seen: {min(by_step)}..{max(by_step)}), "
                    f"but num_sampling_steps={num_steps}; set num_sampling_steps to the steps the callable runs"
                )
            for step, by_block in by_step.items():
                if len(by_block) != num_blocks:
                    raise ValueError(
                        f"step {step} of the calibration run called {len(by_block)} of the {num_blocks} blocks; "
                        "the cache search needs every block called once per forward pass"
                    )
            # A later pass missing at some steps (a second-order sampler's last step) is ranked as the first.
            for step in range(num_steps):
                by_step.setdefault(step, first[step])
            trajectories.append(key)
        sketch_in = torch.stack([
            torch.stack([torch.stack([self._records[k][t][b][0] for b in range(num_blocks)]) for t in range(num_steps)])
            for k in trajectories
        ])
        sketch_out = torch.stack([
            torch.stack([torch.stack([self._records[k][t][b][1] for b in range(num_blocks)]) for t in range(num_steps)])
            for k in trajectories
        ])
        full_seconds, block_seconds = self.steady_times(run_seconds - self.instrument_seconds, passes)
        return Calibration(
            videos=videos,
            full_seconds=full_seconds,
            block_seconds=block_seconds,
            op_seconds=self.op_seconds or {},
            num_steps=num_steps,
            passes=len(trajectories),
            block_in=sketch_in,
            block_out=sketch_out,
        )
