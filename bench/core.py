"""Core cache benchmark: patch overhead with caching off, and reuse speedup against the ideal.

Every figure is a ratio within one run: median over interleaved repeats of
(unpatched time / variant time). The ideal speedup of a config is computed from
the measured time of each block in an unpatched run (the skipped blocks' share
of the whole run), not from block counts.

    python bench/core.py --repeats 15
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
from diffusers import DDIMScheduler, PixArtTransformer2DModel

from ditcache import DitCacheConfig, dit_cache
from ditcache.timing import BlockTimer, timed


class PixArtLoop:
    """A PixArt-style DiT (diffusers' model, random weights) in a DDIM loop with batched CFG."""

    def __init__(self, layers: int, width: int, size: int) -> None:
        torch.manual_seed(0)
        self.transformer = PixArtTransformer2DModel(
            sample_size=size, in_channels=4, out_channels=4, num_layers=layers, attention_head_dim=32,
            num_attention_heads=width // 32, cross_attention_dim=width, caption_channels=64, patch_size=2,
            norm_type="ada_norm_single", use_additional_conditions=False,
        ).eval()
        self.scheduler = DDIMScheduler()
        self.size = size

    @torch.no_grad()
    def __call__(self, steps: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, self.size, self.size, generator=gen)
        text = torch.randn(2, 8, 64, generator=gen)
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            out = self.transformer(torch.cat([latents] * 2), encoder_hidden_states=text, timestep=t.expand(2),
                                   return_dict=False)[0]
            cond, uncond = out.chunk(2)
            latents = self.scheduler.step(uncond + 4.0 * (cond - uncond), t, latents).prev_sample
        return latents


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="latent height/width (tokens = (size/2)^2)")
    args = parser.parse_args(argv)

    pipe = PixArtLoop(args.layers, args.width, args.size)
    blocks = pipe.transformer.transformer_blocks
    quarter = args.layers // 4
    half_blocks = DitCacheConfig(cache_step_start=0, cache_step_interval=2, cache_block_start=quarter,
                                 cache_num_blocks=args.layers // 2)
    reuse_steps = sum(half_blocks.step_mode(s) == "reuse" for s in range(args.steps))

    pipe(args.steps)  # warm-up
    with BlockTimer(blocks) as timer:
        total = timed(lambda: pipe(args.steps))[1]
    block_share = sum(timer.seconds) / total
    region = range(half_blocks.cache_block_start, half_blocks.cache_block_end + 1)
    skipped = sum(timer.seconds[i] for i in region) * reuse_steps / args.steps
    ideal = 1.0 / (1.0 - skipped / total)

    variants = {
        "plain": lambda: timed(lambda: pipe(args.steps))[1],
        "off": lambda: _with(pipe, None, args.steps),
        "half": lambda: _with(pipe, half_blocks, args.steps),
    }
    ratios = {"off": [], "half": []}
    names = list(variants)
    for repeat in range(args.repeats):
        order = names[repeat % 3:] + names[: repeat % 3]  # every variant takes every position in turn
        seconds = {name: variants[name]() for name in order}
        for name in ratios:
            ratios[name].append(seconds["plain"] / seconds[name])
    overhead = 1.0 / statistics.median(ratios["off"]) - 1.0
    measured = statistics.median(ratios["half"])
    print(f"model: PixArtTransformer2DModel, {args.layers} blocks, width {args.width}, "
          f"{(args.size // 2) ** 2} tokens, batch 2 (CFG), {args.steps} DDIM steps, {args.repeats} repeats, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"blocks' share of a run: {block_share:.1%}")
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| overhead of the patch, caching off (median) | {overhead:+.2%} |")
    print(f"| half the blocks skipped on half the steps: measured speedup | {measured:.3f}x |")
    print(f"| same, ideal speedup from measured block times | {ideal:.3f}x |")
    print(f"| measured / ideal | {measured / ideal:.3f} |")
    sys.stdout.flush()


def _with(pipe, config, steps) -> float:
    with dit_cache(pipe, config):
        return timed(lambda: pipe(steps))[1]


if __name__ == "__main__":
    main()
