"""Times that hold through a stretch of a run slowed by another process (noise only ever slows)."""
import time

import pytest
import torch
from torch import nn

from ditcache import DitCacheConfig, steps
from ditcache.component_config import ComponentCacheConfig
from ditcache.search.recording import CalibrationRecorder
from ditcache.search.runner import step_kind
from ditcache.timing import BlockTimer, steady_seconds

STEPS = 10


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Busy(nn.Module):
    """Computes for ``seconds`` a call, ``load["factor"]`` times that while the host is loaded."""

    def __init__(self, seconds: float, load: dict) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.seconds, self.load = seconds, load

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        spin(self.seconds * self.load["factor"])
        return hidden_states + self.linear(hidden_states)


class Model(nn.Module):
    def __init__(self, load: dict) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Busy(0.064, load), Busy(0.032, load)])
        self.head = Busy(0.016, load)  # the model's own work around its blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def calibrate(slow_steps: range):
    load = {"factor": 1.0}
    model = Model(load)
    with BlockTimer([model]) as passes, CalibrationRecorder(model.blocks) as recorder:
        started = time.perf_counter()
        x = torch.randn(1, 4, 8)
        for step in range(STEPS):
            steps.set_step(step)
            load["factor"] = 3.0 if step in slow_steps else 1.0
            x = model(x)
            spin(0.016 * load["factor"])  # the loop's own work: the scheduler's step
        steps.end_run()
        seconds = time.perf_counter() - started
    return recorder.result([], seconds, STEPS, passes.calls[0]), seconds


def test_a_slowed_stretch_does_not_move_the_calibrated_times():
    (quiet, _), (loaded, wall) = calibrate(range(0)), calibrate(range(3, 7))  # 4 of 10 steps 3x slower
    # 96 ms of blocks in 128 ms steps; the blocks' median calls over the whole run's clock would give
    # a share of 0.42 loaded (0.75 quiet)
    assert sum(quiet.block_seconds) / quiet.full_seconds == pytest.approx(0.75, abs=0.1)
    assert sum(loaded.block_seconds) == pytest.approx(sum(quiet.block_seconds), rel=0.1)
    assert loaded.block_seconds[0] / loaded.block_seconds[1] == pytest.approx(2, rel=0.25)
    # the slowed passes count as typical ones; the loop's own work between them is taken as it was
    assert loaded.full_seconds == pytest.approx(quiet.full_seconds + 4 * 2 * 0.016, rel=0.15)
    assert wall > 1.4 * loaded.full_seconds  # (the wall clock took the stretch in full)


def test_steady_seconds_takes_each_kind_of_pass_at_its_median():
    passes = [1.0, 1.0, 5.0, 1.0, 0.2, 0.2, 0.9, 0.2]  # two slowed: a full pass (5.0) and a reuse one (0.9)
    kinds = ["full"] * 4 + ["reuse"] * 4
    # 2.0 s outside the passes, taken as it was
    assert steady_seconds(sum(passes) + 2.0, passes, kinds) == pytest.approx(2.0 + 4 * 1.0 + 4 * 0.2)
    assert steady_seconds(3.0, [], []) == 3.0  # no passes timed: the wall clock


def test_steps_a_config_treats_alike_are_one_kind():
    region = DitCacheConfig(cache_step_start=2, cache_step_interval=2, cache_block_start=0, cache_num_blocks=2)
    assert [step_kind(region, t) for t in range(6)] == ["full", "full", "store", "reuse", "store", "reuse"]
    schedule = ComponentCacheConfig({"attn1": (1, 0, 1, 0), "ff": (0, 0, 1, 1)})
    # step 0 computes everything whatever the lines say (nothing is kept yet)
    assert [step_kind(schedule, t) for t in range(4)] == ["full", (0, 0), (1, 1), (0, 1)]
    assert step_kind(None, 3) == "full" and step_kind(region, None) == "full"
