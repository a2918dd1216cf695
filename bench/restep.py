"""ReStep benchmark: can N/2 searched steps sample as well as N uniform ones? (bundled model)

Deterministic Euler: every schedule samples the same prompts from the same noise and is scored by
PSNR/SSIM against a --reference-steps Euler solution from that noise (the ODE's answer), so the
error is the schedule's alone. The dp search is run with several search seeds (each its own teacher
noise and prompts) and reported with its spread. ReStep + DiT cache: a cache config searched on the
dp schedule, its quality and its speedup against
uniform N uncached (median of interleaved rounds). Euler ancestral (fresh noise every step): no
single reference makes sense, so each schedule is scored by distribution figures over prompts x
seeds: prompt fidelity (ditcache.models.fidelity) and a kernel distance (MMD, RBF kernel, median
bandwidth) between the generated clips and true clips of the same prompts from the moving-shapes
generator, each with its spread over seeds. Search costs in transformer calls and seconds.
Everything is cached in --work (keyed by the weights), so an interrupted run resumes and a finished
one just prints.

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

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
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
CACHE_SEARCH_PROMPTS = 2  # calibration prompts the cache search samples on the searched schedule


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


def cached_json(path: str, make: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """``make()``'s JSON result, stored at ``path`` (atomically) the first time."""
    if not os.path.exists(path):
        atomic_write_text(path, json.dumps(make()))
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def counted(pipe, work: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """``work()``'s result, with the transformer calls it made and its seconds."""
    calls = [0]
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    start = time.perf_counter()
    try:
        result = work()
    finally:
        handle.remove()
    return {**result, "calls": calls[0], "seconds": time.perf_counter() - start}


def run_search(pipe, work: str, name: str, config: ReStepSearchConfig) -> Dict[str, object]:
    """Search (or read the cached result): the timesteps and the cost in transformer calls and seconds."""
    def search() -> Dict[str, object]:
        schedule = ReStepAdaptor(pipe, config).search()
        shutil.copy(os.path.join(config.save_dir, SCHEDULE_FILE), os.path.join(work, f"{name}_{SCHEDULE_FILE}"))
        return {"timesteps": schedule_to_timesteps(schedule)}

    return cached_json(os.path.join(work, f"search_{name}.json"), lambda: counted(pipe, search))


def run_cache_search(pipe, work: str, name: str, timesteps: List[float], min_psnr: float) -> Dict[str, object]:
    """The cache config searched on ``timesteps`` (the calibration prompts, seed 0), and its cost."""
    prompts = CALIBRATION_PROMPTS[:CACHE_SEARCH_PROMPTS]

    def search() -> Dict[str, object]:
        config = DitCacheSearchConfig(min_psnr=min_psnr, num_sampling_steps=len(timesteps),
                                      journal_dir=os.path.join(work, f"journal_{name}"))
        adaptor = DitCacheAdaptor(pipe, config)
        try:
            chosen = adaptor.search(lambda p: list(p(prompts, seed=0, timesteps=timesteps, progress=False).images),
                                    prompts_num=len(prompts))
        finally:
            adaptor.remove()
        return {"config": chosen.to_dict(), "full_runs": adaptor.last_search.full_runs}

    return cached_json(os.path.join(work, f"cache_search_{name}.json"), lambda: counted(pipe, search))


def interleaved_speedups(legs: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median over ``repeats`` interleaved rounds of (first leg's time / each leg's time)."""
    ratios: Dict[str, List[float]] = {name: [] for name in legs}
    for _ in range(repeats):
        seconds = {}
        for name, run in legs.items():
            start = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - start
        base = seconds[next(iter(legs))]
        for name in legs:
            ratios[name].append(base / seconds[name])
    return {name: float(np.median(values)) for name, values in ratios.items()}


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
    parser.add_argument("--teacher-steps", type=int, default=400, help="dp: Euler steps of the teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="dp: search seeds (teacher noise and prompts); the figures give their spread")
    parser.add_argument("--monte-carlo-iters", type=int, default=2,
                        help="clips per KLUB candidate, teacher prompts for dp (the spec's default is 5)")
    parser.add_argument("--cache-min-psnr", type=float, default=35.0,
                        help="quality floor of the cache search on the dp schedule (dB against it uncached)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds of the combined speedup")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    if any(n < 6 or n % 2 for n in args.steps):
        raise ValueError(f"--steps {args.steps} is invalid: every N must be even and >= 6")
    torch.set_num_threads(args.threads)
    work = os.path.join(args.work, f"{weights_fingerprint(args.model or BUNDLED_WEIGHTS)}-g{DEFAULT_GUIDANCE:g}")
    os.makedirs(work, exist_ok=True)
    pipes = {name: load_bundled_pipeline(args.model, scheduler=name) for name in ("euler", "euler_ancestral_timesteps")}
    euler = pipes["euler"]
    calibration = make_calibration(os.path.join(work, "calibration"))
    halves = sorted({n // 2 for n in args.steps})
    mc = args.monte_carlo_iters
    common = dict(videos_path=calibration, guidance_scale=DEFAULT_GUIDANCE, monte_carlo_iters=mc)
    # searches[method][seed][n]; the KLUB sweep with seed 0 only (it is the spec's, and costs a sweep per N)
    searches: Dict[str, Dict[int, Dict[int, Dict[str, object]]]] = {"klub": {0: {}}, "dp": {}}
    for n in halves:
        searches["klub"][0][n] = run_search(euler, work, f"klub_{n}_mc{mc}", ReStepSearchConfig(
            save_dir=os.path.join(work, f"klub_{n}_mc{mc}"), num_sampling_steps=n, **common))
    for seed in args.seeds:
        name = f"mc{mc}-teacher{args.teacher_steps}" + (f"-seed{seed}" if seed else "")
        searches["dp"][seed] = {n: run_search(euler, work, f"dp_{n}_{name}", ReStepSearchConfig(
            save_dir=os.path.join(work, f"dp_{name}"), num_sampling_steps=n, method="dp", seed=seed,
            teacher_steps=args.teacher_steps, **common)) for n in halves}

    def schedules(n: int, seed: int = 0) -> Dict[str, Dict[str, object]]:
        """The rows at N: uniform N, uniform N/2, KLUB N/2, dp N/2 (the dp search of ``seed``)."""
        return {f"uniform {n}": {"num_inference_steps": n}, f"uniform {n // 2}": {"num_inference_steps": n // 2},
                f"KLUB {n // 2}": {"timesteps": searches["klub"][0][n // 2]["timesteps"]},
                f"dp {n // 2}": {"timesteps": searches["dp"][seed][n // 2]["timesteps"]}}

    def tag(kwargs: Dict[str, object]) -> str:
        if "num_inference_steps" in kwargs:
            return f"uniform{kwargs['num_inference_steps']}"
        return "t" + "-".join(f"{t:g}" for t in kwargs["timesteps"])[:120]

    sample = lambda pipe, prompts, seed, kw: pipe(list(prompts), seed=seed, progress=False, **kw).images
    reference = cached(os.path.join(work, f"euler_reference{args.reference_steps}.npy"),
                       lambda: sample(euler, EVAL_PROMPTS, 0, {"num_inference_steps": args.reference_steps}))

    def euler_psnr(kwargs: Dict[str, object]) -> Dict[str, float]:
        videos = cached(os.path.join(work, f"euler_{tag(kwargs)}.npy"), lambda: sample(euler, EVAL_PROMPTS, 0, kwargs))
        return compare_videos(list(videos), list(reference))

    print(f"Bundled model, guidance {DEFAULT_GUIDANCE:g}; searches on {len(CALIBRATION_PROMPTS)} calibration clips "
          f"({mc} per KLUB candidate; {mc} teacher prompts x {args.teacher_steps} steps for dp)\n")
    print(f"Euler (deterministic), {len(EVAL_PROMPTS)} prompts, PSNR/SSIM against {args.reference_steps} Euler steps "
          "from the same noise (dp: search seed 0)\n")
    print("| N | schedule | PSNR (dB) | SSIM | vs uniform N (dB) |")
    print("|---|---|---|---|---|")
    for n in args.steps:
        base = None
        for name, kwargs in schedules(n).items():
            quality = euler_psnr(kwargs)
            base = quality["psnr"] if base is None else base
            print(f"| {n} | {name} | {quality['psnr']:.2f} | {quality['ssim']:.4f} | {quality['psnr'] - base:+.2f} |")

    print(f"\nThe dp search with search seeds {args.seeds} (each its own teacher noise and prompts): PSNR of its "
          "N/2 steps against uniform N (dB), mean ± std and each seed's\n")
    print("| N | uniform N (dB) | dp N/2 - uniform N |")
    print("|---|---|---|")
    for n in args.steps:
        uniform = euler_psnr({"num_inference_steps": n})["psnr"]
        values = [euler_psnr({"timesteps": result[n // 2]["timesteps"]})["psnr"] - uniform
                  for result in searches["dp"].values()]
        print(f"| {n} | {uniform:.2f} | {np.mean(values):+.2f} ± {np.std(values):.2f} "
              f"({', '.join(f'{v:+.2f}' for v in values)}) |")

    print(f"\nReStep + DiT cache (Euler): a cache config searched on the dp N/2 schedule (seed 0; "
          f"{CACHE_SEARCH_PROMPTS} calibration prompts; the fastest config at >= {args.cache_min_psnr:g} dB PSNR "
          f"against that schedule uncached), scored as above on the {len(EVAL_PROMPTS)} evaluation prompts; speedup "
          f"against uniform N uncached, median of {args.repeats} interleaved rounds\n")
    print("| N | uniform N (dB) | searched N/2 | searched N/2 + cache | vs uniform N (dB) | speedup N/2 | speedup N/2 + cache "
          "| cache config | cache search: runs, calls, seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.steps:
        searched = {"timesteps": searches["dp"][0][n // 2]["timesteps"]}
        name = f"{tag(searched)}_floor{args.cache_min_psnr:g}"
        search = run_cache_search(euler, work, name, searched["timesteps"], args.cache_min_psnr)
        config = DitCacheConfig.from_dict(search["config"])

        def with_cache() -> np.ndarray:
            with dit_cache(euler, config):
                return sample(euler, EVAL_PROMPTS, 0, searched)

        runs = {"uniform": lambda: sample(euler, EVAL_PROMPTS, 0, {"num_inference_steps": n}),
                "searched": lambda: sample(euler, EVAL_PROMPTS, 0, searched), "searched + cache": with_cache}
        psnr = {"uniform": euler_psnr({"num_inference_steps": n})["psnr"], "searched": euler_psnr(searched)["psnr"],
                "searched + cache": compare_videos(list(cached(os.path.join(work, f"euler_{name}_cache.npy"), with_cache)),
                                                   list(reference))["psnr"]}
        speed = cached_json(os.path.join(work, f"speedup_{name}_r{args.repeats}.json"),
                            lambda: interleaved_speedups(runs, args.repeats))
        described = ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k not in ("timesteps", "num_sampling_steps"))
        print(f"| {n} | {psnr['uniform']:.2f} | {psnr['searched']:.2f} | {psnr['searched + cache']:.2f} | "
              f"{psnr['searched + cache'] - psnr['uniform']:+.2f} | {speed['searched']:.2f}x | "
              f"{speed['searched + cache']:.2f}x | {described} | {search['full_runs']}, {search['calls']}, "
              f"{search['seconds']:.0f} |")

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

    print("\n| search | seed | steps | transformer calls | seconds |")
    print("|---|---|---|---|---|")
    for method, by_seed in searches.items():
        for seed, results in by_seed.items():
            for n, result in results.items():
                print(f"| {method} | {seed} | {n} | {result['calls']} | {result['seconds']:.0f} |")
    print("(dp: the teacher runs once per seed, in the first search; the others reuse its journalled costs)\n")
    for method, by_seed in searches.items():
        for n, result in by_seed[0].items():
            print(f"{method} {n}: {', '.join(f'{t:.0f}' for t in result['timesteps'])}")


if __name__ == "__main__":
    main()
