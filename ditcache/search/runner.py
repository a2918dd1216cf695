"""The search's runs of the user's callable: the calibration, screening runs and confirmation pairs.

Every full run the search makes goes through a :class:`Runner`, which scores it
against the references, journals it at once (an interruption loses only the run
under way), counts it, and returns a :class:`~ditcache.search.records.RunRecord`.
A run's time is its steady time (:func:`~ditcache.timing.steady_seconds`): the
model's forward passes are timed, each at the median of the passes its cache
config treats alike, so a stretch slowed by another process does not swing a
screening timing or a confirmation pair. What to run is not decided here
(:mod:`ditcache.search.strategy`).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..component_calibration import calibrate_components
from ..component_config import ComponentCacheConfig
from ..config import DitCacheConfig, DitCacheSearchConfig
from ..steps import ScheduleWatch
from ..metrics import check_video, compare_videos, mse, psnr_from_mse
from ..timing import BlockTimer, module_device, steady_seconds, timed
from .candidates import Candidate
from .journal import Journal
from .ranks import Ranks
from .recording import Calibration, CalibrationRecorder
from .records import RunRecord, enough_pairs
from .report import logger

RunVideos = Callable[[Any], List[np.ndarray]]
CacheConfig = Union[DitCacheConfig, ComponentCacheConfig, None]
NONDETERMINISM_FLOOR_DB = 45.0  # below this, two uncached runs are not "the same videos"


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


class Runner:
    """Makes the search's runs on an attached adaptor and returns what they measured.

    ``components=True``: the calibration also measures the sub-layers, for component schedules.
    """

    def __init__(self, adaptor: Any, config: DitCacheSearchConfig, run_videos: RunVideos, prompts_num: int,
                 journal: Journal, ranks: Ranks, components: bool = False) -> None:
        self.adaptor, self.config, self.run_videos, self.prompts_num = adaptor, config, run_videos, prompts_num
        self.journal, self.ranks, self.components = journal, ranks, components
        self.device = module_device(adaptor.blocks[0])
        self.full_runs = 0
        self.resumed = 0
        self._journalled: set = set()  # runs of an interrupted search, not yet counted
        self.calibration: Optional[Calibration] = None
        self.schedule: Optional[Tuple[float, ...]] = None  # the callable's timesteps, when its scheduler tells them
        self.runs_made = False
        self._show = ranks.is_main

    def _passes_timed(self) -> Tuple[Any, float, List[float], List[Optional[int]]]:
        """One run: its videos, wall seconds, and the seconds and step of each forward pass of the model."""
        run = lambda: self.run_videos(self.adaptor.pipeline)  # noqa: E731
        owner = self.adaptor.chain.owner
        with ScheduleWatch() as watch:
            if not isinstance(owner, nn.Module):  # blocks held by the pipeline itself: no model call to time
                videos, seconds = timed(run, self.device)
                passes, at = [], []
            else:
                with BlockTimer([owner]) as timer:
                    videos, seconds = timed(run, self.device)
                passes, at = timer.calls[0], timer.call_steps[0]
        self._note_schedule(watch.schedule())
        return videos, seconds, passes, at

    def _timed(self, config: CacheConfig = None) -> Tuple[Any, float]:
        """One run with ``config`` (or uncached) as set: its videos and steady seconds."""
        videos, seconds, passes, at = self._passes_timed()
        return videos, steady_seconds(seconds, passes, [step_kind(config, step) for step in at])

    def _note_schedule(self, schedule: Optional[Tuple[float, ...]]) -> None:
        """Keep the timesteps the callable samples (the config is stamped with them); a change is an error."""
        if self.runs_made and schedule != self.schedule:
            raise ValueError(
                f"the callable's runs changed timesteps during the search (first {self.schedule}, now {schedule}); "
                "the cache is searched for one schedule: make every run use the same timesteps"
            )
        self.schedule, self.runs_made = schedule, True

    # --- calibration -------------------------------------------------------------------

    def calibrate(self) -> Calibration:
        """Rank 0's uncached reference (from the journal, or measured), known to every rank that needs it."""
        ranks = self.ranks
        loaded = self.journal.load_calibration() if ranks.is_main else None
        if ranks.share(loaded is not None):
            loaded = self._check_references(loaded)
        self._journalled = set(self.journal.runs)
        if ranks.share(loaded is None):
            if ranks.is_main:
                calibration = self._measure_calibration()
            elif ranks.sequence_parallel:  # the other ranks take part in rank 0's runs
                for _ in range(self._calibration_runs()):
                    self._timed()
                calibration = None
            else:  # rank 1 makes the clean run while rank 0 makes the instrumented one
                ranks.gather(self._timed() if ranks.rank == 1 else None)
                calibration = None
            runs = self._calibration_runs()
        else:  # only rank 0 holds the journal's calibration
            calibration, runs = loaded, ranks.share(None if loaded is None else loaded.calls)
            self.resumed += runs
            if ranks.share(self.components and loaded is not None and loaded.components is None):
                runs += self._add_components(calibration)
        self.full_runs += runs
        if not ranks.is_main and ranks.spread:
            # Spread runs are scored on every rank: they need the references and the time to beat.
            videos, seconds = ranks.share(None)
            calibration = Calibration.reference_only(videos, seconds, self.config.num_sampling_steps)
        elif ranks.spread:
            ranks.share((calibration.videos, calibration.full_seconds))
        self.calibration = calibration
        return calibration

    def _check_references(self, loaded: Optional[Calibration]) -> Optional[Calibration]:
        """``loaded`` if one uncached run makes its reference videos again, else ``None`` (the journal set aside).

        The weights and counts in the journal's key do not cover what the callable does (its
        prompts, seed, guidance, scheduler, ...): the videos it makes do.
        """
        self.adaptor.disable()
        videos = None
        if self.ranks.makes_runs:
            videos = self._timed()[0]
            self.full_runs += 1
        if not self.ranks.is_main:
            return None
        videos = check_videos(videos, None, self.prompts_num)
        differs = _difference(videos, loaded.videos)
        if differs is None:
            return loaded
        self.journal.start_fresh(f"the callable's uncached videos are not its reference videos ({differs})")
        return None

    def _measure_calibration(self) -> Calibration:
        """The instrumented uncached run, then a clean one for timing and a determinism check."""
        self.adaptor.disable()
        with CalibrationRecorder(self.adaptor.blocks) as recorder:
            videos, seconds, passes, _ = self._passes_timed()
        videos = check_videos(videos, None, self.prompts_num)
        streams = recorder.stream_names()
        if self.config.num_hidden_states != len(streams):
            raise ValueError(
                f"num_hidden_states={self.config.num_hidden_states}, but the blocks carry {len(streams)} "
                f"streams {list(streams)}"
            )
        calibration = recorder.result([v.copy() for v in videos], seconds, self.config.num_sampling_steps, passes)
        # The first run pays for warm-up and the recording; a clean second run gives the time to beat
        # and shows whether the callable makes the same videos every time. When the ranks each hold the
        # model, rank 1 makes it at the same time, under the same conditions as the spread candidate
        # runs, and the check then also covers its device.
        if self.ranks.spread:
            again, clean_seconds = self.ranks.gather(None)[1]
        else:
            again, clean_seconds = self._timed()
        again = check_videos(again, calibration.videos, self.prompts_num)
        _check_deterministic(again, calibration.videos)
        calibration.rebase(clean_seconds)
        if self.components:
            calibration.components = self._measure_components(calibration.full_seconds)
        calibration.calls = self._calibration_runs()
        self.journal.save_calibration(calibration)
        logger.info(
            "calibration: %.2f s a run, blocks %.1f%% of it, %d forward passes per step",
            calibration.full_seconds, 100 * sum(calibration.block_seconds) / calibration.full_seconds,
            calibration.passes,
        )
        return calibration

    def _add_components(self, calibration: Optional[Calibration]) -> int:
        """The sub-layer measurement added to a journal's calibration made for block regions only (its runs
        stand: a journal serves searches of every kind); the runs it cost."""
        if self.ranks.is_main:
            calibration.components = self._measure_components(calibration.full_seconds)
            calibration.calls += 1
            self.journal.update_calibration(calibration)
        elif self.ranks.sequence_parallel:
            self._timed()
        return 1

    def _calibration_runs(self) -> int:
        return 3 if self.components else 2

    def _measure_components(self, full_seconds: float) -> dict:
        """One more uncached run, recording every sub-layer's output error over steps and its own time.

        Its own run, so that neither the block times nor the sub-layer times carry the other's recording.
        Consecutive reuses of a sub-layer are looked at up to ``cache_step_interval - 1`` steps apart,
        as a region's reuse steps are.
        """
        steps = self.config.num_sampling_steps
        lookahead = min(self.config.cache_step_interval - 1, steps - 1)
        errors = calibrate_components(self.adaptor.blocks, lambda: self.run_videos(self.adaptor.pipeline), steps,
                                      lookahead, time_components=True)
        logger.info("calibration: sub-layers %s, %.1f%% of a run", ", ".join(errors.components),
                    100 * sum(errors.seconds.values()) / full_seconds)
        return errors.state_dict()

    # --- candidate runs ----------------------------------------------------------------

    def run(self, picks: List[Candidate], description: str) -> List[RunRecord]:
        """Run ``picks`` for real (spread over the ranks where each holds the model); every rank gets every record."""
        ranks = self.ranks
        # a journalled run's measurements, under this search's ranking (its weights may differ from the run's)
        done = ranks.decide(lambda: {c.key(): RunRecord.from_dict(self.journal.runs[c.key()]).ranked_as(c)
                                     for c in picks if c.key() in self.journal.runs})
        # runs found in the journal count once, as resumed; a config run earlier in this search costs nothing again
        resumed = sum(record.runs for key, record in done.items() if key in self._journalled)
        self._journalled -= set(done)
        self.resumed += resumed
        self.full_runs += resumed
        mine = ranks.mine([candidate for candidate in picks if candidate.key() not in done])
        records = []
        with tqdm(total=len(mine), desc=description, disable=not self._show, leave=False) as bar:
            for candidate in mine:
                record = self._screen(candidate)
                if record is not None:
                    self.journal.add_run(record.to_dict())  # at once: an interruption loses only the run under way
                records.append(record)
                bar.update()
        records = ranks.collect(records)
        for record in records:
            if record.key not in self.journal.runs:
                self.journal.add_run(record.to_dict())
        by_key = {**done, **{record.key: record for record in records}}
        return [by_key[candidate.key()] for candidate in picks]

    def _screen(self, candidate: Candidate) -> Optional[RunRecord]:
        """One real run of ``candidate``, scored against the references and timed."""
        self.adaptor.set_cache_config(candidate.config)
        videos, seconds = self._timed(candidate.config)
        self.full_runs += 1
        if self.calibration is None:  # a sequence-parallel helper rank: rank 0 scores the run
            return None
        videos = check_videos(videos, self.calibration.videos, self.prompts_num)
        record = RunRecord.of(candidate, seconds, self.calibration.full_seconds,
                              compare_videos(videos, self.calibration.videos))
        logger.info("candidate %s: predicted %.3fx, measured %.3fx, PSNR %.2f dB, SSIM %.4f, MSE %.3f", record.key,
                    record.predicted_speedup, record.measured_speedup, record.psnr, record.ssim, record.mse)
        return record

    def confirm(self, record: RunRecord, target: Optional[float]) -> RunRecord:
        """``record`` with its speed measured by interleaved uncached / cached pairs.

        Pairs are added until the confirmed speed surely clears ``target`` or surely misses it
        (:func:`~ditcache.search.records.enough_pairs`), at least two and at most ``confirm_pairs``;
        with no target (a quality floor's winner) two pairs give the speed it is reported with. Pairs
        read back from the journal count; only rank 0 (or every rank, sequence-parallel) times them.
        """
        most = self.config.confirm_pairs
        if most == 0 or enough_pairs(record, target, most):
            return record
        confirmed = record
        if self.ranks.makes_runs:  # spread ranks idle: rank 0 holds the whole model
            with tqdm(total=most, initial=len(record.pairs), desc=f"confirm {record.key}", disable=not self._show,
                      leave=False) as bar:
                while True:
                    self.adaptor.disable()
                    plain = self._timed()[1]
                    self.adaptor.set_cache_config(record.config)
                    confirmed = confirmed.with_pair(plain, self._timed(record.config)[1])
                    self.full_runs += 2
                    bar.update()
                    settled = enough_pairs(confirmed, target, most)
                    if self.ranks.sequence_parallel:  # every rank takes part in every pair: rank 0's timings decide
                        settled = self.ranks.share(settled)
                    if settled:
                        break
        if self.ranks.is_main:
            self.journal.add_run(confirmed.to_dict())
            logger.info("candidate %s: measured %.3fx, confirmed %s", record.key, record.measured_speedup,
                        confirmed.describe_speed())
        return self.ranks.share(confirmed)


def step_kind(config: CacheConfig, step: Optional[int]) -> Hashable:
    """What a run with ``config`` does at ``step`` (its ``step_mode``): passes of one kind cost the same."""
    return "full" if config is None or step is None else config.step_mode(step)


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
