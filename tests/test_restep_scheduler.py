"""The scheduler that accepts custom timesteps is the stock Euler-ancestral one when given the stock timesteps."""
import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from ditcache.models import load_bundled_pipeline
from ditcache.models.pipeline import NOISE_SCHEDULE
from ditcache.restep import schedule_to_timesteps
from ditcache.schedulers import TimestepEulerAncestralScheduler
from ditcache.restep.schedule import timesteps_to_schedule

SPACINGS = ["trailing", "leading", "linspace"]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [3, 10, 50])
def test_same_state_as_stock(spacing, steps):
    config = dict(NOISE_SCHEDULE, timestep_spacing=spacing)
    stock = EulerAncestralDiscreteScheduler.from_config(config)
    stock.set_timesteps(steps)
    by_count = TimestepEulerAncestralScheduler.from_config(config)
    by_count.set_timesteps(steps)
    given = TimestepEulerAncestralScheduler.from_config(config)
    given.set_timesteps(timesteps=stock.timesteps.tolist())
    for ours in (by_count, given):
        assert torch.equal(ours.timesteps, stock.timesteps) and torch.equal(ours.sigmas, stock.sigmas)
        assert ours.init_noise_sigma == stock.init_noise_sigma and ours.num_inference_steps == steps
        assert ours.step_index is None and ours.begin_index is None


def test_schedule_file_round_trip_gives_the_stock_timesteps():
    stock = EulerAncestralDiscreteScheduler.from_config(NOISE_SCHEDULE)
    stock.set_timesteps(25)
    assert schedule_to_timesteps(timesteps_to_schedule(stock.timesteps.tolist())) == stock.timesteps.tolist()


def test_sampling_with_stock_timesteps_is_bit_identical(one_thread):
    prompts = ["a red circle moving right", "a cyan triangle moving up"]
    stock = load_bundled_pipeline()
    ours = load_bundled_pipeline(scheduler="euler_ancestral_timesteps")
    assert type(ours.scheduler) is TimestepEulerAncestralScheduler and ours.scheduler.config == stock.scheduler.config
    expected = stock(prompts, num_inference_steps=6, seed=5, progress=False).images
    timesteps = stock.scheduler.timesteps.tolist()
    assert np.array_equal(ours(prompts, num_inference_steps=6, seed=5, progress=False).images, expected)
    assert np.array_equal(ours(prompts, timesteps=timesteps, seed=5, progress=False).images, expected)


def test_off_grid_timesteps_interpolate_sigma():
    scheduler = TimestepEulerAncestralScheduler.from_config(NOISE_SCHEDULE)
    scheduler.set_timesteps(timesteps=[999.0, 500.5, 500.0, 20.25])
    train = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
    assert scheduler.timesteps.tolist() == [999.0, 500.5, 500.0, 20.25]
    assert scheduler.sigmas[2] == pytest.approx(float(train[500]))
    assert train[500] < scheduler.sigmas[1] < train[501]
    assert scheduler.sigmas[-1] == 0 and len(scheduler.sigmas) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs num_inference_steps or timesteps; got neither"),
        ({"timesteps": [500, 999]}, "must be strictly decreasing"),
        ({"timesteps": [999, 500, 500]}, "must be strictly decreasing"),
        ({"timesteps": [1000, 500]}, r"each in \[0, 999\]"),
        ({"timesteps": [500, -1]}, r"each in \[0, 999\]"),
        ({"timesteps": []}, "need at least one value"),
        ({"timesteps": [999, "x"]}, "must be a sequence of numbers"),
        ({"timesteps": [999, 500], "num_inference_steps": 3}, "num_inference_steps=3 does not match the 2 timesteps"),
    ],
)
def test_bad_timesteps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimestepEulerAncestralScheduler.from_config(NOISE_SCHEDULE).set_timesteps(**kwargs)


def test_loading_the_bundled_model_does_not_import_restep():
    import subprocess
    import sys

    code = ("import sys; from ditcache.models import load_bundled_pipeline; load_bundled_pipeline("
            "scheduler='euler_ancestral_timesteps'); print('ditcache.restep' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
