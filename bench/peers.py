"""Peers side by side on the bundled model: each swept over its settings, against ditcache's search picks.

Peers, each run through its own code (test/benchmark-only dependencies): diffusers' cache hooks
(FirstBlockCache, TaylorSeer full and lite, MagCache, PyramidAttentionBroadcast, FasterCache) and
SmoothCache (``dit-smoothcache``'s own ``DiffuserCacheHelper``; its schedules from SmoothCache's
calibration as ditcache implements it, since the PyPI package ships none). ditcache: the search
(``DitCacheAdaptor.search``, every reuse mode) at each speedup target, and fixed configs reusing the
transformer's projected output (``reuse_at="output"``, TaylorSeer lite's knobs) as ``ditcache_output``.

Every setting's videos are compared with the uncached ones (same prompts, same seed): PSNR, SSIM and
the prompt fidelity. Speed: median over interleaved uncached / cached run pairs: one pair screens every
setting, then each method's best at each target is timed to ``--pairs`` pairs (until the winners all
are; ditcache's picks are re-measured over 5 pairs as in bench/search.py). A static schedule
(TaylorSeer, PyramidAttentionBroadcast, FasterCache) does the same work under both samplers (both
walk the same timesteps), so it is timed once, under the first sampler; adaptive ones (FirstBlockCache,
MagCache), SmoothCache's calibrated schedules and ditcache's picks are timed under each sampler.
For each target and sampler the table gives every method's best PSNR at that measured speed or faster.

Every run is cached under --cache (one JSON per setting), so an interrupted benchmark resumes.

    python bench/peers.py                                  # both samplers, every peer and ditcache
    python bench/peers.py --schedulers euler --methods taylorseer_lite,ditcache
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence

import torch

from ditcache import DitCacheConfig, dit_cache, steps
from ditcache._atomic import atomic_write_text
from ditcache.component_calibration import calibrate_components
from ditcache.models.pipeline import SCHEDULERS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search import PROMPTS, Setting, ours, table  # noqa: E402

TARGETS = (1.3, 1.5, 2.0, 2.5)
# TaylorSeer's default patterns match no module of this model: its sub-layers are attn1, attn2 and ff
SUBLAYERS = r"^transformer_blocks\.\d+\.(attn1|attn2|ff)$"
STATIC = ("taylorseer", "taylorseer_lite", "pab", "fastercache", "ditcache_output")
SEARCHED_REUSE = ("delta", "taylor1", "taylor2")

Install = Callable[[Any], ContextManager[None]]


@contextlib.contextmanager
def hooked(pipe, apply: Callable[[torch.nn.Module], None]) -> Iterator[None]:
    """A copy of the transformer with diffusers hooks applied, in the pipeline for the duration; one context
    ("cond": guidance is one batched forward per step)."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    original = pipe.transformer
    model = copy.deepcopy(original)
    apply(model)
    _set_cache_context(model, CacheContext("cond"))
    pipe.transformer = model
    try:
        yield
    finally:
        pipe.transformer = original


def timestep_probe(model: torch.nn.Module) -> Callable[[], int]:
    """A callback giving the timestep of the transformer's current call (PAB and FasterCache ask for one)."""
    seen = {"t": 1000}

    def note(_module, _args, kwargs):
        seen["t"] = int(kwargs["timestep"].flatten()[0])

    model.register_forward_pre_hook(note, with_kwargs=True)
    return lambda: seen["t"]


def fbc(threshold: float) -> Install:
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    return lambda pipe: hooked(pipe, lambda m: apply_first_block_cache(m, FirstBlockCacheConfig(threshold=threshold)))


def taylorseer(interval: int, order: int, lite: bool, before: int = 3) -> Install:
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    config = TaylorSeerCacheConfig(cache_interval=interval, max_order=order, disable_cache_before_step=before,
                                   taylor_factors_dtype=torch.float32, use_lite_mode=lite,
                                   cache_identifiers=None if lite else [SUBLAYERS])
    return lambda pipe: hooked(pipe, lambda m: apply_taylorseer_cache(m, config))


def magcache(ratios: List[float], threshold: float, max_skip: int, steps_: int) -> Install:
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    config = lambda: MagCacheConfig(threshold=threshold, max_skip_steps=max_skip, num_inference_steps=steps_,
                                    mag_ratios=torch.tensor(ratios))
    return lambda pipe: hooked(pipe, lambda m: apply_mag_cache(m, config()))


def mag_ratios(setting: Setting) -> List[float]:
    """MagCache's own calibration run: the residual magnitude ratios it prints."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    path = os.path.join(setting.cache, "peers", "mag_ratios.json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    printed = io.StringIO()
    config = MagCacheConfig(calibrate=True, num_inference_steps=setting.steps)
    with hooked(setting.pipe, lambda m: apply_mag_cache(m, config)), contextlib.redirect_stdout(printed):
        setting(setting.pipe)
    line = [text for text in printed.getvalue().splitlines() if text.startswith("[")][-1]
    ratios = json.loads(line)
    atomic_write_text(path, json.dumps(ratios))
    return ratios


def pab(spatial: int, cross: Optional[int], window: Sequence[int]) -> Install:
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    def apply(model):
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=spatial, cross_attention_block_skip_range=cross,
            spatial_attention_timestep_skip_range=tuple(window), cross_attention_timestep_skip_range=tuple(window),
            current_timestep_callback=timestep_probe(model))
        apply_pyramid_attention_broadcast(model, config)

    return lambda pipe: hooked(pipe, apply)


def fastercache(spatial: int, window: Sequence[int], distilled: bool) -> Install:
    from diffusers.hooks import FasterCacheConfig, apply_faster_cache

    def apply(model):
        config = FasterCacheConfig(
            spatial_attention_block_skip_range=spatial, spatial_attention_timestep_skip_range=tuple(window),
            current_timestep_callback=timestep_probe(model), attention_weight_callback=lambda _: 0.5,
            tensor_format="BCFHW", is_guidance_distilled=distilled)
        apply_faster_cache(model, config)

    return lambda pipe: hooked(pipe, apply)


def smoothcache(schedule: Dict[str, List[int]]) -> Install:
    from SmoothCache import DiffuserCacheHelper

    @contextlib.contextmanager
    def install(pipe):
        cache = DiffuserCacheHelper(pipe.transformer, schedule=schedule)
        cache.enable()
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # it prints at every call
                yield
        finally:
            cache.disable()

    return install


def smoothcache_schedules(setting: Setting, alphas: Sequence[float]) -> Dict[float, Dict[str, List[int]]]:
    """SmoothCache's calibration (attn1's error over steps, averaged over blocks) and its schedule at each alpha."""
    path = os.path.join(setting.cache, "peers", "smoothcache-schedules.json")
    if os.path.exists(path):
        with open(path) as handle:
            saved = {float(alpha): schedule for alpha, schedule in json.load(handle).items()}
        if set(alphas) <= set(saved):
            return {alpha: saved[alpha] for alpha in alphas}
    restore = steps.track_scheduler(setting.pipe.scheduler)
    try:
        errors = calibrate_components(setting.pipe.transformer.transformer_blocks, lambda: setting(setting.pipe),
                                      setting.steps)
    finally:
        restore()
    schedules = {alpha: dict(errors.schedule(alpha, components=["attn1"]).schedule) for alpha in alphas}
    atomic_write_text(path, json.dumps(schedules))
    return schedules


def peer_settings(setting: Setting, methods: Sequence[str]) -> List[Dict]:
    """Every (method, params, install) swept."""
    out: List[Dict] = []
    add = lambda method, params, install: out.append({"method": method, "params": params, "install": install})
    if "fbc" in methods:
        for threshold in (0.1, 0.2, 0.3, 0.45):
            add("fbc", {"threshold": threshold}, fbc(threshold))
    for lite, name in ((False, "taylorseer"), (True, "taylorseer_lite")):
        if name in methods:
            for interval, order in ((2, 1), (3, 1), (5, 1), (2, 2), (3, 2)):
                add(name, {"interval": interval, "order": order}, taylorseer(interval, order, lite))
    if "magcache" in methods:
        ratios = mag_ratios(setting)
        for threshold, max_skip in ((0.06, 3), (0.12, 3), (0.24, 3), (0.24, 5)):
            add("magcache", {"threshold": threshold, "max_skip": max_skip},
                magcache(ratios, threshold, max_skip, setting.steps))
    if "pab" in methods:
        for spatial, cross in ((2, None), (2, 4), (3, 6)):
            add("pab", {"spatial": spatial, "cross": cross, "window": [0, 1000]}, pab(spatial, cross, (0, 1000)))
    if "fastercache" in methods:  # its window must leave out the first step, where it has nothing cached yet
        for spatial, top, distilled in ((2, 901, False), (3, 901, False)):
            add("fastercache", {"spatial": spatial, "window": [-1, top], "guidance_distilled": distilled},
                fastercache(spatial, (-1, top), distilled))
    if "ditcache_output" in methods:  # fixed configs reusing the projected output, TaylorSeer lite's knobs
        for reuse, intervals in (("delta", (2,)), ("taylor1", (2, 3, 5)), ("taylor2", (2, 3, 5))):
            for interval in intervals:
                for end in (None, setting.steps - 1):  # to the end, or the last step spared
                    config = DitCacheConfig(cache_step_start=2, cache_step_interval=interval, cache_block_start=0,
                                            cache_num_blocks=setting.blocks, num_sampling_steps=setting.steps,
                                            reuse=reuse, reuse_at="output", cache_step_end=end)
                    add("ditcache_output", config.to_dict(), lambda pipe, c=config: dit_cache(pipe, c))
    if "smoothcache" in methods:
        alphas = (0.1, 0.2, 0.35, 0.6)
        for alpha, schedule in smoothcache_schedules(setting, alphas).items():
            add("smoothcache", {"alpha": alpha}, smoothcache(schedule))
    return out


class PeerRuns:
    """One setting's videos, quality and measured speed, cached on disk as JSON."""

    def __init__(self, setting: Setting, timing_cache: str, cached_only: bool = False) -> None:
        self.setting, self.cached_only = setting, cached_only
        self.dir = os.path.join(setting.cache, "peers")
        self.timing_dir = timing_cache
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.timing_dir, exist_ok=True)

    @staticmethod
    def _key(method: str, params: Dict) -> str:
        return method + "-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]

    def _load(self, path: str) -> Optional[Dict]:
        if os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)
        return None

    def quality(self, method: str, params: Dict, install: Install) -> Dict:
        path = os.path.join(self.dir, self._key(method, params) + ".json")
        row = self._load(path)
        if row is None and self.cached_only:
            return {"method": method, "params": params, "error": "not run"}
        if row is None:
            try:
                with install(self.setting.pipe):
                    videos = self.setting(self.setting.pipe)
                row = {"method": method, "params": params, **self.setting.quality(videos)}
            except Exception as err:  # a peer that cannot run on this model is a result too
                row = {"method": method, "params": params, "error": f"{type(err).__name__}: {err}"}
            atomic_write_text(path, json.dumps(row) + "\n")
        return row

    def speed(self, method: str, params: Dict, install: Install, shared: bool, pairs: int) -> Dict:
        """Median (uncached / cached) over at least ``pairs`` interleaved pairs (more are added to those on disk);
        ``shared``: one timing for every sampler."""
        where = self.timing_dir if shared else self.dir
        path = os.path.join(where, self._key(method, params) + ".speed.json")
        row = self._load(path)
        if self.cached_only:
            return row or {}
        if row is None or len(row["ratios"]) < pairs:
            ratios = [] if row is None else row["ratios"]
            while len(ratios) < pairs:
                started = time.perf_counter()
                self.setting(self.setting.pipe)
                plain = time.perf_counter() - started
                with install(self.setting.pipe):  # set-up outside the timing
                    started = time.perf_counter()
                    self.setting(self.setting.pipe)
                    ratios.append(plain / (time.perf_counter() - started))
            row = {"speedup": statistics.median(ratios), "ratios": ratios}
            atomic_write_text(path, json.dumps(row) + "\n")
        return row

    def searched(self, target: float) -> Dict:
        """ditcache's search pick at ``target`` (every reuse mode), its measured speed and quality."""
        path = os.path.join(self.dir, f"ditcache-x{target:g}.json")
        row = self._load(path)
        if row is None and self.cached_only:
            return {"method": "ditcache", "params": {"goal": f">= {target:g}x"}, "error": "not run"}
        if row is None:
            journal = os.path.join(self.setting.cache, "journal-peers")
            found = ours(self.setting, target, None, journal, reuse_modes=SEARCHED_REUSE)
            row = {"method": "ditcache", "params": found.get("config", {"goal": found["goal"]}),
                   "speedup": found.get("measured", 0.0), **{k: v for k, v in found.items() if k != "config"}}
            atomic_write_text(path, json.dumps(row) + "\n")
        return row


def confirm(runs: PeerRuns, swept: List[Dict], rows: List[Dict], targets: Sequence[float], pairs: int) -> None:
    """Time every row that is a method's best at some target with ``pairs`` pairs, until the winners are all
    timed so (a winner that falls below its target on more pairs gives way to the next)."""
    while not runs.cached_only:
        pending = {id(best) for method in {r["method"] for r in rows} for target in targets
                   for best in [best_at([r for r in rows if r["method"] == method], target)]
                   if best is not None and len(best.get("ratios", range(pairs))) < pairs}
        if not pending:
            return
        for item, row in zip(swept, rows):
            if id(row) in pending:
                row.update(runs.speed(item["method"], item["params"], item["install"], item["method"] in STATIC, pairs))
                print(f"  {row['method']} {row['params']}: {row['psnr']:.2f} dB, {row['speedup']:.2f}x "
                      f"({len(row['ratios'])} pairs)", flush=True)


def best_at(rows: List[Dict], target: float) -> Optional[Dict]:
    """The row with the best PSNR among those measured at ``target`` or faster."""
    eligible = [r for r in rows if r.get("speedup", 0) >= target and "psnr" in r]
    return max(eligible, key=lambda r: r["psnr"]) if eligible else None


def summary(rows: List[Dict], targets: Sequence[float]) -> List[Dict]:
    out = []
    for target in targets:
        line: Dict[str, Any] = {"target": f">= {target:g}x"}  # PSNR @ measured speed (timing pairs)
        for method in dict.fromkeys(r["method"] for r in rows):
            best = best_at([r for r in rows if r["method"] == method], target)
            line[method] = "-" if best is None else (f"{best['psnr']:.1f} dB @ {best['speedup']:.2f}x"
                                                     f" ({len(best.get('ratios', range(5)))})")
        out.append(line)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--schedulers", nargs="+", default=["euler", "euler_ancestral"], choices=sorted(SCHEDULERS))
    parser.add_argument("--methods", default="fbc,taylorseer,taylorseer_lite,magcache,pab,fastercache,smoothcache,"
                                             "ditcache_output,ditcache")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--pairs", type=int, default=3, help="interleaved uncached/cached pairs per speed of a "
                                                              "method's best at a target (one pair to screen)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--cached-only", action="store_true",
                        help="report the runs on disk; run nothing new (SmoothCache needs its schedules on disk)")
    parser.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), ".cache", "search"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "peers.json"))
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: Dict[str, Any] = {}
    if os.path.exists(args.out):  # one sampler run alone keeps the other's results
        with open(args.out) as handle:
            results = json.load(handle)
    results.update({"steps": args.steps, "prompts": PROMPTS, "pairs": args.pairs})
    timing_cache = os.path.join(args.cache, "peers-timing", f"s{args.steps}-p{len(PROMPTS)}")
    for scheduler in args.schedulers:
        setting = Setting(args.steps, PROMPTS, args.cache, scheduler)
        runs = PeerRuns(setting, timing_cache, args.cached_only)
        print(f"\n# {scheduler}: bundled model, {setting.blocks} blocks, {args.steps} steps, {len(PROMPTS)} prompts; "
              f"uncached run {setting.uncached_seconds:.2f} s", flush=True)
        rows: List[Dict] = []
        swept = peer_settings(setting, [m for m in methods if not (args.cached_only and m == "smoothcache" and not
                                                                   os.path.exists(os.path.join(runs.dir, "smoothcache-schedules.json")))])
        for item in swept:  # screening: one timing pair each
            row = runs.quality(item["method"], item["params"], item["install"])
            if "error" not in row:
                row.update(runs.speed(item["method"], item["params"], item["install"], item["method"] in STATIC, 1))
            rows.append(row)
            print(f"  {row['method']} {row['params']}: " + (row.get("error") or
                  f"{row['psnr']:.2f} dB, {row.get('speedup', 0):.2f}x"), flush=True)
        confirm(runs, swept, rows, args.targets, args.pairs)
        if "ditcache" in methods:
            for target in args.targets:
                row = runs.searched(target)
                rows.append(row)
                print(f"  ditcache >= {target:g}x: {row['params']} " + (row.get("error") or row.get("note") or
                      f"{row['psnr']:.2f} dB, {row['speedup']:.2f}x"), flush=True)
        results[scheduler] = {"rows": rows, "best": summary(rows, args.targets)}
        print(f"\n## {scheduler}: best PSNR at the measured speed or faster\n"
              + table(results[scheduler]["best"], list(results[scheduler]["best"][0])), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
