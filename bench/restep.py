"""ReStep benchmark: searched vs uniform timesteps on the bundled model, scored against 100-step videos.

For each step count, the schedule ReStep finds and the pipeline's default (evenly spaced) schedule
of the same length sample the same prompts and seeds, with the Euler ancestral sampler and with the
deterministic Euler one; both are compared with 100-step videos of those prompts, seeds and sampler
(PSNR and SSIM via ditcache.metrics, prompt fidelity via ditcache.models.fidelity). The calibration videos are made as a user would: 100-step clips of
other prompts and seeds, written as mp4 with a prompts.json beside them. Every stage is cached in
--work (keyed by the model weights), so an interrupted run resumes and a finished one just prints;
delete --work after changing the search itself.

    python bench/restep.py --work restep-bench [--model DIR] [--steps 10 15 25] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ditcache._atomic import atomic_write, atomic_write_text
from ditcache.metrics import compare_videos
from ditcache.models.fidelity import check_clip, hit_rates
from ditcache.models.pipeline import BUNDLED_WEIGHTS, DEFAULT_GUIDANCE, load_bundled_pipeline, weights_fingerprint
from ditcache.models.shapes import ALL_PROMPTS
from ditcache.restep import ReStepAdaptor, ReStepSearchConfig, read_schedule_timesteps
from ditcache.restep.schedule import SCHEDULE_FILE
from ditcache.restep.calibration import PROMPTS_FILE
from ditcache.video import write_video

REFERENCE_STEPS = 100
# The pipeline's default sampler (the ancestral one also takes timesteps= here), whose fresh noise at
# every step makes videos of different step counts differ whatever the schedule, and the
# deterministic Euler sampler, where the difference from the reference is the schedule's error.
SAMPLERS = {"euler_ancestral_timesteps": "euler_ancestral", "euler": "euler"}
EVAL_PROMPTS = ALL_PROMPTS[0::7]  # 12 prompts
EVAL_SEEDS = (0, 1)
CALIBRATION_PROMPTS = [p for p in ALL_PROMPTS if p not in EVAL_PROMPTS][1::7]  # 11 others
CALIBRATION_SEED = 1000


def cached_videos(path: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``'s uint8 videos, stored at ``path`` (atomically) the first time."""
    if not os.path.exists(path):
        videos = make()
        atomic_write(path, lambda tmp: np.save(tmp, videos))
    return np.load(path)


def sample(pipe, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> np.ndarray:
    """One seeded batched call per seed, so every schedule starts from the same noise."""
    return np.concatenate([pipe(list(prompts), seed=seed, progress=False, **kwargs).images for seed in seeds])


def make_calibration(pipe, directory: str) -> None:
    """100-step clips as mp4 plus prompts.json, the way a sampler leaves them for the search."""
    if os.path.exists(os.path.join(directory, PROMPTS_FILE)):
        return
    os.makedirs(directory, exist_ok=True)
    videos = sample(pipe, CALIBRATION_PROMPTS, [CALIBRATION_SEED], num_inference_steps=REFERENCE_STEPS)
    names = {}
    for k, (video, prompt) in enumerate(zip(videos, CALIBRATION_PROMPTS)):
        names[f"calib_{k:02d}.mp4"] = prompt
        write_video(os.path.join(directory, f"calib_{k:02d}.mp4"), video)
    atomic_write_text(os.path.join(directory, PROMPTS_FILE), json.dumps(names, indent=1))


def score(videos: np.ndarray, references: np.ndarray, prompts: Sequence[str]) -> Dict[str, float]:
    quality = compare_videos(list(videos), list(references))
    fidelity = hit_rates([check_clip(v, p) for v, p in zip(videos, prompts)])["mean"]
    return {"psnr": quality["psnr"], "ssim": quality["ssim"], "fidelity": fidelity}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="restep-bench", help="cache directory (resumable)")
    parser.add_argument("--model", help="a saved pipeline directory (default: the bundled weights)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 25])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    if any(n < 3 for n in args.steps):
        raise ValueError(f"--steps {args.steps} is invalid: every step count must be >= 3")
    torch.set_num_threads(args.threads)
    start = time.time()

    work = os.path.join(args.work, f"{weights_fingerprint(args.model or BUNDLED_WEIGHTS)}-g{DEFAULT_GUIDANCE:g}")
    os.makedirs(work, exist_ok=True)
    pipes = {name: load_bundled_pipeline(args.model, scheduler=name) for name in SAMPLERS}
    search_pipe = pipes[next(iter(SAMPLERS))]
    calibration = os.path.join(work, "calibration")
    make_calibration(search_pipe, calibration)
    schedules = {}
    for steps in args.steps:
        save_dir = os.path.join(work, f"search_{steps}")
        config = ReStepSearchConfig(calibration, save_dir, num_sampling_steps=steps)
        ReStepAdaptor(search_pipe, config).search()
        schedules[steps] = read_schedule_timesteps(os.path.join(save_dir, SCHEDULE_FILE), steps)

    eval_prompts = [p for _ in EVAL_SEEDS for p in EVAL_PROMPTS]
    rows, gains = [], {name: [] for name in SAMPLERS}
    for name, pipe in pipes.items():
        def videos(tag: str, **kwargs) -> np.ndarray:
            return cached_videos(
                os.path.join(work, f"{name}_{tag}.npy"), lambda: sample(pipe, EVAL_PROMPTS, EVAL_SEEDS, **kwargs)
            )

        reference = videos(f"reference_{REFERENCE_STEPS}", num_inference_steps=REFERENCE_STEPS)
        for steps in args.steps:
            u = score(videos(f"uniform_{steps}", num_inference_steps=steps), reference, eval_prompts)
            s = score(videos(f"searched_{steps}", timesteps=schedules[steps]), reference, eval_prompts)
            gains[name].append(s["psnr"] - u["psnr"])
            for schedule, r in (("uniform", u), ("ReStep", s)):
                rows.append(
                    f"| {SAMPLERS[name]} | {steps} | {schedule} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fidelity']:.3f} |"
                )

    print(
        f"Bundled model ({args.model or 'bundled weights'}), {len(EVAL_PROMPTS)} prompts x {len(EVAL_SEEDS)} seeds, "
        f"guidance {DEFAULT_GUIDANCE:g}, references: the same sampler at {REFERENCE_STEPS} steps; search: {len(CALIBRATION_PROMPTS)} "
        f"calibration clips, 5 Monte Carlo clips per point, uniform neighbours ({time.time() - start:.0f} s)\n"
    )
    print("| sampler | steps | schedule | PSNR (dB) | SSIM | fidelity |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    for name, values in gains.items():
        print(f"mean PSNR gain of ReStep over uniform, {SAMPLERS[name]}: {np.mean(values):+.2f} dB")
    for steps, timesteps in schedules.items():
        print(f"searched timesteps, {steps} steps: {', '.join(f'{t:.0f}' for t in timesteps)}")

if __name__ == "__main__":
    main()
