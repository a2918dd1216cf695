"""Component caching: sub-layers of blocks (self-attention, cross-attention, feed-forward) skipped per step.

A :class:`~ditcache.component_config.ComponentCacheConfig` says, per sub-layer
and block, which steps compute it; on the others the sub-layer hands back a
guess of its output from the steps where it ran (a reuse rule of
:mod:`ditcache.cache.reuse` applied to the sub-layer's output, which is what
the block adds to its hidden state). Sub-layers are found by block class
(:data:`KNOWN_COMPONENTS`, extended with :func:`register_block_components`).

Each sub-layer counts its own calls within a step, so every forward pass of a
step (classifier-free guidance as one batched forward or as two) keeps its own
outputs. State is per thread and freed when a run starts or ends; patching
shadows each sub-layer's ``forward`` with an instance attribute and restores it
exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import steps
from .._patch import InstancePatch
from ..component_config import ComponentCacheConfig, parse_key
from .reuse import Stored, reuse_rule
from .run_state import RunState

# Sub-layer attributes of known block classes, by class name (the core never imports diffusers).
# diffusers' BasicTransformerBlock is also the bundled model's block; its ``attn2`` is None without
# cross-attention.
KNOWN_COMPONENTS: Dict[str, Tuple[str, ...]] = {
    "BasicTransformerBlock": ("attn1", "attn2", "ff"),
}

_OUT = "output"


def register_block_components(class_name: str, components: Tuple[str, ...]) -> None:
    """Declare the sub-layer attributes of a block class whose outputs the block adds to its hidden state."""
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"class_name must be a class name, got {class_name!r}")
    if (
        not isinstance(components, tuple) or not components
        or not all(isinstance(name, str) and name.isidentifier() for name in components)
    ):
        raise ValueError(f"components must be a non-empty tuple of attribute names, got {components!r}")
    KNOWN_COMPONENTS[class_name] = components


def known_components(block: nn.Module, index: int) -> Tuple[str, ...]:
    """The sub-layer names of ``block``'s class (or a base class); unknown classes are a ``ValueError``."""
    for cls in type(block).__mro__:
        if cls.__name__ in KNOWN_COMPONENTS:
            return KNOWN_COMPONENTS[cls.__name__]
    name = type(block).__name__
    raise ValueError(
        f"block {index} is a {name}, whose sub-layers ditcache does not know; declare them with "
        f"ditcache.register_block_components({name!r}, ('attn1', 'ff')) naming its sub-layer attributes"
    )


def check_schedule(config: ComponentCacheConfig, blocks: Sequence[nn.Module]) -> Dict[Tuple[int, str], nn.Module]:
    """The sub-layers ``config`` governs, by ``(block, name)``; refuses keys the blocks do not have."""
    available = [known_components(block, i) for i, block in enumerate(blocks)]
    governed: Dict[Tuple[int, str], nn.Module] = {}
    for key in config.schedule:
        name, only = parse_key(key)
        if only is not None and only >= len(blocks):
            raise ValueError(f"schedule key {key!r}: block {only} does not exist (allowed 0..{len(blocks) - 1})")
        for i in range(len(blocks)) if only is None else (only,):
            if name not in available[i]:
                raise ValueError(
                    f"schedule key {key!r}: {name!r} is not a sub-layer of block {i} ({type(blocks[i]).__name__}: "
                    f"{list(available[i])})"
                )
            module = getattr(blocks[i], name, None)
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f"schedule key {key!r}: block {i} ({type(blocks[i]).__name__}) has no {name!r} "
                    f"(it is {module!r}); this model's blocks have "
                    f"{[c for c in available[i] if isinstance(getattr(blocks[i], c, None), nn.Module)]}"
                )
            governed[(i, name)] = module
    return governed


@dataclass
class _Kept:
    """A sub-layer's stored output for one forward pass, the input shape it was computed for, and its version."""

    stored: Stored
    shape: Tuple[int, ...]
    version: int


class _State(RunState):
    def reset(self, run: Optional[int] = None) -> None:
        super().reset(run)
        self.calls: Dict[Tuple[int, str], int] = {}
        self.kept: Dict[Tuple[int, int, str], _Kept] = {}


class ComponentForward:
    """Replaces one sub-layer's ``forward`` while the schedule is attached."""

    __slots__ = ("cache", "block", "name", "original")

    def __init__(self, cache: "CachedComponents", block: int, name: str, original: Callable[..., Any]) -> None:
        self.cache, self.block, self.name, self.original = cache, block, name, original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache.forward(self.block, self.name, self.original, args, kwargs)


def _input_shape(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tuple[int, ...]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    return ()


class CachedComponents:
    """The patched sub-layers of one block list following one schedule, and their outputs (per thread)."""

    def __init__(self, blocks: Sequence[nn.Module], config: ComponentCacheConfig) -> None:
        governed = check_schedule(config, blocks)
        self.config = config
        self._rule = reuse_rule(config.reuse)
        self._keeps = {key: 0 in config.line(key[1], key[0]) for key in governed}
        self._state = _State()
        self._patch = InstancePatch()
        for (index, name), module in governed.items():
            self._patch.set(module, "forward", ComponentForward(self, index, name, module.forward))
        steps.add_listener(self)

    @property
    def attached(self) -> bool:
        return bool(self._patch)

    def remove(self) -> None:
        """Restore every sub-layer's ``forward`` exactly and free what was kept."""
        self._patch.restore()
        steps.remove_listener(self)
        self.reset()

    def reset(self) -> None:
        """Free every kept output, in every thread."""
        self._state = _State()

    def cached_bytes(self) -> int:
        """Bytes of the sub-layer outputs (and their extrapolation terms) the calling thread holds."""
        total = 0
        for kept in self._state.kept.values():
            for tensors in kept.stored.tensors():
                total += sum(t.numel() * t.element_size() for t in tensors.values())
        return total

    def on_run_start(self, total: Optional[int]) -> None:
        self._state.reset()

    def on_run_end(self, check: bool) -> None:
        state = self._state
        made = state.steps_made()
        state.reset()
        wanted = self.config.num_sampling_steps
        if check and made is not None and made != wanted:
            raise ValueError(
                f"the component schedule has {wanted} steps per line, but the run that just ended has {made} "
                f"denoising steps; calibrate again for {made} steps or run with {wanted}"
            )

    def _check_step(self, state: _State) -> int:
        step = steps.require_step()
        run, wanted = steps.current_run(), self.config.num_sampling_steps
        if state.run != run:
            state.reset(run)
            total = steps.current_total()
            if total is not None and total != wanted:
                raise ValueError(
                    f"the component schedule has {wanted} steps per line, but this run has {total} scheduler "
                    f"steps; calibrate again for {total} steps or run with {wanted}"
                )
        if step >= wanted:
            raise ValueError(
                f"step {step} is beyond the component schedule's {wanted} steps; calibrate again for this run's "
                f"steps or run with {wanted}"
            )
        if state.enter_step(step):
            state.calls = {}
        return step

    def forward(
        self, block: int, name: str, original: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Any:
        state = self._state
        step = self._check_step(state)
        pass_index = state.calls.get((block, name), 0)
        state.calls[(block, name)] = pass_index + 1
        slot = (pass_index, block, name)
        kept = state.kept.get(slot)
        shape = _input_shape(args, kwargs)
        if kept is not None and kept.shape != shape:  # another batch or resolution: compute it afresh
            kept = None
        if kept is not None and not self.config.computes(name, block, step):
            if kept.stored.residual[_OUT]._version != kept.version:
                raise ValueError(
                    f"the output of {name} in block {block} was modified in place after it was kept; a reused "
                    "output would be wrong (the block must not write into its sub-layer's output)"
                )
            return self._rule.guess(kept.stored, step)[_OUT]
        output = original(*args, **kwargs)
        if self._keeps[(block, name)]:
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"{name} of block {block} returned {type(output).__name__}; only sub-layers returning one "
                    "tensor can be reused"
                )
            stored = self._rule.keep(kept.stored if kept is not None else None, step, {_OUT: output})
            state.kept[slot] = _Kept(stored, shape, output._version)
        return output


def active_components(blocks: Sequence[nn.Module]) -> List[str]:
    """Names of the sub-layers of ``blocks[0]`` that exist in this model (for calibration and reports)."""
    return [name for name in known_components(blocks[0], 0) if isinstance(getattr(blocks[0], name, None), nn.Module)]
