"""ReStep benchmark: can N/2 searched steps sample as well as N uniform ones? (bundled model)

Deterministic Euler: every schedule samples the same prompts from the same noise and is scored by
PSNR/SSIM against a --reference-steps Euler solution from that noise (the ODE's answer), so the
error is the schedule's alone. Euler ancestral (fresh noise every step): no single reference makes
sense, so each schedule is scored by distribution figures over prompts x seeds: prompt fidelity
(ditcache.models.fidelity) and a kernel distance (MMD, RBF kernel, median bandwidth) between the
generated clips and true clips of the same prompts from the moving-shapes generator, each with its
spread over seeds. Searches: the spec's KLUB sweep and the dp method (one teacher shared by every
step count), their cost in transformer calls and seconds. Everything is cached in --work (keyed
by the weights), so an interrupted run resumes and a finished one just prints.

    python bench/restep.py --work bench/.cache/restep --steps 20 30 50
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ditcache._atomic import atomic_write, atomic_write_text
from ditcache.metrics import compare_videos
from ditcache.models.fidelity import check_clip, hit_rates
from ditcache.models.pipeline import BUNDLED_WEIGHTS, DEFAULT_GUIDANCE, load_bundled_pipeline, weights_fingerprint
from ditcache.models.shapes import ALL_PROMPTS, render_clip
from ditcache.restep import ReStepAdaptor, ReStepSearchConfig
from ditcache.restep.calibration import PROMPTS_FILE
from ditcache.restep.schedule import SCHEDULE_FILE, schedule_to_timesteps
from ditcache.video import write_video

EVAL_PROMPTS = ALL_PROMPTS[1::13][::2]  # 4 prompts: two shapes, four colours, four directions
CALIBRATION_PROMPTS = [p for p in ALL_PROMPTS if p not in EVAL_PROMPTS][3::8][:10]
DIST_SEEDS = (0, 1)  # Euler ancestral: seeds for the distribution figures and their spread


def cached(path: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``'s array, stored at ``path`` (atomically) the first time."""
    if not os.path.exists(path):
        value = make()
        atomic_write(path, lambda tmp: np.save(tmp, value))
    return np.load(path)


def make_calibration(directory: str) -> str:
    """True clips of the generator as mp4 plus prompts.json, the layout the search reads."""
    if not os.path.exists(os.path.join(directory, PROMPTS_FILE)):
        os.makedirs(directory, exist_ok=True)
        rng, names = np.random.default_rng(1000), {}
        for k, prompt in enumerate(CALIBRATION_PROMPTS):
            names[f"calib_{k:02d}.mp4"] = prompt
            write_video(os.path.join(directory, f"calib_{k:02d}.mp4"), render_clip(prompt, rng))
        atomic_write_text(os.path.join(directory, PROMPTS_FILE), json.dumps(names, indent=1))
    return directory


def run_search(pipe, work: str, name: str, config: ReStepSearchConfig) -> Dict[str, object]:
    """Search (or read the cached result): the timesteps and the cost in transformer calls and seconds."""
    result_path = os.path.join(work, f"search_{name}.json")
    if os.path.exists(result_path):
        with open(result_path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    calls = [0]
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    start = time.perf_counter()
    try:
        schedule = ReStepAdaptor(pipe, config).search()
    finally:
        handle.remove()
    result = {"timesteps": schedule_to_timesteps(schedule), "calls": calls[0], "seconds": time.perf_counter() - start}
    shutil.copy(os.path.join(config.save_dir, SCHEDULE_FILE), os.path.join(work, f"{name}_{SCHEDULE_FILE}"))
    atomic_write_text(result_path, json.dumps(result))
    return result


def features(clips: np.ndarray) -> np.ndarray:
    """A small fixed feature map: every frame average-pooled to 8x8 colours, in [0, 1]."""
    b, t, h, w, c = clips.shape
    pooled = clips.reshape(b, t, 8, h // 8, 8, w // 8, c).mean((3, 5)) / 255.0
    return pooled.reshape(b, -1)


def mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Squared maximum mean discrepancy with an RBF kernel at the median pairwise distance (unbiased)."""
    both = np.concatenate([x, y])
    d2 = ((both[:, None] - both[None]) ** 2).sum(-1)
    kernel = np.exp(-d2 / np.median(d2[d2 > 0]))
    n = len(x)
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    off = lambda k: (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def spread(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="bench/.cache/restep", help="cache directory (resumable)")
    parser.add_argument("--model", help="a saved pipeline directory (default: the bundled weights)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 30, 50], help="N (searched schedules have N/2)")
    parser.add_argument("--reference-steps", type=int, default=200, help="Euler steps of the fine-step solution")
    parser.add_argument("--teacher-steps", type=int, default=100, help="dp: Euler steps of the teacher")
    parser.add_argument("--monte-carlo-iters", type=int, default=2,
                        help="clips per KLUB candidate, teacher prompts for dp (the spec's default is 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    if any(n < 6 or n % 2 for n in args.steps):
        raise ValueError(f"--steps {args.steps} is invalid: every N must be even and >= 6")
    torch.set_num_threads(args.threads)
    work = os.path.join(args.work, f"{weights_fingerprint(args.model or BUNDLED_WEIGHTS)}-g{DEFAULT_GUIDANCE:g}"
                        f"-mc{args.monte_carlo_iters}-teacher{args.teacher_steps}")
    os.makedirs(work, exist_ok=True)
    pipes = {name: load_bundled_pipeline(args.model, scheduler=name) for name in ("euler", "euler_ancestral_timesteps")}
    calibration = make_calibration(os.path.join(work, "calibration"))
    halves = sorted({n // 2 for n in args.steps})
    common = dict(videos_path=calibration, guidance_scale=DEFAULT_GUIDANCE, monte_carlo_iters=args.monte_carlo_iters)
    searches: Dict[str, Dict[int, Dict[str, object]]] = {"klub": {}, "dp": {}}
    for n in halves:
        searches["klub"][n] = run_search(pipes["euler"], work, f"klub_{n}", ReStepSearchConfig(
            save_dir=os.path.join(work, f"klub_{n}"), num_sampling_steps=n, **common))
        searches["dp"][n] = run_search(pipes["euler"], work, f"dp_{n}", ReStepSearchConfig(
            save_dir=os.path.join(work, "dp"), num_sampling_steps=n, method="dp", teacher_steps=args.teacher_steps,
            **common))

    def schedules(n: int) -> Dict[str, Dict[str, object]]:
        """The rows at N: uniform N, uniform N/2, KLUB N/2, dp N/2."""
        return {f"uniform {n}": {"num_inference_steps": n}, f"uniform {n // 2}": {"num_inference_steps": n // 2},
                f"KLUB {n // 2}": {"timesteps": searches["klub"][n // 2]["timesteps"]},
                f"dp {n // 2}": {"timesteps": searches["dp"][n // 2]["timesteps"]}}

    def tag(kwargs: Dict[str, object]) -> str:
        if "num_inference_steps" in kwargs:
            return f"uniform{kwargs['num_inference_steps']}"
        return "t" + "-".join(f"{t:g}" for t in kwargs["timesteps"])[:120]

    euler = pipes["euler"]
    sample = lambda pipe, prompts, seed, kw: pipe(list(prompts), seed=seed, progress=False, **kw).images
    reference = cached(os.path.join(work, f"euler_reference{args.reference_steps}.npy"),
                       lambda: sample(euler, EVAL_PROMPTS, 0, {"num_inference_steps": args.reference_steps}))
    print(f"Bundled model, guidance {DEFAULT_GUIDANCE:g}; searches on {len(CALIBRATION_PROMPTS)} calibration clips "
          f"({args.monte_carlo_iters} per KLUB candidate; {args.monte_carlo_iters} teacher prompts x {args.teacher_steps} "
          "steps for dp)\n")
    print(f"Euler (deterministic), {len(EVAL_PROMPTS)} prompts, PSNR/SSIM against {args.reference_steps} Euler steps "
          "from the same noise\n")
    print("| N | schedule | PSNR (dB) | SSIM | vs uniform N (dB) |")
    print("|---|---|---|---|---|")
    for n in args.steps:
        base = None
        for name, kwargs in schedules(n).items():
            videos = cached(os.path.join(work, f"euler_{tag(kwargs)}.npy"), lambda: sample(euler, EVAL_PROMPTS, 0, kwargs))
            quality = compare_videos(list(videos), list(reference))
            base = quality["psnr"] if base is None else base
            print(f"| {n} | {name} | {quality['psnr']:.2f} | {quality['ssim']:.4f} | {quality['psnr'] - base:+.2f} |")

    ancestral = pipes["euler_ancestral_timesteps"]
    truth = [np.stack([render_clip(p, np.random.default_rng([seed, k])) for k, p in enumerate(EVAL_PROMPTS)])
             for seed in DIST_SEEDS]
    print(f"\nEuler ancestral, {len(EVAL_PROMPTS)} prompts x {len(DIST_SEEDS)} seeds: prompt fidelity and MMD to true "
          "clips of the generator (mean ± std over seeds; lower MMD is closer)\n")
    print("| N | schedule | fidelity | MMD |")
    print("|---|---|---|---|")
    for n in args.steps:
        for name, kwargs in schedules(n).items():
            per_seed = [cached(os.path.join(work, f"ancestral_{tag(kwargs)}_s{seed}.npy"),
                               lambda: sample(ancestral, EVAL_PROMPTS, seed, kwargs)) for seed in DIST_SEEDS]
            fidelity = [hit_rates([check_clip(v, p) for v, p in zip(videos, EVAL_PROMPTS)])["mean"] for videos in per_seed]
            distance = [mmd(features(videos), features(true)) for videos, true in zip(per_seed, truth)]
            print(f"| {n} | {name} | {spread(fidelity)} | {spread(distance)} |")

    print("\n| search | steps | transformer calls | seconds |")
    print("|---|---|---|---|")
    for method, results in searches.items():
        for n, result in results.items():
            print(f"| {method} | {n} | {result['calls']} | {result['seconds']:.0f} |")
    print("(dp: the teacher runs once, in the first search; the others reuse its journalled costs)\n")
    for method, results in searches.items():
        for n, result in results.items():
            print(f"{method} {n}: {', '.join(f'{t:.0f}' for t in result['timesteps'])}")


if __name__ == "__main__":
    main()
