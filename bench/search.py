"""Cache search benchmark on the bundled model: ours, the reference's strategy, and the exhaustive frontier.

For each speedup target and quality floor it reports the search's full runs and wall time, the chosen
config's predicted and measured speedup (measured again here: median of interleaved uncached/cached
repeats), PSNR / SSIM against the uncached videos and the prompt fidelity of the cached videos.

The reference's strategy is re-implemented from its description: a nominal (block-count) speedup
picks the smallest region length L; stage 1 tries every block start >= 1 with L blocks from step 5;
stage 2 tries lengths L..L+7 and step starts 0 and 5 for the three best starts; the winner is the
lowest MSE measured on re-encoded mp4 files; the interval stays 2.

The frontier sweeps every (region, step start on a grid, interval) on a shortened setting, and ours is
run on that same setting to give its gap to the best PSNR at its measured speedup.

The landscape part runs every step start for two regions and three intervals at the default setting:
how irregular quality is between neighbouring configs bounds how close any search that runs a few of
them can come to the frontier.

The runs part counts both strategies' full runs at 1.3x where the reference's cost was stated (32 blocks,
100 steps), on an untrained 32-block model of the same architecture: only its counts mean anything.

Every run is cached under --cache, so an interrupted benchmark resumes; the searches resume from their
journals there too, so delete its journal-* folders after changing the search.

    python bench/search.py                       # everything (long on 2 CPU cores)
    python bench/search.py --parts ours,reference
    python bench/search.py --parts runs          # full runs and wall time of both strategies, 32 blocks, 100 steps
    python bench/search.py --parts stability     # the same search 10 times: how far its picks move
    python bench/search.py --parts ours --sensitivity-every 1 --out bench/results/search-thorough.json
    python bench/search.py --parts reuse --out bench/results/reuse.json   # constant vs extrapolated (taylor1)
    python bench/search.py --parts reuse --scheduler euler --out bench/results/reuse-euler.json
    python bench/search.py --parts landscape     # PSNR over every step start, a few regions and intervals
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

import numpy as np
import torch

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
from ditcache.config import REUSE_MODES
from ditcache._atomic import atomic_write_text
from ditcache.metrics import compare_videos, mse
from ditcache.search.recording import Calibration
from ditcache.search.candidates import config_key, enumerate_candidates
from ditcache.models import ShapesT2V, load_bundled_pipeline
from ditcache.models.fidelity import check_clip, hit_rates
from ditcache.models.pipeline import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, SCHEDULERS, weights_fingerprint

PROMPTS = ["a red circle moving right", "a blue square moving up"]


class Setting:
    """The bundled model at fixed prompts, seed and steps; every run's videos and time cached on disk.

    ``untrained_blocks`` swaps in an untrained transformer of the same architecture with that many
    blocks (seeded): its videos are noise, but run counts on it are real for a deeper model.
    """

    def __init__(self, steps: int, prompts: Sequence[str], cache: str, scheduler: str = DEFAULT_SCHEDULER,
                 untrained_blocks: Optional[int] = None, seed: int = 0) -> None:
        self.steps, self.prompts, self.scheduler, self.seed = steps, list(prompts), scheduler, seed
        self.pipe = load_bundled_pipeline(scheduler=scheduler)
        if untrained_blocks is not None:
            torch.manual_seed(0)
            config = {**self.pipe.transformer.config, "num_layers": untrained_blocks}
            self.pipe.transformer = ShapesT2V.from_config(config).eval()
        self.blocks = len(self.pipe.transformer.transformer_blocks)
        tagged = [steps, self.prompts, scheduler, DEFAULT_GUIDANCE] + ([seed] if seed else [])  # seed 0: older caches
        tag = hashlib.sha1(json.dumps(tagged).encode()).hexdigest()[:10]
        model = weights_fingerprint() if untrained_blocks is None else f"untrained{untrained_blocks}"
        self.cache = os.path.join(cache, model, f"s{steps}-p{len(self.prompts)}-{tag}")
        os.makedirs(self.cache, exist_ok=True)
        self.reference, self.uncached_seconds = self.videos(None)

    def __call__(self, pipe) -> List[np.ndarray]:
        return list(pipe(self.prompts, num_inference_steps=self.steps, seed=self.seed, progress=False).images)

    def _path(self, config: Optional[DitCacheConfig]) -> str:
        if config is None:
            key = "uncached"
        elif isinstance(config, DitCacheConfig):
            key = "-".join(str(v) for v in dict(config).values())
        else:  # a component schedule
            key = config_key(config)
        return os.path.join(self.cache, key + ".npz")

    def has(self, config: Optional[DitCacheConfig]) -> bool:
        """Whether ``config``'s run is in the cache already."""
        return os.path.exists(self._path(config))

    def videos(self, config: Optional[DitCacheConfig], cached: Optional[Callable[[], ContextManager]] = None,
               key: Optional[str] = None):
        """``config``'s videos and run time (``cached``: another cache's context instead, its runs under ``key``)."""
        path = self._path(config) if key is None else os.path.join(self.cache, key + ".npz")
        if os.path.exists(path):
            data = np.load(path)
            return list(data["videos"]), float(data["seconds"])
        with (cached or (lambda: dit_cache(self.pipe, config)))():
            started = time.perf_counter()
            videos = self(self.pipe)
            seconds = time.perf_counter() - started
        np.savez(path + ".tmp.npz", videos=np.stack(videos), seconds=seconds)
        os.replace(path + ".tmp.npz", path)
        return videos, seconds

    def speedup(self, config: Optional[DitCacheConfig], repeats: int = 5,
                cached: Optional[Callable[[], ContextManager]] = None, videos: Optional[List] = None) -> float:
        """Median of interleaved (uncached / cached) time ratios (``cached``: another cache's context);
        ``videos``, if given, receives the cached videos of the first pair."""
        ratios = []
        for _ in range(repeats):
            started = time.perf_counter()
            self(self.pipe)
            plain = time.perf_counter() - started
            with (cached or (lambda: dit_cache(self.pipe, config)))():
                started = time.perf_counter()
                made = self(self.pipe)
                ratios.append(plain / (time.perf_counter() - started))
            if videos is not None and not videos:
                videos.extend(made)
        return statistics.median(ratios)

    def quality(self, videos: List[np.ndarray]) -> Dict[str, float]:
        scores = compare_videos(videos, self.reference)
        fidelity = hit_rates([check_clip(v, p) for v, p in zip(videos, self.prompts)])
        return {**scores, "fidelity": fidelity["mean"]}


def ours(setting: Setting, target: Optional[float], floor: Optional[float], journal: Optional[str],
         reuse_modes: Sequence[str] = ("delta", "taylor1"), sensitivity_every: int = 0) -> Dict:
    config = DitCacheSearchConfig(cache_ratio=target, min_psnr=floor, num_sampling_steps=setting.steps,
                                  journal_dir=journal, reuse_modes=tuple(reuse_modes),
                                  sensitivity_every=sensitivity_every)
    adaptor = DitCacheAdaptor(setting.pipe, config)
    try:
        adaptor.search(setting, prompts_num=len(setting.prompts))
    except ValueError as err:  # a goal not reached as measured is a result too
        return {"goal": f">= {target:g}x" if floor is None else f"PSNR >= {floor:g} dB", "note": str(err)}
    finally:
        adaptor.remove()
    report = adaptor.last_search
    videos, _ = setting.videos(report.config)
    return {
        "goal": report.goal, "config": report.config.to_dict(), "runs": report.full_runs,
        "seconds": report.seconds, "predicted": report.chosen.predicted_speedup,
        "measured": setting.speedup(report.config), **setting.quality(videos),
    }


def stability(setting: Setting, target: Optional[float], floor: Optional[float], repeats: int) -> Dict:
    """The same search made ``repeats`` times on the same inputs, each calibrating afresh (its own timings)."""
    picks = []
    for _ in range(repeats):
        config = DitCacheSearchConfig(cache_ratio=target, min_psnr=floor, num_sampling_steps=setting.steps)
        adaptor = DitCacheAdaptor(setting.pipe, config)
        try:
            adaptor.search(setting, prompts_num=len(setting.prompts))
        finally:
            adaptor.remove()
        chosen = adaptor.last_search.chosen
        picks.append({"config": chosen.key, "psnr": chosen.psnr, "speedup": chosen.speedup})
        print(f"  {picks[-1]}", flush=True)
    psnrs, speeds = [p["psnr"] for p in picks], [p["speedup"] for p in picks]
    return {"goal": f">= {target:g}x" if floor is None else f"PSNR >= {floor:g} dB", "repeats": repeats,
            "distinct_configs": len({p["config"] for p in picks}), "psnr_range_db": max(psnrs) - min(psnrs),
            "speed_range": max(speeds) / min(speeds) - 1, "picks": picks}


def _mp4_roundtrip(videos: List[np.ndarray]) -> List[np.ndarray]:
    """What the reference compared: frames after libx264 (quality 6) and decoding."""
    import imageio

    from ditcache.video import read_video

    out = []
    with tempfile.TemporaryDirectory() as folder:
        for i, video in enumerate(videos):
            path = os.path.join(folder, f"{i}.mp4")
            imageio.mimwrite(path, video, fps=8, quality=6, codec="libx264")
            out.append(read_video(path))
    return out


def reference_strategy(setting: Setting, target: float, interval: int = 2) -> Dict:
    started = time.perf_counter()
    blocks, steps, late_start = setting.blocks, setting.steps, 5
    reuse = (steps - late_start) // interval
    length = int(blocks * steps * (1 - 1 / target) / reuse) - 1  # the nominal minimum, rounded as it does
    baseline = _mp4_roundtrip(setting.reference)
    tried = {}

    def score(start, count, step):
        config = DitCacheConfig(step, interval, start, count)
        videos, _ = setting.videos(config)
        tried[(start, count, step)] = float(np.mean([mse(a, b) for a, b in zip(_mp4_roundtrip(videos), baseline)]))

    for start in range(1, blocks):
        if start + length <= blocks:
            score(start, length, late_start)
    if not tried:
        return {"goal": f">= {target:g}x", "runs": 1, "config": None,
                "note": f"no region of {length} blocks starting at block >= 1 fits {blocks} blocks"}
    best_starts = [key[0] for key in sorted(tried, key=tried.get)[:3]]
    for start in best_starts:
        for count in range(length, length + 8):
            if start + count < blocks:
                for step in (0, late_start):
                    if (count, step) != (length, late_start):
                        score(start, count, step)
    start, count, step = min(tried, key=tried.get)
    config = DitCacheConfig(step, interval, start, count)
    videos, _ = setting.videos(config)
    seconds = time.perf_counter() - started  # its search: every run made here when the run cache was empty
    nominal = blocks * steps / (blocks * steps - count * ((steps - step) - -(-(steps - step) // interval)))
    return {"goal": f">= {target:g}x", "runs": 1 + len(tried), "seconds": seconds, "config": config.to_dict(),
            "nominal": nominal,
            "measured": setting.speedup(config), **setting.quality(videos)}


def sweep(setting: Setting, starts: Sequence[int], intervals: Sequence[int], modes: Sequence[str]) -> List[Dict]:
    """Every region x start x interval x reuse mode on the grid: PSNR and measured speedup.

    Each config is timed once; the configs on the resulting front are then re-timed (median of
    interleaved repeats), until the front is made of re-timed configs only, so that a lucky single
    timing cannot put a config on the frontier.
    """
    rows = []
    for first in range(setting.blocks):
        for last in range(first, setting.blocks):
            for start in starts:
                for interval in intervals:
                    for mode in modes:
                        config = DitCacheConfig(start, interval, first, last - first + 1, reuse=mode)
                        videos, seconds = setting.videos(config)
                        rows.append({"config": config, "measured": setting.uncached_seconds / seconds,
                                     "retimed": False, "psnr": compare_videos(videos, setting.reference)["psnr"]})
    while True:
        front = [r for r in rows if not any(o["measured"] >= r["measured"] and o["psnr"] > r["psnr"] for o in rows)]
        pending = [r for r in front if not r["retimed"]]
        if not pending:
            break
        for row in pending:  # timed as the searches' picks are, so the gap compares like with like
            row["measured"], row["retimed"] = setting.speedup(row["config"]), True
    for row in rows:
        row["config"] = row["config"].to_dict()
    return rows


def frontier_psnr(rows: List[Dict], speedup: float, speed: str = "measured") -> float:
    """The best PSNR of any swept config at least as fast as ``speedup`` (by the rows' ``speed`` figure)."""
    return max((r["psnr"] for r in rows if r[speed] >= speedup), default=float("nan"))


def predict_rows(rows: List[Dict], journal: str) -> None:
    """Give every swept row the speedup a search predicted for it, from that search's calibration.

    Predictions come from measured block times but carry no run-to-run noise, so a gap taken at
    equal predicted speed tells how well the search ranks, apart from how a timing fell.
    """
    calibration = Calibration.from_state_dict(torch.load(os.path.join(journal, "calibration.pt"), weights_only=False))
    widest = max(row["config"]["cache_step_interval"] for row in rows)
    predicted = {c.key(): c.predicted_speedup for c in enumerate_candidates(calibration, widest, REUSE_MODES)}
    for row in rows:
        row["predicted"] = predicted[config_key(DitCacheConfig.from_dict(row["config"]))]


def reuse_frontier(setting: Setting, targets: Sequence[float], plot_path: str) -> List[Dict]:
    """Constant against extrapolated reuse: each searched alone at every target, and plotted."""
    rows = []
    for mode in ("delta", "taylor1"):
        for target in targets:
            row = ours(setting, target, None, os.path.join(setting.cache, f"journal-{mode}-x{target:g}"), (mode,))
            rows.append({"reuse": mode, **row})
    series = {f"reuse={mode}": sorted((r["measured"], r["psnr"]) for r in rows if r["reuse"] == mode and "psnr" in r)
              for mode in ("delta", "taylor1")}
    line_plot(plot_path, series, "measured speedup (x)",
              f"bundled model, {setting.scheduler}, {setting.steps} steps: searched configs")
    return rows


def landscape(setting: Setting, regions: Sequence[Sequence[int]], intervals: Sequence[int], plot_path: str) -> List[Dict]:
    """PSNR of every step start, for a few regions and intervals: how irregular the quality is in the start.

    A search that runs a few configs can only be near the best of thousands if quality varies
    smoothly enough between configs for a ranking to follow it; this shows whether it does.
    """
    rows = []
    for first, count in regions:
        for interval in intervals:
            for start in range(setting.steps - 1):
                config = DitCacheConfig(start, interval, first, count)
                videos, _ = setting.videos(config)
                rows.append({"region": f"s{first}-n{count}", "interval": interval, "start": start,
                             "psnr": compare_videos(videos, setting.reference)["psnr"]})
    series = {f"{region}, interval {interval}": [(r["start"], r["psnr"]) for r in rows
                                                 if r["region"] == region and r["interval"] == interval]
              for region in dict.fromkeys(r["region"] for r in rows) for interval in intervals}
    line_plot(plot_path, series, "cache_step_start",
              f"bundled model, {setting.scheduler}, {setting.steps} steps, {len(setting.prompts)} prompts")
    return rows


def landscape_summary(rows: List[Dict]) -> List[Dict]:
    """Per region and interval: the PSNR range over step starts and the largest change between neighbours."""
    summary = []
    for key in dict.fromkeys((r["region"], r["interval"]) for r in rows):
        psnr = [r["psnr"] for r in rows if (r["region"], r["interval"]) == key]
        jumps = [abs(b - a) for a, b in zip(psnr, psnr[1:])]
        summary.append({"region": key[0], "interval": key[1], "min_psnr": min(psnr), "max_psnr": max(psnr),
                        "largest_neighbour_change_db": max(jumps), "median_neighbour_change_db": statistics.median(jumps)})
    return summary


def line_plot(path: str, series: Dict[str, List], xlabel: str, title: str) -> None:
    """One line of (x, PSNR) points per series, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
    for label, points in series.items():
        axis.plot(*zip(*points), marker="o", markersize=3, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("PSNR vs uncached (dB)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def table(rows: List[Dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ours,reference,runs,reuse,landscape,frontier,stability")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=sorted(SCHEDULERS))
    parser.add_argument("--targets", type=float, nargs="+", default=[1.3, 1.5, 2.0, 2.5])
    parser.add_argument("--floors", type=float, nargs="+", default=[35.0, 30.0])
    parser.add_argument("--runs-blocks", type=int, default=32, help="runs part: blocks of the untrained model")
    parser.add_argument("--runs-steps", type=int, default=100, help="runs part: sampling steps")
    parser.add_argument("--sweep-steps", type=int, default=20)
    parser.add_argument("--sweep-prompts", type=int, default=1)
    parser.add_argument("--sweep-starts", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    parser.add_argument("--sweep-intervals", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--sweep-reuse", nargs="+", default=["delta", "taylor1"], choices=["delta", "taylor1"])
    parser.add_argument("--sensitivity-every", type=int, default=0,
                        help="ours/runs parts: the search's sensitivity probes (1: every step, the thorough mode)")
    parser.add_argument("--stability-repeats", type=int, default=10, help="stability part: searches per goal")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), ".cache", "search"))
    parser.add_argument("--out", help="JSON results (default: results/search.json for ours/reference, "
                                          "else results/<part>.json)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.out is None:  # one part run alone must not overwrite another part's results
        name = "search" if parts & {"ours", "reference"} or len(parts) > 1 else next(iter(parts))
        args.out = os.path.join(os.path.dirname(__file__), "results", f"{name}.json")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    results: Dict[str, List[Dict]] = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if parts & {"ours", "reference", "reuse", "landscape", "stability"}:
        setting = Setting(args.steps, PROMPTS, args.cache, args.scheduler)
        print(f"bundled model, {setting.blocks} blocks, {args.scheduler}, {args.steps} steps, {len(PROMPTS)} prompts; "
              f"uncached run {setting.uncached_seconds:.2f} s")
    if "ours" in parts:
        # one journal for every goal: the calibration and the probes are made once and read back after
        journal = os.path.join(setting.cache, f"journal-ours-p{args.sensitivity_every}")
        results["ours"] = [ours(setting, t, None, journal, sensitivity_every=args.sensitivity_every)
                           for t in args.targets]
        results["ours"] += [ours(setting, None, f, journal, sensitivity_every=args.sensitivity_every)
                            for f in args.floors]
        print("\n## ours\n" + table(results["ours"], ["goal", "config", "runs", "seconds", "predicted", "measured",
                                                      "psnr", "ssim", "fidelity", "note"]))
    if "stability" in parts:
        results["stability"] = [stability(setting, t, None, args.stability_repeats) for t in args.targets]
        results["stability"] += [stability(setting, None, f, args.stability_repeats) for f in args.floors]
        print("\n## stability\n" + table(results["stability"], ["goal", "repeats", "distinct_configs", "psnr_range_db",
                                                               "speed_range"]))
    if "reference" in parts:
        results["reference"] = [reference_strategy(setting, t) for t in args.targets]
        print("\n## reference strategy\n" + table(results["reference"], ["goal", "config", "runs", "nominal",
                                                                         "measured", "psnr", "ssim", "fidelity",
                                                                         "note"]))
    if "reuse" in parts:
        plot = os.path.splitext(args.out)[0] + ".png"
        results["reuse"] = reuse_frontier(setting, [t for t in args.targets if t >= 1.5], plot)
        print(f"\n## constant vs extrapolated reuse (plot: {plot})\n" + table(
            results["reuse"], ["reuse", "goal", "config", "runs", "predicted", "measured", "psnr", "ssim", "fidelity",
                               "note"]))
    if "landscape" in parts:
        plot = os.path.splitext(args.out)[0] + ".png"
        rows = landscape(setting, [(0, setting.blocks), (2, 7)], [2, 3, 4], plot)
        results["landscape"] = rows
        results["landscape_summary"] = landscape_summary(rows)
        print(f"\n## PSNR over every step start (plot: {plot})\n" + table(
            results["landscape_summary"], ["region", "interval", "min_psnr", "max_psnr",
                                           "largest_neighbour_change_db", "median_neighbour_change_db"]))
    if "runs" in parts:
        with tempfile.TemporaryDirectory() as fresh:  # no run read back: both searches' wall times are real
            deep = Setting(args.runs_steps, PROMPTS[:1], fresh, args.scheduler, untrained_blocks=args.runs_blocks)
            print(f"untrained {deep.blocks}-block model, {args.runs_steps} steps, 1 prompt; "
                  f"uncached run {deep.uncached_seconds:.2f} s")
            results["runs"] = [
                {"strategy": "reference", **reference_strategy(deep, 1.3)},
                {"strategy": "ours", **ours(deep, 1.3, None, None, sensitivity_every=args.sensitivity_every)},
            ]
        results["runs"][1]["seconds_vs_reference"] = results["runs"][1]["seconds"] / results["runs"][0]["seconds"]
        print(f"\n## full runs at 1.3x, {deep.blocks} blocks, {args.runs_steps} steps\n" + table(
            results["runs"], ["strategy", "config", "runs", "seconds", "seconds_vs_reference", "measured", "psnr",
                              "note"]))
    if "frontier" in parts:
        short = Setting(args.sweep_steps, PROMPTS[: args.sweep_prompts], args.cache, args.scheduler)
        rows = sweep(short, [s for s in args.sweep_starts if s < args.sweep_steps], args.sweep_intervals,
                     args.sweep_reuse)
        gaps = []
        for target in args.targets:
            journal = os.path.join(short.cache, f"journal-x{target:g}")
            row = ours(short, target, None, journal)
            if "psnr" in row:
                row["frontier_psnr"] = frontier_psnr(rows, row["measured"])
                row["gap_db"] = row["frontier_psnr"] - row["psnr"]
                predict_rows(rows, journal)
                row["predicted_frontier_psnr"] = frontier_psnr(rows, row["predicted"], "predicted")
                row["predicted_gap_db"] = row["predicted_frontier_psnr"] - row["psnr"]
            gaps.append(row)
        results["frontier"] = gaps
        print(f"\n## gap to the frontier ({len(rows)} swept configs, {args.sweep_steps} steps, "
              f"{args.sweep_prompts} prompt(s))\n" + table(gaps, ["goal", "config", "runs", "predicted", "measured",
                                                                  "psnr", "frontier_psnr", "gap_db",
                                                                  "predicted_frontier_psnr", "predicted_gap_db",
                                                                  "note"]))
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
