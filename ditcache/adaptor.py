"""Patching a block list with the DiT cache, and restoring it exactly.

Region: blocks ``s .. e`` of the list. On a store step every block runs and
``delta = out_e - in_s`` is kept (per stream, per forward pass of the step); on
a reuse step blocks ``s .. e`` hand their inputs on untouched (no compute, real
tensors) and block ``e`` returns ``in_s + delta``. Steps come from
:mod:`ditcache.steps`.

Patching sets an instance attribute ``forward`` on each block, which shadows
the class method; removing deletes it again (or puts back what was there), so
an unpatched model is bit-identical to one never patched.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import steps
from .config import DitCacheConfig, DitCacheSearchConfig, check_int
from .streams import BlockStreams, block_streams

DEFAULT_BLOCK_PATH = "transformer.transformer_blocks"

# Roles of a block in the region.
_START, _INNER, _END, _ONLY = "start", "inner", "end", "only"
_MISSING = object()


def resolve_blocks(pipeline: Any, dit_block_path: str) -> nn.ModuleList:
    """The ``nn.ModuleList`` at ``dit_block_path`` inside ``pipeline``, checked."""
    if not isinstance(dit_block_path, str) or not dit_block_path:
        raise ValueError(f"dit_block_path must be a non-empty string, got {dit_block_path!r}")
    parts = dit_block_path.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ValueError(
            f"dit_block_path must be dot-separated Python identifiers (e.g. {DEFAULT_BLOCK_PATH!r}), "
            f"got {dit_block_path!r}"
        )
    current = pipeline
    for i, part in enumerate(parts):
        if not hasattr(current, part):
            raise ValueError(
                f"dit_block_path {dit_block_path!r}: {type(current).__name__} at "
                f"{'.'.join(parts[:i]) or 'the pipeline'!r} has no attribute {part!r}"
            )
        current = getattr(current, part)
    if not isinstance(current, nn.ModuleList):
        raise ValueError(
            f"dit_block_path {dit_block_path!r} must lead to an nn.ModuleList of blocks, got {type(current).__name__}"
        )
    if len(current) == 0:
        raise ValueError(f"dit_block_path {dit_block_path!r} leads to an empty nn.ModuleList")
    return current


def check_region(config: DitCacheConfig, num_blocks: int) -> None:
    """Refuse a region that does not fit a model of ``num_blocks`` blocks."""
    check_int("cache_block_start", config.cache_block_start, 0, num_blocks - 1)
    check_int("cache_num_blocks", config.cache_num_blocks, 1, num_blocks - config.cache_block_start)


class _PassState(threading.local):
    """What one thread caches: deltas per forward pass of a step, and the current pass."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, run: Optional[int]) -> None:
        self.run = run
        self.step: Optional[int] = None
        self.passes = 0
        self.mode = "full"
        self.start_inputs: Optional[Dict[str, torch.Tensor]] = None
        self.deltas: Dict[int, Dict[str, torch.Tensor]] = {}
        # reuse="taylor1": per pass, the residual's change per step and the step it was stored at
        self.slopes: Dict[int, Dict[str, torch.Tensor]] = {}
        self.stored_at: Dict[int, int] = {}
        self.pass_index = 0


class _CachedForward:
    """Replaces one block's ``forward`` while the adaptor is attached."""

    __slots__ = ("adaptor", "index", "original")

    def __init__(self, adaptor: "DitCacheAdaptor", index: int, original: Callable[..., Any]) -> None:
        self.adaptor = adaptor
        self.index = index
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        role = self.adaptor._roles[self.index]
        if role is None:
            return self.original(*args, **kwargs)
        return self.adaptor._region_forward(role, self.index, self.original, args, kwargs)


class DitCacheAdaptor:
    """Attach the DiT cache to the blocks of a pipeline (the spec's API).

    ``config`` is a :class:`DitCacheSearchConfig` (for :meth:`search`) or ``None``;
    caching stays off until :meth:`update_cache_config` (or :meth:`set_cache_config`)
    gives a region. ``pipeline.scheduler``, when present, is made step-aware
    (``track_scheduler=False`` leaves it alone); ``set_timestep_idx`` keeps
    working either way. :meth:`remove` restores every block.
    """

    def __init__(
        self,
        pipeline: Any,
        config: Optional[Union[DitCacheSearchConfig, DitCacheConfig]] = None,
        dit_block_path: str = DEFAULT_BLOCK_PATH,
        *,
        track_scheduler: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, (DitCacheSearchConfig, DitCacheConfig)):
            raise ValueError(
                f"config must be a DitCacheSearchConfig, a DitCacheConfig or None, got {type(config).__name__}"
            )
        blocks = resolve_blocks(pipeline, dit_block_path)
        for i, block in enumerate(blocks):
            if isinstance(block.__dict__.get("forward"), _CachedForward):
                raise ValueError(
                    f"block {i} at {dit_block_path!r} is already patched by another DitCacheAdaptor; "
                    "call remove() on it (or leave its dit_cache context) first"
                )
        self.search_config: Optional[DitCacheSearchConfig] = None
        if isinstance(config, DitCacheSearchConfig):
            if config.dit_block_num is not None and config.dit_block_num != len(blocks):
                raise ValueError(
                    f"dit_block_num={config.dit_block_num} does not match the {len(blocks)} blocks at "
                    f"{dit_block_path!r}; leave it None or set it to {len(blocks)}"
                )
            config.dit_block_num = len(blocks)
            self.search_config = config
        elif isinstance(config, DitCacheConfig):
            check_region(config, len(blocks))

        self.pipeline = pipeline
        self.dit_block_path = dit_block_path
        self.blocks = blocks
        self._lock = threading.Lock()
        self._cache_config: Optional[DitCacheConfig] = None
        self._enabled = True
        self._roles: Tuple[Optional[str], ...] = (None,) * len(blocks)
        self._streams: List[Optional[BlockStreams]] = [None] * len(blocks)
        self._state = _PassState()
        self._saved_forwards: List[Any] = []
        self._restore_scheduler: Optional[Callable[[], None]] = None
        self.last_search: Any = None

        for i, block in enumerate(blocks):
            self._saved_forwards.append(block.__dict__.get("forward", _MISSING))
            block.__dict__["forward"] = _CachedForward(self, i, block.forward)
        scheduler = getattr(pipeline, "scheduler", None)
        if track_scheduler and scheduler is not None and callable(getattr(scheduler, "step", None)):
            self._restore_scheduler = steps.track_scheduler(scheduler)
        steps.add_listener(self)
        if isinstance(config, DitCacheConfig):
            self.set_cache_config(config)

    # --- the spec's API -----------------------------------------------------------------

    @classmethod
    def set_timestep_idx(cls, t_idx: int) -> None:
        """Tell the cache the current step index (call at the top of every step).

        Applies to the calling thread. Not needed when the pipeline's scheduler is
        tracked or the loop is decorated with ``@timestep_aware``.
        """
        steps.set_step(t_idx)

    def update_cache_config(
        self,
        cache_block_start: int,
        cache_num_blocks: int,
        cache_step_start: int,
        cache_step_interval: int,
        num_sampling_steps: Optional[int] = None,
        reuse: str = "delta",
    ) -> None:
        """Apply a cache region and step schedule, and turn caching on."""
        self.set_cache_config(
            DitCacheConfig(
                cache_step_start=cache_step_start,
                cache_step_interval=cache_step_interval,
                cache_block_start=cache_block_start,
                cache_num_blocks=cache_num_blocks,
                num_sampling_steps=num_sampling_steps,
                reuse=reuse,
            )
        )

    def search(
        self, run_pipeline_and_save_videos: Callable[[Any], List[Any]], prompts_num: int = 1,
        *, sequence_parallel: bool = False,
    ) -> DitCacheConfig:
        """Find the config that best meets the search config's goal (see :mod:`ditcache.search`).

        ``run_pipeline_and_save_videos(pipeline)`` must return a list of
        ``prompts_num`` uint8 arrays ``(frames, h, w, c)``, the same videos
        every call. The full report (every candidate run) is kept in
        :attr:`last_search`. Under torchrun, ``sequence_parallel=True`` says the
        processes share one model (every process takes part in every run);
        otherwise each holds the whole model and candidate runs are spread.
        """
        from .search import CacheSearch

        if self.search_config is None:
            raise ValueError("search needs a DitCacheSearchConfig: DitCacheAdaptor(pipeline, DitCacheSearchConfig(...))")
        self._check_attached()
        self.last_search = CacheSearch(self, self.search_config, sequence_parallel).run(run_pipeline_and_save_videos, prompts_num)
        return self.last_search.config

    # --- beyond the spec --------------------------------------------------------------

    @property
    def cache_config(self) -> Optional[DitCacheConfig]:
        """The config in force, or ``None`` when none was given."""
        return self._cache_config

    def set_cache_config(self, config: Optional[DitCacheConfig]) -> None:
        """Apply ``config`` (``None`` clears it) and turn caching on; drops cached tensors."""
        if config is not None:
            if not isinstance(config, DitCacheConfig):
                raise ValueError(f"config must be a DitCacheConfig or None, got {type(config).__name__}")
            self._check_attached()
            check_region(config, len(self.blocks))
        with self._lock:
            self._cache_config = config
            self._enabled = True
            self._update_roles()

    @property
    def enabled(self) -> bool:
        """Whether caching is on (it needs a config too, to do anything)."""
        return self._enabled

    def enable(self) -> None:
        """Turn caching back on with the current config."""
        self._check_attached()
        with self._lock:
            self._enabled = True
            self._update_roles()

    def disable(self) -> None:
        """Run every block as if unpatched (bit-identical outputs) until :meth:`enable`."""
        with self._lock:
            self._enabled = False
            self._update_roles()

    def clear_cache(self) -> None:
        """Free every cached tensor, in every thread."""
        self._state = _PassState()

    def remove(self) -> None:
        """Restore every block (and the scheduler) exactly; the adaptor is unusable after."""
        if not self._saved_forwards:
            return
        for block, saved in zip(self.blocks, self._saved_forwards):
            if saved is _MISSING:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = saved
        self._saved_forwards = []
        if self._restore_scheduler is not None:
            self._restore_scheduler()
            self._restore_scheduler = None
        steps.remove_listener(self)
        self._roles = (None,) * len(self.blocks)
        self.clear_cache()

    @property
    def attached(self) -> bool:
        """Whether the blocks are currently patched."""
        return bool(self._saved_forwards)

    # --- step clock listener ------------------------------------------------------------

    def on_run_start(self, total: Optional[int]) -> None:
        self._state.reset(None)

    def on_run_end(self) -> None:
        self._state.reset(None)

    # --- internals ----------------------------------------------------------------------

    def _check_attached(self) -> None:
        if not self.attached:
            raise ValueError("this DitCacheAdaptor was removed; create a new one to cache again")

    def _update_roles(self) -> None:
        roles: List[Optional[str]] = [None] * len(self.blocks)
        config = self._cache_config
        if self._enabled and config is not None and self.attached:
            start, end = config.cache_block_start, config.cache_block_end
            for i in range(start, end + 1):
                roles[i] = _INNER
            roles[start] = _START
            roles[end] = _END
            if start == end:
                roles[start] = _ONLY
        self._state = _PassState()
        self._roles = tuple(roles)

    def _streams_of(self, index: int, args: Tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> BlockStreams:
        streams = self._streams[index]
        if streams is None:
            streams = block_streams(self.blocks[index], args, kwargs, output)
            self._streams[index] = streams
        return streams

    def _begin_pass(self, state: _PassState) -> Optional[DitCacheConfig]:
        """Decide at the first block of the region how this forward pass treats it."""
        step = steps.current_step()
        if step is None:
            raise ValueError(
                "the cache does not know the denoising step: call DitCacheAdaptor.set_timestep_idx(i) at the "
                "top of each step, decorate the loop or scheduler with @timestep_aware, or give the pipeline "
                "a `scheduler` attribute before attaching the cache"
            )
        run = steps.current_run()
        if state.run != run:
            state.reset(run)
            self._check_run_length()
        if state.step != step:
            state.step = step
            state.passes = 0
        state.pass_index = state.passes
        state.passes += 1
        config = self._cache_config
        state.mode = config.step_mode(step) if config is not None else "full"
        if state.mode == "reuse" and state.pass_index not in state.deltas:
            state.mode = "store"
        return config

    def _check_run_length(self) -> None:
        total, config = steps.current_total(), self._cache_config
        if total is None or config is None:
            return
        if config.num_sampling_steps is not None and config.num_sampling_steps != total:
            raise ValueError(
                f"the cache config was made for num_sampling_steps={config.num_sampling_steps}, but this run has "
                f"{total} scheduler steps; search again for {total} steps or run with {config.num_sampling_steps}"
            )
        if config.cache_step_start >= total:
            raise ValueError(
                f"cache_step_start={config.cache_step_start} is beyond this run's {total} steps "
                f"(allowed 0..{total - 1}); the cache would never be used"
            )

    def _store(self, state: _PassState, deltas: Dict[str, torch.Tensor]) -> None:
        """Keep a store step's residual (and, for taylor1, its change per step since the last store)."""
        index = state.pass_index
        previous, previous_step = state.deltas.get(index), state.stored_at.get(index)
        state.slopes.pop(index, None)
        if (
            self._cache_config.reuse == "taylor1" and previous is not None and previous_step < state.step
            and all(previous[name].shape == deltas[name].shape for name in deltas)
        ):
            distance = state.step - previous_step
            state.slopes[index] = {name: (deltas[name] - previous[name]) / distance for name in deltas}
        state.deltas[index] = deltas
        state.stored_at[index] = state.step

    def _region_forward(
        self, role: str, index: int, original: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Any:
        state = self._state
        if role in (_START, _ONLY):
            self._begin_pass(state)
            if state.mode == "reuse":
                streams = self._streams[index]
                inputs = streams.inputs(args, kwargs)
                deltas = state.deltas[state.pass_index]
                if all(inputs[name].shape == deltas[name].shape for name in deltas):
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
                        f"blocks {self._cache_config.cache_block_start} and {index} of the cache region carry "
                        f"different streams ({sorted(start_inputs or {})} vs {sorted(outputs)}); choose a region "
                        "of blocks of one kind"
                    )
                deltas = {name: outputs[name] - start_inputs[name] for name in outputs}
                self._store(state, deltas)
                state.start_inputs = None
            return output
        # reuse: hand the inputs on; the region's last block adds the stored delta
        streams = self._streams[index]
        if role in (_END, _ONLY):
            deltas = state.deltas[state.pass_index]
            start_inputs = state.start_inputs
            state.start_inputs = None
            slopes = state.slopes.get(state.pass_index)
            if slopes is None:
                return streams.pack({name: start_inputs[name] + deltas[name] for name in deltas})
            distance = state.step - state.stored_at[state.pass_index]
            return streams.pack(
                {name: torch.add(start_inputs[name] + deltas[name], slopes[name], alpha=distance) for name in deltas}
            )
        return streams.pack(streams.inputs(args, kwargs))


def as_cache_config(config: Any) -> Optional[DitCacheConfig]:
    """Accept a :class:`DitCacheConfig`, a dict, a path to a JSON file, or ``None``."""
    if config is None or isinstance(config, DitCacheConfig):
        return config
    if isinstance(config, Mapping):
        return DitCacheConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return DitCacheConfig.load(config)
    raise ValueError(
        f"config must be a DitCacheConfig, a dict, a path to a JSON file or None, got {type(config).__name__}"
    )
