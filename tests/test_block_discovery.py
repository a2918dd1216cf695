"""Finding block lists without a path: discovery, its run-order check, the registry and explicit paths."""
import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from ditcache import DitCacheConfig, dit_cache, register_family
from ditcache.cache.blocks import FAMILIES, find_blocks


class SelfAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, -1) @ self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, log, name):
        super().__init__()
        self.attn = SelfAttention(dim)
        self.mod = nn.Linear(dim, dim)
        self.log, self.name = log, name

    def forward(self, hidden_states, temb):
        self.log.append(self.name)
        return hidden_states + self.attn(hidden_states) * torch.tanh(self.mod(temb)).unsqueeze(1)


class TwoListTransformer(nn.Module):
    """Text-side blocks, then joint blocks over [text, image]: the stream changes between the lists."""

    def __init__(self, reverse_attributes=False, dim=8):
        super().__init__()
        self.log = []
        first = nn.ModuleList(Block(dim, self.log, f"text{i}") for i in range(2))
        second = nn.ModuleList(Block(dim, self.log, f"joint{i}") for i in range(3))
        if reverse_attributes:  # attribute order differs from run order
            self.joint_blocks, self.text_blocks = second, first
        else:
            self.text_blocks, self.joint_blocks = first, second
        self.time = nn.Linear(1, dim)
        self.proj_in = nn.Linear(4, dim)
        self.proj_out = nn.Linear(dim, 4)

    def forward(self, sample, timestep, text):
        temb = self.time(timestep.float().reshape(1, 1).expand(sample.shape[0], 1) / 1000)
        for block in self.text_blocks:
            text = block(text, temb)
        hidden = torch.cat([text, self.proj_in(sample)], dim=1)
        for block in self.joint_blocks:
            hidden = block(hidden, temb)
        return self.proj_out(hidden[:, text.shape[1]:])


class Pipe:
    def __init__(self, **kwargs):
        torch.manual_seed(0)
        self.transformer = TwoListTransformer(**kwargs).eval()
        self.scheduler = DDIMScheduler()

    @torch.no_grad()
    def __call__(self, steps=6):
        gen = torch.Generator().manual_seed(1)
        latents, text = torch.randn(1, 6, 4, generator=gen), torch.randn(1, 3, 8, generator=gen)
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            latents = self.scheduler.step(self.transformer(latents, t, text), t, latents).prev_sample
        return latents


WHOLE = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=0, cache_num_blocks=5)


def test_discovered_chain_spans_lists_whose_streams_change():
    pipe = Pipe()
    reference = pipe()
    chain = find_blocks(pipe)
    assert chain.paths == ("transformer.text_blocks", "transformer.joint_blocks") and len(chain) == 5
    with dit_cache(pipe, None):
        assert torch.equal(pipe(), reference)
    pipe.transformer.log.clear()
    with dit_cache(pipe, WHOLE):
        cached = pipe()
    names = ["text0", "text1", "joint0", "joint1", "joint2"]
    assert pipe.transformer.log == names * 4  # steps 0-2 and 4 run every block, 3 and 5 none
    error = ((cached - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.2, error
    assert torch.equal(pipe(), reference)


def test_region_across_the_list_boundary_only():
    pipe = Pipe()
    reference = pipe()
    config = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=1, cache_num_blocks=2)
    pipe.transformer.log.clear()
    with dit_cache(pipe, config):
        cached = pipe(steps=4)
    names = ["text0", "text1", "joint0", "joint1", "joint2"]
    assert pipe.transformer.log == names * 3 + ["text0", "joint1", "joint2"]
    assert torch.isfinite(cached).all() and not torch.equal(cached, reference)


def test_discovered_order_is_checked_on_the_first_pass_and_a_declaration_fixes_it():
    pipe = Pipe(reverse_attributes=True)
    reference = pipe()
    with pytest.raises(ValueError, match="do not run in that order"):
        with dit_cache(pipe, WHOLE):
            pipe()
    assert all("forward" not in block.__dict__ for block in find_blocks(pipe).blocks)
    try:
        register_family("TwoListTransformer", ["text_blocks", "joint_blocks"])
        with dit_cache(pipe, WHOLE) as adaptor:
            assert adaptor.chain.paths == ("transformer.text_blocks", "transformer.joint_blocks")
            assert not torch.equal(pipe(), reference)
    finally:
        FAMILIES.pop("TwoListTransformer")
    with dit_cache(pipe, WHOLE, dit_block_path="transformer.text_blocks, transformer.joint_blocks") as adaptor:
        assert len(adaptor.blocks) == 5
        pipe()
    assert torch.equal(pipe(), reference)


def test_bad_declarations():
    with pytest.raises(ValueError, match="class name"):
        register_family("not a name", ["blocks"])
    with pytest.raises(ValueError, match="dotted attribute paths"):
        register_family("Model", ["blocks..x"])
