"""What the search runs and what it picks: decisions over run records, with no timing of its own.

A speedup search screens the ranking's best config predicted to reach the
target together with its neighbouring step starts (quality is irregular in the
step start, and the neighbours show how the ranking's favourite region behaves
around it), re-ranks everything with what those runs measured
(:class:`~ditcache.search.ranking.QualityModel`) and runs a few more while one
is predicted to beat the best found. The best-scoring record predicted to meet
the target then has its speed confirmed by interleaved pairs; a config that
falls short is set aside and the next one confirmed. Predictions are scaled by
a measured shortfall only when two confirmations agree on one (the milder of
them: noise only ever slows a run), never from one measurement.

With both block regions and component schedules among the candidates, the
first round screens each kind's best as if it were searched alone: their
proxies are in different units, and only real runs compare them.

A quality-floor search probes the predicted Pareto front for the fastest
config above the floor, then runs faster configs while the runs it made predict
one of them above the floor (see :meth:`Strategy.for_quality`).

The strategy makes runs only through a :class:`Runs` (in the search, a
:class:`~ditcache.search.runner.Runner`; in tests, a scripted one), and takes
every decision through ``decide`` (in the search, on rank 0 for every rank).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from ..config import DitCacheConfig, DitCacheSearchConfig
from .candidates import Candidate, best_for_target, describe, family, pareto_front, schedule_kind
from .ranking import QualityModel
from .records import RunRecord

QUALITY_PROBE_WIDTH = 2  # configs run per probed speed in a quality-floor search
REFINE_ROUNDS = 3  # rounds of a speedup search after the first, one config per process each
QUALITY_REFINE_ROUNDS = 5  # rounds of a quality-floor search after its probes of the front
REFINE_GAIN_DB = 0.5  # a further config is run only if predicted this much above the best found
FASTER_BY = 0.02  # a quality-floor search's further configs must be predicted this much faster than its best
CONFIRM_ATTEMPTS = 3  # configs predicted to meet a target whose speed is measured by pairs before giving up


class Runs(Protocol):
    def run(self, picks: List[Candidate], description: str) -> List[RunRecord]: ...

    def confirm(self, record: RunRecord, target: Optional[float]) -> RunRecord: ...


def _now(decision: Callable[[], Any]) -> Any:
    return decision()


def shortfall(confirmed: Sequence[RunRecord]) -> float:
    """How far confirmed speeds fell short of their predictions (at most 1): 1 until two confirmations
    show a shortfall, then the milder of what they showed, since noise only ever slows a run."""
    ratios = [r.confirmed_speedup / r.predicted_speedup for r in confirmed if r.confirmed_speedup is not None]
    if len(ratios) < 2:
        return 1.0
    return min(1.0, max(ratios))


def neighbours(candidates: Sequence[Candidate], pick: Candidate, aim: float) -> List[Candidate]:
    """``pick``'s schedule one step start earlier and later (same region, interval, reuse mode and end),
    where predicted to reach ``aim`` (none for a component schedule)."""
    if not isinstance(pick.config, DitCacheConfig):
        return []
    wanted = {pick.config.cache_step_start - 1, pick.config.cache_step_start + 1}
    same = (pick.config.cache_block_start, pick.config.cache_num_blocks, pick.config.cache_step_interval,
            pick.config.reuse, pick.config.cache_step_end)
    found = [c for c in candidates
             if isinstance(c.config, DitCacheConfig) and c.config.cache_step_start in wanted and c.predicted_speedup >= aim
             and (c.config.cache_block_start, c.config.cache_num_blocks, c.config.cache_step_interval,
                  c.config.reuse, c.config.cache_step_end) == same]
    return sorted(found, key=lambda c: c.proxy)


def screening_picks(candidates: Sequence[Candidate], aim: float, count: int) -> List[Candidate]:
    """The first round: the best-ranked config reaching ``aim`` and its neighbouring step starts, then
    the best of other families (:func:`best_for_target`) while slots are left; ``count`` of each kind
    (block region, component schedule) when both are candidates."""
    kinds: Dict[str, List[Candidate]] = {}
    for candidate in candidates:
        kinds.setdefault(schedule_kind(candidate.config), []).append(candidate)
    if len(kinds) > 1:
        return [pick for group in kinds.values() for pick in screening_picks(group, aim, count)]
    ranked = best_for_target(list(candidates), aim, count)
    if not ranked:
        return []
    picks = [ranked[0]] + neighbours(candidates, ranked[0], aim)[: count - 1]
    taken = {c.key() for c in picks}
    return (picks + [c for c in ranked[1:] if c.key() not in taken])[:count]


class Strategy:
    """One search's decisions over the configs ``candidates`` (rank 0's; empty on the other ranks)."""

    def __init__(self, candidates: List[Candidate], config: DitCacheSearchConfig, runs: Runs,
                 decide: Callable[[Callable[[], Any]], Any] = _now, width: int = 1) -> None:
        self.candidates, self.config, self.runs, self.decide, self.width = candidates, config, runs, decide, width

    def estimate(self, record: RunRecord) -> float:
        """The speed choices are made on before a winner is confirmed.

        With confirmation pairs, the prediction: it comes from block times measured within one run,
        so it carries no run-to-run noise, where a screening run's timing is divided by an uncached
        time taken minutes earlier. Without them, the screening timing, the only measurement there is.
        """
        return record.predicted_speedup if self.config.confirm_pairs else record.measured_speedup

    def aim(self, target: float, fastest: float, short: float = 1.0) -> float:
        """The predicted speedup picks must reach: the target with ``speed_margin`` over it, raised by a
        measured shortfall ``short`` (at most 1), but no faster than the fastest config."""
        return min(target * (1 + self.config.speed_margin) / short, fastest)

    # --- a speedup target ----------------------------------------------------------------

    def for_speedup(self) -> RunRecord:
        target = self.config.cache_ratio
        fastest = self.decide(lambda: self._fastest_reaching(target))
        description = f"search >= {target:g}x"
        aim = self.aim(target, fastest)
        tried = self.runs.run(self.decide(lambda: screening_picks(self.candidates, aim, self.config.candidates_to_run)),
                              description)
        for _ in range(REFINE_ROUNDS):
            picks = self.decide(lambda: self._promising(tried, target, fastest))
            if not picks:
                break
            tried += self.runs.run(picks, description)
        failed: Dict[str, RunRecord] = {}
        for _ in range(2 * CONFIRM_ATTEMPTS):  # each round measures a winner or runs configs aimed anew
            if len(failed) == CONFIRM_ATTEMPTS:
                break
            short = shortfall(list(failed.values()))
            meeting = [r for r in tried if r.key not in failed and self.estimate(r) * short >= target]
            if not meeting:  # aim higher by the shortfall measured, and run the best configs there
                aim = self.aim(target, fastest, short)
                picks = self.decide(lambda: best_for_target(self.candidates, aim, self.width, QualityModel(tried),
                                                            exclude={r.key for r in tried}))
                if not picks:
                    break
                tried += self.runs.run(picks, description)
                continue
            best = max(meeting, key=lambda r: (r.psnr, r.ssim))
            record = self.runs.confirm(best, target)
            tried = [record if r.key == record.key else r for r in tried]
            if record.speedup >= target:
                return record
            failed[record.key] = record
        found = [r.speedup for r in failed.values()] or [self.estimate(r) for r in tried]
        raise ValueError(
            f"cache_ratio={target:g} was not reached as measured: the best measured speedup was {max(found):.3f}x "
            f"(predictions were off by timing noise or overheads); ask for at most {max(found):.2f}"
        )

    def _promising(self, tried: List[RunRecord], target: float, fastest: float) -> List[Candidate]:
        """Configs not yet run that the runs so far predict to beat the best one meeting the target.

        Without confirmation pairs the predicted speed is corrected by how far short of their
        predictions the screening runs measured (with them, choices are on predictions).
        """
        meeting = [r.psnr for r in tried if self.estimate(r) >= target]
        bar = max(meeting) + REFINE_GAIN_DB if meeting else -np.inf
        short = min(1.0, float(np.median([self.estimate(r) / r.predicted_speedup for r in tried])))
        model = QualityModel(tried)
        picks = best_for_target(self.candidates, self.aim(target, fastest, short), self.width, model,
                                exclude={r.key for r in tried})
        return [c for c in picks if model(c) > bar]

    def _fastest_reaching(self, target: float) -> float:
        fastest = max(self.candidates, key=lambda c: c.predicted_speedup)
        if fastest.predicted_speedup < target:
            raise ValueError(
                f"cache_ratio={target:g} cannot be reached on this model and setting: the fastest config "
                f"({describe(fastest.config, self.config.dit_block_num or 0)}) is predicted at "
                f"{fastest.predicted_speedup:.3f}x from measured block and sub-layer times; ask for at most "
                f"{fastest.predicted_speedup:.2f}"
            )
        return fastest.predicted_speedup

    # --- a quality floor -----------------------------------------------------------------

    def for_quality(self) -> RunRecord:
        """The fastest config above the floor (by :meth:`estimate`), searched on the predicted Pareto front.

        Each round probes as many evenly spaced speeds of the open range as there are ranks
        (bisection on one process), keeping the floor's side of each. A probe at a speed runs the
        ``QUALITY_PROBE_WIDTH`` best-ranked configs predicted to reach it and passes if one of them
        stays above the floor: the ranking is a proxy, and a single config that happens to rank
        wrongly must not cut off every faster one.
        """
        floor = self.config.min_psnr
        front = self.decide(lambda: _thin(pareto_front(self.candidates), step=0.02))
        low, high = 0, len(front) - 1
        best: Optional[RunRecord] = None
        seen: List[RunRecord] = []
        while low <= high:
            count = min(self.width, high - low + 1)
            indices = sorted({low + (high - low) * (k + 1) // (count + 1) for k in range(count)})
            probes = self.decide(lambda: self._probes(front, indices, seen))
            picks = list({c.key(): c for probe in probes for c in probe}.values())
            records = {r.key: r for r in self.runs.run(picks, f"search PSNR >= {floor:g} dB")}
            seen += records.values()
            passing = [i for i, probe in zip(indices, probes) if any(records[c.key()].psnr >= floor for c in probe)]
            failing = [i for i in indices if i not in passing]
            for record in records.values():
                if record.psnr >= floor and (best is None or self.estimate(record) > self.estimate(best)):
                    best = record
            if passing:
                low = max(low, max(passing) + 1)
            above = [i for i in failing if i >= low]
            if above:
                high = min(above) - 1
        for _ in range(QUALITY_REFINE_ROUNDS):  # the front is not monotone across families: what the runs predict
            picks = self.decide(lambda: self._faster_above(seen, best, floor))
            if not picks:
                break
            records = self.runs.run(picks, f"search PSNR >= {floor:g} dB")
            seen += records
            for record in records:
                if record.psnr >= floor and (best is None or self.estimate(record) > self.estimate(best)):
                    best = record
        if best is None:
            top = max(seen, key=lambda r: r.psnr)
            raise ValueError(
                f"min_psnr={floor:g} dB cannot be reached with any caching on this model and setting: the "
                f"least aggressive config tried ({top.key}, {top.measured_speedup:.3f}x) gave "
                f"{top.psnr:.2f} dB; ask for at most {np.floor(top.psnr * 10) / 10:.1f}"
            )
        return self.runs.confirm(best, None)  # the speed it is reported with

    def _faster_above(self, seen: List[RunRecord], best: Optional[RunRecord], floor: float) -> List[Candidate]:
        """Configs faster than the best found and not run yet: the fastest the runs so far predict above the
        floor (its run will tell), and the best-predicted of each family no run has tried (one family's
        failures at a speed must not rule out another family's faster configs)."""
        model = QualityModel(seen)
        least = 0.0 if best is None else self.estimate(best) * (1 + FASTER_BY)
        ran = {r.key for r in seen}
        hopeful = [c for c in self.candidates
                   if c.predicted_speedup >= least and c.key() not in ran and model(c) >= floor]
        picks = sorted(hopeful, key=lambda c: -c.predicted_speedup)[: self.width]
        tried = {family(r.config) for r in seen} | {family(c.config) for c in picks}
        for candidate in best_for_target(self.candidates, least, len(self.candidates), model, exclude=ran):
            if family(candidate.config) not in tried:
                picks.append(candidate)
                tried.add(family(candidate.config))
        return picks

    def _probes(self, front: List[Candidate], indices: List[int], seen: List[RunRecord]) -> List[List[Candidate]]:
        """For each probed speed, the best configs reaching it, re-ranked by the runs seen so far."""
        model = QualityModel(seen)
        return [best_for_target(self.candidates, front[i].predicted_speedup, QUALITY_PROBE_WIDTH, model)
                for i in indices]


def _thin(front: List[Candidate], step: float) -> List[Candidate]:
    """Keep front points at least ``step`` (relative) apart in predicted speedup, the lowest proxy of each."""
    kept: List[Candidate] = []
    for candidate in front:  # slowest first, proxy increasing
        if kept and candidate.predicted_speedup < kept[-1].predicted_speedup * (1 + step):
            continue
        kept.append(candidate)
    return kept
