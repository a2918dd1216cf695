"""Quality of a video against a reference: MSE, PSNR and SSIM on uint8 frames.

PSNR uses the data range 255 of uint8 frames; SSIM comes from torchmetrics
(imported when first needed, so the core stays importable without it).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np
import torch


def check_video(video: object, name: str) -> np.ndarray:
    """A uint8 ``(frames, height, width, channels)`` array, or a ValueError saying what came instead."""
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(video).__name__}")
    if video.dtype != np.uint8 or video.ndim != 4:
        raise ValueError(
            f"{name} must be uint8 with shape (frames, height, width, channels), "
            f"got {video.dtype} with shape {video.shape}"
        )
    return video


def mse(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean squared error in uint8 units."""
    diff = video.astype(np.float64) - reference.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr_from_mse(value: float) -> float:
    """PSNR in dB for data range 255; ``inf`` for identical videos."""
    return math.inf if value == 0 else 10.0 * math.log10(255.0 ** 2 / value)


def ssim(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over frames (Gaussian window, sigma 1.5, data range 255; narrower for tiny frames)."""
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("SSIM needs torchmetrics: pip install 'ditcache[metrics]'") from err
    sigma = min(1.5, (min(video.shape[1], video.shape[2]) - 1) / 3.5 - 0.01)  # window must fit the frame
    preds = torch.from_numpy(video).permute(0, 3, 1, 2).double()
    target = torch.from_numpy(reference).permute(0, 3, 1, 2).double()
    value = structural_similarity_index_measure(preds, target, data_range=255.0, sigma=sigma)
    return float(value)


def compare_videos(videos: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Dict[str, float]:
    """MSE, PSNR (of the pooled MSE) and SSIM (mean over videos) of a set of videos against references."""
    if len(videos) != len(references):
        raise ValueError(f"got {len(videos)} videos to compare with {len(references)} references")
    errors = [mse(v, r) for v, r in zip(videos, references)]
    pooled = float(np.mean(errors))
    return {
        "mse": pooled,
        "psnr": psnr_from_mse(pooled),
        "ssim": float(np.mean([ssim(v, r) for v, r in zip(videos, references)])),
    }
