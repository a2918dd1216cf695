"""reuse_at="output": every block skipped on a reuse step, the transformer's projected output guessed."""
import json
from collections import defaultdict

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from ditcache import DitCacheAdaptor, DitCacheConfig, dit_cache, register_output_head
from ditcache.cache.reuse import reuse_rule
from toy import ToyPipeline, expected_blocks

STEPS = 10
BLOCKS = 6


class CountingLinear(nn.Linear):
    """The toy's output head, counting the calls that really compute."""

    calls = 0

    def forward(self, x):
        CountingLinear.calls += 1
        return super().forward(x)


def make_pipeline():
    pipe = ToyPipeline(DDIMScheduler(), num_blocks=BLOCKS)
    head = pipe.transformer.proj_out
    counting = CountingLinear(head.in_features, head.out_features)
    counting.load_state_dict(head.state_dict())
    pipe.transformer.proj_out = counting
    return pipe


def at_output(start=1, interval=3, reuse="delta", **extra):
    return DitCacheConfig(cache_step_start=start, cache_step_interval=interval, cache_block_start=0,
                          cache_num_blocks=BLOCKS, reuse=reuse, reuse_at="output", **extra)


def outputs_by_step(pipe, **call):
    """The transformer's outputs, by loop step, in call order (one per forward pass)."""
    seen = defaultdict(list)
    clock = pipe.transformer.clock
    handle = pipe.transformer.register_forward_hook(lambda m, a, out: seen[clock["step"]].append(out.clone()))
    try:
        pipe(num_inference_steps=STEPS, **call)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("cfg_split", [False, True])
@pytest.mark.parametrize("config", [at_output(), at_output(0, 2, "taylor1"), at_output(2, 4, "taylor2", cache_step_end=9)],
                         ids=lambda c: "-".join(map(str, dict(c).values())))
def test_blocks_and_head_run_only_on_store_and_full_steps(config, cfg_split):
    pipe = make_pipeline()
    CountingLinear.calls = 0
    with dit_cache(pipe, config):
        pipe(num_inference_steps=STEPS, guidance_scale=4.0, cfg_split=cfg_split)
    passes = 2 if cfg_split else 1
    runs = defaultdict(list)
    for step, index in pipe.transformer.log:
        runs[step].append(index)
    for step in range(STEPS):
        assert runs.get(step, []) == expected_blocks(config, step, BLOCKS) * passes, f"step {step}"
    computed = sum(config.step_mode(step) != "reuse" for step in range(STEPS))
    assert CountingLinear.calls == computed * passes


@pytest.mark.parametrize("cfg_split", [False, True])
def test_delta_reuses_each_pass_own_stored_output_exactly(cfg_split):
    config = at_output(1, 3)
    pipe = make_pipeline()
    with dit_cache(pipe, config):
        seen = outputs_by_step(pipe, guidance_scale=4.0, cfg_split=cfg_split)
    reference = outputs_by_step(make_pipeline(), guidance_scale=4.0, cfg_split=cfg_split)
    last_store = None
    for step in range(STEPS):
        mode = config.step_mode(step)
        if mode == "store":
            last_store = step
        if mode == "reuse":
            for pass_index, output in enumerate(seen[step]):
                assert torch.equal(output, seen[last_store][pass_index]), (step, pass_index)
        elif step <= 1:  # before any reuse, the run is the uncached one
            assert all(torch.equal(a, b) for a, b in zip(seen[step], reference[step]))
    if cfg_split:  # the two passes keep their own outputs
        assert not torch.equal(seen[2][0], seen[2][1])


class RampModel(nn.Module):
    """Blocks add ``w * ramp``; the head is linear: its output is what ``ramp`` is, as a function of the step."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(RampBlock(w) for w in (0.5, -1.25, 2.0))
        self.proj_out = nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, x, ramp):
        for block in self.transformer_blocks:
            x = block(x, ramp=ramp)
        return self.proj_out(x)


class RampBlock(nn.Module):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, hidden_states, ramp=None):
        return hidden_states + self.weight * ramp


class Holder:
    def __init__(self, model):
        self.transformer = model


def ramp_outputs(model, steps=14):
    """Outputs per step for a ramp quadratic in the step, the step told by ``set_timestep_idx``."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    outs = []
    for i in range(steps):
        DitCacheAdaptor.set_timestep_idx(i)
        outs.append(model(x, torch.full_like(x, 0.3 + 0.2 * i - 0.05 * i * i)))
    return outs


def test_taylor2_at_output_is_exact_for_an_output_quadratic_in_the_step():
    model = RampModel()
    reference = ramp_outputs(model)
    config = DitCacheConfig(0, 3, 0, 3, reuse="taylor2", reuse_at="output")
    with dit_cache(Holder(model), config):
        quadratic = ramp_outputs(model)
    with dit_cache(Holder(model), DitCacheConfig(**{**dict(config), "reuse": "taylor1"})):
        linear = ramp_outputs(model)
    for step in range(14):
        if config.step_mode(step) == "store":
            assert torch.equal(quadratic[step], reference[step])
        elif step > 6:  # three store steps (0, 3, 6): the parabola through them is exact
            assert torch.allclose(quadratic[step], reference[step], rtol=0, atol=1e-10), step
            assert not torch.allclose(linear[step], reference[step], atol=1e-3)


def test_taylor2_rule_is_exact_for_a_quadratic_at_uneven_store_steps():
    rule = reuse_rule("taylor2")
    value = lambda t: {"r": torch.tensor([1.0, -2.0], dtype=torch.float64) * (3.0 - 0.5 * t + 0.25 * t * t)}
    stored = None
    for t in (0, 2, 7):
        stored = rule.keep(stored, t, value(t))
    for t in (8, 9, 12):
        assert torch.allclose(rule.guess(stored, t)["r"], value(t)["r"], rtol=0, atol=1e-12)
    two = rule.keep(rule.keep(None, 0, value(0)), 2, value(2))  # two store steps: first order, as taylor1
    assert torch.equal(rule.guess(two, 5)["r"], reuse_rule("taylor1").guess(two, 5)["r"])


def test_nothing_reused_off_and_after_exit_are_bit_identical():
    reference = make_pipeline()(guidance_scale=4.0)
    pipe = make_pipeline()
    with dit_cache(pipe, at_output(0, 1)):  # interval 1: every step stores
        assert torch.equal(pipe(guidance_scale=4.0), reference)
    with dit_cache(pipe, at_output()) as adaptor:
        adaptor.disable()
        assert torch.equal(pipe(guidance_scale=4.0), reference)
        adaptor.enable()
        assert not torch.equal(pipe(guidance_scale=4.0), reference)
        assert adaptor.cached_passes == 0  # freed when the run ended
    assert "forward" not in pipe.transformer.proj_out.__dict__
    assert torch.equal(pipe(guidance_scale=4.0), reference)


def test_switching_back_to_a_region_config_unpatches_the_head():
    pipe = make_pipeline()
    with dit_cache(pipe, at_output()) as adaptor:
        assert "forward" in pipe.transformer.proj_out.__dict__
        adaptor.update_cache_config(1, 2, 0, 2)
        assert "forward" not in pipe.transformer.proj_out.__dict__


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(RampBlock(w) for w in (0.5, 1.0))
        self.final = nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, x, ramp):
        for block in self.transformer_blocks:
            x = block(x, ramp=ramp)
        return self.final(x)


def test_a_transformer_without_a_known_head_is_refused_before_patching():
    model = NoHead()
    with pytest.raises(ValueError, match=r"output head of NoHead.*'proj_out'.*register_output_head\('NoHead'"):
        with dit_cache(Holder(model), DitCacheConfig(0, 2, 0, 2, reuse_at="output")):
            pass
    assert all("forward" not in block.__dict__ for block in model.transformer_blocks)


class UnusedHead(NoHead):
    """Has a ``proj_out`` its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.proj_out = nn.Linear(3, 3, dtype=torch.float64)


def test_a_declared_head_is_used_and_a_head_that_never_runs_is_loud():
    from ditcache.cache.output import OUTPUT_HEADS

    model = NoHead()
    register_output_head("NoHead", "final")
    try:
        reference = ramp_outputs(model, steps=4)
        with dit_cache(Holder(model), DitCacheConfig(0, 2, 0, 2, reuse_at="output")):
            cached = ramp_outputs(model, steps=4)
        assert torch.equal(cached[1], cached[0]) and not torch.equal(reference[1], reference[0])
    finally:
        del OUTPUT_HEADS["NoHead"]
    model = UnusedHead()
    with pytest.raises(ValueError, match=r"output head \(Linear\) of UnusedHead did not run after the blocks"):
        with dit_cache(Holder(model), DitCacheConfig(0, 2, 0, 2, reuse_at="output")):
            ramp_outputs(model, steps=4)


def test_bad_regions_for_output_reuse_name_the_field():
    with pytest.raises(ValueError, match=r"cache_block_start must be 0, got 1"):
        DitCacheConfig(0, 2, 1, 3, reuse_at="output")
    with pytest.raises(ValueError, match=r"reuse_at must be one of \['region', 'output'\], got 'blocks'"):
        DitCacheConfig(0, 2, 0, 3, reuse_at="blocks")
    pipe = make_pipeline()
    with pytest.raises(ValueError, match=rf"cache_num_blocks must be {BLOCKS} \(the whole chain .*got 3"):
        DitCacheAdaptor(pipe, DitCacheConfig(0, 2, 0, 3, reuse_at="output"))
    assert "forward" not in pipe.transformer.proj_out.__dict__


def test_reuse_at_in_json(tmp_path):
    path = tmp_path / "c.json"
    at_output(reuse="taylor2").save(path)
    assert json.loads(path.read_text())["reuse_at"] == "output"
    assert DitCacheConfig.load(path) == at_output(reuse="taylor2")
    DitCacheConfig(0, 2, 0, 4).save(path)
    assert set(json.loads(path.read_text())) == {"cache_step_start", "cache_step_interval", "cache_block_start",
                                                "cache_num_blocks"}
    assert DitCacheConfig.load(path).reuse_at == "region"


def test_bundled_model_reuses_its_projected_output_closer_than_its_blocks_residual():
    from ditcache.metrics import compare_videos
    from ditcache.models import load_bundled_pipeline

    pipe = load_bundled_pipeline(scheduler="euler")
    blocks = len(pipe.transformer.transformer_blocks)
    run = lambda: list(pipe(["a red circle moving right"], num_inference_steps=12, seed=0, progress=False).images)
    reference = run()
    psnr = {}
    for reuse_at in ("region", "output"):
        with dit_cache(pipe, DitCacheConfig(3, 2, 0, blocks, reuse="taylor1", reuse_at=reuse_at)):
            psnr[reuse_at] = compare_videos(run(), reference)["psnr"]
    assert psnr["output"] > psnr["region"] > 10.0
    assert torch.equal(torch.as_tensor(run()[0]), torch.as_tensor(reference[0]))
