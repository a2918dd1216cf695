"""The cache search: calibrate once, rank every config, run only the best few for real.

1. One uncached run of the user's callable gives the reference videos (kept in
   memory as decoded uint8 frames) and the measurements of
   :mod:`ditcache.search.recording`.
2. Every config (all knobs) gets a predicted speedup and a predicted error
   (:mod:`ditcache.search.candidates`).
3. The strategy (:mod:`ditcache.search.strategy`) decides which configs to run
   and which one wins; the runner (:mod:`ditcache.search.runner`) makes the runs
   and hands back typed records; under torchrun, :mod:`ditcache.search.ranks`
   has rank 0 decide for every rank.

``schedule_kind`` says which configs are candidates: block regions, component
schedules (the calibration then also measures every sub-layer, in one more
uncached run), or both, decided between on measured speed and PSNR alike.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Dict, Iterator

from ..cache.components import active_components, known_components
from ..config import DitCacheConfig, DitCacheSearchConfig, check_int
from .candidates import enumerate_candidates, enumerate_component_candidates
from .journal import Journal, pipeline_modules, weights_fingerprint
from .ranks import Ranks
from .records import RunRecord
from .report import SearchReport, logger
from .runner import RunVideos, Runner
from .sensitivity import SensitivityProfile, measure
from .strategy import Strategy


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
        self.ranks = Ranks(sequence_parallel)

    @contextmanager
    def _adaptor_kept(self) -> Iterator[None]:
        """Leave the adaptor's config and on/off state as they were, whatever the runs set."""
        saved_config, saved_enabled = self.adaptor.cache_config, self.adaptor.enabled
        try:
            yield
        finally:
            self.adaptor.set_cache_config(saved_config)
            if not saved_enabled:
                self.adaptor.disable()

    def _schedule_kind(self) -> str:
        """The kind of configs searched: ``schedule_kind``, unless the blocks' sub-layers are unknown.

        Then ``"component"`` is a ``ValueError`` naming the block class and ``"any"`` searches block
        regions only, with a warning; both before any run.
        """
        wanted = self.config.schedule_kind
        if wanted == "region":
            return wanted
        blocks = self.adaptor.blocks
        try:
            for index, block in enumerate(blocks):
                known_components(block, index)
            if not active_components(blocks):
                raise ValueError(f"the blocks ({type(blocks[0]).__name__}) have none of their known sub-layers")
        except ValueError as err:
            if wanted == "component":
                raise ValueError(f"schedule_kind='component' cannot be searched: {err}") from None
            message = f"schedule_kind='any': {err}; searching block regions only"
            logger.warning(message)
            warnings.warn(message, stacklevel=4)
            return "region"
        return wanted

    def _runner(self, run_videos: RunVideos, prompts_num: int, kind: str = "region") -> Runner:
        if not callable(run_videos):
            raise ValueError(f"run_pipeline_and_save_videos must be callable, got {type(run_videos).__name__}")
        if isinstance(prompts_num, bool) or not isinstance(prompts_num, int) or prompts_num < 1:
            raise ValueError(f"prompts_num must be an int >= 1, got {prompts_num!r}")
        journal_dir = self.config.journal_dir if self.ranks.is_main else None
        journal = Journal(None if journal_dir is None else str(journal_dir), self._inputs(prompts_num))
        return Runner(self.adaptor, self.config, run_videos, prompts_num, journal, self.ranks,
                      components=kind != "region")

    def profile(self, run_videos: RunVideos, prompts_num: int = 1, every: int = 1) -> SensitivityProfile:
        """Calibrate and probe every ``every``-th step: where caching hurts, by block and step."""
        check_int("every", every, 1)
        runner = self._runner(run_videos, prompts_num)
        with self._adaptor_kept():
            calibration = runner.calibrate()
            sensitivity = measure(runner, calibration, every)
        # rank 0 holds the calibration's sketches (the other ranks only its references)
        return self.ranks.decide(lambda: SensitivityProfile.of(calibration, sensitivity, runner.full_runs))

    def run(self, run_videos: RunVideos, prompts_num: int = 1) -> SearchReport:
        started = time.perf_counter()
        kind = self._schedule_kind()
        runner = self._runner(run_videos, prompts_num, kind)
        journal = runner.journal
        with self._adaptor_kept():
            calibration = runner.calibrate()
            every = self.config.sensitivity_every
            sensitivity = measure(runner, calibration, every) if every else None
            candidates = []
            if self.ranks.is_main:
                weights = None if sensitivity is None else sensitivity.weights()
                if kind != "component":
                    candidates += enumerate_candidates(calibration, self.config.cache_step_interval,
                                                       self.config.reuse_modes, step_weights=weights)
                if kind != "region":
                    candidates += enumerate_component_candidates(calibration, self.config.reuse_modes, weights)
            strategy = Strategy(candidates, self.config, runner, self.ranks.decide, self.ranks.width)
            chosen = strategy.for_speedup() if self.config.min_psnr is None else strategy.for_quality()
        report = SearchReport(
            goal=self.config.goal,
            # the timesteps searched on, so a region config is refused on another schedule
            config=replace(chosen.config, timesteps=runner.schedule)
            if runner.schedule is not None and isinstance(chosen.config, DitCacheConfig) else chosen.config,
            chosen=chosen,
            runs=[RunRecord.from_dict(record) for record in journal.runs.values()],
            full_runs=runner.full_runs,
            resumed_runs=runner.resumed,
            seconds=time.perf_counter() - started,
            calibration={} if calibration is None else {  # None on a sequence-parallel helper rank
                "seconds": calibration.full_seconds,
                "block_share": sum(calibration.block_seconds) / calibration.full_seconds,
                "block_seconds": calibration.block_seconds,
                "candidates_ranked": len(candidates),
                "processes": self.ranks.world_size,
                **({} if sensitivity is None else {"step_sensitivity": sensitivity.to_dict()}),
                **({} if calibration.components is None else {
                    "schedule_kind": kind, "blocks": len(self.adaptor.blocks),
                    "component_seconds": _component_seconds(calibration)}),
            },
        )
        if self.ranks.is_main:
            logger.info("search done: %s", report.summary())
        return report

    def _inputs(self, prompts_num: int) -> Dict[str, Any]:
        """What the journal is keyed by before any run: the blocks, steps and prompts, and the weights.

        Not the goal nor the kind of configs searched: searches of every goal and kind share a journal
        (their runs' keys never collide; a component search adds the sub-layer measurement to a region
        search's calibration)."""
        if not self.ranks.is_main or self.config.journal_dir is None:
            return {}
        modules = pipeline_modules(self.adaptor.pipeline, self.adaptor.blocks)
        return {
            "blocks": len(self.adaptor.blocks),
            "num_sampling_steps": self.config.num_sampling_steps,
            "prompts_num": prompts_num,
            "weights": weights_fingerprint(modules),
        }


def _component_seconds(calibration: Any) -> Dict[str, float]:
    """Each sub-layer's measured time over a run, summed over the blocks."""
    totals: Dict[str, float] = {}
    for (_, name), seconds in calibration.component_errors().seconds.items():
        totals[name] = totals.get(name, 0.0) + seconds
    return totals
