"""Calibration clips for the timestep search: which files, their prompts, and their latents.

``videos_path/prompts.json`` (a JSON object: video file name -> prompt, as the samplers write it
beside their outputs) selects the clips and conditions each one on its prompt; without it every
``*.mp4`` in the directory is used, unconditionally (empty prompt).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, List, Sequence

import numpy as np
import torch

from ..video import read_video

PROMPTS_FILE = "prompts.json"


@dataclass(frozen=True)
class CalibrationClip:
    path: str
    prompt: str  # "" when the directory has no prompts.json


def find_clips(videos_path: str) -> List[CalibrationClip]:
    """The clips of ``videos_path`` in name order, with their prompts if ``prompts.json`` lists them."""
    if not isinstance(videos_path, (str, os.PathLike)) or not os.path.isdir(videos_path):
        raise ValueError(f"videos_path={videos_path!r} is invalid: must be an existing directory of calibration videos")
    if not os.access(videos_path, os.R_OK | os.X_OK):
        raise ValueError(f"videos_path={videos_path!r} is invalid: the directory is not readable")
    videos_path = os.fspath(videos_path)
    prompts_path = os.path.join(videos_path, PROMPTS_FILE)
    if not os.path.exists(prompts_path):
        names = sorted(n for n in os.listdir(videos_path) if n.lower().endswith(".mp4"))
        return [CalibrationClip(os.path.join(videos_path, n), "") for n in names]
    try:
        with open(prompts_path, "r", encoding="utf-8") as handle:
            prompts = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{prompts_path!r} is unreadable or not JSON ({err}); it must map video file names to prompts") from None
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"{prompts_path!r} must be a JSON object mapping video file names to prompt strings")
    for name in prompts:
        if os.path.basename(name) != name or not os.path.isfile(os.path.join(videos_path, name)):
            raise ValueError(f"{prompts_path!r} lists {name!r}, which is not a file name in {videos_path!r}")
    return [CalibrationClip(os.path.join(videos_path, n), prompts[n]) for n in sorted(prompts)]


def read_clips(clips: Sequence[CalibrationClip]) -> np.ndarray:
    """All clips decoded into one uint8 (N, T, H, W, C) array; clips of different shapes are an error."""
    videos = [read_video(clip.path) for clip in clips]
    for clip, video in zip(clips, videos):
        if video.shape != videos[0].shape:
            raise ValueError(
                f"calibration videos differ in shape: {clips[0].path!r} is {videos[0].shape} (T, H, W, C) but "
                f"{clip.path!r} is {video.shape}; make them all with the same frame count and size"
            )
    return np.stack(videos)


def encode_clips(pipeline: Any, videos: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W, C) videos -> the pipeline's latents (N, C, T', H', W'), one clip at a time.

    Uses ``pipeline.encode_videos`` when the pipeline has it (the bundled one does); otherwise the
    pipeline's VAE: a tensor it returns is taken as the latents (Open-Sora-Plan's wrapper scales
    them itself), a diffusers ``latent_dist`` is taken at its mode times ``scaling_factor``.
    """
    encode = getattr(pipeline, "encode_videos", None)
    vae = getattr(pipeline, "vae", None)
    if encode is None and not callable(getattr(vae, "encode", None)):
        raise ValueError(
            f"{type(pipeline).__name__} has neither encode_videos() nor a vae with encode(); the timestep search "
            "needs one of them to turn calibration videos into latents"
        )
    latents = []
    with torch.no_grad():
        for video in videos:
            if encode is not None:
                latents.append(encode(video[None]))
                continue
            pixels = torch.from_numpy(video[None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            out = vae.encode(pixels.to(device=pipeline.device, dtype=next(vae.parameters()).dtype))
            if not torch.is_tensor(out):
                out = out.latent_dist.mode() * getattr(vae.config, "scaling_factor", 1.0)
            latents.append(out)
    return torch.cat(latents).float().to(pipeline.device)
