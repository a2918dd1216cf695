"""Keeping the cache's decisions out of ``torch.compile`` graphs.

Dynamo must not trace the cache's bookkeeping. Traced, the per-thread state
(what was stored, the pass counter, the step) is read at trace time and baked
into the graph, dynamo guards on it (a graph per block index and per step),
and its writes to that state are not replayed on the real thread-local object:
the first compiled run never finds a stored residual and computes every block.
So the patched forward is a frame dynamo skips, its decisions run with dynamo
off, and only the block's own forward, which it calls, is compiled.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

# torch.compiler.disable exists from torch 2.1 on; torch._dynamo.disable is the same function before that.
_disable = getattr(getattr(torch, "compiler", None), "disable", None) or torch._dynamo.disable


def outside_graph(fn: F) -> F:
    """Run ``fn`` and everything it calls eagerly, never traced by dynamo."""
    return _disable(fn, recursive=True)


def graph_boundary(fn: F) -> F:
    """Let dynamo skip ``fn``'s own frame but still compile the functions it calls."""
    return _disable(fn, recursive=False)
