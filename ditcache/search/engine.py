"""The cache search: calibrate once, rank every config, run only the best few for real.

1. One uncached run of the user's callable gives the reference videos (kept in
   memory as decoded uint8 frames) and the measurements of
   :mod:`ditcache.search.recording`.
2. Every config (all four knobs) gets a predicted speedup and a predicted error
   (:mod:`ditcache.search.candidates`).
3. For a speedup target, the few best-ranked configs predicted to reach it are
   run for real and scored by PSNR / SSIM / MSE against the references; the best
   one predicted to meet the target has its speed *measured* by interleaved
   uncached / cached pairs and wins if that meets it (else the next best is
   measured). For a quality floor, the predicted Pareto front is bisected with
   real runs for the fastest config that stays above it, then its speed measured.
4. After each round the candidates are re-ranked with what the runs measured
   (:mod:`ditcache.search.ranking`); a speedup search then runs a few more
   configs, one round at a time, while one is predicted to beat the best found.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import DitCacheConfig, DitCacheSearchConfig
from ..distributed import all_gather_objects, broadcast_object, current_context
from ..metrics import check_video, compare_videos, mse, psnr_from_mse
from ..timing import module_device, timed
from .recording import Calibration, CalibrationRecorder
from .candidates import Candidate, best_for_target, enumerate_candidates, pareto_front
from .journal import Journal, pipeline_modules, weights_fingerprint
from .ranking import QualityModel
from .report import SearchReport, logger, speedup_of

RunVideos = Callable[[Any], List[np.ndarray]]
NONDETERMINISM_FLOOR_DB = 45.0  # below this, two uncached runs are not "the same videos"
QUALITY_PROBE_WIDTH = 2  # configs run per probed speed in a quality-floor search
REFINE_ROUNDS = 3  # rounds of a speedup search after the first, one config per process each
REFINE_GAIN_DB = 0.5  # a further config is run only if predicted this much above the best found
CONFIRM_ATTEMPTS = 3  # configs predicted to meet a target whose speed is measured by pairs before giving up


def check_videos(videos: Any, expected: Optional[Sequence[np.ndarray]], prompts_num: int) -> List[np.ndarray]:
    """The callable's return, checked: a list of uint8 (frames, h, w, c) arrays matching the calibration.

    A batch, one uint8 ``(videos, frames, h, w, c)`` array or tensor (what a pipeline's ``.images``
    holds), counts as that many videos.
    """
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu().numpy()
    if isinstance(videos, np.ndarray):
        if videos.dtype != np.uint8 or videos.ndim != 5:
            raise ValueError(
                f"run_pipeline_and_save_videos returned an array of {videos.dtype} with shape {videos.shape}; a "
                "batch of videos must be uint8 with shape (videos, frames, height, width, channels), or return "
                "a list of uint8 (frames, height, width, channels) arrays"
            )
        videos = list(videos)
    if not isinstance(videos, list):
        raise ValueError(
            f"run_pipeline_and_save_videos must return a list of numpy arrays or a batched uint8 array, got "
            f"{type(videos).__name__}; return e.g. output.images, a uint8 (videos, frames, h, w, c) array"
        )
    for i, video in enumerate(videos):
        check_video(video, f"video {i} returned by run_pipeline_and_save_videos")
    if len(videos) != prompts_num:
        raise ValueError(f"run_pipeline_and_save_videos returned {len(videos)} videos, expected prompts_num={prompts_num}")
    if expected is not None:
        for i, (video, reference) in enumerate(zip(videos, expected)):
            if video.shape != reference.shape:
                raise ValueError(
                    f"video {i} has shape {video.shape}, but the calibration run gave {reference.shape}; "
                    "the callable must make the same videos every time"
                )
    return videos


class CacheSearch:
    """Runs one search over the blocks of an attached :class:`~ditcache.DitCacheAdaptor`.

    Under torchrun every decision (what to calibrate, which candidates, the
    winner) is taken on rank 0 and shared, so all ranks agree. Candidate runs
    are spread over the ranks when each holds the whole model; with
    ``sequence_parallel=True`` (the ranks share one model) every rank takes
    part in every run and rank 0 scores it.
    """

    def __init__(self, adaptor: Any, config: DitCacheSearchConfig, sequence_parallel: bool = False) -> None:
        self.adaptor = adaptor
        self.config = config
        self.device = module_device(adaptor.blocks[0])
        self.context = current_context()
        self.sequence_parallel = sequence_parallel
        self.full_runs = 0
        self.resumed = 0
        self.journal: Optional[Journal] = None
        self._journalled: set = set()
        self.calibration: Optional[Calibration] = None
        self.candidates: List[Candidate] = []
        self._show = self.context.is_main

    def run(self, run_videos: RunVideos, prompts_num: int = 1) -> SearchReport:
        if not callable(run_videos):
            raise ValueError(f"run_pipeline_and_save_videos must be callable, got {type(run_videos).__name__}")
        if isinstance(prompts_num, bool) or not isinstance(prompts_num, int) or prompts_num < 1:
            raise ValueError(f"prompts_num must be an int >= 1, got {prompts_num!r}")
        started = time.perf_counter()
        journal_dir = self.config.journal_dir if self.context.is_main else None
        self.journal = Journal(None if journal_dir is None else str(journal_dir), self._inputs(prompts_num))
        saved_config, saved_enabled = self.adaptor.cache_config, self.adaptor.enabled
        try:
            self.calibration = self._calibrate(run_videos, prompts_num)
            self._journalled = set(self.journal.runs)  # runs of an interrupted search, not yet counted
            if self.context.is_main:
                self.candidates = enumerate_candidates(self.calibration, self.config.cache_step_interval,
                                                       self.config.reuse_modes)
            if self.config.min_psnr is None:
                chosen = self._for_speedup(run_videos, prompts_num)
            else:
                chosen = self._for_quality(run_videos, prompts_num)
        finally:
            self.adaptor.set_cache_config(saved_config)
            if not saved_enabled:
                self.adaptor.disable()
        report = SearchReport(
            goal=self.config.goal,
            config=DitCacheConfig.from_dict(chosen["config"]),
            chosen=chosen,
            runs=list(self.journal.runs.values()),
            full_runs=self.full_runs,
            resumed_runs=self.resumed,
            seconds=time.perf_counter() - started,
            calibration={
                "seconds": self.calibration.full_seconds,
                "block_share": sum(self.calibration.block_seconds) / self.calibration.full_seconds,
                "block_seconds": self.calibration.block_seconds,
                "candidates_ranked": len(self.candidates),
                "processes": self.context.world_size,
            },
        )
        if self._show:
            logger.info("search done: %s", report.summary())
        return report

    def _on_main(self, decide: Callable[[], Any]) -> Any:
        """Run ``decide`` on rank 0 and hand its result (or its ValueError) to every rank."""
        outcome: Any = None
        if self.context.is_main:
            try:
                outcome = ("ok", decide())
            except ValueError as err:
                outcome = ("error", str(err))
        kind, value = broadcast_object(outcome)
        if kind == "error":
            raise ValueError(value)
        return value

    # --- calibration -------------------------------------------------------------------

    def _inputs(self, prompts_num: int) -> Dict[str, Any]:
        """What the journal is keyed by before any run: the blocks, steps and prompts, and the weights."""
        if not self.context.is_main or self.config.journal_dir is None:
            return {}
        modules = pipeline_modules(self.adaptor.pipeline, self.adaptor.blocks)
        return {
            "blocks": len(self.adaptor.blocks),
            "num_sampling_steps": self.config.num_sampling_steps,
            "prompts_num": prompts_num,
            "weights": weights_fingerprint(modules),
        }

    def _calibrate(self, run_videos: RunVideos, prompts_num: int) -> Calibration:
        """Rank 0's uncached reference (from the journal, or measured), known to every rank that needs it."""
        loaded = self.journal.load_calibration() if self.context.is_main else None
        if broadcast_object(loaded is not None):
            loaded = self._check_references(loaded, run_videos, prompts_num)
        if broadcast_object(loaded is None):
            if self.context.is_main:
                calibration = self._measure_calibration(run_videos, prompts_num)
            elif self.sequence_parallel:  # the other ranks take part in rank 0's two runs
                self._timed(run_videos)
                self._timed(run_videos)
                calibration = None
            else:  # rank 1 makes the clean run while rank 0 makes the instrumented one
                all_gather_objects(self._timed(run_videos) if self.context.rank == 1 else None)
                calibration = None
            runs = 2
        else:
            calibration, runs = loaded, loaded.calls
            self.resumed += runs
        self.full_runs += runs
        if not self.context.is_main and not self.sequence_parallel:
            # Spread runs are scored on every rank: they need the references and the time to beat.
            videos, seconds = broadcast_object(None)
            calibration = Calibration.reference_only(videos, seconds, self.config.num_sampling_steps)
        elif self.context.enabled and not self.sequence_parallel:
            broadcast_object((calibration.videos, calibration.full_seconds))
        return calibration

    def _check_references(self, loaded: Optional[Calibration], run_videos: RunVideos,
                          prompts_num: int) -> Optional[Calibration]:
        """``loaded`` if one uncached run makes its reference videos again, else ``None`` (the journal set aside).

        The weights and counts in the journal's key do not cover what the callable does (its
        prompts, seed, guidance, scheduler, ...): the videos it makes do.
        """
        self.adaptor.disable()
        videos = None
        if self.context.is_main or self.sequence_parallel:
            videos = self._timed(run_videos)[0]
            self.full_runs += 1
        if not self.context.is_main:
            return None
        videos = check_videos(videos, None, prompts_num)
        differs = _difference(videos, loaded.videos)
        if differs is None:
            return loaded
        self.journal.start_fresh(f"the callable's uncached videos are not its reference videos ({differs})")
        return None
    def _measure_calibration(self, run_videos: RunVideos, prompts_num: int) -> Calibration:
        """The instrumented uncached run, then a clean one for timing and a determinism check."""
        self.adaptor.disable()
        with CalibrationRecorder(self.adaptor.blocks) as recorder:
            videos, seconds = self._timed(run_videos)
        videos = check_videos(videos, None, prompts_num)
        streams = recorder.stream_names()
        if self.config.num_hidden_states != len(streams):
            raise ValueError(
                f"num_hidden_states={self.config.num_hidden_states}, but the blocks carry {len(streams)} "
                f"streams {list(streams)}"
            )
        calibration = recorder.result([v.copy() for v in videos], seconds, self.config.num_sampling_steps)
        # The first run pays for warm-up and the recording; a clean second run gives the time to beat
        # and shows whether the callable makes the same videos every time. When the ranks each hold the
        # model, rank 1 makes it at the same time, under the same conditions as the spread candidate
        # runs, and the check then also covers its device.
        if self.context.enabled and not self.sequence_parallel:
            again, clean_seconds = all_gather_objects(None)[1]
        else:
            again, clean_seconds = self._timed(run_videos)
        again = check_videos(again, calibration.videos, prompts_num)
        self._check_deterministic(again, calibration.videos)
        calibration.rebase(clean_seconds)
        calibration.calls = 2
        self.journal.save_calibration(calibration)
        logger.info(
            "calibration: %.2f s a run, blocks %.1f%% of it, %d forward passes per step",
            calibration.full_seconds, 100 * sum(calibration.block_seconds) / calibration.full_seconds,
            calibration.passes,
        )
        return calibration

    @staticmethod
    def _check_deterministic(videos: List[np.ndarray], references: List[np.ndarray]) -> None:
        worst = max(mse(v, r) for v, r in zip(videos, references))
        if worst == 0:
            return
        psnr = psnr_from_mse(worst)
        if psnr < NONDETERMINISM_FLOOR_DB:
            raise ValueError(
                f"run_pipeline_and_save_videos made different videos in two uncached runs (PSNR {psnr:.1f} dB "
                "between them; under torchrun, the runs of ranks 0 and 1): fix its seeds (e.g. a torch.Generator "
                "per prompt), and under torchrun give every rank the same kind of device, so the search compares "
                "like with like"
            )
        logger.warning("two uncached runs differ slightly (PSNR %.1f dB): quality figures above it are noise", psnr)

    def _timed(self, run_videos: RunVideos):
        return timed(lambda: run_videos(self.adaptor.pipeline), self.device)

    # --- candidate runs ----------------------------------------------------------------

    def _run_candidates(self, picks: List[Candidate], run_videos: RunVideos, prompts_num: int,
                        description: str) -> List[Dict[str, Any]]:
        """Run ``picks`` for real (spread over the ranks where each holds the model); every rank gets every record."""
        done = self._on_main(lambda: {c.key(): self.journal.runs[c.key()] for c in picks if c.key() in self.journal.runs})
        # runs found in the journal count once, as resumed; a config run earlier in this search costs nothing again
        resumed = sum(record.get("runs", 1) for key, record in done.items() if key in self._journalled)
        self._journalled -= set(done)
        self.resumed += resumed
        self.full_runs += resumed
        todo = [candidate for candidate in picks if candidate.key() not in done]
        spread = self.context.enabled and not self.sequence_parallel
        mine = todo[self.context.rank :: self.context.world_size] if spread else todo
        records = []
        with tqdm(total=len(mine), desc=description, disable=not self._show, leave=False) as bar:
            for candidate in mine:
                record = self._evaluate(candidate, run_videos, prompts_num)
                if record is not None:
                    self.journal.add_run(record)  # at once: an interruption loses only the run under way
                records.append(record)
                bar.update()
        if spread:
            records = [record for part in all_gather_objects(records) for record in part]
        elif self.context.enabled:
            records = broadcast_object(records)
        for record in records:
            if record["key"] not in self.journal.runs:
                self.journal.add_run(record)
        by_key = {**done, **{record["key"]: record for record in records}}
        return [by_key[candidate.key()] for candidate in picks]

    def _evaluate(self, candidate: Candidate, run_videos: RunVideos, prompts_num: int) -> Optional[Dict[str, Any]]:
        """One real run of ``candidate``: scored against the references, and timed (see :meth:`_estimate`)."""
        key = candidate.key()
        self.adaptor.set_cache_config(candidate.config)
        videos, seconds = self._timed(run_videos)
        self.full_runs += 1
        if self.calibration is None:  # a sequence-parallel helper rank: rank 0 scores the run
            return None
        videos = check_videos(videos, self.calibration.videos, prompts_num)
        record = {
            "key": key,
            "config": candidate.config.to_dict(),
            "predicted_speedup": candidate.predicted_speedup,
            "proxy": candidate.proxy,
            "seconds": seconds,
            "runs": 1,
            "measured_speedup": self.calibration.full_seconds / seconds,
            **compare_videos(videos, self.calibration.videos),
        }
        logger.info(
            "candidate %s: predicted %.3fx, measured %.3fx, PSNR %.2f dB, SSIM %.4f, MSE %.3f",
            key, record["predicted_speedup"], record["measured_speedup"], record["psnr"], record["ssim"], record["mse"],
        )
        return record

    def _for_speedup(self, run_videos: RunVideos, prompts_num: int) -> Dict[str, Any]:
        """The best-ranked few configs predicted to reach the target, then a few rounds re-ranked by what they measured."""
        target = self.config.cache_ratio
        fastest = self._on_main(lambda: self._fastest_reaching(target))
        aim = self._aim(target, fastest)
        description = f"search >= {target:g}x"
        picks = self._on_main(lambda: best_for_target(self.candidates, aim, self.config.candidates_to_run))
        tried = self._run_candidates(picks, run_videos, prompts_num, description)
        width = self.context.world_size if not self.sequence_parallel else 1
        for _ in range(REFINE_ROUNDS):
            picks = self._on_main(lambda: self._promising(tried, target, fastest, width))
            if not picks:
                break
            tried += self._run_candidates(picks, run_videos, prompts_num, description)
        confirmed: Dict[str, Dict[str, Any]] = {}
        for _ in range(2 * CONFIRM_ATTEMPTS):  # each round measures a winner or runs configs aimed anew
            if len(confirmed) == CONFIRM_ATTEMPTS:
                break
            # what the measurements so far showed of the predictions scales the rest
            scale = min([1.0] + [r["confirmed_speedup"] / r["predicted_speedup"] for r in confirmed.values()])
            meeting = [r for r in tried if r["key"] not in confirmed and self._estimate(r) * scale >= target]
            if not meeting:  # aim higher by the shortfall measured, and run the best configs there
                aim = self._aim(target, fastest, scale)
                picks = self._on_main(lambda: best_for_target(self.candidates, aim, width, QualityModel(tried),
                                                              exclude={r["key"] for r in tried}))
                tried += self._run_candidates(picks, run_videos, prompts_num, description)
                continue
            record = self._confirm(max(meeting, key=lambda r: (r["psnr"], r["ssim"])), run_videos, target)
            if speedup_of(record) >= target:
                return record
            confirmed[record["key"]] = record
        found = [speedup_of(r) for r in confirmed.values()] or [self._estimate(r) for r in tried]
        raise ValueError(
            f"cache_ratio={target:g} was not reached as measured: the best measured speedup was {max(found):.3f}x "
            f"(predictions were off by timing noise or overheads); ask for at most {max(found):.2f}"
        )

    def _aim(self, target: float, fastest: float, shortfall: float = 1.0) -> float:
        """The predicted speedup picks must reach: the target with ``speed_margin`` over it, raised by a
        measured ``shortfall`` (measured / predicted, at most 1), but no faster than the fastest config."""
        return min(target * (1 + self.config.speed_margin) / shortfall, fastest)

    def _estimate(self, record: Dict[str, Any]) -> float:
        """The speed the search's choices are made on, before a winner is confirmed.

        With confirmation pairs, the prediction: it comes from block times measured within one run,
        so it carries no run-to-run noise, where a screening run's timing is divided by an
        uncached time taken minutes earlier (on a busy host the two drift by tens of percent).
        Without them, the screening timing itself, the only measurement there is.
        """
        return record["predicted_speedup"] if self.config.confirm_pairs else record["measured_speedup"]

    def _confirm(self, record: Dict[str, Any], run_videos: RunVideos,
                 target: Optional[float] = None) -> Dict[str, Any]:
        """``record`` with its speedup measured again: the median ratio of interleaved uncached / cached pairs.

        A screening run is divided by an uncached time taken minutes earlier, so load or clock
        changes in between move it; a pair run back to back sees the same conditions. The result
        is ``confirmed_speedup``, beside the screening run's ``measured_speedup``. Two pairs are
        run, and more (up to ``confirm_pairs``) only while they fall on both sides of the ``target``
        (a quality floor's winner has none: two pairs give the speed it is reported with).
        """
        most = self.config.confirm_pairs
        if most == 0 or "confirmed_speedup" in record:  # nothing asked, or confirmed before an interruption
            return record
        ratios: List[float] = []
        if self.context.is_main or self.sequence_parallel:  # spread ranks idle: rank 0 holds the whole model
            config = DitCacheConfig.from_dict(record["config"])
            with tqdm(total=most, desc=f"confirm {record['key']}", disable=not self._show, leave=False) as bar:
                while True:
                    self.adaptor.disable()
                    plain = self._timed(run_videos)[1]
                    self.adaptor.set_cache_config(config)
                    ratios.append(plain / self._timed(run_videos)[1])
                    self.full_runs += 2
                    bar.update()
                    settled = len(ratios) == most or _settled(ratios, target)
                    if self.sequence_parallel:  # every rank takes part in every pair: rank 0's timings decide
                        settled = broadcast_object(settled)
                    if settled:
                        break
        confirmed = None
        if self.context.is_main:
            confirmed = {**record, "confirmed_speedup": float(np.median(ratios)), "confirm_ratios": ratios,
                         "runs": record.get("runs", 1) + 2 * len(ratios)}
            self.journal.add_run(confirmed)
            logger.info("candidate %s: measured %.3fx, confirmed %.3fx (median of %d interleaved pairs)",
                        record["key"], record["measured_speedup"], confirmed["confirmed_speedup"], len(ratios))
        return broadcast_object(confirmed)

    def _promising(self, tried: List[Dict[str, Any]], target: float, fastest: float, count: int) -> List[Candidate]:
        """Configs not yet run that the runs so far predict to beat the best one meeting the target.

        Predicted PSNR comes from :class:`QualityModel` fitted on the runs. Without confirmation
        pairs the predicted speed is corrected by how far short of their predictions the
        screening runs measured (with them, choices are on predictions; see :meth:`_estimate`).
        """
        meeting = [r["psnr"] for r in tried if self._estimate(r) >= target]
        bar = max(meeting) + REFINE_GAIN_DB if meeting else -np.inf
        shortfall = min(1.0, float(np.median([self._estimate(r) / r["predicted_speedup"] for r in tried])))
        aim = self._aim(target, fastest, shortfall)
        model = QualityModel(tried)
        picks = best_for_target(self.candidates, aim, count, model, exclude={r["key"] for r in tried})
        return [c for c in picks if model(c) > bar]

    def _fastest_reaching(self, target: float) -> float:
        fastest = max(self.candidates, key=lambda c: c.predicted_speedup)
        if fastest.predicted_speedup < target:
            raise ValueError(
                f"cache_ratio={target:g} cannot be reached on this model and setting: the fastest config "
                f"({self._describe(fastest)}) is predicted at {fastest.predicted_speedup:.3f}x from measured "
                f"block times; ask for at most {fastest.predicted_speedup:.2f}"
            )
        return fastest.predicted_speedup

    def _for_quality(self, run_videos: RunVideos, prompts_num: int) -> Dict[str, Any]:
        """Search the predicted Pareto front for the fastest config above the floor (by :meth:`_estimate`).

        Each round probes as many evenly spaced speeds of the open range as there are ranks
        (bisection on one process), keeping the floor's side of each. A probe at a speed runs the
        ``QUALITY_PROBE_WIDTH`` best-ranked configs predicted to reach it and passes if one of them
        stays above the floor: the ranking is a proxy, and a single config that happens to rank
        wrongly must not cut off every faster one.
        """
        floor = self.config.min_psnr
        front = self._on_main(lambda: _thin(pareto_front(self.candidates), step=0.02))
        low, high = 0, len(front) - 1
        best: Optional[Dict[str, Any]] = None
        seen: List[Dict[str, Any]] = []
        probes_per_round = self.context.world_size if not self.sequence_parallel else 1
        while low <= high:
            count = min(probes_per_round, high - low + 1)
            indices = sorted({low + (high - low) * (k + 1) // (count + 1) for k in range(count)})
            probes = self._on_main(lambda: self._probes(front, indices, seen))
            picks = list({c.key(): c for probe in probes for c in probe}.values())
            records = {r["key"]: r for r in self._run_candidates(picks, run_videos, prompts_num,
                                                                   f"search PSNR >= {floor:g} dB")}
            seen += records.values()
            passing = [i for i, probe in zip(indices, probes) if any(records[c.key()]["psnr"] >= floor for c in probe)]
            failing = [i for i in indices if i not in passing]
            for record in records.values():
                if record["psnr"] >= floor and (best is None or self._estimate(record) > self._estimate(best)):
                    best = record
            if passing:
                low = max(low, max(passing) + 1)
            above = [i for i in failing if i >= low]
            if above:
                high = min(above) - 1
        if best is None:
            top = max(seen, key=lambda r: r["psnr"])
            raise ValueError(
                f"min_psnr={floor:g} dB cannot be reached with any caching on this model and setting: the "
                f"least aggressive config tried ({top['key']}, {top['measured_speedup']:.3f}x) gave "
                f"{top['psnr']:.2f} dB; ask for at most {np.floor(top['psnr'] * 10) / 10:.1f}"
            )
        return self._confirm(best, run_videos)  # the speed it is reported with

    def _probes(self, front: List[Candidate], indices: List[int], seen: List[Dict[str, Any]]) -> List[List[Candidate]]:
        """Rank 0: for each probed speed, the best configs reaching it, re-ranked by the runs seen so far."""
        model = QualityModel(seen)
        return [best_for_target(self.candidates, front[i].predicted_speedup, QUALITY_PROBE_WIDTH, model)
                for i in indices]

    @staticmethod
    def _describe(candidate: Candidate) -> str:
        c = candidate.config
        return (
            f"blocks {c.cache_block_start}..{c.cache_block_end}, from step {c.cache_step_start}, "
            f"interval {c.cache_step_interval}"
        )


def _difference(videos: List[np.ndarray], references: List[np.ndarray]) -> Optional[str]:
    """How ``videos`` differ from ``references`` beyond run-to-run noise, or ``None`` when they are the same."""
    if len(videos) != len(references):
        return f"{len(videos)} videos, the references {len(references)}"
    for i, (video, reference) in enumerate(zip(videos, references)):
        if video.shape != reference.shape:
            return f"video {i} has shape {video.shape}, its reference {reference.shape}"
    worst = max(mse(v, r) for v, r in zip(videos, references))
    if worst > 0 and psnr_from_mse(worst) < NONDETERMINISM_FLOOR_DB:
        return f"PSNR {psnr_from_mse(worst):.1f} dB between them"
    return None


def _thin(front: List[Candidate], step: float) -> List[Candidate]:
    """Keep front points at least ``step`` (relative) apart in predicted speedup, the lowest proxy of each."""
    kept: List[Candidate] = []
    for candidate in front:  # slowest first, proxy increasing
        if kept and candidate.predicted_speedup < kept[-1].predicted_speedup * (1 + step):
            continue
        kept.append(candidate)
    return kept


def _settled(ratios: List[float], target: Optional[float]) -> bool:
    """Whether the confirmation pairs so far agree (see ``CacheSearch._confirm``)."""
    if len(ratios) < 2:
        return False
    return target is None or all(r >= target for r in ratios) or all(r < target for r in ratios)
