"""Every source of steps on loops as real code writes them: tracked, bounded, checked, or a clear error."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache, timestep_aware
from ditcache import steps
from test_steps import CONFIG, Holder, assert_follows_rule, runs_of
from toy import ToyPipeline, ToyTransformer, expected_blocks


@pytest.fixture(autouse=True)
def fresh_clock():
    steps._clock.__init__()  # as a new thread: nothing has set a step
    yield
    steps._clock.__init__()


# --- @timestep_aware on a loop function: the model's timestep argument tells the step ----------


def as_tensor_loop(model, x, timesteps):
    timesteps = torch.as_tensor(timesteps)
    for i, t in enumerate(timesteps):
        model.clock["step"] = i
        x = x - 0.05 * model(x, t)
    return x


def to_device_loop(model, x, timesteps):
    timesteps = timesteps.to(x.device)
    for i, t in enumerate(timesteps):
        model.clock["step"] = i
        x = x - 0.05 * model(x, t)
    return x


def sliced_loop(model, x, timesteps):
    for i, t in enumerate(timesteps[:]):
        model.clock["step"] = i
        x = x - 0.05 * model(x, t)
    return x


def indexed_loop(model, x, timesteps):
    for i in range(len(timesteps)):
        model.clock["step"] = i
        t = timesteps[i]
        x = x - 0.05 * model(x, t.expand(x.shape[0]))  # a batch of timesteps, as OSP passes them
    return x


def cfg_split_loop(model, x, timesteps):
    for i in range(len(timesteps)):
        model.clock["step"] = i
        cond, uncond = model(x, timesteps[i]), model(x * 0.5, timesteps[i])
        x = x - 0.05 * (uncond + 2.0 * (cond - uncond))
    return x


LOOPS = [as_tensor_loop, to_device_loop, sliced_loop, indexed_loop, cfg_split_loop]


@pytest.mark.parametrize("loop", LOOPS, ids=lambda f: f.__name__)
def test_timestep_aware_tracks_real_loop_idioms(loop):
    model = ToyTransformer().eval()
    decorated = timestep_aware(loop)
    timesteps = torch.linspace(999, 0, 10)
    x = torch.randn(2, 4, 4)
    with torch.no_grad():
        uncached = loop(model, x, timesteps)
        with dit_cache(Holder(model), CONFIG):
            for _ in range(2):  # every call is a run from step 0
                model.log.clear()
                cached = decorated(model, x, timesteps.tolist() if loop is as_tensor_loop else timesteps)
                assert_follows_rule(model.log, 10, passes=2 if loop is cfg_split_loop else 1)
    assert not torch.equal(cached, uncached)


def test_timestep_aware_with_optional_timesteps():
    model = ToyTransformer().eval()

    @timestep_aware
    def sample(x, num_steps=10, timesteps=None):
        timesteps = torch.linspace(999, 0, num_steps) if timesteps is None else timesteps
        return as_tensor_loop(model, x, timesteps)

    with torch.no_grad(), dit_cache(Holder(model), CONFIG):
        sample(torch.randn(1, 4, 4))
        assert_follows_rule(model.log, 10)
        model.log.clear()
        sample(torch.randn(1, 4, 4), timesteps=torch.linspace(999, 0, 10))
        assert_follows_rule(model.log, 10)


def edm_heun_loop(model, x, sigmas):
    """EDM's second-order sampler: two evaluations per step, one on the last (to sigma 0)."""
    def denoise(x, sigma):
        return x - sigma * model(x, torch.as_tensor(sigma))
    for i in range(len(sigmas) - 1):
        model.clock["step"] = i
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            model.clock["step"] = i + 1  # the corrector evaluates at the next step's noise level
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


def test_timestep_aware_on_a_second_order_ode_solver():
    """A step is one noise level: the corrector at sigma_{i+1} and the next predictor share it (2 passes)."""
    model = ToyTransformer().eval()
    sigmas = [float(s) for s in torch.linspace(1.0, 0.05, 10)] + [0.0]
    decorated = timestep_aware(lambda x, timesteps: edm_heun_loop(model, x, timesteps))
    with torch.no_grad(), dit_cache(Holder(model), CONFIG):
        decorated(torch.randn(1, 4, 4), timesteps=sigmas)
    runs = runs_of(model.log)
    assert runs[0] == expected_blocks(CONFIG, 0, 6)
    for step in range(1, 10):
        assert runs[step] == expected_blocks(CONFIG, step, 6) * 2, f"step {step}"


class NoTimestepModel(torch.nn.Module):
    """A transformer whose forward takes the time embedding under a name the cache cannot read."""

    def __init__(self):
        super().__init__()
        self.inner = ToyTransformer().eval()
        self.transformer_blocks = self.inner.transformer_blocks

    def forward(self, x, cond):
        return self.inner(x, cond)


def test_untrackable_loop_is_a_clear_error_not_an_uncached_run():
    model = NoTimestepModel()
    decorated = timestep_aware(lambda x, timesteps: [x := x - 0.05 * model(x, t) for t in timesteps][-1])
    with torch.no_grad(), dit_cache(Holder(model), CONFIG):
        with pytest.raises(ValueError, match="timestep"):
            decorated(torch.randn(1, 4, 4), timesteps=torch.linspace(999, 0, 10))


def test_untrackable_loop_in_a_search_says_why():
    model = NoTimestepModel()

    @timestep_aware
    def loop(x, timesteps):
        for t in timesteps:
            x = x - 0.05 * model(x, t)
        return x

    def run(pipe):
        with torch.no_grad():
            out = loop(torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(0)), torch.linspace(999, 0, 8))
        return [((out.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).reshape(1, 4, 4, 4).numpy()]

    adaptor = DitCacheAdaptor(Holder(model), DitCacheSearchConfig(cache_ratio=1.2, num_sampling_steps=8))
    with pytest.raises(ValueError, match="timestep") as error:
        adaptor.search(run)
    assert "made 1 denoising steps" not in str(error.value)
    adaptor.remove()


# --- the step-count guard holds for every source ---------------------------------------------


def explicit_run(model, steps_, abort_at=None, seed=0):
    x = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for i, t in enumerate(torch.linspace(999, 0, steps_)):
            DitCacheAdaptor.set_timestep_idx(i)
            model.clock["step"] = i
            if i == abort_at:
                raise KeyboardInterrupt
            x = x - 0.05 * model(x, t)
    return x


@timestep_aware
def decorated_run(model, steps_, timesteps=None):
    return as_tensor_loop(model, torch.randn(1, 4, 4), torch.linspace(999, 0, steps_))


WRONG_COUNT = [
    (dict(num_sampling_steps=50), "num_sampling_steps=50"),
    (dict(cache_step_start=30), "cache_step_start=30"),
]


@pytest.mark.parametrize("fields,match", WRONG_COUNT, ids=["steps", "start"])
def test_step_count_guard_with_explicit_calls(fields, match):
    model = ToyTransformer().eval()
    config = DitCacheConfig(**{**CONFIG.to_dict(), **fields})
    with dit_cache(Holder(model), config):
        with pytest.raises(ValueError, match=match):
            explicit_run(model, 20)
            explicit_run(model, 20)  # detected at the latest when the next run starts


@pytest.mark.parametrize("fields,match", WRONG_COUNT, ids=["steps", "start"])
def test_step_count_guard_with_a_decorated_loop(fields, match):
    model = ToyTransformer().eval()
    config = DitCacheConfig(**{**CONFIG.to_dict(), **fields})
    with torch.no_grad(), dit_cache(Holder(model), config):
        with pytest.raises(ValueError, match=match):
            decorated_run(model, 20)  # detected when the run ends


def test_step_count_guard_passes_runs_of_the_right_length():
    model = ToyTransformer().eval()
    config = DitCacheConfig(**{**CONFIG.to_dict(), "num_sampling_steps": 20})
    with torch.no_grad(), dit_cache(Holder(model), config):
        for _ in range(2):
            explicit_run(model, 20)
            decorated_run(model, 20)


def test_a_run_longer_than_the_config_is_caught_at_once():
    model = ToyTransformer().eval()
    config = DitCacheConfig(**{**CONFIG.to_dict(), "num_sampling_steps": 10})
    with dit_cache(Holder(model), config):
        with pytest.raises(ValueError, match="num_sampling_steps=10"):
            explicit_run(model, 20)
        assert model.clock["step"] == 10


# --- explicit set_timestep_idx: every run recognised, memory bounded ----------------------------


def test_explicit_run_aborted_at_step_0_leaves_nothing_behind():
    config = DitCacheConfig(cache_step_start=0, cache_step_interval=4, cache_block_start=0, cache_num_blocks=6)
    model = ToyTransformer().eval()
    with dit_cache(Holder(model), config):
        clean = explicit_run(model, 10, seed=1)
    with dit_cache(Holder(model), config):
        with pytest.raises(KeyboardInterrupt):
            explicit_run(model, 10, abort_at=0, seed=2)  # set the step, then stopped before the model ran
        model(torch.randn(1, 4, 4), torch.tensor(999.0))  # ... or after one forward at step 0
        assert torch.equal(explicit_run(model, 10, seed=1), clean)


def test_explicit_one_step_runs_do_not_accumulate():
    model = ToyTransformer().eval()
    config = DitCacheConfig(cache_step_start=0, cache_step_interval=2, cache_block_start=0, cache_num_blocks=6)
    with dit_cache(Holder(model), config) as adaptor:
        for _ in range(30):
            explicit_run(model, 1)
        assert adaptor.cached_passes <= 1


def test_no_step_source_after_a_tracked_run_is_the_clear_error():
    tracked = ToyPipeline(DDIMScheduler())
    with dit_cache(tracked, CONFIG):
        tracked(num_inference_steps=5)
    model = ToyTransformer().eval()
    with dit_cache(Holder(model), CONFIG):
        with pytest.raises(ValueError, match="does not know the denoising step"):
            model(torch.randn(1, 4, 4), torch.tensor(10.0))
        decorated_run(model, 10)  # a decorated loop's run ends with the loop, too
        with pytest.raises(ValueError, match="does not know the denoising step"):
            model(torch.randn(1, 4, 4), torch.tensor(10.0))


# --- two network calls per step (Heun, DPM-2) through the scheduler -----------------------------

SECOND_ORDER = [HeunDiscreteScheduler, KDPM2DiscreteScheduler]


@pytest.mark.parametrize("scheduler_cls", SECOND_ORDER, ids=lambda c: c.__name__)
def test_second_order_schedulers_count_denoising_steps(scheduler_cls):
    pipe = ToyPipeline(scheduler_cls())
    with dit_cache(pipe, CONFIG):
        for _ in range(2):
            pipe.transformer.log.clear()
            pipe(num_inference_steps=7)
            # loop entry k of the 2N-1 (one network call each) belongs to denoising step k // 2:
            # a predictor and its corrector, and the last step a predictor alone
            by_step = {}
            for entry, index in pipe.transformer.log:
                by_step.setdefault(entry // 2, []).append(index)
            assert sorted(by_step) == list(range(7))
            for step in range(7):
                assert by_step[step] == expected_blocks(CONFIG, step, 6) * (2 if step < 6 else 1), f"step {step}"
    with dit_cache(pipe, DitCacheConfig(**{**CONFIG.to_dict(), "num_sampling_steps": 7})):
        pipe(num_inference_steps=7)
        with pytest.raises(ValueError, match=r"num_sampling_steps=7, but this run has 6 denoising steps"):
            pipe(num_inference_steps=6)


def heun_video(latents):
    return ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(4, 8, 8, 4).numpy()


def test_search_with_heun():
    pipe = ToyPipeline(HeunDiscreteScheduler(), num_blocks=8)

    def run(p):
        return [heun_video(p(num_inference_steps=12, batch=1, tokens=256, seed=s)) for s in range(2)]

    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=12))
    config = adaptor.search(run, prompts_num=2)
    assert adaptor.last_search.chosen.psnr >= 30.0 and config.num_sampling_steps == 12
    reference = run(pipe)
    adaptor.set_cache_config(config)
    cached = run(pipe)
    adaptor.remove()
    psnr = 10 * np.log10(255 ** 2 / max(np.mean([(a.astype(float) - b) ** 2 for a, b in zip(cached, reference)]), 1e-12))
    assert psnr >= 30.0
    with pytest.raises(ValueError, match="made 12 denoising steps.*num_sampling_steps=11"):
        DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=11)).search(run, prompts_num=2)
