import os

import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock

from ditcache.models import SCHEDULERS, ShapesPipeline, load_bundled_pipeline
from ditcache.models.pipeline import BUNDLED_WEIGHTS
from ditcache.models.shapes import render_clip

PROMPTS = ["a red circle moving right", "a cyan triangle moving up"]


@pytest.fixture(scope="module")
def pipe():
    return load_bundled_pipeline()


def test_shipped_files_are_small_and_complete():
    files = {
        os.path.relpath(os.path.join(d, f), BUNDLED_WEIGHTS) for d, _, fs in os.walk(BUNDLED_WEIGHTS) for f in fs
    }
    assert files == {
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json", "scheduler/scheduler_config.json",
    }
    total = sum(os.path.getsize(os.path.join(BUNDLED_WEIGHTS, f)) for f in files)
    assert total <= 20 * 2**20


def test_osp_like_structure(pipe):
    blocks = pipe.transformer.transformer_blocks
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) >= 12
    assert all(isinstance(b, BasicTransformerBlock) and b.norm_type == "ada_norm_single" for b in blocks)
    assert all(b.attn2 is not None for b in blocks)  # cross-attention to the caption
    assert pipe.device == torch.device("cpu") and pipe.to("cpu") is pipe


def test_blocks_see_one_flat_token_sequence(pipe):
    """Tokens of all frames in one sequence, same shape in and out of every block."""
    shapes = []
    hook = pipe.transformer.transformer_blocks[0].register_forward_hook(
        lambda m, args, out: shapes.append((tuple(args[0].shape), tuple(out.shape)))
    )
    try:
        pipe(PROMPTS[0], num_frames=8, height=32, width=64, num_inference_steps=1, seed=0, progress=False)
    finally:
        hook.remove()
    cfg = pipe.transformer.config
    tokens = (8 // cfg.patch_size_t) * (32 // cfg.patch_size) * (64 // cfg.patch_size)
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    assert shapes == [((2, tokens, inner), (2, tokens, inner))]


def test_save_load_round_trip_is_bit_identical(pipe, tmp_path):
    pipe.save_pretrained(str(tmp_path))
    again = ShapesPipeline.from_pretrained(str(tmp_path))
    for name in ("transformer", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kwargs = dict(num_inference_steps=3, seed=3, progress=False)
    assert np.array_equal(pipe(PROMPTS, **kwargs).images, again(PROMPTS, **kwargs).images)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples(name):
    p = load_bundled_pipeline(scheduler=name)
    calls = []
    step = p.scheduler.step
    p.scheduler.step = lambda *a, **k: calls.append(1) or step(*a, **k)
    a = p(PROMPTS, num_inference_steps=4, seed=1, progress=False).images
    b = p(PROMPTS, num_inference_steps=4, seed=1, progress=False).images
    assert a.shape == (2, 8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # a seed fixes the video
    assert len(calls) == 2 * len(p.scheduler.timesteps) >= 8  # PNDM adds one step
    assert a.max() > 0


# Samplers of the same process agree on a video: the deterministic ones solve the same ODE, the
# ancestral ones take the same noise. Each is checked against the first of its kind.
ODE_SAMPLERS = ("euler", "ddim", "dpm_solver", "pndm")
ANCESTRAL_SAMPLERS = ("euler_ancestral", "euler_ancestral_timesteps")


@pytest.mark.slow
def test_every_sampler_agrees_with_the_others_of_its_kind():
    from ditcache.metrics import compare_videos

    assert sorted(ODE_SAMPLERS + ANCESTRAL_SAMPLERS) == sorted(SCHEDULERS)  # a new sampler is checked too
    kwargs = dict(num_inference_steps=20, seed=1, num_frames=4, progress=False)
    for kind, floor_db in ((ODE_SAMPLERS, 30.0), (ANCESTRAL_SAMPLERS, 60.0)):
        videos = {name: load_bundled_pipeline(scheduler=name)(PROMPTS, **kwargs).images for name in kind}
        for name in kind[1:]:
            psnr = compare_videos(list(videos[name]), list(videos[kind[0]]))["psnr"]
            assert psnr >= floor_db, f"{name} is {psnr:.1f} dB from {kind[0]}"


def test_guidance_is_one_batched_forward_per_step(pipe):
    batches = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, seed=0, progress=False)
        pipe(PROMPTS, num_inference_steps=2, guidance_scale=1.0, seed=0, progress=False)
    finally:
        hook.remove()
    assert batches == [4, 4, 4, 2, 2]


def test_negative_prompt_changes_the_video(pipe):
    kwargs = dict(num_inference_steps=3, seed=0, progress=False)
    a = pipe(PROMPTS[0], **kwargs).images
    b = pipe(PROMPTS[0], negative_prompt="a red circle moving right", **kwargs).images
    assert not np.array_equal(a, b)


def test_custom_timesteps():
    p = load_bundled_pipeline(scheduler="euler")
    out = p(PROMPTS[0], timesteps=[999, 600, 300, 50], seed=0, progress=False)
    assert p.scheduler.timesteps.tolist() == [999, 600, 300, 50]
    assert out.images.shape == (1, 8, 32, 32, 3)
    with pytest.raises(ValueError, match="timesteps= is not supported by the EulerAncestralDiscreteScheduler"):
        load_bundled_pipeline()(PROMPTS[0], timesteps=[999, 500], progress=False)


def test_latent_hooks_round_trip(pipe):
    clip = render_clip("a white square moving down", np.random.default_rng(0))[None]
    latents = pipe.encode_videos(clip)
    assert latents.shape == (1, 3, 8, 32, 32) and latents.min() >= -1 and latents.max() <= 1
    assert np.array_equal(pipe.decode_latents(latents), clip)


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match=r"unknown words \['purple'\]; known words"):
        pipe("a purple circle moving up", num_inference_steps=1, progress=False)
    with pytest.raises(ValueError, match="scheduler='heun' is unknown; allowed: .*euler_ancestral"):
        load_bundled_pipeline(scheduler="heun")
    with pytest.raises(ValueError, match="num_frames=3"):
        pipe(PROMPTS[0], num_frames=3, progress=False)
    with pytest.raises(ValueError, match="height=16"):
        pipe(PROMPTS[0], height=16, progress=False)
    with pytest.raises(ValueError, match="guidance_scale=0.5"):
        pipe(PROMPTS[0], guidance_scale=0.5, progress=False)
    with pytest.raises(ValueError, match="negative_prompt has 2 entries"):
        pipe(PROMPTS[0], negative_prompt=["", ""], progress=False)
    with pytest.raises(ValueError, match="no 'transformer' subfolder"):
        load_bundled_pipeline(path=os.path.dirname(BUNDLED_WEIGHTS))
