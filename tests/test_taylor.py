"""reuse="taylor1": first-order extrapolation of the region's residual from the last two store steps."""
import json

import pytest
import torch
from torch import nn

from ditcache import DitCacheAdaptor, DitCacheConfig, dit_cache
from test_cache_math import make_pipeline
from toy import expected_blocks


class RampBlock(nn.Module):
    """Adds w * ramp: the residual is linear in the step when the ramp is."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float64))
        self.calls = 0

    def forward(self, hidden_states, ramp=None):
        self.calls += 1
        return hidden_states + self.weight * ramp


class RampModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(RampBlock(w) for w in (0.5, -1.25, 2.0, 0.75, -0.3))

    def forward(self, x, ramp):
        for block in self.transformer_blocks:
            x = block(x, ramp=ramp)
        return x


def outputs_per_step(model, steps=12):
    outs = []
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(1, 2, 3)
    for i in range(steps):
        DitCacheAdaptor.set_timestep_idx(i)
        outs.append(model(x, torch.full_like(x, 0.3 + 0.7 * i)))
        x = x * 0.9 + 0.01 * i  # the input moves too, as latents do
    return outs


class Holder:
    def __init__(self, model):
        self.transformer = model


def test_taylor1_is_exact_for_a_residual_linear_in_the_step():
    model = RampModel()
    reference = outputs_per_step(model)
    config = DitCacheConfig(cache_step_start=0, cache_step_interval=3, cache_block_start=1, cache_num_blocks=3)
    with dit_cache(Holder(model), config):
        constant = outputs_per_step(model)
    with dit_cache(Holder(model), DitCacheConfig(**{**dict(config), "reuse": "taylor1"})):
        extrapolated = outputs_per_step(model)
    for step in range(12):
        mode = config.step_mode(step)
        if mode == "store":
            assert torch.equal(extrapolated[step], reference[step])
        elif step < 3:  # one store step so far: the constant residual
            assert torch.equal(extrapolated[step], constant[step])
            assert not torch.allclose(extrapolated[step], reference[step])
        else:  # two store steps: exact (to float64 rounding), where the constant residual is not
            assert torch.allclose(extrapolated[step], reference[step], rtol=0, atol=1e-12), step
            assert not torch.allclose(constant[step], reference[step])


def test_taylor1_runs_the_same_blocks_and_caching_off_stays_bit_identical():
    config = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=1, cache_num_blocks=3,
                            reuse="taylor1")
    reference = make_pipeline()()
    pipe = make_pipeline()
    with dit_cache(pipe, config) as adaptor:
        pipe.transformer.log.clear()
        cached = pipe(num_inference_steps=10)
        runs = {}
        for step, index in pipe.transformer.log:
            runs.setdefault(step, []).append(index)
        assert all(runs.get(s, []) == expected_blocks(config, s, 6) for s in range(10))
        assert adaptor.cached_passes == 0  # residuals and slopes freed when the run ended
        adaptor.disable()
        assert torch.equal(pipe(), reference)
    assert not torch.equal(cached, reference) and torch.isfinite(cached).all()
    assert torch.equal(pipe(), reference)


def test_reuse_mode_in_json(tmp_path):
    path = tmp_path / "c.json"
    DitCacheConfig(0, 2, 0, 4, reuse="taylor1").save(path)
    assert json.loads(path.read_text())["reuse"] == "taylor1"
    assert DitCacheConfig.load(path).reuse == "taylor1"
    DitCacheConfig(0, 2, 0, 4).save(path)
    assert "reuse" not in json.loads(path.read_text())  # the spec's four keys, unchanged
    with pytest.raises(ValueError, match=r"reuse must be one of \['delta', 'taylor1', 'taylor2'\], got 'taylor3'"):
        DitCacheConfig(0, 2, 0, 4, reuse="taylor3")


@pytest.mark.parametrize("mode", ["delta", "taylor1", "taylor2"])
def test_each_rules_proxies_equal_the_errors_of_running_the_rule(mode):
    from ditcache.cache.reuse import ResidualHistory, reuse_rule

    torch.manual_seed(0)
    steps, rule = 14, reuse_rule(mode)
    residual = torch.randn(2, steps, 5, dtype=torch.float64).cumsum(dim=1)  # (passes, steps, m)
    scale = (residual * residual).sum(dim=(0, 2)) + 1.0
    history = ResidualHistory(residual, scale, max_interval=4)
    for interval in (2, 3, 4):
        for end in (steps, steps - 2):
            proxies = rule.proxies(history, interval, end)
            for start in range(end - 1):
                expected = 0.0
                stored = [None, None]
                for t in range(start, end):
                    for p in range(2):
                        if (t - start) % interval == 0:
                            stored[p] = rule.keep(stored[p], t, {"r": residual[p, t]})
                        else:
                            diff = rule.guess(stored[p], t)["r"] - residual[p, t]
                            expected += float((diff * diff).sum() / scale[t])
                assert proxies[start] == pytest.approx(expected, rel=1e-9, abs=1e-12), (interval, end, start)
