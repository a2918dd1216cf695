"""Knowing the step: real schedulers, CFG, aborted runs, threads, explicit calls, decorators."""
import threading
from collections import defaultdict

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from ditcache import DitCacheAdaptor, DitCacheConfig, dit_cache, timestep_aware
from ditcache import steps
from toy import ToyPipeline, ToyTransformer, expected_blocks

CONFIG = DitCacheConfig(cache_step_start=2, cache_step_interval=3, cache_block_start=1, cache_num_blocks=3)
SCHEDULERS = [DDIMScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler]


def runs_of(log):
    runs = defaultdict(list)
    for step, index in log:
        runs[step].append(index)
    return runs


def assert_follows_rule(log, steps_, passes=1, blocks=6, config=CONFIG):
    runs = runs_of(log)
    for step in range(steps_):
        assert runs.get(step, []) == expected_blocks(config, step, blocks) * passes, f"step {step}"


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("guidance,cfg_split", [(0.0, False), (4.0, False), (4.0, True)], ids=["nocfg", "cfg1", "cfg2"])
def test_real_schedulers_drive_the_step(scheduler_cls, guidance, cfg_split):
    pipe = ToyPipeline(scheduler_cls())
    with dit_cache(pipe, CONFIG):
        for _ in range(2):  # repeated calls each start from step 0
            pipe.transformer.log.clear()
            pipe(num_inference_steps=9, guidance_scale=guidance, cfg_split=cfg_split)
            assert_follows_rule(pipe.transformer.log, 9, passes=2 if cfg_split else 1)


def test_aborted_run_then_fresh_run_matches_a_clean_run():
    clean = ToyPipeline(EulerAncestralDiscreteScheduler())
    with dit_cache(clean, CONFIG):
        expected = clean(num_inference_steps=10, seed=3)
    pipe = ToyPipeline(EulerAncestralDiscreteScheduler())
    with dit_cache(pipe, CONFIG):
        with pytest.raises(KeyboardInterrupt):
            pipe(num_inference_steps=10, seed=1, abort_at=6)
        pipe.transformer.log.clear()
        out = pipe(num_inference_steps=10, seed=3)
    assert torch.equal(out, expected)
    assert_follows_rule(pipe.transformer.log, 10)


def test_explicit_set_timestep_idx_every_step_every_call():
    tracked = ToyPipeline(DDIMScheduler())
    with dit_cache(tracked, CONFIG):
        expected = tracked(num_inference_steps=8)

    pipe = ToyPipeline(DDIMScheduler())
    adaptor = DitCacheAdaptor(pipe, track_scheduler=False)
    adaptor.update_cache_config(cache_block_start=1, cache_num_blocks=3, cache_step_start=2, cache_step_interval=3)
    model = pipe.transformer
    scheduler = pipe.scheduler
    for _ in range(3):
        model.log.clear()
        scheduler.set_timesteps(8)
        latents = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for step_id, t in enumerate(scheduler.timesteps):
                DitCacheAdaptor.set_timestep_idx(step_id)
                model.clock["step"] = step_id
                latents = scheduler.step(model(latents, t), t, latents).prev_sample
        assert_follows_rule(model.log, 8)
        assert torch.equal(latents, expected)
    adaptor.remove()


def test_missing_step_information_is_a_clear_error():
    model = ToyTransformer()
    steps._clock.__init__()  # a thread that never set a step
    with dit_cache(Holder(model), CONFIG):
        with pytest.raises(ValueError, match="set_timestep_idx"):
            model(torch.randn(1, 4, 4), torch.tensor(10))


@pytest.mark.parametrize("bad", [-1, 1.0, True, "3"])
def test_set_timestep_idx_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="t_idx"):
        DitCacheAdaptor.set_timestep_idx(bad)


def test_two_pipelines_in_two_threads_do_not_disturb_each_other():
    configs = [CONFIG, DitCacheConfig(cache_step_start=0, cache_step_interval=2, cache_block_start=0, cache_num_blocks=6)]
    step_counts = [12, 7]
    expected = []
    for config, count in zip(configs, step_counts):
        pipe = ToyPipeline(EulerAncestralDiscreteScheduler(), seed=len(expected))
        with dit_cache(pipe, config):
            expected.append(pipe(num_inference_steps=count, seed=5))

    pipes = [ToyPipeline(EulerAncestralDiscreteScheduler(), seed=i) for i in range(2)]
    results = [None, None]
    barrier = threading.Barrier(2)
    errors = []

    def work(i):
        try:
            with dit_cache(pipes[i], configs[i]):
                barrier.wait()
                for _ in range(3):
                    pipes[i].transformer.log.clear()
                    results[i] = pipes[i](num_inference_steps=step_counts[i], seed=5)
                    assert_follows_rule(pipes[i].transformer.log, step_counts[i], config=configs[i])
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


@timestep_aware
class HandMadeScheduler:
    """A scheduler that is not from diffusers: plain Euler on a linear sigma ramp."""

    def set_timesteps(self, num_inference_steps):
        self.timesteps = torch.linspace(999, 0, num_inference_steps)
        self.sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        self._i = 0

    def step(self, model_output, timestep, sample):
        out = sample + (self.sigmas[self._i + 1] - self.sigmas[self._i]) * model_output
        self._i += 1
        return out


def sample_with(scheduler, steps, model):
    """A hand-written loop over a scheduler that is not from diffusers, under the cache."""
    model.log.clear()
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 4, 4)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model.clock["step"] = i
            x = scheduler.step(model(x, t), t, x)
    assert_follows_rule(model.log, steps)


class Holder:
    """A pipeline-like object without a `scheduler` attribute: something else must tell the step."""

    def __init__(self, model):
        self.transformer = model


def test_timestep_aware_on_a_custom_scheduler_class():
    model = ToyTransformer().eval()
    with dit_cache(Holder(model), CONFIG):  # the decorated class tells the step
        for _ in range(2):
            sample_with(HandMadeScheduler(), 9, model)


def test_timestep_aware_on_a_step_method_alone():
    class Scheduler:
        def set_timesteps(self, n):
            self.timesteps = torch.arange(n - 1, -1, -1) * 100

        @timestep_aware
        def step(self, model_output, timestep, sample):
            return sample - 0.1 * model_output

    model = ToyTransformer().eval()
    scheduler = Scheduler()
    with dit_cache(Holder(model), CONFIG):
        for _ in range(2):  # the run ends after len(timesteps) steps, so the next starts at 0
            sample_with(scheduler, 8, model)


def test_timestep_aware_on_a_loop_function():
    model = ToyTransformer().eval()

    @timestep_aware
    def denoise(x, timesteps, scale=0.05):
        for t in timesteps:
            model.clock["step"] = int(t.item()) // 100
            x = x - scale * model(x, t)
        return x

    with dit_cache(Holder(model), CONFIG):
        for _ in range(2):
            model.log.clear()
            with torch.no_grad():
                denoise(torch.randn(1, 4, 4), timesteps=torch.arange(10) * 100)
            assert_follows_rule(model.log, 10)


def test_timestep_aware_rejects_what_it_cannot_track():
    with pytest.raises(ValueError, match="scheduler class or a function"):
        timestep_aware(42)
    with pytest.raises(ValueError, match="step"):

        @timestep_aware
        class NoStep:
            pass
