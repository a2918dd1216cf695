"""A small real DiT-like model and sampling loop for the cache tests.

Each block records ``(loop step, block index)`` when its real forward runs, with
the step taken from the pipeline's own loop counter, so the tests check the
cache against the loop, not against the cache's own idea of the step.
"""
from __future__ import annotations

import inspect
from typing import List, Optional, Tuple

import torch
from torch import nn


class CountingBlock(nn.Module):
    """Attention-free transformer-ish block: adaLN-style modulation + MLP, residual."""

    def __init__(self, index: int, dim: int, log: List[Tuple[Optional[int], int]], clock: dict) -> None:
        super().__init__()
        self.index = index
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self._log = log
        self._clock = clock

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._log.append((self._clock.get("step"), self.index))
        scale, shift = self.mod(temb).unsqueeze(1).chunk(2, dim=-1)
        return hidden_states + self.mlp(self.norm(hidden_states) * (1 + scale) + shift)


class ToyTransformer(nn.Module):
    def __init__(self, num_blocks: int = 6, dim: int = 16, channels: int = 4) -> None:
        super().__init__()
        self.log: List[Tuple[Optional[int], int]] = []
        self.clock: dict = {}
        self.proj_in = nn.Linear(channels, dim)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer_blocks = nn.ModuleList(
            CountingBlock(i, dim, self.log, self.clock) for i in range(num_blocks)
        )
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep.float().reshape(-1, 1).expand(sample.shape[0], 1) / 1000.0)
        hidden = self.proj_in(sample)
        for block in self.transformer_blocks:
            hidden = block(hidden, temb=temb)
        return self.proj_out(hidden)


class ToyPipeline:
    """A sampling loop shaped like diffusers' / Open-Sora-Plan's."""

    def __init__(self, scheduler, num_blocks: int = 6, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.transformer = ToyTransformer(num_blocks).eval()
        self.scheduler = scheduler

    def __call__(
        self,
        num_inference_steps: int = 10,
        batch: int = 2,
        tokens: int = 8,
        guidance_scale: float = 0.0,
        cfg_split: bool = False,
        seed: int = 0,
        abort_at: Optional[int] = None,
    ) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn(batch, tokens, 4, generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        clock = self.transformer.clock
        # second-order schedulers (Heun, DPM-2) take no generator
        noise_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        with torch.no_grad():
            for i, t in enumerate(self.scheduler.timesteps):
                clock["step"] = i
                if i == abort_at:
                    raise KeyboardInterrupt(f"aborted at step {i}")
                model_input = self.scheduler.scale_model_input(latents, t)
                if guidance_scale == 0.0:
                    noise = self.transformer(model_input, t)
                elif cfg_split:
                    cond = self.transformer(model_input, t)
                    uncond = self.transformer(model_input * 0.5, t)
                    noise = uncond + guidance_scale * (cond - uncond)
                else:
                    both = self.transformer(torch.cat([model_input, model_input * 0.5]), t)
                    cond, uncond = both.chunk(2)
                    noise = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise, t, latents, **noise_kwargs).prev_sample
        clock["step"] = None
        return latents


def expected_blocks(config, step: int, num_blocks: int) -> List[int]:
    """Blocks whose real forward runs at ``step`` under the spec's rule, derived independently."""
    region = range(config.cache_block_start, config.cache_block_start + config.cache_num_blocks)
    reuse = step >= config.cache_step_start and (step - config.cache_step_start) % config.cache_step_interval != 0
    spared = config.cache_step_end is not None and step >= config.cache_step_end  # the last steps run in full
    reuse = reuse and not spared
    return [i for i in range(num_blocks) if not (reuse and i in region)]
