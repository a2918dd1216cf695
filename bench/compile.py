"""The cache under torch.compile (CPU inductor): speedup against the compiled, uncached model.

Three copies of the bundled pipeline: eager, the whole transformer compiled
(``torch.compile(pipe.transformer)``) and each block compiled alone
(``ditcache.compile_blocks``). Each runs uncached and with one cache config.
The first (compiling) run of each is timed once and reported as such; then
every variant runs once per repeat, interleaved, and each figure is the median
over repeats of (whole-compiled uncached time / variant time). The cached
compiled frames are compared with the eager cached ones (PSNR; float noise
expected).

    python bench/compile.py --repeats 7
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Callable, Dict

import numpy as np
import torch
from torch._dynamo.utils import counters

from ditcache import DitCacheConfig, compile_blocks, dit_cache
from ditcache._atomic import atomic_write_text
from ditcache.metrics import psnr_from_mse
from ditcache.models import load_bundled_pipeline

PROMPTS = ["a red circle moving right", "a cyan triangle moving up"]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compile.json")


def psnr_text(video: np.ndarray, reference: np.ndarray) -> str:
    """PSNR in dB, to two decimals ("inf" for identical frames, which JSON cannot hold as a number)."""
    value = psnr_from_mse(float(((video.astype(np.float64) - reference.astype(np.float64)) ** 2).mean()))
    return "inf" if math.isinf(value) else f"{value:.2f}"


def compiled_cached(label: str) -> bool:
    return label.endswith(" cached") and not label.startswith("eager")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=2, cache_num_blocks=8)

    pipes = {"eager": load_bundled_pipeline(), "whole": load_bundled_pipeline(), "blocks": load_bundled_pipeline()}
    pipes["whole"].transformer = torch.compile(pipes["whole"].transformer)
    compile_blocks(pipes["blocks"].transformer.transformer_blocks)

    def run(pipe, cached: bool) -> np.ndarray:
        kwargs = dict(num_inference_steps=args.steps, seed=0, progress=False)
        if not cached:
            return pipe(PROMPTS, **kwargs).images
        with dit_cache(pipe, config):
            return pipe(PROMPTS, **kwargs).images

    variants: Dict[str, Callable[[], np.ndarray]] = {
        f"{name} {'cached' if cached else 'uncached'}": (lambda p=pipe, c=cached: run(p, c))
        for name, pipe in pipes.items() for cached in (False, True)
    }
    first_run, frames, graphs = {}, {}, {}
    with torch.no_grad():
        for label, variant in variants.items():
            before = counters["stats"]["unique_graphs"]
            start = time.perf_counter()
            frames[label] = variant()
            first_run[label] = time.perf_counter() - start
            graphs[label] = counters["stats"]["unique_graphs"] - before
        after_first_runs = counters["stats"]["unique_graphs"]
        seconds = {label: [] for label in variants}
        for _ in range(args.repeats):
            for label, variant in variants.items():
                start = time.perf_counter()
                variant()
                seconds[label].append(time.perf_counter() - start)
        graphs_in_repeats = counters["stats"]["unique_graphs"] - after_first_runs

    baseline = seconds["whole uncached"]
    results = {
        "command": f"python bench/compile.py --repeats {args.repeats} --steps {args.steps} --threads {args.threads}",
        "torch": torch.__version__,
        "config": config.to_dict(),
        "steps": args.steps,
        "prompts": len(PROMPTS),
        "repeats": args.repeats,
        "graphs_compiled_in_repeats": graphs_in_repeats,
        "variants": {
            label: {
                "speedup_vs_whole_compiled_uncached": statistics.median(b / s for b, s in zip(baseline, seconds[label])),
                "median_seconds": statistics.median(seconds[label]),
                "first_run_seconds": first_run[label],
                "graphs_compiled_by_first_run": graphs[label],
                "psnr_vs_eager_cached_db": psnr_text(frames[label], frames["eager cached"]) if compiled_cached(label) else None,
            }
            for label in variants
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"{'variant':18} {'x vs whole-compiled uncached':>28} {'median s':>9} {'first run s':>12} {'graphs':>7} {'PSNR vs eager cached':>21}")
    for label, row in results["variants"].items():
        quality = "" if row["psnr_vs_eager_cached_db"] is None else f"{row['psnr_vs_eager_cached_db']} dB"
        print(
            f"{label:18} {row['speedup_vs_whole_compiled_uncached']:28.2f} {row['median_seconds']:9.3f} "
            f"{row['first_run_seconds']:12.1f} {row['graphs_compiled_by_first_run']:7d} {quality:>21}"
        )
    print(f"graphs compiled during the repeats: {graphs_in_repeats}")


if __name__ == "__main__":
    main()
