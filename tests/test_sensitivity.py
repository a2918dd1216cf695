"""The step sensitivity: probe runs, the weights they give, the weighted ranking, `ditcache profile`."""
import json
import math

import numpy as np
import pytest
import torch

from ditcache import DitCacheAdaptor, DitCacheSearchConfig, dit_cache
from ditcache.cli import main
from ditcache.metrics import compare_videos
from ditcache.search.candidates import enumerate_candidates
from ditcache.search.journal import CALIBRATION_FILE
from ditcache.search.recording import Calibration
from ditcache.search.sensitivity import StepSensitivity, probe_config, probe_steps
from test_search import STEPS, Calls, make_pipeline


def test_probe_steps_cover_the_last_step_and_skip_step_0():
    assert probe_steps(16, 1) == list(range(1, 16))
    assert probe_steps(16, 4) == [1, 5, 9, 13, 15]
    assert probe_steps(16, 5) == [1, 6, 11, 15]
    config = probe_config(7, 16, 8)
    reused = [t for t in range(16) if config.step_mode(t) == "reuse"]
    assert reused == [7] and config.cache_block_start == 0 and config.cache_num_blocks == 8


def test_weights_give_back_each_probe_and_interpolate_in_log_between():
    sensitivity = StepSensitivity(8, (1, 4, 7), (2.0, 200.0, 8.0), (1.0, 2.0, 4.0))
    weights = sensitivity.weights()
    assert weights[[1, 4, 7]] == pytest.approx([2.0, 100.0, 2.0])
    assert weights[2] == pytest.approx(2.0 * (100.0 / 2.0) ** (1 / 3))  # a third of the way, in log
    assert weights[0] == pytest.approx(2.0)  # before the first probe: the first probe's
    assert StepSensitivity.from_dict(json.loads(json.dumps(sensitivity.to_dict()))) == sensitivity


def test_a_search_with_probes_weighs_the_ranking_by_what_they_measured(tmp_path):
    pipe = make_pipeline()
    settings = dict(cache_ratio=1.3, num_sampling_steps=STEPS, sensitivity_every=3, journal_dir=str(tmp_path / "j"))
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(**settings))
    calls = Calls()
    config = adaptor.search(calls, prompts_num=2)
    report = adaptor.last_search
    sensitivity = StepSensitivity.from_dict(report.calibration["step_sensitivity"])
    assert sensitivity.steps == tuple(probe_steps(STEPS, 3))
    probes = {r.key: r for r in report.runs if r.config.cache_step_end == r.config.cache_step_start + 2
              and r.config.cache_num_blocks == 8}
    assert len(probes) >= len(sensitivity.steps)
    adaptor.remove()
    # each probe's damage is what its config really does to the videos, measured again here
    step = sensitivity.steps[2]
    with dit_cache(pipe, probe_config(step, STEPS, 8)):
        again = calls(pipe)
    reference = calls(pipe)
    assert compare_videos(again, reference)["mse"] == pytest.approx(sensitivity.damage[2], rel=1e-6)
    # the search ranked with the weights: each screened run's proxy is its weighted one, a predicted MSE
    calibration = Calibration.from_state_dict(
        torch.load(tmp_path / "j" / CALIBRATION_FILE, map_location="cpu", weights_only=True))
    weighted = {c.key(): c.proxy for c in enumerate_candidates(calibration, 4, ("delta", "taylor1"),
                                                               step_weights=sensitivity.weights())}
    plain = {c.key(): c.proxy for c in enumerate_candidates(calibration, 4, ("delta", "taylor1"))}
    screened = [r for r in report.runs if r.key not in probes]
    assert screened and config == report.config
    assert all(math.isclose(r.proxy, weighted[r.key]) and not math.isclose(r.proxy, plain[r.key]) for r in screened)
    # resumed: the probes are read back, nothing is run again but the reference check
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(**settings))
    again_calls = Calls()
    assert adaptor.search(again_calls, prompts_num=2) == config and again_calls.count == 1
    adaptor.remove()


def test_weighted_proxies_sum_each_reuse_steps_error_times_its_weight():
    from ditcache.cache.reuse import ResidualHistory, reuse_rule

    torch.manual_seed(0)
    history = ResidualHistory(torch.randn(1, 10, 6).double(), torch.ones(10).double(), max_interval=3)
    weights = np.arange(1.0, 11.0)
    for mode in ("delta", "taylor1"):
        rule = reuse_rule(mode)
        plain = rule.proxies(history, 3, 10)
        weighted = rule.proxies(history, 3, 10, weights)
        assert not np.allclose(plain, weighted)
        # uniform weights scale every proxy alike
        assert rule.proxies(history, 3, 10, np.full(10, 2.0)) == pytest.approx(2 * plain)
        # a weight only on step 9 leaves the error each schedule makes there
        only_last = np.zeros(10)
        only_last[9] = 1.0
        reused_at_9 = [(9 - start) % 3 != 0 for start in range(9)]
        assert (rule.proxies(history, 3, 10, only_last) > 0).tolist() == reused_at_9


@pytest.mark.slow
def test_profile_command_writes_the_heatmap_and_its_json(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a green triangle moving left\n")
    out = tmp_path / "profile.json"
    assert main(["profile", "--prompts", str(prompts), "--steps", "8", "--every", "2", "--out", str(out),
                 "--quiet"]) == 0
    profile = json.loads(out.read_text())
    assert profile["step_sensitivity"]["steps"] == [1, 3, 5, 7]
    psnr = profile["block_step_psnr"]
    assert len(psnr) == 12 and all(len(row) == 8 and row[0] is None for row in psnr)  # 12 blocks x 8 steps
    assert all(math.isfinite(v) for row in psnr for v in row[1:])
    assert (tmp_path / "profile.png").stat().st_size > 1000
    assert profile["full_runs"] == 2 + 4  # the calibration's two runs and one probe a probed step
