"""The cache math: which blocks run at each step, and what a reuse step returns."""
from collections import defaultdict

import pytest
import torch
from diffusers import DDIMScheduler

from ditcache import DitCacheAdaptor, DitCacheConfig, dit_cache
from toy import ToyPipeline, expected_blocks

STEPS = 10
BLOCKS = 6


def make_pipeline():
    return ToyPipeline(DDIMScheduler(), num_blocks=BLOCKS)


def blocks_by_step(log):
    runs = defaultdict(list)
    for step, index in log:
        runs[step].append(index)
    return dict(runs)


CONFIGS = [
    DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=1, cache_num_blocks=3),
    DitCacheConfig(cache_step_start=0, cache_step_interval=3, cache_block_start=0, cache_num_blocks=6),  # all blocks
    DitCacheConfig(cache_step_start=1, cache_step_interval=2, cache_block_start=0, cache_num_blocks=2),  # block 0
    DitCacheConfig(cache_step_start=3, cache_step_interval=4, cache_block_start=4, cache_num_blocks=1),  # one block
    DitCacheConfig(cache_step_start=0, cache_step_interval=2, cache_block_start=3, cache_num_blocks=3),  # ends at last
    DitCacheConfig(cache_step_start=1, cache_step_interval=3, cache_block_start=0, cache_num_blocks=4,
                   cache_step_end=8),  # the last two steps spared
    DitCacheConfig(cache_step_start=0, cache_step_interval=1, cache_block_start=1, cache_num_blocks=4),  # interval 1
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, dict(c).values())))
def test_blocks_run_exactly_as_the_rule_says(config):
    pipe = make_pipeline()
    with dit_cache(pipe, config):
        pipe(num_inference_steps=STEPS)
    runs = blocks_by_step(pipe.transformer.log)
    for step in range(STEPS):
        assert runs.get(step, []) == expected_blocks(config, step, BLOCKS), f"step {step}"
    assert set(runs) <= set(range(STEPS))


@pytest.mark.parametrize("cfg_split", [False, True])
def test_every_forward_pass_of_a_step_follows_the_rule(cfg_split):
    config = CONFIGS[0]
    pipe = make_pipeline()
    with dit_cache(pipe, config):
        pipe(num_inference_steps=STEPS, guidance_scale=4.0, cfg_split=cfg_split)
    runs = blocks_by_step(pipe.transformer.log)
    passes = 2 if cfg_split else 1
    for step in range(STEPS):
        assert runs.get(step, []) == expected_blocks(config, step, BLOCKS) * passes


def test_interval_one_reuses_nothing_and_is_bit_identical():
    reference = make_pipeline()()
    pipe = make_pipeline()
    with dit_cache(pipe, CONFIGS[-1]):
        out = pipe()
    assert torch.equal(out, reference)


def test_reuse_step_returns_start_input_plus_stored_delta():
    config = DitCacheConfig(cache_step_start=1, cache_step_interval=3, cache_block_start=2, cache_num_blocks=3)
    pipe = make_pipeline()
    blocks = pipe.transformer.transformer_blocks
    seen = defaultdict(dict)
    clock = pipe.transformer.clock
    blocks[config.cache_block_start].register_forward_pre_hook(
        lambda m, args: seen[clock["step"]].__setitem__("in", args[0].clone())
    )
    blocks[config.cache_block_end].register_forward_hook(
        lambda m, args, out: seen[clock["step"]].__setitem__("out", out.clone())
    )
    with dit_cache(pipe, config):
        pipe(num_inference_steps=STEPS)
    delta = None
    for step in range(STEPS):
        mode = config.step_mode(step)
        if mode == "store":
            delta = seen[step]["out"] - seen[step]["in"]
        elif mode == "reuse":
            assert torch.equal(seen[step]["out"], seen[step]["in"] + delta), f"step {step}"
            assert not torch.equal(seen[step]["out"], seen[step]["in"])
    assert delta is not None


def test_off_disabled_and_after_exit_are_bit_identical():
    reference = make_pipeline()(guidance_scale=3.0)
    pipe = make_pipeline()
    blocks = pipe.transformer.transformer_blocks
    before = [dict(block.__dict__) for block in blocks]
    scheduler_before = dict(pipe.scheduler.__dict__)
    with dit_cache(pipe, None):
        assert torch.equal(pipe(guidance_scale=3.0), reference)
    with dit_cache(pipe, CONFIGS[0]) as adaptor:
        adaptor.disable()
        assert torch.equal(pipe(guidance_scale=3.0), reference)
        adaptor.enable()
        assert not torch.equal(pipe(guidance_scale=3.0), reference)
    assert torch.equal(pipe(guidance_scale=3.0), reference)
    for block, saved in zip(blocks, before):
        assert "forward" not in block.__dict__
        assert block.__dict__.keys() == saved.keys()
    assert pipe.scheduler.__dict__.keys() - {"timesteps"} <= scheduler_before.keys() | {"timesteps"}
    assert "step" not in pipe.scheduler.__dict__ and "set_timesteps" not in pipe.scheduler.__dict__


def test_exit_restores_when_the_body_raises():
    pipe = make_pipeline()
    with pytest.raises(RuntimeError, match="boom"):
        with dit_cache(pipe, CONFIGS[0]):
            raise RuntimeError("boom")
    assert all("forward" not in block.__dict__ for block in pipe.transformer.transformer_blocks)
    assert "step" not in pipe.scheduler.__dict__


def test_cached_tensors_are_freed_after_each_call_and_on_exit():
    pipe = make_pipeline()
    with dit_cache(pipe, CONFIGS[0]) as adaptor:
        pipe()
        assert adaptor.cached_passes == 0
        with pytest.raises(KeyboardInterrupt):
            pipe(abort_at=5)
        assert adaptor.cached_passes  # an aborted run keeps them until the next run or exit
    assert adaptor.cached_passes == 0


def test_spec_adaptor_with_update_cache_config_and_remove():
    pipe = make_pipeline()
    reference = make_pipeline()()
    adaptor = DitCacheAdaptor(pipe)  # config=None works for inference
    assert torch.equal(pipe(), reference)
    adaptor.update_cache_config(cache_block_start=1, cache_num_blocks=3, cache_step_start=2, cache_step_interval=2)
    pipe.transformer.log.clear()
    pipe(num_inference_steps=STEPS)
    runs = blocks_by_step(pipe.transformer.log)
    assert runs[3] == expected_blocks(CONFIGS[0], 3, BLOCKS)
    adaptor.remove()
    assert torch.equal(pipe(), reference)
    with pytest.raises(ValueError, match="removed"):
        adaptor.update_cache_config(1, 3, 2, 2)
