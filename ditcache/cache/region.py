"""The cache region: its blocks' patched forwards and what they keep between steps.

Region: blocks ``s .. e`` of the list. On a store step every block runs and
the reuse rule keeps what it needs of ``out_e - in_s`` (per stream, per
forward pass of the step); on a reuse step blocks ``s .. e`` hand their inputs
on untouched (no compute, real tensors) and block ``e`` returns the rule's
prediction. Steps come from :mod:`ditcache.steps`.

Patching shadows each block's ``forward`` with an instance attribute
(:mod:`ditcache._patch`), so an unpatched model is bit-identical to one never
patched.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .. import steps
from .._patch import InstancePatch
from ..config import DitCacheConfig
from ..streams import BlockStreams, block_streams
from .reuse import ReuseRule, Stored, reuse_rule

# Roles of a block in the region.
_START, _INNER, _END, _ONLY = "start", "inner", "end", "only"


class _PassState(threading.local):
    """What one thread caches: what was stored per forward pass of a step, and the current pass."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, run: Optional[int] = None) -> None:
        self.run = run
        self.step: Optional[int] = None
        self.highest: Optional[int] = None  # the last step this run reached
        self.passes = 0
        self.mode = "full"
        self.start_inputs: Optional[Dict[str, torch.Tensor]] = None
        self.stored: Dict[int, Stored] = {}
        self.pass_index = 0


class CachedForward:
    """Replaces one block's ``forward`` while the region is attached."""

    __slots__ = ("region", "index", "original")

    def __init__(self, region: "CachedRegion", index: int, original: Callable[..., Any]) -> None:
        self.region = region
        self.index = index
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        role = self.region.roles[self.index]
        if role is None:
            return self.original(*args, **kwargs)
        return self.region.forward(role, self.index, self.original, args, kwargs)


class CachedRegion:
    """The patched blocks of one list, the config they follow, and the cached tensors (per thread).

    Listens to the step clock: a run's start or end frees what the calling
    thread cached.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.blocks = blocks
        self.config: Optional[DitCacheConfig] = None
        self.roles: Tuple[Optional[str], ...] = (None,) * len(blocks)
        self._rule: Optional[ReuseRule] = None
        self._streams: List[Optional[BlockStreams]] = [None] * len(blocks)
        self._state = _PassState()
        self._patch = InstancePatch()
        for i, block in enumerate(blocks):
            self._patch.set(block, "forward", CachedForward(self, i, block.forward))
        steps.add_listener(self)

    @property
    def attached(self) -> bool:
        return bool(self._patch)

    def apply(self, config: Optional[DitCacheConfig]) -> None:
        """Follow ``config`` (``None``: every block runs as unpatched); drops cached tensors."""
        roles: List[Optional[str]] = [None] * len(self.blocks)
        if config is not None:
            start, end = config.cache_block_start, config.cache_block_end
            for i in range(start, end + 1):
                roles[i] = _INNER
            roles[start] = _START
            roles[end] = _END
            if start == end:
                roles[start] = _ONLY
        self.reset()
        self.config = config
        self._rule = reuse_rule(config.reuse) if config is not None else None
        self.roles = tuple(roles)

    def reset(self) -> None:
        """Free every cached tensor, in every thread."""
        self._state = _PassState()

    def remove(self) -> None:
        """Restore every block's ``forward`` exactly."""
        self._patch.restore()
        steps.remove_listener(self)
        self.apply(None)

    def cached_passes(self) -> int:
        """How many forward passes' tensors the calling thread holds."""
        return len(self._state.stored)

    # --- step clock listener ------------------------------------------------------------

    def on_run_start(self, total: Optional[int]) -> None:
        self._state.reset()

    def on_run_end(self, check: bool) -> None:
        state = self._state
        made = state.highest + 1 if state.run == steps.current_run() and state.highest is not None else None
        state.reset()
        if check and made is not None:
            self._check_steps(made, ended=True)

    # --- the patched forward ------------------------------------------------------------

    def _streams_of(self, index: int, args: Tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> BlockStreams:
        streams = self._streams[index]
        if streams is None:
            streams = block_streams(self.blocks[index], args, kwargs, output)
            self._streams[index] = streams
        return streams

    def _begin_pass(self, state: _PassState) -> None:
        """Decide at the first block of the region how this forward pass treats it."""
        step = steps.require_step()
        run = steps.current_run()
        if state.run != run:
            state.reset(run)
            if steps.current_total() is not None:
                self._check_steps(steps.current_total(), ended=False)
        if state.step != step:
            state.step = step
            state.passes = 0
            state.highest = step if state.highest is None else max(step, state.highest)
            limit = self.config.num_sampling_steps if self.config is not None else None
            if limit is not None and step >= limit:
                raise ValueError(
                    f"the cache config was made for num_sampling_steps={limit}, but this run reached step {step}; "
                    f"search again for this run's steps or run with {limit}"
                )
        state.pass_index = state.passes
        state.passes += 1
        config = self.config
        state.mode = config.step_mode(step) if config is not None else "full"
        if state.mode == "reuse" and state.pass_index not in state.stored:
            state.mode = "store"

    def _check_steps(self, total: int, ended: bool) -> None:
        """Refuse a run of ``total`` steps that does not fit the config (``ended``: known once it ended)."""
        config = self.config
        if config is None:
            return
        run = "the run that just ended" if ended else "this run"
        if config.num_sampling_steps is not None and config.num_sampling_steps != total:
            raise ValueError(
                f"the cache config was made for num_sampling_steps={config.num_sampling_steps}, but {run} has "
                f"{total} denoising steps; search again for {total} steps or run with {config.num_sampling_steps}"
            )
        if config.cache_step_start >= total:
            steps_of_run = f"the {total} steps of {run}" if ended else f"this run's {total} steps"
            raise ValueError(
                f"cache_step_start={config.cache_step_start} is beyond {steps_of_run} (allowed 0..{total - 1}); "
                "the cache would never be used"
            )

    def forward(
        self, role: str, index: int, original: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Any:
        state = self._state
        if role in (_START, _ONLY):
            self._begin_pass(state)
            if state.mode == "reuse":
                inputs = self._streams[index].inputs(args, kwargs)
                if state.stored[state.pass_index].fits(inputs):
                    state.start_inputs = inputs
                else:  # a differently shaped call (other batch or resolution): compute it afresh
                    state.mode = "store"
        mode = state.mode
        if mode == "full":
            return original(*args, **kwargs)
        if mode == "store":
            output = original(*args, **kwargs)
            streams = self._streams_of(index, args, kwargs, output)
            if role in (_START, _ONLY):
                state.start_inputs = streams.inputs(args, kwargs)
            if role in (_END, _ONLY):
                outputs = streams.unpack(output)
                start_inputs = state.start_inputs
                if start_inputs is None or set(start_inputs) != set(outputs):
                    raise ValueError(
                        f"blocks {self.config.cache_block_start} and {index} of the cache region carry "
                        f"different streams ({sorted(start_inputs or {})} vs {sorted(outputs)}); choose a region "
                        "of blocks of one kind"
                    )
                previous = state.stored.get(state.pass_index)
                state.stored[state.pass_index] = self._rule.store(previous, state.step, start_inputs, outputs)
                state.start_inputs = None
            return output
        # reuse: hand the inputs on; the region's last block returns the rule's prediction
        streams = self._streams[index]
        if role in (_END, _ONLY):
            start_inputs = state.start_inputs
            state.start_inputs = None
            return streams.pack(self._rule.predict(state.stored[state.pass_index], state.step, start_inputs))
        return streams.pack(streams.inputs(args, kwargs))
