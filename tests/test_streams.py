"""Pairing a block's outputs with the inputs they continue, for blocks no registry knows."""
import pytest
import torch
from torch import nn

from ditcache import DitCacheConfig, dit_cache
from ditcache.streams import block_streams


class SameShapeDualStream(nn.Module):
    """A custom joint-attention-like block: two streams of the same shape, each updated by a small residual."""

    def __init__(self, dim=16, swap=False):
        super().__init__()
        self.mix = nn.Linear(2 * dim, 2 * dim)
        self.swap = swap

    def forward(self, hidden_states, encoder_hidden_states, temb=None):
        update = 0.1 * torch.tanh(self.mix(torch.cat([hidden_states, encoder_hidden_states], -1)))
        hidden, encoder = hidden_states + update[..., :16], encoder_hidden_states + update[..., 16:]
        return (encoder, hidden) if self.swap else (hidden, encoder)


class Model(nn.Module):
    def __init__(self, swap=False):
        super().__init__()
        torch.manual_seed(0)
        self.transformer_blocks = nn.ModuleList(SameShapeDualStream(swap=swap) for _ in range(4))
        self.swap = swap

    def forward(self, hidden, encoder):
        for block in self.transformer_blocks:
            out = block(hidden, encoder_hidden_states=encoder)
            encoder, hidden = out if self.swap else out[::-1]
        return hidden


class Pipe:
    def __init__(self, swap=False):
        self.transformer = Model(swap)

    @torch.no_grad()
    def __call__(self, steps=8):
        from ditcache import DitCacheAdaptor

        hidden = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1))
        encoder = 3.0 + torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(2))
        for i in range(steps):
            DitCacheAdaptor.set_timestep_idx(i)
            hidden = hidden + 0.1 * self.transformer(hidden, encoder)
        return hidden


@pytest.mark.parametrize("swap", [False, True])
def test_same_shape_streams_are_paired_by_value(swap):
    block = SameShapeDualStream(swap=swap)
    hidden, encoder = torch.randn(1, 6, 16), 3.0 + torch.randn(1, 6, 16)
    output = block(hidden, encoder_hidden_states=encoder)
    streams = block_streams(block, (hidden,), {"encoder_hidden_states": encoder}, output)
    order = ("hidden_states", "encoder_hidden_states")
    assert streams.outputs == (order[::-1] if swap else order)

    pipe = Pipe(swap)
    reference = pipe()
    config = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=0, cache_num_blocks=4)
    with dit_cache(pipe, config):
        cached = pipe()
    error = ((cached - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.05  # the region was reused, and with each residual added to its own stream


def test_streams_the_values_cannot_tell_apart_are_refused():
    block = SameShapeDualStream()
    hidden = torch.randn(1, 6, 16)
    output = block(hidden, encoder_hidden_states=hidden.clone())  # both inputs equal: either pairing fits
    with pytest.raises(ValueError, match="cannot tell which input output 0 of block SameShapeDualStream continues"):
        block_streams(block, (hidden,), {"encoder_hidden_states": hidden.clone()}, output)
