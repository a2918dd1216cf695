"""The search's gap to a dense sweep on the bundled model: by default, with more screening, and thorough.

Three modes: the default search; the same with ten configs screened; and the thorough one, ten
screened after one sensitivity probe a step (``sensitivity_every=1, candidates_to_run=10``).

The sweep runs every config of the whole model's region: every step start, every interval 2-4, both
reuse modes, and 0-2 spared final steps (846 configs at 50 steps), plus one probe a step. The
search's strategy is then replayed over the ranking of a real calibration, every run it asks for
made for real (cached on disk, so the sweep's runs are read back and any other config is run), with
the speed of each config taken as predicted: this measures how well the search picks, apart from
how a timing fell (bench/search.py re-measures real searches' picks). For each target the gap is the
best swept PSNR predicted to reach it minus the pick's PSNR; for each quality floor (``--floors``),
how much faster (predicted) the fastest swept config above it is than the pick.

    python bench/gap.py --scheduler euler_ancestral --held-out-stride 2
    python bench/gap.py --scheduler euler
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig
from ditcache._atomic import atomic_write_text
from ditcache.config import REUSE_MODES
from ditcache.metrics import compare_videos
from ditcache.models.pipeline import DEFAULT_SCHEDULER, SCHEDULERS
from ditcache.search.candidates import Candidate, enumerate_candidates
from ditcache.search.journal import Journal
from ditcache.search.ranks import Ranks
from ditcache.search.records import RunRecord, enough_pairs
from ditcache.search.runner import Runner
from ditcache.search.sensitivity import StepSensitivity, probe_config, probe_steps, probes
from ditcache.search.strategy import Strategy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search import PROMPTS, Setting, table  # noqa: E402

HELD_OUT_PROMPTS = ["a green triangle moving left", "a yellow circle moving down"]
HELD_OUT_SEED = 1
SPARED = (0, 1, 2)
THOROUGH_SCREENING = 10  # configs screened by the thorough mode (candidates_to_run)
MAX_INTERVAL = 4


class ReplayRuns:
    """The search's runs, made for real through the setting's run cache; speeds as predicted."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.made: List[str] = []

    def run(self, picks: List[Candidate], description: str) -> List[RunRecord]:
        records = []
        for candidate in picks:
            self.made.append(candidate.key())
            videos, _ = self.setting.videos(candidate.config)
            scores = compare_videos(videos, self.setting.reference)
            records.append(RunRecord(candidate.config, candidate.predicted_speedup, candidate.proxy,
                                     1.0 / candidate.predicted_speedup, candidate.predicted_speedup,
                                     scores["psnr"], scores["ssim"], scores["mse"]))
        return records

    def confirm(self, record: RunRecord, target: Optional[float]) -> RunRecord:
        while not enough_pairs(record, target, 3):
            record = record.with_pair(record.predicted_speedup, 1.0)
        return record


def swept_configs(steps: int, blocks: int) -> List[DitCacheConfig]:
    configs = []
    for start in range(steps - 2):
        for interval in range(2, MAX_INTERVAL + 1):
            for reuse in REUSE_MODES:
                for spared in SPARED:
                    end = None if spared == 0 else steps - spared
                    if end is None or end - start >= 2:
                        configs.append(DitCacheConfig(start, interval, 0, blocks, num_sampling_steps=steps,
                                                      reuse=reuse, cache_step_end=end))
    return configs


def calibrate(setting: Setting) -> object:
    """A real calibration of the setting (kept in a journal beside its run cache)."""
    config = DitCacheSearchConfig(num_sampling_steps=setting.steps, journal_dir=os.path.join(setting.cache, "gap"))
    adaptor = DitCacheAdaptor(setting.pipe, config)
    try:
        journal = Journal(config.journal_dir, {"bench": "gap"})
        return Runner(adaptor, config, setting, len(setting.prompts), journal, Ranks()).calibrate()
    finally:
        adaptor.remove()


def sensitivity(setting: Setting, calibration) -> StepSensitivity:
    records = ReplayRuns(setting).run(probes(calibration, probe_steps(setting.steps, 1)), "probes")
    return StepSensitivity.of(records, setting.steps)


def gaps(setting: Setting, calibration, weights: Optional[np.ndarray], targets: Sequence[float],
         swept: Dict[str, float], candidates_to_run: int) -> List[Dict]:
    candidates = enumerate_candidates(calibration, MAX_INTERVAL, REUSE_MODES, (0, 1, 2, 3), weights)
    predicted = {c.key(): c.predicted_speedup for c in candidates}  # a swept schedule enumerated once, under one key
    rows = []
    for target in targets:
        runs = ReplayRuns(setting)
        search = DitCacheSearchConfig(cache_ratio=target, num_sampling_steps=setting.steps,
                                      candidates_to_run=candidates_to_run)
        try:
            chosen = Strategy(candidates, search, runs).for_speedup()
        except ValueError as err:
            rows.append({"target": target, "note": str(err)})
            continue
        best = max(psnr for key, psnr in swept.items() if predicted.get(key, 0.0) >= target)
        rows.append({"target": target, "config": chosen.key, "config_dict": chosen.config.to_dict(),
                     "predicted": chosen.predicted_speedup,
                     "psnr": chosen.psnr, "sweep_psnr": best, "gap_db": best - chosen.psnr,
                     "runs": len(set(runs.made))})
    return rows


def floor_gaps(setting: Setting, calibration, weights: Optional[np.ndarray], floors: Sequence[float],
               swept: Dict[str, float], candidates_to_run: int) -> List[Dict]:
    """Quality-floor searches replayed: each pick's predicted speed against the fastest swept config above
    the floor (``speed_gap``: how much faster that one is, relative)."""
    candidates = enumerate_candidates(calibration, MAX_INTERVAL, REUSE_MODES, (0, 1, 2, 3), weights)
    predicted = {c.key(): c.predicted_speedup for c in candidates}
    rows = []
    for floor in floors:
        runs = ReplayRuns(setting)
        search = DitCacheSearchConfig(min_psnr=floor, num_sampling_steps=setting.steps,
                                      candidates_to_run=candidates_to_run)
        fastest = max(predicted.get(key, 0.0) for key, psnr in swept.items() if psnr >= floor)
        try:
            chosen = Strategy(candidates, search, runs).for_quality()
        except ValueError as err:
            rows.append({"floor": floor, "note": str(err)})
            continue
        rows.append({"floor": floor, "config": chosen.key, "predicted": chosen.predicted_speedup,
                     "psnr": chosen.psnr, "sweep_fastest": fastest,
                     "speed_gap": fastest / chosen.predicted_speedup - 1, "runs": len(set(runs.made))})
    return rows


def held_out(setting: Setting, rows: List[Dict], configs: Sequence[DitCacheConfig], stride: int,
             predicted: Dict[str, float]) -> None:
    """Give each pick its PSNR on prompts and a seed it was not calibrated on, and the best held-out swept
    config predicted as fast (the sweep there every ``stride``-th step start)."""
    swept = {}
    for config in configs:
        if config.cache_step_start % stride == 0:
            videos, _ = setting.videos(config)
            swept[Candidate(config, 0, 0).key()] = compare_videos(videos, setting.reference)["psnr"]
    for row in rows:
        if "config" not in row:
            continue
        videos, _ = setting.videos(DitCacheConfig.from_dict(row["config_dict"]))
        row["held_out_psnr"] = compare_videos(videos, setting.reference)["psnr"]
        row["held_out_sweep_psnr"] = max(p for key, p in swept.items() if predicted.get(key, 0.0) >= row["target"])
        row["held_out_gap_db"] = row["held_out_sweep_psnr"] - row["held_out_psnr"]


def summary(rows: List[Dict], mode: str, extra_runs: int, floor_rows: Sequence[Dict] = ()) -> Dict:
    done = [r for r in rows if "gap_db" in r]
    out = {"mode": mode, "targets": len(done), "runs_per_search": statistics.mean(r["runs"] for r in done) + extra_runs}
    floors = [r for r in floor_rows if "speed_gap" in r]
    if floors:
        out.update({"floors": len(floors), "mean_floor_speed_gap": statistics.mean(r["speed_gap"] for r in floors),
                    "floors_within_3%": sum(r["speed_gap"] <= 0.03 for r in floors) / len(floors),
                    "floor_runs_per_search": statistics.mean(r["runs"] for r in floors) + extra_runs})
    for prefix, column in (("", "gap_db"), ("held_out_", "held_out_gap_db")):
        if not all(column in r for r in done):
            continue
        out.update({f"{prefix}mean_gap_db": statistics.mean(r[column] for r in done),
                    f"{prefix}max_gap_db": max(r[column] for r in done),
                    f"{prefix}within_0.3_db": sum(r[column] <= 0.3 for r in done) / len(done)})
        out.update({f"{prefix}gap_at_{t:g}x": next((r[column] for r in done if abs(r["target"] - t) < 1e-9), None)
                    for t in (1.3, 1.5, 2.0, 2.5)})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=sorted(SCHEDULERS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--targets", type=float, nargs="+", default=[round(1.2 + 0.05 * i, 2) for i in range(37)])
    parser.add_argument("--floors", type=float, nargs="+", default=[30.0 + i for i in range(16)],
                        help="quality floors (dB) whose searches are replayed too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), ".cache", "search"))
    parser.add_argument("--held-out-stride", type=int, default=0,
                        help="also score the picks on held-out prompts and seed, against a sweep of every n-th step "
                        "start there (0: not)")
    parser.add_argument("--available", action="store_true",
                        help="sweep only the configs already run (a preview while a sweep is under way)")
    parser.add_argument("--out", help="JSON results (default: results/gap-<scheduler>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"gap-{args.scheduler}.json")
    setting = Setting(args.steps, PROMPTS, args.cache, args.scheduler)
    blocks = setting.blocks
    configs = swept_configs(args.steps, blocks)
    print(f"bundled model, {args.scheduler}, {args.steps} steps, {len(PROMPTS)} prompts: {len(configs)} swept configs")
    for step in range(1, args.steps):
        setting.videos(probe_config(step, args.steps, blocks))
    swept = {}
    if args.available:
        configs = [config for config in configs if setting.has(config)]
    for config in configs:
        videos, _ = setting.videos(config)
        swept[Candidate(config, 0, 0).key()] = compare_videos(videos, setting.reference)["psnr"]
    calibration = calibrate(setting)
    profile = sensitivity(setting, calibration)
    results = {"swept_configs": len(swept), "scheduler": args.scheduler, "steps": args.steps, "modes": {}}
    other = None
    if args.held_out_stride:
        other = Setting(args.steps, HELD_OUT_PROMPTS, args.cache, args.scheduler, seed=HELD_OUT_SEED)
        results["held_out"] = {"prompts": HELD_OUT_PROMPTS, "seed": HELD_OUT_SEED, "stride": args.held_out_stride}
    predicted = {c.key(): c.predicted_speedup for c in enumerate_candidates(calibration, MAX_INTERVAL, REUSE_MODES,
                                                                            (0, 1, 2, 3))}
    modes = (("default", None, DitCacheSearchConfig.candidates_to_run, 0),
             (f"{THOROUGH_SCREENING} screened", None, THOROUGH_SCREENING, 0),
             (f"probes + {THOROUGH_SCREENING} screened", profile.weights(), THOROUGH_SCREENING, args.steps - 1))
    for mode, weights, screened, extra in modes:
        rows = gaps(setting, calibration, weights, args.targets, swept, screened)
        if other is not None:
            held_out(other, rows, configs, args.held_out_stride, predicted)
        floor_rows = floor_gaps(setting, calibration, weights, args.floors, swept, screened)
        results["modes"][mode] = {"summary": summary(rows, mode, extra, floor_rows), "rows": rows,
                                  "floor_rows": floor_rows}
        print(f"\n## {mode}\n" + table(rows, ["target", "config", "predicted", "psnr", "sweep_psnr", "gap_db", "runs",
                                              "held_out_psnr", "held_out_sweep_psnr", "held_out_gap_db", "note"]))
        print(table(floor_rows, ["floor", "config", "predicted", "psnr", "sweep_fastest", "speed_gap", "runs", "note"]))
    half = args.steps // 2
    subsets = {f"steps 1-{half - 1} and the last": set(range(1, half)) | {args.steps - 1},
               f"steps 1-{half - 1}, then every 4th": set(range(1, half)) | set(range(half, args.steps, 4))
               | {args.steps - 1}}
    results["probe_subsets"] = []
    for name, steps in subsets.items():  # cheaper probe plans: weights from part of the probes
        kept = [i for i, step in enumerate(profile.steps) if step in steps]
        part = StepSensitivity(args.steps, tuple(profile.steps[i] for i in kept),
                               tuple(profile.damage[i] for i in kept), tuple(profile.injected[i] for i in kept))
        rows = gaps(setting, calibration, part.weights(), args.targets, swept, THOROUGH_SCREENING)
        results["probe_subsets"].append(summary(rows, f"probes at {name} + {THOROUGH_SCREENING} screened",
                                                len(kept)))
    print("\n## summary\n" + table([m["summary"] for m in results["modes"].values()] + results["probe_subsets"],
                                   ["mode", "targets", "mean_gap_db", "max_gap_db", "within_0.3_db",
                                    "gap_at_1.3x", "gap_at_1.5x", "gap_at_2x", "gap_at_2.5x", "runs_per_search",
                                    "held_out_mean_gap_db", "held_out_within_0.3_db", "mean_floor_speed_gap",
                                    "floors_within_3%", "floor_runs_per_search"]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
