"""The spec's facade: ``DitCacheAdaptor`` attaches the DiT cache to a pipeline's blocks.

The mechanism lives in :mod:`ditcache.cache` (the region and its patched
forwards, the reuse rules); steps come from :mod:`ditcache.steps`.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable, List, Mapping, Optional, Union


from . import steps
from .cache.blocks import BlockChain, BlockPath, find_blocks
from .cache.components import CachedComponents, check_schedule
from .cache.output import find_output_head
from .cache.region import CachedRegion, is_cached
from .component_config import ComponentCacheConfig, is_component_schedule
from .config import DitCacheConfig, DitCacheSearchConfig, check_int, read_json

AnyCacheConfig = Union[DitCacheConfig, ComponentCacheConfig]


def check_region(config: DitCacheConfig, chain: BlockChain) -> None:
    """Refuse a region that does not fit ``chain`` (or, reusing at the output, a model without an output head)."""
    num_blocks = len(chain)
    check_int("cache_block_start", config.cache_block_start, 0, num_blocks - 1)
    check_int("cache_num_blocks", config.cache_num_blocks, 1, num_blocks - config.cache_block_start)
    if config.reuse_at == "output":
        if config.cache_num_blocks != num_blocks:
            raise ValueError(
                f"reuse_at='output' skips every block, so cache_num_blocks must be {num_blocks} (the whole chain "
                f"{chain.describe()}), got {config.cache_num_blocks}"
            )
        find_output_head(chain.owner)


def check_fits(config: AnyCacheConfig, chain: BlockChain) -> None:
    """Refuse a region or a component schedule that does not fit ``chain``."""
    if isinstance(config, ComponentCacheConfig):
        check_schedule(config, chain.blocks)
    else:
        check_region(config, chain)


class DitCacheAdaptor:
    """Attach the DiT cache to the blocks of a pipeline (the spec's API).

    ``config`` is a :class:`DitCacheSearchConfig` (for :meth:`search`), a cache config
    (a block region :class:`DitCacheConfig` or a sub-layer schedule
    :class:`ComponentCacheConfig`) or ``None``; caching stays off until
    :meth:`update_cache_config` (or :meth:`set_cache_config`) gives one. ``pipeline.scheduler``, when present, is made step-aware
    (``track_scheduler=False`` leaves it alone); ``set_timestep_idx`` keeps
    working either way. :meth:`remove` restores every block.
    """

    def __init__(
        self,
        pipeline: Any,
        config: Optional[Union[DitCacheSearchConfig, DitCacheConfig, ComponentCacheConfig]] = None,
        dit_block_path: BlockPath = None,
        *,
        track_scheduler: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, (DitCacheSearchConfig, DitCacheConfig, ComponentCacheConfig)):
            raise ValueError(
                "config must be a DitCacheSearchConfig, a DitCacheConfig, a ComponentCacheConfig or None, got "
                f"{type(config).__name__}"
            )
        chain = find_blocks(pipeline, dit_block_path)
        blocks = chain.blocks
        for i, block in enumerate(blocks):
            if is_cached(block):
                raise ValueError(
                    f"block {chain.name(i)} is already patched by another DitCacheAdaptor; "
                    "call remove() on it (or leave its dit_cache context) first"
                )
        self.search_config: Optional[DitCacheSearchConfig] = None
        if isinstance(config, DitCacheSearchConfig):
            if config.dit_block_num is not None and config.dit_block_num != len(blocks):
                raise ValueError(
                    f"dit_block_num={config.dit_block_num} does not match the {len(blocks)} blocks of "
                    f"{chain.describe()}; leave it None or set it to {len(blocks)}"
                )
            self.search_config = dataclasses.replace(config, dit_block_num=len(blocks))
        elif config is not None:
            check_fits(config, chain)

        self.pipeline = pipeline
        self.chain = chain
        self.dit_block_path = ",".join(chain.paths)
        self.blocks = blocks
        self._lock = threading.Lock()
        self._cache_config: Optional[AnyCacheConfig] = None
        self._enabled = True
        self._restore_scheduler: Optional[Callable[[], None]] = None
        self.last_search: Any = None

        self._region = CachedRegion(chain)
        self._unwatch_timesteps = steps.watch_timesteps(chain.owner)  # the step signal of decorated loops
        self._components: Optional[CachedComponents] = None
        scheduler = getattr(pipeline, "scheduler", None)
        if track_scheduler and scheduler is not None and callable(getattr(scheduler, "step", None)):
            self._restore_scheduler = steps.track_scheduler(scheduler)
        if isinstance(config, (DitCacheConfig, ComponentCacheConfig)):
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
        cache_step_end: Optional[int] = None,
        reuse_at: str = "region",
        timesteps: Optional[Sequence[float]] = None,
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
                cache_step_end=cache_step_end,
                reuse_at=reuse_at,
                timesteps=timesteps,
            )
        )

    def search(
        self, run_pipeline_and_save_videos: Callable[[Any], List[Any]], prompts_num: int = 1,
        *, sequence_parallel: bool = False,
    ) -> AnyCacheConfig:
        """Find the config that best meets the search config's goal (see :mod:`ditcache.search`): a block
        region, or with ``schedule_kind="component"`` / ``"any"`` possibly a component schedule.

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

    def profile(
        self, run_pipeline_and_save_videos: Callable[[Any], List[Any]], prompts_num: int = 1,
        *, every: int = 1, sequence_parallel: bool = False,
    ) -> Any:
        """Where caching hurts on these videos: a :class:`~ditcache.search.sensitivity.SensitivityProfile`.

        One calibration run and one probe run per ``every``-th step (journalled like a search's runs,
        so a search with the same ``journal_dir`` reuses them); the callable is as for :meth:`search`.
        """
        from .search import CacheSearch

        if self.search_config is None:
            raise ValueError("profile needs a DitCacheSearchConfig: DitCacheAdaptor(pipeline, DitCacheSearchConfig(...))")
        self._check_attached()
        return CacheSearch(self, self.search_config, sequence_parallel).profile(run_pipeline_and_save_videos,
                                                                                prompts_num, every)

    # --- beyond the spec --------------------------------------------------------------

    @property
    def cache_config(self) -> Optional[AnyCacheConfig]:
        """The config in force, or ``None`` when none was given."""
        return self._cache_config

    def set_cache_config(self, config: Optional[AnyCacheConfig]) -> None:
        """Apply ``config`` (``None`` clears it) and turn caching on; drops cached tensors."""
        if config is not None:
            if not isinstance(config, (DitCacheConfig, ComponentCacheConfig)):
                raise ValueError(
                    f"config must be a DitCacheConfig, a ComponentCacheConfig or None, got {type(config).__name__}"
                )
            self._check_attached()
            check_fits(config, self.chain)
        with self._lock:
            self._cache_config = config
            self._enabled = True
            self._apply()

    @property
    def enabled(self) -> bool:
        """Whether caching is on (it needs a config too, to do anything)."""
        return self._enabled

    def enable(self) -> None:
        """Turn caching back on with the current config."""
        self._check_attached()
        with self._lock:
            self._enabled = True
            self._apply()

    def disable(self) -> None:
        """Run every block as if unpatched (bit-identical outputs) until :meth:`enable`."""
        with self._lock:
            self._enabled = False
            self._apply()

    def clear_cache(self) -> None:
        """Free every cached tensor, in every thread."""
        self._region.reset()
        if self._components is not None:
            self._components.reset()

    @property
    def cached_component_bytes(self) -> int:
        """Bytes of sub-layer outputs a component schedule keeps in the calling thread (0 once a run ended)."""
        return self._components.cached_bytes() if self._components is not None else 0

    @property
    def cached_passes(self) -> int:
        """How many forward passes' cached tensors the calling thread holds (0 once a run ended)."""
        return self._region.cached_passes()

    def remove(self) -> None:
        """Restore every block (and the scheduler) exactly; the adaptor is unusable after."""
        if not self.attached:
            return
        self._region.remove()
        self._unwatch_timesteps()
        self._detach_components()
        if self._restore_scheduler is not None:
            self._restore_scheduler()
            self._restore_scheduler = None

    @property
    def attached(self) -> bool:
        """Whether the blocks are currently patched."""
        return self._region.attached

    # --- internals ----------------------------------------------------------------------

    def _check_attached(self) -> None:
        if not self.attached:
            raise ValueError("this DitCacheAdaptor was removed; create a new one to cache again")

    def _apply(self) -> None:
        config = self._cache_config if self._enabled and self.attached else None
        self._region.apply(config if isinstance(config, DitCacheConfig) else None)
        self._detach_components()
        if isinstance(config, ComponentCacheConfig):
            self._components = CachedComponents(self.blocks, config)

    def _detach_components(self) -> None:
        if self._components is not None:
            self._components.remove()
            self._components = None


def cache_config_from_dict(data: Any, source: str = "config") -> AnyCacheConfig:
    """A region config or a component schedule (SmoothCache's format), told apart by its values."""
    if isinstance(data, Mapping) and is_component_schedule(data):
        return ComponentCacheConfig.from_dict(data, source)
    return DitCacheConfig.from_dict(data, source)


def as_cache_config(config: Any) -> Optional[AnyCacheConfig]:
    """Accept a cache config, a dict, a path to a JSON file (region config or component schedule), or ``None``."""
    if config is None or isinstance(config, (DitCacheConfig, ComponentCacheConfig)):
        return config
    if isinstance(config, Mapping):
        return cache_config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return cache_config_from_dict(read_json(config), f"cache config file {os.fspath(config)!r}")
    raise ValueError(
        "config must be a DitCacheConfig, a ComponentCacheConfig, a dict, a path to a JSON file or None, got "
        f"{type(config).__name__}"
    )
