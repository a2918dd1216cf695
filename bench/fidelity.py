"""Prompt fidelity of the bundled model: every prompt x 2 seeds at default settings, as a markdown table.

    python bench/fidelity.py [--model DIR] [--seeds 0 1] [--steps N] [--guidance G] [--scheduler NAME]
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional

import torch

from ditcache.models.fidelity import ATTRIBUTES, evaluate_pipeline, hit_rates, misses
from ditcache.models.pipeline import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, SCHEDULERS, load_bundled_pipeline
from ditcache.models.shapes import ALL_PROMPTS


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="saved pipeline directory (default: the bundled weights)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=sorted(SCHEDULERS))
    p.add_argument("--every", type=int, default=1, help="use every N-th prompt only (quick checks)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_bundled_pipeline(args.model, scheduler=args.scheduler)
    prompts = ALL_PROMPTS[:: args.every]
    start = time.time()
    results = evaluate_pipeline(
        pipe, prompts, args.seeds, num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False
    )
    rates = hit_rates(results)
    print(
        f"{len(prompts)} prompts x {len(args.seeds)} seeds, {args.scheduler}, {args.steps} steps, "
        f"guidance {args.guidance} ({time.time() - start:.0f} s)\n"
    )
    print("| attribute | hit rate |\n|---|---|")
    for name in ATTRIBUTES + ("mean",):
        print(f"| {name} | {100 * rates[name]:.1f}% |")
    wrong = misses(results)
    if wrong:
        print(f"\n{len(wrong)} clips missed at least one attribute, e.g.:")
        for r in wrong[:8]:
            print(f"- asked {' / '.join(r.expected)}, got {' / '.join(str(f) for f in r.found)}")


if __name__ == "__main__":
    main()
