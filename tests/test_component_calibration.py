"""Component schedules from one uncached run: the recorded errors and SmoothCache's threshold scan."""
import numpy as np
import pytest
import torch

from ditcache import ComponentCacheConfig, dit_cache
from ditcache.component_calibration import ComponentErrors, calibrate_components
from tests.test_components import STEPS, PixArtPipe

pytestmark = pytest.mark.usefixtures("one_thread")


def table(lookahead, steps, small):
    """An error table that is 1 everywhere except ``small``: {(lag, step): value}."""
    errors = np.ones((lookahead + 1, steps))
    for (lag, step), value in small.items():
        errors[lag, step] = value
    return ComponentErrors({(0, "attn1"): errors}, lookahead)


def test_scan_skips_the_longest_run_under_the_threshold_and_computes_first_and_last():
    # From step 0, lag 3 (reuse step 0's output at step 3) is under alpha: compute 0, skip 1-3.
    # From step 4 only lag 1 is: compute 4, skip 5. Step 6 nothing: compute. Step 7 lag 2 -> skip 8, 9
    # but step 9 is the last: it computes.
    errors = table(3, 10, {(3, 3): 0.1, (1, 5): 0.1, (2, 5): 0.5, (2, 9): 0.2})
    assert errors.schedule(0.3).schedule["attn1"] == (1, 0, 0, 0, 1, 0, 1, 1, 0, 1)
    assert errors.schedule(0.0).schedule["attn1"] == (1,) * 10
    assert errors.schedule(0.6).schedule["attn1"] == (1, 0, 0, 0, 1, 0, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        errors.schedule(-1)
    with pytest.raises(ValueError, match="components must be a non-empty subset"):
        errors.schedule(0.1, components=["ff"])


def calibrated(split_cfg):
    pipe = PixArtPipe()
    outputs = []
    pipe.transformer.transformer_blocks[2].ff.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone()))
    with dit_cache(pipe, None):  # tracks the scheduler, caches nothing
        errors = calibrate_components(pipe.transformer.transformer_blocks, lambda: pipe(split_cfg=split_cfg), STEPS)
    return pipe, errors, outputs


def test_recorded_errors_are_the_relative_l1_of_reusing_an_earlier_output():
    pipe, errors, outputs = calibrated(split_cfg=False)
    assert sorted(errors.errors) == [(b, name) for b in range(4) for name in ("attn1", "attn2", "ff")]
    got = errors.errors[(2, "ff")]
    for lag in (1, 2, 3):
        for step in range(STEPS):
            if step < lag:
                assert np.isnan(got[lag, step])
                continue
            current, previous = outputs[step], outputs[step - lag]
            expected = (torch.norm(current - previous, p=1) / torch.norm(current, p=1)).item()
            assert got[lag, step] == pytest.approx(expected, rel=1e-6)
    assert all("forward" not in block.ff.__dict__ for block in pipe.transformer.transformer_blocks)


def test_cfg_as_two_forwards_calibrates_like_one_batched_forward():
    _, batched, _ = calibrated(split_cfg=False)
    _, split, _ = calibrated(split_cfg=True)
    for key, table_ in batched.errors.items():
        np.testing.assert_allclose(split.errors[key], table_, rtol=1e-4)


def test_a_calibrated_schedule_runs_and_per_block_lines_differ():
    pipe, errors, _ = calibrated(split_cfg=True)
    shared = errors.schedule(0.5)
    assert isinstance(shared, ComponentCacheConfig) and set(shared.schedule) == {"attn1", "attn2", "ff"}
    per_block = errors.schedule(0.5, components=["ff"], per_block=True)
    assert set(per_block.schedule) == {f"ff-{b}" for b in range(4)}
    uncached = pipe(split_cfg=True)
    alpha = float(np.nanmedian(errors.errors[(0, "attn1")]))  # some steps reuse at this threshold
    schedule = errors.schedule(alpha)
    assert 0 in schedule.schedule["attn1"]
    with dit_cache(pipe, schedule):
        cached = pipe(split_cfg=True)
    assert not torch.equal(cached, uncached) and torch.isfinite(cached).all()
