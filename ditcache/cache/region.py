"""The cache region: its blocks' patched forwards and what they keep between steps.

Region: blocks ``s .. e`` of the chain (:mod:`ditcache.cache.blocks`). On a store step every block runs and
the reuse rule keeps what it needs of ``out_e - in_s`` (per stream, per
forward pass of the step); on a reuse step blocks ``s .. e`` hand their inputs
on untouched (no compute, real tensors) and block ``e`` returns the rule's
prediction. Steps come from :mod:`ditcache.steps`.

With ``reuse_at="output"`` the region is the whole chain and the reuse point
is the transformer's output head (:mod:`ditcache.cache.output`): a store pass
keeps what the rule needs of the head's output, a reuse pass skips every
block and the head returns the rule's guess without computing.

Patching shadows each block's ``forward`` with an instance attribute
(:mod:`ditcache._patch`), so an unpatched model is bit-identical to one never
patched. Under ``torch.compile`` only the block's own forward is traced: the
decisions (:meth:`CachedRegion.enter`, ``leave``, ``skipped``) run outside the
graph (:mod:`ditcache.cache.graph`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .. import steps
from .._patch import InstancePatch
from ..config import DitCacheConfig
from ..streams import BlockStreams, block_streams
from .blocks import BlockChain, OrderCheck
from .graph import graph_boundary, outside_graph
from .output import find_output_head
from .reuse import ReuseRule, Stored, reuse_rule
from .run_state import RunState

# Roles of a block in its segment of the region.
_START, _INNER, _END, _ONLY = "start", "inner", "end", "only"
_OUT = "output"  # the stream name of the output head's tensor


class _PassState(RunState):
    """What one thread caches: what was stored per forward pass of a step and segment, and the current pass."""

    def reset(self, run: Optional[int] = None) -> None:
        super().reset(run)
        self.passes = 0
        self.mode = "full"  # the pass's decision, taken at the region's first block
        self.segment_mode = "full"  # the current segment's: a reuse pass stores a segment it has nothing for
        self.start_inputs: Optional[Dict[str, torch.Tensor]] = None
        self.stored: Dict[Tuple[int, int], Stored] = {}  # (pass, segment) -> what the rule kept
        self.aux: Dict[Tuple[int, int], Dict[int, Any]] = {}  # (pass, block) -> outputs that are not streams
        self.pass_index = 0
        self.entry_shapes: Dict[int, Dict[str, torch.Size]] = {}  # reuse_at="output": pass -> first block's inputs
        self.head_due = False  # reuse_at="output": this pass's head has yet to store or reuse


class CachedForward:
    """Replaces one block's ``forward`` while the region is attached."""

    __slots__ = ("region", "index", "original")

    def __init__(self, region: "CachedRegion", index: int, original: Callable[..., Any]) -> None:
        self.region = region
        self.index = index
        self.original = original

    @graph_boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        region, index = self.region, self.index
        if region.order_check is not None:
            region.check_order(index)
        if region.roles[index] is None:
            return self.original(*args, **kwargs)
        if not region.enter(index, args, kwargs):
            return region.skipped(index, args, kwargs)
        return region.leave(index, args, kwargs, self.original(*args, **kwargs))


class CachedHead:
    """Replaces the output head's ``forward`` while a ``reuse_at="output"`` config is applied."""

    __slots__ = ("region", "original")

    def __init__(self, region: "CachedRegion", original: Callable[..., Any]) -> None:
        self.region = region
        self.original = original

    @graph_boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        region = self.region
        if not region.head_runs():
            return region.head_guess()
        return region.head_kept(self.original(*args, **kwargs))


def is_cached(block: nn.Module) -> bool:
    """Whether a cache region has patched ``block``'s forward."""
    return isinstance(block.__dict__.get("forward"), CachedForward)


class CachedRegion:
    """The patched blocks of a chain, the config they follow, and the cached tensors (per thread).

    The region's blocks are split into *segments* where the chain passes from
    one list to another: each segment keeps its own residual (its streams are
    those of its list; the code between lists, which may concatenate or split
    streams, runs on every step), and all segments follow the decision taken
    at the region's first block. Listens to the step clock: a run's start or
    end frees what the calling thread cached.
    """

    def __init__(self, chain: BlockChain) -> None:
        self.chain = chain
        self.blocks = chain.blocks
        self.config: Optional[DitCacheConfig] = None
        self.roles: Tuple[Optional[Tuple[str, int, bool]], ...] = (None,) * len(chain)
        self.order_check: Optional[OrderCheck] = OrderCheck(chain) if chain.discovered else None
        self._rule: Optional[ReuseRule] = None
        self._unchecked: Optional[DitCacheConfig] = None  # the config last warned about an unchecked schedule
        self._streams: List[Optional[BlockStreams]] = [None] * len(chain)
        self._state = _PassState()
        self._patch = InstancePatch()
        self._head_patch = InstancePatch()
        self._at_output = False
        for i, block in enumerate(chain.blocks):
            self._patch.set(block, "forward", CachedForward(self, i, block.forward))
        steps.add_listener(self)

    @property
    def attached(self) -> bool:
        return bool(self._patch)

    def apply(self, config: Optional[DitCacheConfig]) -> None:
        """Follow ``config`` (``None``: every block runs as unpatched); drops cached tensors."""
        roles: List[Optional[Tuple[str, int, bool]]] = [None] * len(self.blocks)
        if config is not None:
            start, end = config.cache_block_start, config.cache_block_end
            segment = 0
            for i in range(start, end + 1):
                opens = i == start or self.chain.list_of[i] != self.chain.list_of[i - 1]
                closes = i == end or self.chain.list_of[i] != self.chain.list_of[i + 1]
                segment += opens and i != start
                role = _ONLY if opens and closes else _START if opens else _END if closes else _INNER
                roles[i] = (role, segment, i == start)
        self.reset()
        self._head_patch.restore()
        self._at_output = config is not None and config.reuse_at == "output"
        if self._at_output:
            head = find_output_head(self.chain.owner)
            self._head_patch.set(head, "forward", CachedHead(self, head.forward))
        self.config = config
        self._rule = reuse_rule(config.reuse) if config is not None else None
        self.roles = tuple(roles)

    @outside_graph
    def check_order(self, index: int) -> None:
        """Check a discovered chain's run order on its first pass (see :class:`OrderCheck`)."""
        check = self.order_check
        try:
            check.called(index)
        finally:
            if check.expected is None:
                self.order_check = None

    def reset(self) -> None:
        """Free every cached tensor, in every thread."""
        self._state = _PassState()

    def remove(self) -> None:
        """Restore every block's (and the output head's) ``forward`` exactly."""
        self._patch.restore()
        steps.remove_listener(self)
        self.apply(None)

    def cached_passes(self) -> int:
        """How many forward passes' tensors the calling thread holds."""
        return len({pass_index for pass_index, _ in self._state.stored})

    # --- step clock listener ------------------------------------------------------------

    def on_run_start(self, total: Optional[int]) -> None:
        self._state.reset()

    def on_run_end(self, check: bool) -> None:
        state = self._state
        made = state.steps_made()
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
            self._check_schedule(steps.current_timesteps())
        if state.head_due:
            head = type(find_output_head(self.chain.owner)).__name__
            raise ValueError(
                f"reuse_at='output': the output head ({head}) of {type(self.chain.owner).__name__} did not run after "
                "the blocks in the last forward pass, so its output cannot be reused; declare the model's final "
                "projection with ditcache.register_output_head"
            )
        if state.enter_step(step):
            state.passes = 0
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
        if state.mode == "reuse" and (state.pass_index, 0) not in state.stored:
            state.mode = "store"
        state.head_due = self._at_output and state.mode != "full"

    def _check_schedule(self, timesteps: Optional[Tuple[float, ...]]) -> None:
        """Refuse a run at other timesteps than the config was searched on; warn once when the run does not tell."""
        config = self.config
        if config is None or config.timesteps is None:
            return
        if timesteps is None:
            if self._unchecked is not config:
                self._unchecked = config
                warnings.warn(
                    f"the cache config was searched on the timesteps {list(config.timesteps)}, and this run's step "
                    "source (set_timestep_idx or a @timestep_aware loop) does not tell its timesteps, so they cannot be "
                    "checked: the config is mis-cached if the run samples others", stacklevel=4)
            return
        mismatch = config.schedule_mismatch(timesteps)
        if mismatch is not None:
            raise ValueError(mismatch)

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
        steps_of_run = f"the {total} steps of {run}" if ended else f"this run's {total} steps"
        if config.cache_step_start >= total:
            raise ValueError(
                f"cache_step_start={config.cache_step_start} is beyond {steps_of_run} (allowed 0..{total - 1}); "
                "the cache would never be used"
            )
        if config.cache_step_end is not None and config.cache_step_end > total:
            raise ValueError(
                f"cache_step_end={config.cache_step_end} is beyond {steps_of_run} "
                f"(allowed {config.cache_step_start + 1}..{total}); the last steps would not be spared as asked"
            )

    @outside_graph
    def enter(self, index: int, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether block ``index`` must run in this pass (its region role is not ``None``)."""
        position, segment, first = self.roles[index]
        state = self._state
        if position in (_START, _ONLY):
            if first:
                self._begin_pass(state)
            if first and self._at_output and state.mode == "reuse":
                if _shapes(self._streams[index].inputs(args, kwargs)) != state.entry_shapes.get(state.pass_index):
                    state.mode = "store"  # a differently shaped call (other batch or resolution): compute it afresh
            state.segment_mode = state.mode
            if state.mode == "reuse" and not self._at_output:
                stored = state.stored.get((state.pass_index, segment))
                inputs = self._streams[index].inputs(args, kwargs) if stored is not None else None
                if stored is not None and stored.fits(inputs):
                    state.start_inputs = inputs
                else:  # a differently shaped call (other batch or resolution): compute it afresh
                    state.segment_mode = "store"
        return state.segment_mode != "reuse"

    @outside_graph
    def leave(self, index: int, args: Tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> Any:
        """Keep what a store pass needs of block ``index``'s real ``output``; returns it."""
        position, segment, first = self.roles[index]
        state = self._state
        if state.segment_mode == "full":
            return output
        streams = self._streams_of(index, args, kwargs, output)
        aux = streams.aux(output)
        if aux:
            state.aux[(state.pass_index, index)] = aux
        if self._at_output:  # the head stores; skipped blocks need only their streams and side outputs
            if first:
                state.entry_shapes[state.pass_index] = _shapes(streams.inputs(args, kwargs))
            return output
        if position in (_START, _ONLY):
            state.start_inputs = streams.inputs(args, kwargs)
        if position in (_END, _ONLY):
            outputs = streams.unpack(output)
            start_inputs = state.start_inputs
            if start_inputs is None or not set(outputs) <= set(start_inputs):
                raise ValueError(
                    f"blocks {self.chain.name(index)} and the first block of its part of the cache region carry "
                    f"different streams ({sorted(start_inputs or {})} vs {sorted(outputs)}); declare the "
                    "block's outputs with ditcache.register_block_outputs"
                )
            key = (state.pass_index, segment)
            inputs = {name: start_inputs[name] for name in outputs}
            state.stored[key] = self._rule.store(state.stored.get(key), state.step, inputs, outputs)
            state.start_inputs = None
        return output

    @outside_graph
    def skipped(self, index: int, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """What block ``index`` returns on a reuse pass: its inputs, or at its segment's end the prediction."""
        position, segment, _ = self.roles[index]
        state, streams = self._state, self._streams[index]
        aux = state.aux.get((state.pass_index, index))
        if position in (_END, _ONLY) and not self._at_output:
            start_inputs = state.start_inputs
            state.start_inputs = None
            stored = state.stored[(state.pass_index, segment)]
            return streams.pack(self._rule.predict(stored, state.step, start_inputs), aux)
        return streams.pack(streams.inputs(args, kwargs), aux)

    # --- the output head (reuse_at="output") ----------------------------------------

    @outside_graph
    def head_runs(self) -> bool:
        """Whether the output head computes in this pass (it does unless the pass reuses)."""
        state = self._state
        if state.mode == "full":
            return True
        if not state.head_due:
            head = type(find_output_head(self.chain.owner)).__name__
            raise ValueError(
                f"reuse_at='output': the output head ({head}) of {type(self.chain.owner).__name__} ran twice in one "
                "forward pass, or before the blocks; its output can only be reused when it runs once, after them"
            )
        return state.mode != "reuse"

    @outside_graph
    def head_kept(self, output: Any) -> Any:
        """Keep what the rule needs of the head's real ``output`` on a store pass; returns it."""
        state = self._state
        if state.mode == "full":
            return output
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"reuse_at='output': the output head of {type(self.chain.owner).__name__} returned "
                f"{type(output).__name__}; only a head returning one tensor can be reused"
            )
        state.head_due = False
        key = (state.pass_index, 0)
        # a copy: the model may write into the head's output after it returned
        state.stored[key] = self._rule.keep(state.stored.get(key), state.step, {_OUT: output.clone()})
        return output

    @outside_graph
    def head_guess(self) -> torch.Tensor:
        """The rule's guess of the head's output on a reuse pass."""
        state = self._state
        state.head_due = False
        stored = state.stored[(state.pass_index, 0)]
        guess = self._rule.guess(stored, state.step)[_OUT]
        return guess.clone() if guess is stored.residual[_OUT] else guess


def _shapes(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in tensors.items()}
