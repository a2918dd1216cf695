"""Component schedules (SmoothCache's format) on real diffusers blocks, against dit-smoothcache itself."""
import copy
import json
import threading

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, PixArtTransformer2DModel

from ditcache import ComponentCacheConfig, DitCacheAdaptor, dit_cache, register_block_components, timestep_aware
from ditcache import steps
from ditcache.cache import components as components_module
from tests import test_diffusers_models as diffusers_cases
from tests.toy import ToyPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
# attn1 everywhere on alternate steps, block 1 with its own line (SmoothCache's per-block key).
SMOOTH = {"attn1": [1, 0, 1, 0, 1, 0, 0, 1], "attn1-1": [1, 1, 0, 0, 1, 1, 0, 1]}


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
    ).eval()


def dit_pipeline():
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), latent_channels=4, norm_num_groups=4, layers_per_block=1,
    ).eval()
    pipe = DiTPipeline(transformer=tiny_dit(), vae=vae, scheduler=DDIMScheduler(), id2label={0: "zero", 1: "one"})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_dit(pipe, steps=STEPS):
    with torch.no_grad():
        return pipe(class_labels=[0, 1], num_inference_steps=steps, generator=torch.manual_seed(3), output_type="np").images


def smoothcache_helper(transformer, schedule):
    from SmoothCache import DiffuserCacheHelper

    return DiffuserCacheHelper(transformer, schedule=schedule)


def test_dit_pipeline_matches_smoothcache_bit_for_bit(tmp_path):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(SMOOTH))
    pipe = dit_pipeline()
    uncached = run_dit(pipe)

    helper = smoothcache_helper(pipe.transformer, SMOOTH)
    helper.enable()
    try:
        theirs = run_dit(pipe)
    finally:
        helper.disable()
    with dit_cache(pipe, str(path)) as adaptor:
        assert isinstance(adaptor.cache_config, ComponentCacheConfig)
        ours = run_dit(pipe)
    assert (ours == theirs).all()
    assert not (ours == uncached).all()  # the schedule really reused something
    assert (run_dit(pipe) == uncached).all()  # and the model is back as it was


def two_forward_cfg(cond_model, uncond_model, scheduler, steps=STEPS, guidance=3.0):
    """DiT sampling with CFG as two transformer calls per step (cond, then uncond)."""
    gen = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            ts = t.expand(1)
            cond = cond_model(latents, timestep=ts, class_labels=torch.tensor([1])).sample[:, :4]
            uncond = uncond_model(latents, timestep=ts, class_labels=torch.tensor([1000])).sample[:, :4]
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


class Holder:
    """What dit_cache patches: a transformer and the scheduler that counts its steps."""

    def __init__(self, transformer, scheduler):
        self.transformer, self.scheduler = transformer, scheduler


def test_cfg_as_two_forwards_is_right_where_smoothcache_is_not():
    model = tiny_dit()
    # Reference: one model copy per branch, each called once per step, so SmoothCache counts steps right.
    cond_copy, uncond_copy = copy.deepcopy(model), copy.deepcopy(model)
    helpers = [smoothcache_helper(m, SMOOTH) for m in (cond_copy, uncond_copy)]
    for helper in helpers:
        helper.enable()
    reference = two_forward_cfg(cond_copy, uncond_copy, DDIMScheduler())
    for helper in helpers:
        helper.disable()

    shared = smoothcache_helper(model, SMOOTH)  # one model, two calls a step: its step count runs twice as fast
    shared.enable()
    smoothcache_shared = two_forward_cfg(model, model, DDIMScheduler())
    shared.disable()

    scheduler = DDIMScheduler()
    holder = Holder(model, scheduler)
    with dit_cache(holder, SMOOTH):
        ours = two_forward_cfg(model, model, scheduler)
    assert torch.equal(ours, reference)
    assert not torch.equal(smoothcache_shared, reference)


# --- which sub-layers run, on blocks with all three (PixArt's BasicTransformerBlock) -------------------


class PixArtPipe(diffusers_cases.PixArtPipe):
    """DDIM with CFG as one batched forward or two; records which sub-layers really compute at each step."""

    def __init__(self):
        super().__init__()
        self.log = []
        self.step = None
        for b, block in enumerate(self.transformer.transformer_blocks):
            for name in ("attn1", "attn2", "ff"):
                inner = getattr(block, name).to_q if name != "ff" else block.ff.net[0]  # runs only if it computes
                inner.register_forward_pre_hook(lambda *_, b=b, name=name: self.log.append((self.step, b, name)))

    @torch.no_grad()
    def __call__(self, steps=STEPS, split_cfg=False):
        self.log.clear()
        latents, text = start_latents()
        self.scheduler.set_timesteps(steps)
        for self.step, t in enumerate(self.scheduler.timesteps):
            latents = cfg_step(self, latents, text, t, split_cfg)
        return latents


def start_latents():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 8, 8, generator=gen), torch.randn(2, 5, 12, generator=gen)


@torch.no_grad()
def cfg_step(pipe, latents, text, t, split_cfg=True, guidance=4.0):
    """One DDIM step with CFG as two forwards (``split_cfg``) or one batched forward."""
    if split_cfg:
        cond, uncond = (
            pipe.transformer(latents, encoder_hidden_states=text[i : i + 1], timestep=t.expand(1), return_dict=False)[0]
            for i in (0, 1)
        )
    else:
        both = pipe.transformer(torch.cat([latents] * 2), encoder_hidden_states=text, timestep=t.expand(2), return_dict=False)[0]
        cond, uncond = both.chunk(2)
    return pipe.scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample


def expected_log(schedule, blocks, steps, passes):
    """Which (step, block, sub-layer) compute: a 1, or step 0 (nothing kept yet); once per forward pass."""
    config = ComponentCacheConfig(schedule)
    return [
        (step, b, name)
        for step in range(steps)
        for _ in range(passes)
        for b in range(blocks)
        for name in ("attn1", "attn2", "ff")
        if step == 0 or config.computes(name, b, step)
    ]


def sorted_log(log):
    return sorted(log)


SCHEDULES = [
    {"attn1": [1, 0] * 4},
    {"ff": [1, 0, 0, 1, 0, 0, 1, 1], "attn2-3": [1, 1, 0, 1, 0, 1, 0, 1]},
    {"attn1": [0] * 8, "attn2": [1, 0, 0, 0, 1, 0, 0, 0], "ff-0": [1] * 8, "ff": [1, 1, 1, 0, 1, 1, 1, 0]},
]


@pytest.mark.parametrize("split_cfg", [False, True])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sub_layers_compute_exactly_as_the_schedule_says(schedule, split_cfg):
    pipe = PixArtPipe()
    with dit_cache(pipe, schedule):
        pipe(split_cfg=split_cfg)
    assert sorted_log(pipe.log) == sorted(expected_log(schedule, 4, STEPS, 2 if split_cfg else 1))


def test_a_schedule_of_ones_is_bit_identical_and_exit_restores_exactly():
    pipe = PixArtPipe()
    uncached = pipe(split_cfg=True)
    ones = {"attn1": [1] * STEPS, "attn2": [1] * STEPS, "ff": [1] * STEPS}
    with dit_cache(pipe, ones) as adaptor:
        assert torch.equal(pipe(split_cfg=True), uncached)
        adaptor.set_cache_config(ComponentCacheConfig({"ff": [1, 0] * 4}))
        assert not torch.equal(pipe(split_cfg=True), uncached)
        adaptor.disable()
        assert torch.equal(pipe(split_cfg=True), uncached)
    for block in pipe.transformer.transformer_blocks:
        for name in ("attn1", "attn2", "ff"):
            assert "forward" not in getattr(block, name).__dict__
    assert torch.equal(pipe(split_cfg=True), uncached)


def captured_outputs(pipe, block, name):
    outputs = []
    getattr(pipe.transformer.transformer_blocks[block], name).register_forward_hook(
        lambda _m, _i, out: outputs.append(out.clone())
    )
    return outputs


def test_reused_output_is_the_last_computed_one_or_its_first_order_extrapolation():
    line = [1, 1, 0, 0, 1, 0, 1, 1]
    pipe = PixArtPipe()
    truth = captured_outputs(pipe, 1, "ff")
    pipe()
    for reuse in ("delta", "taylor1"):
        pipe_cached = PixArtPipe()
        got = captured_outputs(pipe_cached, 1, "ff")
        with dit_cache(pipe_cached, {"ff": line, "reuse": reuse}):
            pipe_cached()
        computed = []  # (step, output the cached run computed)
        for step, on in enumerate(line):
            if on:
                computed.append((step, got[step]))
                continue
            (last_step, last), previous = computed[-1], computed[-2] if len(computed) > 1 else None
            if reuse == "delta" or previous is None:
                expected = last
            else:
                slope = (last - previous[1]) / (last_step - previous[0])
                expected = torch.add(last, slope, alpha=step - last_step)
            assert torch.equal(got[step], expected), (reuse, step)
        assert torch.equal(got[0], truth[0]) and torch.equal(got[1], truth[1])  # nothing reused yet


def test_outputs_are_kept_per_pass_freed_at_run_end_and_taylor1_keeps_twice_as_much():
    sizes = {}
    for reuse in ("delta", "taylor1"):
        pipe = PixArtPipe()
        with dit_cache(pipe, {"ff": [1, 0] * 4, "reuse": reuse}) as adaptor:
            seen = []
            pipe.transformer.transformer_blocks[3].register_forward_hook(
                lambda *_: seen.append(adaptor.cached_component_bytes)
            )
            pipe(split_cfg=True)
            assert adaptor.cached_component_bytes == 0  # the run ended: freed
        sizes[reuse] = max(seen)
    one_output = 2 * 16 * 16 * 4  # two passes x (batch 1, 16 tokens, 16 channels) float32, per block
    assert sizes["delta"] == 4 * one_output
    assert sizes["taylor1"] == 2 * sizes["delta"]


def tracked_run(schedule):
    """The output of a split-CFG run whose steps come from the tracked scheduler."""
    pipe = PixArtPipe()
    with dit_cache(pipe, schedule):
        return pipe(split_cfg=True)


def test_every_step_source_gives_the_same_output():
    schedule = {"attn1": [1, 0] * 4, "ff-1": [1, 1, 0, 1, 0, 0, 1, 1]}
    by_scheduler = tracked_run(schedule)

    explicit = PixArtPipe()
    adaptor = DitCacheAdaptor(explicit, ComponentCacheConfig(schedule), track_scheduler=False)
    explicit.scheduler.set_timesteps(STEPS)

    def loop_explicit():
        latents, text = start_latents()
        for i, t in enumerate(explicit.scheduler.timesteps):
            DitCacheAdaptor.set_timestep_idx(i)
            latents = cfg_step(explicit, latents, text, t)
        return latents

    assert torch.equal(loop_explicit(), by_scheduler)

    @timestep_aware
    def loop(timesteps):
        latents, text = start_latents()
        for t in timesteps:
            latents = cfg_step(explicit, latents, text, t)
        return latents

    assert torch.equal(loop(explicit.scheduler.timesteps), by_scheduler)
    adaptor.remove()


def test_two_threads_keep_their_own_outputs():
    schedule = {"attn1": [1, 0] * 4, "ff": [1, 0, 0, 1, 0, 0, 1, 1]}
    expected = tracked_run(schedule)
    shared = PixArtPipe()
    results = {}
    with dit_cache(shared, ComponentCacheConfig(schedule), dit_block_path="transformer.transformer_blocks"):
        barrier = threading.Barrier(2)

        def work(i):
            scheduler = DDIMScheduler()
            restore = steps.track_scheduler(scheduler)
            scheduler.set_timesteps(STEPS)
            latents, text = start_latents()
            barrier.wait()
            for t in scheduler.timesteps:
                latents = cfg_step(Holder(shared.transformer, scheduler), latents, text, t)
            restore()
            results[i] = latents

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)


# --- bad schedules: clear errors, the model left unpatched -----------------------------------------------


def assert_unpatched(pipe):
    for block in pipe.transformer.transformer_blocks:
        assert "forward" not in block.__dict__
        for name in ("attn1", "ff"):
            assert "forward" not in getattr(block, name).__dict__


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"mlp": [1, 0] * 4}, "'mlp' is not a sub-layer of block 0"),
        ({"attn2": [1, 0] * 4}, "has no 'attn2'"),
        ({"attn1-3": [1, 0] * 4}, "block 3 does not exist"),
        ({"attn1": [1, 2, 1, 0, 1, 0, 1, 0]}, r"schedule\['attn1'\]\[1\] must be 0 \(reuse\) or 1"),
        ({"attn1": [1, 0.5, 1, 0, 1, 0, 1, 0]}, r"\[1\] must be 0"),
        ({"attn1": [1, True, 1, 0, 1, 0, 1, 0]}, r"\[1\] must be 0"),
        ({"attn1": [1, 0] * 4, "ff": [1, 0]}, "same length"),
        ({"attn1": [1, 0] * 4, "reuse": "cubic"}, "reuse must be one of"),
        ({"attn1": []}, "non-empty list"),
        ({"attn 1": [1, 0]}, "must be a sub-layer name"),
    ],
)
def test_bad_schedule_files_are_clear_errors_that_leave_the_model_unpatched(tmp_path, schedule, message):
    pipe = dit_pipeline()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(schedule))
    with pytest.raises(ValueError, match=message):
        with dit_cache(pipe, str(path)):
            pass
    assert_unpatched(pipe)


def test_a_schedule_for_another_step_count_is_refused_at_the_run():
    pipe = dit_pipeline()
    run_dit(pipe)  # a finished run: the step clock knows no run length now
    adaptor = DitCacheAdaptor(pipe, ComponentCacheConfig(SMOOTH), track_scheduler=False)
    with pytest.raises(ValueError, match="step 8 is beyond the component schedule's 8 steps"):
        for i in range(9):
            DitCacheAdaptor.set_timestep_idx(i)
            pipe.transformer(torch.zeros(1, 4, 8, 8), timestep=torch.tensor([1]), class_labels=torch.tensor([0]))
    adaptor.remove()
    with pytest.raises(ValueError, match="has 8 steps per line, but this run has 6 scheduler steps"):
        with dit_cache(pipe, SMOOTH):
            run_dit(pipe, steps=6)
    assert_unpatched(pipe)


def test_a_run_shorter_than_the_schedule_is_refused_when_it_ends():
    pipe = dit_pipeline()
    run_dit(pipe)  # a finished run: the step clock knows no run length now
    adaptor = DitCacheAdaptor(pipe, ComponentCacheConfig(SMOOTH), track_scheduler=False)
    for i in range(6):
        DitCacheAdaptor.set_timestep_idx(i)
        pipe.transformer(torch.zeros(1, 4, 8, 8), timestep=torch.tensor([1]), class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="8 steps per line, but the run that just ended has 6 denoising steps"):
        DitCacheAdaptor.set_timestep_idx(0)  # the next run starts: the one before ended short
    adaptor.remove()
    assert_unpatched(pipe)


def test_unknown_blocks_are_named_and_can_be_declared():
    pipe = ToyPipeline(DDIMScheduler(), num_blocks=3)
    with pytest.raises(ValueError, match=r"block 0 is a CountingBlock.*register_block_components\('CountingBlock'"):
        DitCacheAdaptor(pipe, ComponentCacheConfig({"mlp": [1, 0] * 4}))
    assert all("forward" not in block.mlp.__dict__ for block in pipe.transformer.transformer_blocks)
    register_block_components("CountingBlock", ("mlp",))
    try:
        uncached = pipe(num_inference_steps=STEPS)
        with dit_cache(pipe, {"mlp": [1] * STEPS}):
            assert torch.equal(pipe(num_inference_steps=STEPS), uncached)
        with dit_cache(pipe, {"mlp": [1, 0] * 4}):
            assert not torch.equal(pipe(num_inference_steps=STEPS), uncached)
    finally:
        del components_module.KNOWN_COMPONENTS["CountingBlock"]


def test_schedule_files_round_trip_in_smoothcache_layout(tmp_path):
    config = ComponentCacheConfig(SMOOTH, reuse="taylor1")
    path = tmp_path / "out.json"
    config.save(path)
    text = path.read_text()
    assert '"attn1": [1,0,1,0,1,0,0,1]' in text
    assert ComponentCacheConfig.load(path) == config
    assert json.loads(text)["attn1-1"] == SMOOTH["attn1-1"]
