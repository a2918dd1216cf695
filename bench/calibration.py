"""How far a fresh calibration moves a config's predicted speedup: run-wide clocks against steady times.

Each repeat is one instrumented uncached run of the bundled model (the search's calibration run),
read two ways: the search's steady times (a typical forward pass of the model and each block's
median share of its pass, :meth:`~ditcache.search.recording.CalibrationRecorder.steady_times`), and
the blocks' median calls over the whole run's clock (the search's estimator before). Both come from
the same run, so the spread between repeats is the estimators' own. Run it beside other work: the
point is a host whose load changes.

    python bench/calibration.py --repeats 8
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict

import torch

from ditcache import DitCacheConfig, dit_cache
from ditcache._atomic import atomic_write_text
from ditcache.models.pipeline import load_bundled_pipeline
from ditcache.search.candidates import predicted_speedup
from ditcache.search.recording import CalibrationRecorder
from ditcache.timing import BlockTimer, timed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search import PROMPTS, table  # noqa: E402

CONFIGS = {  # whole-model schedules near the speeds the benchmarks target
    "start 16, interval 3": DitCacheConfig(16, 3, 0, 12),
    "start 9, interval 2": DitCacheConfig(9, 2, 0, 12),
    "start 2, interval 4": DitCacheConfig(2, 4, 0, 12),
}


def calibrate(pipe, num_steps: int) -> Dict[str, Dict[str, float]]:
    """One instrumented run; each config's predicted speedup under both estimators."""
    blocks = pipe.transformer.transformer_blocks
    with dit_cache(pipe, None):  # the step signal, nothing cached
        with BlockTimer([pipe.transformer]) as passes, CalibrationRecorder(blocks) as recorder:
            videos, seconds = timed(lambda: list(pipe(PROMPTS, num_inference_steps=num_steps, seed=0,
                                                      progress=False).images))
    steady = recorder.result(videos, seconds, num_steps, passes.calls[0])
    clock = recorder.result(videos, seconds, num_steps)  # no passes: the blocks' medians over the whole clock
    return {name: {"steady": predicted_speedup(steady, config), "run clock": predicted_speedup(clock, config)}
            for name, config in CONFIGS.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default="euler_ancestral")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "calibration.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_bundled_pipeline(scheduler=args.scheduler)
    calibrate(pipe, args.steps)  # warm-up, as the search's first run
    repeats = []
    for i in range(args.repeats):
        repeats.append(calibrate(pipe, args.steps))
        print(f"  {i + 1}/{args.repeats}: {json.dumps(repeats[-1])}", flush=True)
    rows = []
    for name in CONFIGS:
        for estimator in ("run clock", "steady"):
            values = [r[name][estimator] for r in repeats]
            rows.append({"config": name, "estimator": estimator, "median": statistics.median(values),
                         "min": min(values), "max": max(values), "spread": max(values) / min(values) - 1})
    print("\n" + table(rows, ["config", "estimator", "median", "min", "max", "spread"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_text(args.out, json.dumps({"steps": args.steps, "scheduler": args.scheduler, "prompts": PROMPTS,
                                            "repeats": repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
