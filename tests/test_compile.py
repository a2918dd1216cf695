"""The cache under torch.compile (CPU inductor): the same frames as eager from the first run, and a
bounded number of graphs that does not grow with the step count."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from ditcache import DitCacheConfig, compile_blocks, dit_cache
from ditcache.metrics import psnr_from_mse
from ditcache.models import load_bundled_pipeline

CONFIG = DitCacheConfig(cache_step_start=1, cache_step_interval=2, cache_block_start=2, cache_num_blocks=8)
SMALL = dict(num_frames=2, height=32, width=32, seed=0, progress=False)


def sample(pipe, steps):
    with dit_cache(pipe, CONFIG):
        return pipe("a red circle moving right", num_inference_steps=steps, **SMALL).images


def psnr(a, b):
    return psnr_from_mse(float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()))


@pytest.fixture
def fresh_dynamo(one_thread):
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs():
    return counters["stats"]["unique_graphs"]


def check_compiled_matches_eager(compile_model):
    """First cached compiled run == eager cached; more steps (and a second run) compile nothing new."""
    pipe = load_bundled_pipeline()
    eager = {steps: sample(pipe, steps) for steps in (4, 7)}
    uncached = pipe("a red circle moving right", num_inference_steps=7, **SMALL).images
    assert psnr(eager[7], uncached) < 60  # the config really reuses: it changes the frames
    compile_model(pipe)
    first = sample(pipe, 4)
    assert psnr(first, eager[4]) > 60  # float noise only (the traced cache gave ~30 dB)
    bounded = graphs()
    assert 0 < bounded <= 2 * len(pipe.transformer.transformer_blocks)
    assert psnr(sample(pipe, 7), eager[7]) > 60
    assert graphs() == bounded  # nothing new for more steps, other reuse steps, a second run
    assert counters["stats"]["unique_graphs"] == bounded


@pytest.mark.slow
def test_whole_transformer_compiled_equals_eager_from_the_first_run(fresh_dynamo):
    def compile_model(pipe):
        pipe.transformer = torch.compile(pipe.transformer)

    check_compiled_matches_eager(compile_model)


@pytest.mark.slow
def test_regionally_compiled_blocks_equal_eager_from_the_first_run(fresh_dynamo):
    check_compiled_matches_eager(lambda pipe: compile_blocks(pipe.transformer.transformer_blocks))


def test_compile_blocks_refuses_what_it_cannot_compile():
    pipe = load_bundled_pipeline()
    with pytest.raises(ValueError, match="nn.ModuleList"):
        compile_blocks(pipe.transformer)
    with dit_cache(pipe, CONFIG):
        with pytest.raises(ValueError, match="block 0 is patched by the cache"):
            compile_blocks(pipe.transformer.transformer_blocks)
    assert all("forward" not in block.__dict__ for block in pipe.transformer.transformer_blocks)
