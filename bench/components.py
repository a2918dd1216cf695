"""Component schedules against block regions on the bundled model: SmoothCache's own method and the searches.

For each sampler and each speedup target it reports the best PSNR (against the uncached videos) reached
at that measured speed or faster by:

(a) SmoothCache's own method: its threshold alpha swept, each schedule run by dit-smoothcache's own
    helpers (``DiffuserCacheHelper``, which wraps ``attn1`` only, and its generic ``SmoothCacheHelper``
    on ``attn1``, ``attn2`` and ``ff``). The PyPI package ships no calibration, so the schedules come from
    ditcache's ``calibrate_components``, which mirrors SmoothCache's (relative L1 error of reusing each
    sub-layer's output 1-3 steps later, averaged over blocks, the same threshold scan);
(b) ditcache's search with ``schedule_kind="component"``, (c) ``"region"`` and (d) ``"any"``, each
    asked for the target.

Speed is always the median of interleaved uncached / cached run pairs: ``--pairs`` of them for each
SmoothCache schedule (the first pair's cached videos are the ones scored), and for a search's pick the
2-3 pairs of its own confirmation (the same measurement; the machine's load did not allow more). The
searches share one journal per sampler, as searches for several goals and kinds can. Prompt fidelity is the bundled classifier's mean hit rate on the cached
videos (1.000 uncached). SmoothCache prints a line at every sub-layer call: its runs are made with stdout
sent to /dev/null.

Every run's videos and every finished row are kept under --cache (the searches resume from journals
there), so an interrupted benchmark resumes; delete the cache after changing the search.

    python bench/components.py                             # both samplers, 1.3x / 1.5x / 2x
    python bench/components.py --schedulers euler --targets 1.5
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np

from ditcache import DitCacheAdaptor, DitCacheSearchConfig, dit_cache
from ditcache._atomic import atomic_write_text
from ditcache.component_calibration import ComponentErrors, calibrate_components
from ditcache.search.candidates import config_key, describe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search import PROMPTS, Setting  # noqa: E402

STEPS = 50
TARGETS = (1.3, 1.5, 2.0)
SAMPLERS = ("euler_ancestral", "euler")
# SmoothCache's variants and how many thresholds each sweeps (at evenly spaced quantiles of its averaged
# errors): attn1 alone is a quarter of a run here, so it cannot reach 1.3x; three show its range
SMOOTHCACHE_VARIANTS = {"attn1": (("attn1",), 3), "attn1+attn2+ff": (("attn1", "attn2", "ff"), 7)}
KINDS = ("component", "region", "any")


class Rows:
    """Finished rows of one sampler, kept in a JSON file so a rerun skips them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(path):
            with open(path, "r", encoding="utf-8") as handle:
                self.rows = json.load(handle)

    def get(self, key: str, make: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        if key not in self.rows:
            self.rows[key] = make()
            atomic_write_text(self.path, json.dumps(self.rows, indent=1) + "\n")
        print(f"  {key}: {_brief(self.rows[key])}", flush=True)
        return self.rows[key]


def _brief(row: Dict[str, Any]) -> str:
    if "note" in row:
        return row["note"]
    return f"{row['measured']:.3f}x, {row['psnr']:.2f} dB, fidelity {row['fidelity']:.3f}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """stdout to /dev/null at the file-descriptor level (SmoothCache prints at every call)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            with contextlib.redirect_stdout(null):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def smoothcache_context(setting: Setting, components: Sequence[str], schedule: Dict[str, List[int]]):
    """dit-smoothcache's own helper on the bundled transformer, enabled for the duration, printing muted."""
    from diffusers.models.attention import BasicTransformerBlock
    from SmoothCache import DiffuserCacheHelper, SmoothCacheHelper

    @contextlib.contextmanager
    def enabled() -> Iterator[None]:
        transformer = setting.pipe.transformer
        if tuple(components) == ("attn1",):
            helper = DiffuserCacheHelper(transformer, schedule=schedule)
        else:
            helper = SmoothCacheHelper(transformer, BasicTransformerBlock, list(components), schedule)
        helper.enable()
        try:
            with _quiet():
                yield
        finally:
            helper.disable()

    return enabled


def calibrated(setting: Setting) -> ComponentErrors:
    path = os.path.join(setting.cache, "component-errors.json")
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as handle:
            state = json.load(handle)
        return ComponentErrors({(b, n): np.array(t, dtype=float) for b, n, t in state["errors"]}, state["lookahead"])
    with dit_cache(setting.pipe, None):  # tracks the scheduler's steps, caches nothing
        errors = calibrate_components(setting.pipe.transformer.transformer_blocks, lambda: setting(setting.pipe),
                                      setting.steps, lookahead=3)
    state = {"lookahead": errors.lookahead,
             "errors": [[b, n, np.where(np.isnan(t), None, t).tolist()] for (b, n), t in errors.errors.items()]}
    atomic_write_text(path, json.dumps(state) + "\n")
    return errors


def smoothcache_rows(setting: Setting, rows: Rows, pairs: int) -> List[Dict[str, Any]]:
    errors = calibrated(setting)
    found = []
    for variant, (components, count) in SMOOTHCACHE_VARIANTS.items():
        averaged = np.concatenate([errors.mean_over_blocks(name)[1:].ravel() for name in components])
        alphas = np.quantile(averaged[np.isfinite(averaged)], np.linspace(0.05, 0.95, count))
        seen = set()
        for alpha in alphas.tolist():
            config = errors.schedule(alpha, components=list(components))  # one line per sub-layer, as SmoothCache
            key = f"smoothcache-{variant}-{config_key(config)}"
            if key in seen or all(0 not in line for line in config.schedule.values()):
                continue
            seen.add(key)
            context = smoothcache_context(setting, components, config.to_dict())

            def make(config=config, context=context, alpha=alpha) -> Dict[str, Any]:
                videos: List[np.ndarray] = []  # the first pair's cached videos
                measured = setting.speedup(None, pairs, cached=context, videos=videos)
                return {"method": f"SmoothCache ({variant})", "alpha": alpha, "config": config.to_dict(),
                        "measured": measured, **setting.quality(videos)}

            found.append(rows.get(key, make))
    return found


def search_row(setting: Setting, kind: str, target: float, journal: str) -> Dict[str, Any]:
    search = DitCacheSearchConfig(cache_ratio=target, num_sampling_steps=setting.steps, schedule_kind=kind,
                                  journal_dir=journal)
    adaptor = DitCacheAdaptor(setting.pipe, search)
    try:
        adaptor.search(setting, prompts_num=len(setting.prompts))
    except ValueError as err:  # a target not reached as measured is a result too
        return {"method": f"ditcache {kind}", "target": target, "note": str(err)}
    finally:
        adaptor.remove()
    report = adaptor.last_search
    videos, _ = setting.videos(report.config)
    return {
        "method": f"ditcache {kind}", "target": target, "kind": report.chosen.kind, "key": report.chosen.key,
        "config": report.config.to_dict(), "described": describe(report.config, setting.blocks),
        "runs": report.full_runs, "search_seconds": report.seconds, "predicted": report.chosen.predicted_speedup,
        "pairs": len(report.chosen.pairs), "measured": report.chosen.confirmed_speedup, **setting.quality(videos),
    }


def best_at(rows: Sequence[Dict[str, Any]], target: float) -> Dict[str, Any]:
    """The best-PSNR row measured at ``target`` or faster (``{}`` if none)."""
    reaching = [row for row in rows if "note" not in row and row["measured"] >= target]
    return max(reaching, key=lambda row: row["psnr"]) if reaching else {}


def table(summary: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    lines = ["| sampler | target | SmoothCache (own method, swept) | ditcache component | ditcache region | "
             "ditcache any |", "| --- | --- | --- | --- | --- | --- |"]
    for sampler, by_target in summary.items():
        for target, best in by_target.items():
            cells = []
            for method in ("smoothcache", "component", "region", "any"):
                row = best[method]
                if not row:
                    cells.append("not reached")
                    continue
                extra = f", {row['kind']}" if method == "any" else ""
                cells.append(f"{row['psnr']:.2f} dB at {row['measured']:.2f}x (fid. {row['fidelity']:.3f}{extra})")
            lines.append(f"| {sampler} | {target}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedulers", default=",".join(SAMPLERS))
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved uncached/cached pairs per speed")
    parser.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), ".cache", "components"))
    parser.add_argument("--out", default=os.path.join("bench", "results", "components.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    targets = [float(t) for t in args.targets.split(",")]
    summary: Dict[str, Dict[str, Dict[str, Any]]] = {}
    everything: Dict[str, Any] = {}
    for sampler in args.schedulers.split(","):
        print(f"{sampler}:", flush=True)
        setting = Setting(args.steps, PROMPTS, args.cache, sampler)
        rows = Rows(os.path.join(setting.cache, "components-rows.json"))
        swept = smoothcache_rows(setting, rows, args.pairs)
        picks: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in KINDS}
        for target in targets:
            for kind in KINDS:
                journal = os.path.join(setting.cache, "journal-components")  # one for every kind and target
                picks[kind].append(rows.get(f"search-{kind}-{target:g}",
                                            lambda: search_row(setting, kind, target, journal)))
        summary[sampler] = {
            f"{target:g}": {"smoothcache": best_at(swept, target),
                            **{kind: best_at(picks[kind], target) for kind in KINDS}}
            for target in targets
        }
        everything[sampler] = {"uncached_seconds": setting.uncached_seconds, "smoothcache_sweep": swept,
                               "searches": picks}
    result = {"steps": args.steps, "prompts": PROMPTS, "pairs": args.pairs, "best": summary, "runs": everything}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(table(summary))


if __name__ == "__main__":
    main()
