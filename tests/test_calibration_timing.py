"""The calibration's times hold through a stretch of the run slowed by another process."""
import time

import torch
from torch import nn

from ditcache import steps
from ditcache.search.recording import CalibrationRecorder

STEPS = 12


class Busy(nn.Module):
    """A block that takes ``seconds`` a call, ``slow`` times that while ``load`` says the host is loaded."""

    def __init__(self, seconds: float, load: dict) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.seconds, self.load = seconds, load

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds * self.load["factor"])
        return hidden_states + self.linear(hidden_states)


def calibrate(slow_steps: range):
    load = {"factor": 1.0}
    blocks = nn.ModuleList([Busy(0.004, load), Busy(0.002, load)])
    with CalibrationRecorder(blocks) as recorder:
        started = time.perf_counter()
        x = torch.randn(1, 4, 8)
        for step in range(STEPS):
            steps.set_step(step)
            load["factor"] = 3.0 if step in slow_steps else 1.0
            for block in blocks:
                x = block(x)
            time.sleep(0.002 * load["factor"])  # the rest of a step: scheduler, embeddings
        steps.end_run()
        seconds = time.perf_counter() - started
    return recorder.result([], seconds, STEPS)


def test_a_slowed_stretch_does_not_move_the_block_share():
    quiet, loaded = calibrate(range(0)), calibrate(range(3, 8))  # 5 of 12 steps three times slower
    for calibration in (quiet, loaded):
        share = sum(calibration.block_seconds) / calibration.full_seconds
        assert 0.7 < share < 0.8, share  # 6 ms of blocks in 8 ms steps
        assert 1.7 < calibration.block_seconds[0] / calibration.block_seconds[1] < 2.3
    # (the blocks' median calls over the run's whole time would give 0.41 loaded, 0.75 quiet)
    assert abs(sum(loaded.block_seconds) / loaded.full_seconds - sum(quiet.block_seconds) / quiet.full_seconds) < 0.05
