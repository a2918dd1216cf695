"""Regional compilation of a cached model: each block's forward compiled on its own.

Compiling the whole transformer works with the cache too (the graph breaks at
every block call, :mod:`ditcache.cache.graph`); compiling the blocks alone
compiles one graph per block class, and the cache calls it for the blocks
that run.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cache.region import is_cached


def compile_blocks(blocks: nn.ModuleList, **options: Any) -> nn.ModuleList:
    """Shadow each block's ``forward`` with ``torch.compile(block.forward, **options)``; returns ``blocks``.

    Call it before attaching the cache (``del block.forward`` undoes it).
    Blocks of one class share their compiled code.
    """
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"blocks must be a non-empty nn.ModuleList, got {type(blocks).__name__}")
    for i, block in enumerate(blocks):
        if is_cached(block):
            raise ValueError(f"block {i} is patched by the cache; compile the blocks before attaching the cache")
    for block in blocks:
        block.forward = torch.compile(block.forward, **options)
    return blocks
