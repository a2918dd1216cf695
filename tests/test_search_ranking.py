"""Which configs the search runs: picks spread over families, re-ranked by what runs measured."""
import pytest
import torch

from ditcache import DitCacheConfig
from ditcache.search.candidates import Candidate, best_for_target, enumerate_candidates
from ditcache.search.recording import Calibration
from ditcache.search.ranking import QualityModel, proxy_db
from ditcache.search.records import RunRecord


def candidate(start, interval, block_start, blocks, proxy, speed=2.0, reuse="delta"):
    config = DitCacheConfig(cache_step_start=start, cache_step_interval=interval, cache_block_start=block_start,
                            cache_num_blocks=blocks, num_sampling_steps=20, reuse=reuse)
    return Candidate(config, speed, proxy)


def record(c, psnr):
    return RunRecord(c.config, c.predicted_speedup, c.proxy, 1.0, c.predicted_speedup, psnr, 0.9, 1.0)


# family (interval 4): the proxy rates all of its regions best; family (interval 3) comes after
FOUR = [candidate(0, 4, 0, n, proxy=1e-3 * (1 + 0.1 * n)) for n in range(4, 8)]
THREE = [candidate(0, 3, 0, n, proxy=1e-2 * (1 + 0.1 * n)) for n in range(8, 11)]
SLOW = candidate(0, 2, 0, 3, proxy=1e-9, speed=1.1)


def test_picks_are_spread_over_families_and_reach_the_target():
    picks = best_for_target(FOUR + THREE + [SLOW], target=1.5, count=3)
    assert SLOW not in picks  # predicted too slow, however good
    assert picks == [FOUR[0], THREE[0], FOUR[1]]  # each family's best in turn, best family first
    assert best_for_target(FOUR + THREE, 1.5, count=10) == [FOUR[0], THREE[0], FOUR[1], THREE[1], FOUR[2],
                                                             THREE[2], FOUR[3]]


def test_one_pick_per_region_and_interval_and_excluded_keys_skipped():
    later = candidate(5, 4, 0, 4, proxy=1.0)  # same region and interval as FOUR[0], worse proxy
    assert best_for_target([later, FOUR[0]], 1.5, count=5) == [FOUR[0]]
    assert best_for_target([later, FOUR[0]], 1.5, count=5, exclude={FOUR[0].key()}) == [later]


def test_without_runs_the_model_keeps_the_proxy_order():
    model = QualityModel([])
    assert model(FOUR[0]) == pytest.approx(proxy_db(FOUR[0].proxy))
    assert sorted(FOUR + THREE, key=model, reverse=True) == sorted(FOUR + THREE, key=lambda c: c.proxy)


def test_runs_re_rank_the_family_the_proxy_over_rated():
    # measured: interval 4 far worse than its proxy says, interval 3 far better
    runs = [record(FOUR[0], psnr=24.0), record(THREE[0], psnr=33.0)]
    model = QualityModel(runs)
    assert model(FOUR[0]) == pytest.approx(24.0, abs=2.5)  # its own run dominates its prediction
    assert model(THREE[1]) > model(FOUR[1])  # the unrun configs of each family follow their family's runs
    assert best_for_target(FOUR + THREE, 1.5, count=1, score=model, exclude={r.key for r in runs}) == [THREE[1]]


def test_identical_videos_do_not_break_the_model():
    model = QualityModel([record(FOUR[0], psnr=float("inf")), record(THREE[0], psnr=30.0)])
    assert model(FOUR[1]) < float("inf")


def test_sparing_the_last_steps_is_enumerated_priced_and_scored():
    steps, blocks = 12, 3
    generator = torch.Generator().manual_seed(0)
    sketches = [torch.randn(1, steps, blocks, 64, generator=generator) for _ in range(2)]
    calibration = Calibration([], 1.0, [0.3] * blocks, {}, steps, 1, *sketches)
    found = {c.key(): c for c in enumerate_candidates(calibration, 3, ("delta",))}
    plain, spared = found["s0-n3-t4-i2-delta"], found["s0-n3-t4-i2-delta-e11"]
    assert spared.config.cache_step_end == 11 and "s0-n3-t4-i2-delta-e9" in found
    # steps 4..11 reuse 5, 7, 9, 11; sparing step 11 gives up its reuse, and sparing step 10 as well (a
    # store step) changes nothing more: that schedule is enumerated once
    assert "s0-n3-t4-i2-delta-e10" not in found
    assert "s0-n3-t5-i2-delta-e11" not in found and "s0-n3-t5-i2-delta-e10" in found  # step 11: store at t5
    # nor is a schedule that reuses at no step
    assert "s0-n3-t10-i2-delta-e11" not in found and "s0-n3-t11-i2-delta" not in found
    assert 1 / plain.predicted_speedup == pytest.approx(1 - 0.9 * 4 / steps)
    assert 1 / spared.predicted_speedup == pytest.approx(1 - 0.9 * 3 / steps)
    residual = sketches[1][:, :, 2] - sketches[0][:, :, 0]
    scale = (sketches[1][:, :, 2].double() ** 2).sum(dim=(0, 2))
    def error(t):  # the residual of store step t - 1 used at reuse step t
        return float(((residual[:, t] - residual[:, t - 1]).double() ** 2).sum() / scale[t])

    assert plain.proxy == pytest.approx(sum(error(t) for t in (5, 7, 9, 11)), rel=1e-6)
    assert spared.proxy == pytest.approx(sum(error(t) for t in (5, 7, 9)), rel=1e-6)
    assert all(c.config.cache_step_end is None or c.config.cache_step_end in (9, 10, 11) for c in found.values())
