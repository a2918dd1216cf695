"""How much an error made at each denoising step reaches the videos, measured by probe runs.

A probe reuses the whole model's residual at one step ``t`` (stored at ``t - 1``)
and computes every other step in full; the MSE of its videos against the
references is the damage that one error does. Divided by the error the probe
injects (the calibration's sketch estimate of it), it gives the step's weight:
damage per unit of relative residual error. The same error costs very different
amounts at different steps, and neighbouring steps can differ by an order of
magnitude, which an unweighted sum of errors cannot know. Weighted by step, a
config's proxy becomes a predicted MSE (for a probe itself, exactly the one
measured). Steps between probed ones take a weight interpolated in log.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .._atomic import atomic_write_text
from ..cache.reuse import Delta, ResidualHistory
from ..config import DitCacheConfig
from ..metrics import psnr_from_mse
from .candidates import Candidate, predicted_speedup
from .recording import Calibration
from .records import RunRecord
from .report import logger, pyplot, save_figure

if TYPE_CHECKING:
    from .runner import Runner

LEAST_DAMAGE = 1e-6  # MSE counted for a probe whose videos came out identical (a weight must stay positive)


def probe_steps(num_steps: int, every: int) -> List[int]:
    """The steps probed: every ``every``-th from step 1 (step 0 has nothing to reuse), and the last step."""
    steps = list(range(1, num_steps, every))
    if steps[-1] != num_steps - 1:
        steps.append(num_steps - 1)
    return steps


def probe_config(step: int, num_steps: int, blocks: int) -> DitCacheConfig:
    """The whole model stored at ``step - 1`` and reused at ``step`` only."""
    return DitCacheConfig(cache_step_start=step - 1, cache_step_interval=2, cache_block_start=0,
                          cache_num_blocks=blocks, num_sampling_steps=num_steps, cache_step_end=step + 1)


def reuse_errors(cal: Calibration, first: int, last: int) -> np.ndarray:
    """By step, the relative error of reusing blocks ``first..last``'s residual of the step before (NaN at step 0)."""
    output = cal.block_out[:, :, last, :].double()
    history = ResidualHistory(output - cal.block_in[:, :, first, :].double(),
                              (output * output).sum(dim=(0, 2)).clamp_min(1e-30), max_interval=2)
    errors = Delta.lagged_errors(history)[:, 1].copy()
    errors[0] = np.nan  # step 0 has no previous residual
    return errors


def injected_errors(cal: Calibration) -> np.ndarray:
    """By step, the relative error a probe at that step injects."""
    return reuse_errors(cal, 0, cal.block_in.shape[2] - 1)


def probes(cal: Calibration, steps: Sequence[int]) -> List[Candidate]:
    """The probe runs to make, as candidates (their proxy: the error each injects)."""
    blocks, injected = cal.block_in.shape[2], injected_errors(cal)
    configs = [probe_config(step, cal.num_steps, blocks) for step in steps]
    return [Candidate(config, predicted_speedup(cal, config), float(injected[config.cache_step_start + 1]))
            for config in configs]


@dataclass(frozen=True)
class StepSensitivity:
    """What the probes measured: for each probed step, the damage done and the error injected."""

    num_steps: int
    steps: Tuple[int, ...]
    damage: Tuple[float, ...]  # MSE of the probe's videos against the references
    injected: Tuple[float, ...]  # relative residual error the probe injected

    @classmethod
    def of(cls, records: Sequence[RunRecord], num_steps: int) -> "StepSensitivity":
        ordered = sorted(records, key=lambda r: r.config.cache_step_start)
        return cls(num_steps, tuple(r.config.cache_step_start + 1 for r in ordered),
                   tuple(r.mse for r in ordered), tuple(r.proxy for r in ordered))

    def weights(self) -> np.ndarray:
        """By step, MSE per unit of injected relative error; between probed steps interpolated in log."""
        measured = [math.log(max(d, LEAST_DAMAGE) / max(e, 1e-30)) for d, e in zip(self.damage, self.injected)]
        return np.exp(np.interp(np.arange(self.num_steps), self.steps, measured))

    def to_dict(self) -> Dict[str, Any]:
        return {"num_steps": self.num_steps, "steps": list(self.steps), "damage_mse": list(self.damage),
                "injected_error": list(self.injected), "weights": self.weights().tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepSensitivity":
        return cls(int(data["num_steps"]), tuple(int(s) for s in data["steps"]),
                   tuple(float(d) for d in data["damage_mse"]), tuple(float(e) for e in data["injected_error"]))


def measure(runner: "Runner", cal: Calibration, every: int) -> StepSensitivity:
    """Make the probes of every ``every``-th step (journalled and spread over the ranks as any run)."""
    steps = runner.config.num_sampling_steps
    picks = runner.ranks.decide(lambda: probes(cal, probe_steps(steps, every)))
    sensitivity = StepSensitivity.of(runner.run(picks, "sensitivity probes"), steps)
    logger.info("sensitivity: %d probes, weights from %.3g to %.3g", len(picks), sensitivity.weights()[1:].min(),
                sensitivity.weights()[1:].max())
    return sensitivity


@dataclass
class SensitivityProfile:
    """Where caching hurts: the measured step sensitivity, and by block and step the PSNR predicted for
    reusing that one block's residual of the step before (the step's weight times the block's error)."""

    sensitivity: StepSensitivity
    block_psnr: np.ndarray  # (blocks, steps); NaN at step 0
    full_runs: int

    @classmethod
    def of(cls, cal: Calibration, sensitivity: StepSensitivity, full_runs: int) -> "SensitivityProfile":
        weights = sensitivity.weights()
        damage = np.stack([weights * reuse_errors(cal, b, b) for b in range(cal.block_in.shape[2])])
        with np.errstate(divide="ignore", invalid="ignore"):
            psnr = 10.0 * np.log10(255.0 ** 2 / np.maximum(damage, LEAST_DAMAGE))
        return cls(sensitivity, psnr, full_runs)

    @property
    def probe_psnr(self) -> List[float]:
        return [psnr_from_mse(max(d, LEAST_DAMAGE)) for d in self.sensitivity.damage]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "step_sensitivity": self.sensitivity.to_dict(),
            "probe_psnr": dict(zip(map(str, self.sensitivity.steps), self.probe_psnr)),
            "block_step_psnr": [[None if math.isnan(v) else v for v in row] for row in self.block_psnr.tolist()],
            "full_runs": self.full_runs,
        }

    def save(self, json_path: str) -> List[str]:
        """Write the profile as JSON, and ``<stem>.png`` beside it if matplotlib is there."""
        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        png = os.path.splitext(json_path)[0] + ".png"
        return [json_path, png] if self.plot(png) else [json_path]

    def plot(self, path: str) -> bool:
        """The block x step heatmap of predicted PSNR over the probes' measured PSNR; False without matplotlib."""
        plt = pyplot()
        if plt is None:
            return False
        figure, (probes_axis, map_axis) = plt.subplots(
            2, 1, figsize=(8, 6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
        probes_axis.plot(self.sensitivity.steps, self.probe_psnr, marker=".")
        probes_axis.set_ylabel("probe PSNR (dB)")
        probes_axis.set_title("reusing the whole model at one step (measured)")
        probes_axis.grid(alpha=0.3)
        image = map_axis.imshow(self.block_psnr, aspect="auto", origin="lower", cmap="viridis_r", interpolation="nearest")
        map_axis.set_xlabel("denoising step")
        map_axis.set_ylabel("block")
        map_axis.set_title("reusing one block at one step (predicted PSNR, dB: low hurts)")
        figure.colorbar(image, ax=[probes_axis, map_axis], shrink=0.6)
        save_figure(plt, figure, path)
        return True
