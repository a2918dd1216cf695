"""Sequence parallelism for the bundled transformer under torchrun.

Each rank keeps ``1/world_size`` of the tokens (a contiguous slice of the
flattened frames x height x width sequence) from the first block to the last;
self-attention all-gathers keys and values so every local query still attends
to every token; after the last block the tokens are gathered back, so every
rank computes the same output and steps the scheduler identically. Nothing in
the model's code changes: a pre-hook slices, a hook gathers, and the
self-attention processors are swapped for the duration.

Because every rank runs the same steps with the same config, the DiT cache
takes the same decision on every rank at every step, and its deltas are kept
per rank for the local tokens.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _gather_tokens(tensor: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """Concatenate every rank's slice of dimension 1, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class GatherKVAttnProcessor:
    """Self-attention over all ranks' tokens for the local queries."""

    def __init__(self, group: Any, world: int) -> None:
        self.group = group
        self.world = world

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("sequence-parallel self-attention takes neither encoder states nor a mask")
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = _gather_tokens(attn.to_k(hidden_states), self.group, self.world)
        value = _gather_tokens(attn.to_v(hidden_states), self.group, self.world)
        head_dim = query.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class SequenceParallel:
    """Split the tokens of ``transformer.transformer_blocks`` over the ranks while active."""

    def __init__(self, transformer: nn.Module, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("sequence parallelism needs an initialised process group (run under torchrun)")
        self.blocks = transformer.transformer_blocks
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._handles: List[Any] = []
        self._processors: Dict[int, Any] = {}

    def _split(self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
        hidden = args[0]
        tokens = hidden.shape[1]
        if tokens % self.world:
            raise ValueError(
                f"{tokens} tokens cannot be split evenly over {self.world} processes: choose num_frames, height and "
                f"width so that the token count is a multiple of --nproc_per_node"
            )
        share = tokens // self.world
        return (hidden[:, self.rank * share : (self.rank + 1) * share], *args[1:]), kwargs

    def _gather(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return _gather_tokens(output, self.group, self.world)

    def __enter__(self) -> "SequenceParallel":
        processor = GatherKVAttnProcessor(self.group, self.world)
        for i, block in enumerate(self.blocks):
            self._processors[i] = block.attn1.processor
            block.attn1.set_processor(processor)
        self._handles.append(self.blocks[0].register_forward_pre_hook(self._split, with_kwargs=True))
        self._handles.append(self.blocks[-1].register_forward_hook(self._gather))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for i, processor in self._processors.items():
            self.blocks[i].attn1.set_processor(processor)
        self._processors = {}
