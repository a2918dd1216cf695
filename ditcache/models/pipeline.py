"""Text-to-video pipeline for the bundled model, shaped like Open-Sora-Plan v1.2's ``OpenSoraPipeline``.

Diffusion runs in pixel space: the "latents" are the pixels scaled to [-1, 1], laid out
(B, C, T, H, W) like OSP's VAE latents; ``encode_videos`` / ``decode_latents`` convert between the
two so that code written for a latent pipeline (calibration, ReStep) works unchanged.
Classifier-free guidance is one transformer forward per step on a doubled batch, as in OSP.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from tqdm.auto import tqdm

from ..schedulers import TimestepEulerAncestralScheduler
from .shapes import MIN_SIZE
from .text import ShapesTextEncoder, ShapesTokenizer
from .transformer import ShapesT2V

SCHEDULERS: Dict[str, type] = {
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    # euler_ancestral that also accepts timesteps= (e.g. a ReStep-searched schedule)
    "euler_ancestral_timesteps": TimestepEulerAncestralScheduler,
}
DEFAULT_SCHEDULER = "euler_ancestral"
# OSP's noise schedule. Every sampler starts at t=999 ("trailing"), where the pixels are pure noise.
NOISE_SCHEDULE: Dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}
# Per-sampler settings that are not part of the shared noise schedule. DDIM clips its x0 estimate to
# [-1, 1] by default, which this v-prediction schedule does not want (the videos broke).
_SAMPLER_OPTIONS: Dict[str, Dict[str, Any]] = {"pndm": {"skip_prk_steps": True}, "ddim": {"clip_sample": False}}
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 2.0  # best prompt fidelity of the shipped weights (docs/benchmarks.md: 2 to 7 compared)
BUNDLED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def make_scheduler(name: str = DEFAULT_SCHEDULER, config: Optional[Dict[str, Any]] = None):
    """A diffusers scheduler chosen by name, on the noise schedule the model was trained with."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is unknown; allowed: {sorted(SCHEDULERS)}")
    base = dict(NOISE_SCHEDULE if config is None else config)
    base.update(_SAMPLER_OPTIONS.get(name, {}))
    return SCHEDULERS[name].from_config(base)


def encode_videos_to_latents(videos: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """uint8 (B, T, H, W, C) videos -> float (B, C, T, H, W) latents in [-1, 1]."""
    videos = torch.as_tensor(np.asarray(videos))
    if videos.ndim != 5 or videos.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 (B, T, H, W, C); got {videos.dtype} {tuple(videos.shape)}")
    return videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def decode_latents_to_videos(latents: torch.Tensor) -> np.ndarray:
    """float (B, C, T, H, W) latents -> uint8 (B, T, H, W, C) videos (values clipped to [-1, 1])."""
    pixels = ((latents.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).cpu().numpy()


@dataclass
class ShapesPipelineOutput:
    images: np.ndarray  # uint8 (B, T, H, W, C), named as in OSP's pipeline output


class ShapesPipeline:
    """Prompt -> video with the bundled transformer, text encoder, tokenizer and a diffusers scheduler."""

    def __init__(
        self, transformer: ShapesT2V, text_encoder: ShapesTextEncoder, tokenizer: ShapesTokenizer, scheduler: Any
    ) -> None:
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.scheduler = scheduler

    # -- loading, saving, placement ---------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str, scheduler: str = DEFAULT_SCHEDULER, device: Union[str, torch.device, None] = None
    ) -> "ShapesPipeline":
        """Load a directory written by :meth:`save_pretrained` (diffusers-style subfolders)."""
        if not os.path.isdir(os.path.join(path, "transformer")):
            raise ValueError(f"path={path!r} is not a saved pipeline: it has no 'transformer' subfolder")
        config = EulerAncestralDiscreteScheduler.load_config(os.path.join(path, "scheduler"))
        pipe = cls(
            ShapesT2V.from_pretrained(os.path.join(path, "transformer"), low_cpu_mem_usage=False),
            ShapesTextEncoder.from_pretrained(os.path.join(path, "text_encoder"), low_cpu_mem_usage=False),
            ShapesTokenizer.from_pretrained(os.path.join(path, "tokenizer")),
            make_scheduler(scheduler, {k: v for k, v in config.items() if not k.startswith("_")}),
        )
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, path: str) -> None:
        self.transformer.save_pretrained(os.path.join(path, "transformer"), safe_serialization=True)
        self.text_encoder.save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))

    def to(self, device: Union[str, torch.device]) -> "ShapesPipeline":
        self.transformer.to(device)
        self.text_encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    # -- latent space hooks -----------------------------------------------------------------------
    def encode_videos(self, videos: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, T, H, W, C) videos -> latents on the pipeline's device."""
        return encode_videos_to_latents(videos).to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        return decode_latents_to_videos(latents)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple:
        """Caption states (B, L, D) and keep-mask (B, L) for a list of prompts ("" = unconditional)."""
        ids, mask = self.tokenizer(list(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.text_encoder(ids, mask), mask

    # -- sampling ---------------------------------------------------------------------------------
    def _check_inputs(self, num_frames: int, height: int, width: int, num_inference_steps: int, guidance_scale: float) -> None:
        cfg = self.transformer.config
        check_sizes(cfg.patch_size_t, cfg.patch_size, num_frames, height, width, num_inference_steps, guidance_scale)

    def _set_timesteps(self, num_inference_steps: int, timesteps: Optional[Sequence[int]]) -> torch.Tensor:
        if timesteps is None:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        else:
            if "timesteps" not in inspect.signature(type(self.scheduler).set_timesteps).parameters:
                raise ValueError(
                    f"timesteps= is not supported by the {type(self.scheduler).__name__} scheduler; use one that "
                    f"accepts custom timesteps (e.g. 'euler' or 'dpm_solver')"
                )
            self.scheduler.set_timesteps(timesteps=list(timesteps), device=self.device)
        return self.scheduler.timesteps

    def _step_kwargs(self, generator: Optional[torch.Generator]) -> Dict[str, Any]:
        """Pass the generator only to samplers whose step() takes one, as diffusers pipelines do.

        The class's method is inspected, so a wrapper around ``scheduler.step`` (a step counter,
        say) does not silently drop the generator.
        """
        if "generator" in inspect.signature(type(self.scheduler).step).parameters:
            return {"generator": generator}
        return {}

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Union[str, List[str]] = "",
        num_frames: int = 8,
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        timesteps: Optional[Sequence[int]] = None,
        latents: Optional[torch.Tensor] = None,
        progress: bool = True,
    ) -> ShapesPipelineOutput:
        """Generate one clip per prompt; ``seed`` (or ``generator``) makes it reproducible on any device."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt={prompt!r} is invalid: must be a string or a non-empty list of strings")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries; prompt has {len(prompts)}")
        if timesteps is not None:
            num_inference_steps = len(timesteps)
        self._check_inputs(num_frames, height, width, num_inference_steps, guidance_scale)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        do_cfg = guidance_scale > 1.0

        states, mask = self.encode_prompt(negatives + prompts if do_cfg else prompts)
        timesteps = self._set_timesteps(num_inference_steps, timesteps)
        shape = (len(prompts), self.transformer.config.in_channels, num_frames, height, width)
        if latents is None:
            # drawn on the CPU so a seed gives the same video on every device
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}; expected {shape}")
        latents = latents.to(self.device) * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator)

        for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress)):
            latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            current_timestep = t.expand(latent_model_input.shape[0]).to(self.device)
            noise_pred = self.transformer(
                latent_model_input, timestep=current_timestep, encoder_hidden_states=states, encoder_attention_mask=mask
            )[0]
            if do_cfg:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample

        return ShapesPipelineOutput(images=self.decode_latents(latents))


def weights_fingerprint(path: str = BUNDLED_WEIGHTS) -> str:
    """A short hash of a saved pipeline's files, so results cached for other weights are never reused."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as handle:
                digest.update(name.encode() + handle.read())
    return digest.hexdigest()[:12]


def check_sizes(patch_size_t: int, patch_size: int, num_frames: int, height: int, width: int,
                num_inference_steps: int, guidance_scale: float) -> None:
    """The sampling arguments a model of these patch sizes can take, or a ValueError naming the first that is not."""
    if num_frames < 2 or num_frames % patch_size_t:
        raise ValueError(f"num_frames={num_frames} is invalid: must be >= 2 and a multiple of {patch_size_t}")
    for name, value in (("height", height), ("width", width)):
        if value < MIN_SIZE or value % patch_size:
            raise ValueError(f"{name}={value} is invalid: must be >= {MIN_SIZE} and a multiple of {patch_size}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps} is invalid: must be >= 1")
    if not 1.0 <= guidance_scale < float("inf"):
        raise ValueError(f"guidance_scale={guidance_scale} is invalid: must be a finite number >= 1 (1 disables guidance)")


def check_request(path: Optional[str], prompts: Sequence[str], num_frames: int, height: int, width: int,
                  num_inference_steps: int, guidance_scale: float) -> None:
    """What :meth:`ShapesPipeline.__call__` would refuse, checked from the saved configs before any weights load."""
    path = BUNDLED_WEIGHTS if path is None else path
    if not os.path.isdir(os.path.join(path, "transformer")):
        raise ValueError(f"path={path!r} is not a saved pipeline: it has no 'transformer' subfolder")
    config = ShapesT2V.load_config(os.path.join(path, "transformer"))
    check_sizes(config["patch_size_t"], config["patch_size"], num_frames, height, width,
                num_inference_steps, guidance_scale)
    ShapesTokenizer.from_pretrained(os.path.join(path, "tokenizer"))(list(prompts))


def load_bundled_pipeline(
    path: Optional[str] = None, scheduler: str = DEFAULT_SCHEDULER, device: Union[str, torch.device, None] = None
) -> ShapesPipeline:
    """The shipped moving-shapes model, ready to sample (``path`` loads another checkpoint of its kind)."""
    return ShapesPipeline.from_pretrained(BUNDLED_WEIGHTS if path is None else path, scheduler=scheduler, device=device)
