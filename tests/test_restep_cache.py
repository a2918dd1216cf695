"""ReStep and the DiT cache together: a cache searched on a searched schedule, and refused on any other."""
import json
import warnings

import numpy as np
import pytest

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
from ditcache.cli import main
from ditcache.metrics import compare_videos
from ditcache.models import load_bundled_pipeline
from ditcache.restep import ReStepAdaptor, ReStepSearchConfig, read_schedule_timesteps
from ditcache.video import read_video
from test_restep import write_clips

PROMPTS = ["a red circle moving right", "a blue square moving up"]
STEPS = 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_bundled_pipeline(scheduler="euler")


@pytest.fixture(scope="module")
def schedule_file(pipe, tmp_path_factory):
    """A dp-searched schedule of STEPS steps (a short teacher), as the samplers read it."""
    root = tmp_path_factory.mktemp("restep")
    config = ReStepSearchConfig(write_clips(root / "calibration"), str(root / "out"), method="dp",
                                monte_carlo_iters=2, num_sampling_steps=STEPS, teacher_steps=24, guidance_scale=2.0)
    ReStepAdaptor(pipe, config).search()
    return str(root / "out" / "searched_schedule.txt")


def run_on(timesteps):
    return lambda p: list(p(PROMPTS, seed=0, timesteps=timesteps, num_inference_steps=STEPS, progress=False).images)


def test_cache_searched_on_a_searched_schedule_runs_on_it_and_is_refused_on_another(pipe, schedule_file, tmp_path):
    timesteps = read_schedule_timesteps(schedule_file)
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(cache_ratio=1.2, num_sampling_steps=STEPS,
                                                         journal_dir=str(tmp_path / "journal")))
    try:
        config = adaptor.search(run_on(timesteps), prompts_num=len(PROMPTS))
    finally:
        adaptor.remove()
    assert config.timesteps == pytest.approx(timesteps, abs=1e-3)  # the schedule searched on is part of the config
    assert DitCacheConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert any(config.step_mode(i) == "reuse" for i in range(STEPS))

    plain = run_on(timesteps)(pipe)
    with dit_cache(pipe, config):
        cached = run_on(timesteps)(pipe)
        assert not all(np.array_equal(a, b) for a, b in zip(cached, plain))  # it really cached
        assert compare_videos(cached, plain)["psnr"] > 20
        with pytest.raises(ValueError, match="searched on the timesteps .* but this run samples"):
            run_on(None)(pipe)  # the uniform schedule of the same length: refused, not mis-cached


def test_a_config_searched_on_the_uniform_schedule_is_refused_on_a_searched_one(pipe, schedule_file):
    pipe.scheduler.set_timesteps(STEPS)
    uniform = pipe.scheduler.timesteps.tolist()
    config = DitCacheConfig(1, 2, 0, 4, num_sampling_steps=STEPS, timesteps=uniform)
    with dit_cache(pipe, config):
        assert len(run_on(None)(pipe)) == 2
        with pytest.raises(ValueError, match="searched on the timesteps"):
            run_on(read_schedule_timesteps(schedule_file))(pipe)


def test_a_run_that_does_not_tell_its_timesteps_is_warned_about(pipe):
    from ditcache import DitCacheAdaptor as Adaptor

    config = DitCacheConfig(1, 2, 0, 4, num_sampling_steps=STEPS, timesteps=[999, 800, 600, 400, 200, 50])
    adaptor = Adaptor(pipe, config)
    try:
        with pytest.warns(UserWarning, match="cannot be\\s+checked"):
            for step in range(STEPS):  # the spec's explicit step calls: no scheduler tells the timesteps
                Adaptor.set_timestep_idx(step)
                pipe.transformer(*transformer_inputs(pipe))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per config, not once per run
            Adaptor.set_timestep_idx(0)
            pipe.transformer(*transformer_inputs(pipe))
    finally:
        adaptor.remove()


def transformer_inputs(pipe):
    import torch

    states, mask = pipe.encode_prompt(PROMPTS[:1])[:2]
    latents = torch.zeros(1, pipe.transformer.config.in_channels, 8, 32, 32)
    return latents, torch.tensor([500.0]), states, mask


def test_search_refuses_a_callable_that_changes_its_timesteps(pipe, schedule_file, tmp_path):
    calls = []

    def changing(p):
        calls.append(1)
        return run_on(None if len(calls) == 1 else read_schedule_timesteps(schedule_file))(p)

    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(num_sampling_steps=STEPS))
    try:
        with pytest.raises(ValueError, match="changed timesteps during the search"):
            adaptor.search(changing, prompts_num=len(PROMPTS))
    finally:
        adaptor.remove()


@pytest.mark.parametrize("timesteps,message", [
    ([], "non-empty list of finite numbers"),
    ("999", "non-empty list of finite numbers"),
    ([999, float("nan"), 1, 2, 3, 4], "non-empty list of finite numbers"),
    ([999, True, 1, 2, 3, 4], "non-empty list of finite numbers"),
    ([999, 500], "timesteps has 2 values, but num_sampling_steps=6"),
])
def test_bad_timesteps_in_a_config(timesteps, message):
    with pytest.raises(ValueError, match=message):
        DitCacheConfig.from_dict({"cache_step_start": 1, "cache_step_interval": 2, "cache_block_start": 0,
                                  "cache_num_blocks": 4, "num_sampling_steps": STEPS, "timesteps": timesteps})


@pytest.mark.slow
def test_cli_search_on_a_schedule_then_sample_on_it_and_not_on_another(schedule_file, tmp_path, capsys):
    out = tmp_path / "config.json"
    assert main(["search", "--schedule-timestep", schedule_file, "--scheduler", "euler", "--cache-ratio", "1.2",
                 "--out", str(out), "--quiet"]) == 0
    config = DitCacheConfig.load(out)
    assert config.num_sampling_steps == STEPS
    assert config.timesteps == pytest.approx(read_schedule_timesteps(schedule_file), abs=1e-3)
    video = tmp_path / "clip.mp4"
    sample = ["sample", "--prompt", PROMPTS[0], "--out", str(video), "--scheduler", "euler", "--quiet",
              "--dit-cache-config", str(out)]
    assert main([*sample, "--schedule-timestep", schedule_file]) == 0
    assert read_video(str(video)).shape == (8, 32, 32, 3)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(sample)  # uniform steps: refused when the run starts
    assert "searched on the timesteps" in capsys.readouterr().err

    other = tmp_path / "other.txt"
    other.write_text(json.dumps([0.1, 0.2, 0.3, 0.5, 0.7, 0.999]))
    with pytest.raises(SystemExit):
        main([*sample, "--schedule-timestep", str(other)])  # refused before the model loads
    assert "searched on the timesteps" in capsys.readouterr().err


@pytest.mark.slow
def test_samplers_search_the_cache_on_a_schedule_and_refuse_it_on_another(schedule_file, tmp_path):
    from test_samplers import run

    config_path = tmp_path / "dit_cache_config.json"
    common = ["--text_prompt", PROMPTS[0], "--sample_method", "EulerDiscrete"]
    searched = run("samplers.search_t2v_sp", [*common, "--schedule_timestep", schedule_file, "--min_psnr", "25",
                                              "--cache_save_path", str(config_path)])
    assert searched.returncode == 0, searched.stderr[-3000:]
    config = DitCacheConfig.load(config_path)
    assert config.timesteps == pytest.approx(read_schedule_timesteps(schedule_file), abs=1e-3)
    out = tmp_path / "videos"
    sampled = run("samplers.sample_t2v_sp", [*common, "--dit_cache_config", str(config_path),
                                             "--schedule_timestep", schedule_file, "--save_img_path", str(out)])
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert all("_dit_cache_restep" in name for name in json.loads((out / "prompts.json").read_text()))
    uniform = run("samplers.sample_t2v_sp", [*common, "--dit_cache_config", str(config_path),
                                             "--save_img_path", str(tmp_path / "uniform")])
    assert uniform.returncode != 0 and "searched on the timesteps" in uniform.stderr
