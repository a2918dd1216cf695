"""``with dit_cache(pipeline, config):`` -- the cache for the duration of a block of code."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, Union

from .adaptor import DitCacheAdaptor, as_cache_config
from .cache.blocks import BlockPath
from .component_config import ComponentCacheConfig
from .config import DitCacheConfig

ConfigLike = Union[DitCacheConfig, ComponentCacheConfig, Dict[str, Any], str, "os.PathLike[str]", None]


@contextlib.contextmanager
def dit_cache(
    pipeline: Any, config: ConfigLike, dit_block_path: BlockPath = None
) -> Iterator[DitCacheAdaptor]:
    """Patch the blocks at ``dit_block_path`` with ``config`` on enter; restore them on exit.

    ``dit_block_path=None`` finds the model's chain of block lists (see
    :mod:`ditcache.cache.blocks`); a path, or several separated by commas,
    names them.

    ``config`` may be a :class:`DitCacheConfig` (a block region), a
    :class:`ComponentCacheConfig` (a sub-layer schedule, SmoothCache's format), a
    dict of either, a path to a JSON file of either (told apart by its keys), or
    ``None`` (patched, caching off). Everything is checked
    before any block is touched, and the blocks and the scheduler are restored
    exactly on exit, also when the body raises.
    """
    adaptor = DitCacheAdaptor(pipeline, as_cache_config(config), dit_block_path)
    try:
        yield adaptor
    finally:
        adaptor.remove()
