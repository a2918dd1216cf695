"""What a search did: the table of every candidate run, saved as JSON, and a plot.

The config is saved in its kind's own format: a block region as a
:class:`~ditcache.DitCacheConfig` file, a component schedule in SmoothCache's.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from .._atomic import atomic_write, atomic_write_text
from ..component_config import ComponentCacheConfig
from ..config import DitCacheConfig
from .candidates import describe

if TYPE_CHECKING:
    from .records import RunRecord

logger = logging.getLogger("ditcache.search")


@dataclass
class SearchReport:
    """The chosen config and every run the search made to choose it."""

    goal: str
    config: Union[DitCacheConfig, ComponentCacheConfig]
    chosen: "RunRecord"
    runs: List["RunRecord"]
    full_runs: int  # pipeline runs over all prompts, calibration included
    resumed_runs: int  # runs read back from the journal instead of being made again
    seconds: float
    calibration: Dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table of every candidate run, the chosen one marked (with a kind column when component
        schedules were run)."""
        if any(run.kind != "region" for run in self.runs):
            return self._mixed_table()
        lines = [
            "| block start | blocks | step start | interval | reuse | predicted | measured | confirmed | PSNR dB | SSIM "
            "| MSE | |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in sorted(self.runs, key=lambda r: r.measured_speedup):
            c = run.config
            mark = "chosen" if run.key == self.chosen.key else ""
            confirmed = "" if run.confirmed_speedup is None else f"{run.confirmed_speedup:.3f}x"
            end = "" if c.cache_step_end is None else f" (to {c.cache_step_end})"
            lines.append(
                f"| {c.cache_block_start} | {c.cache_num_blocks} | {c.cache_step_start}{end} | "
                f"{c.cache_step_interval} | {c.reuse} | {run.predicted_speedup:.3f}x | {run.measured_speedup:.3f}x | "
                f"{confirmed} | {_fmt(run.psnr)} | {run.ssim:.4f} | {run.mse:.3f} | {mark} |"
            )
        return "\n".join(lines)

    def _mixed_table(self) -> str:
        blocks = int(self.calibration.get("blocks", 0))
        lines = [
            "| kind | config | predicted | measured | confirmed | PSNR dB | SSIM | MSE | |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in sorted(self.runs, key=lambda r: r.measured_speedup):
            mark = "chosen" if run.key == self.chosen.key else ""
            confirmed = "" if run.confirmed_speedup is None else f"{run.confirmed_speedup:.3f}x"
            what = describe(run.config, blocks) + ("" if run.kind == "component" else f", {run.config.reuse}")
            lines.append(
                f"| {run.kind} | {what} | {run.predicted_speedup:.3f}x | {run.measured_speedup:.3f}x | {confirmed} | "
                f"{_fmt(run.psnr)} | {run.ssim:.4f} | {run.mse:.3f} | {mark} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        chose = self.config.to_dict() if isinstance(self.config, DitCacheConfig) else (
            "a component schedule: " + describe(self.config, int(self.calibration.get("blocks", 0))))
        return (
            f"{self.goal}: chose {chose} -- measured {self.chosen.describe_speed()}, "
            f"PSNR {_fmt(self.chosen.psnr)} dB, SSIM {self.chosen.ssim:.4f}; "
            f"{self.full_runs} full runs ({self.resumed_runs} read from the journal), {self.seconds:.1f} s"
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "goal": self.goal,
            "config": self.config.to_dict(),
            "chosen": self.chosen.to_dict(),
            "full_runs": self.full_runs,
            "resumed_runs": self.resumed_runs,
            "seconds": self.seconds,
            "calibration": self.calibration,
            "runs": [run.to_dict() for run in self.runs],
        }

    def save(self, config_path: str) -> List[str]:
        """Write the config, ``<stem>.search.json`` and ``<stem>.search.png`` (if matplotlib is there)."""
        stem = os.path.splitext(config_path)[0]
        self.config.save(config_path)
        written = [config_path, stem + ".search.json"]
        atomic_write_text(written[1], json.dumps(self.to_dict(), indent=2) + "\n")
        if self.plot(stem + ".search.png"):
            written.append(stem + ".search.png")
        return written

    def plot(self, path: str) -> bool:
        """PSNR against measured speedup (confirmed where it was) of every candidate run; False without matplotlib."""
        plt = pyplot()
        if plt is None:
            return False
        figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
        finite = [r for r in self.runs if math.isfinite(r.psnr)]
        axis.scatter([r.speedup for r in finite], [r.psnr for r in finite], label="candidates")
        if math.isfinite(self.chosen.psnr):
            axis.scatter([self.chosen.speedup], [self.chosen.psnr], color="red", marker="*", s=160, label="chosen")
        axis.set_xlabel("measured speedup (x)")
        axis.set_ylabel("PSNR vs uncached (dB)")
        axis.set_title(self.goal)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        save_figure(plt, figure, path)
        return True


def pyplot() -> Optional[Any]:
    """matplotlib's pyplot on a file-only backend, or ``None`` (after a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install 'ditcache[metrics]')")
        return None
    return plt


def save_figure(plt: Any, figure: Any, path: str) -> None:
    """Write ``figure`` to ``path`` as a PNG, atomically, and free it."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"

