"""The search objective: the model's denoiser D(x_t, t) at any timestep, and the KLUB of a step.

Everything is in the sigma parameterisation of Euler-type samplers: ``x_t = x_0 + sigma(t) * noise``
(the scheduler's ``add_noise``), the model sees ``x_t / sqrt(sigma^2 + 1)`` as in
``scale_model_input``, and D converts the model output to an estimate of ``x_0`` according to the
scheduler's ``prediction_type``. The KLUB of a step from ``up`` down to ``t`` is
``||D(x_t, t) - D(x_up, up)||^2 * w`` with ``w = 1/(c^2 + sigma_t^2) - 1/(c^2 + sigma_up^2)``: ``w`` is
the integral over the step of the KLUB's weight ``2 sigma / (c^2 + sigma^2)^2``, the normaliser of
its Monte Carlo estimate ("Align Your Steps"). Dividing by ``w`` instead, as the reference does,
rewards ever shorter steps near the low-noise end whatever the model: at 10 steps it picked the same
schedule for three different checkpoints, and with the deterministic Euler sampler that schedule
was 9 dB worse than the uniform one (multiplying: 1 dB better).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..schedulers import TimestepEulerAncestralScheduler

KLUB_C = 0.5  # the data scale c in the KLUB weight
# Transformers whose pipeline passes the caption as (B, 1, L, D), its mask as (B, 1, L), a latent
# attention mask and ``added_cond_kwargs`` (Open-Sora-Plan v1.2's sample pipeline); their forward
# indexes those shapes, so they must be called the same way.
OPEN_SORA_TRANSFORMERS = ("OpenSoraT2V", "UDiTT2V")


def transformer_inputs(transformer: Any, model_input: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> dict:
    """Keyword arguments (besides the latents and timestep) of one call, as the model's own pipeline passes them."""
    name = type(getattr(transformer, "_orig_mod", transformer)).__name__  # torch.compile wraps the module
    if name in OPEN_SORA_TRANSFORMERS:
        return {
            "encoder_hidden_states": states.unsqueeze(1), "encoder_attention_mask": mask.unsqueeze(1),
            "attention_mask": torch.ones_like(model_input[:, 0]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}


class Denoiser:
    """D(x_t, t) of a pipeline's transformer, each clip conditioned on its own prompt ("" = unconditional).

    With ``guidance_scale`` > 1 and known prompts, D is the classifier-free-guided estimate the sampler
    itself follows (one forward on a doubled batch, as the pipelines do).
    """

    def __init__(
        self, pipeline: Any, scheduler: TimestepEulerAncestralScheduler, prompts: Sequence[str], batch_size: int,
        guidance_scale: float = 1.0,
    ) -> None:
        self.transformer = pipeline.transformer
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.device = pipeline.device
        self.guidance_scale = guidance_scale if any(prompts) else 1.0  # no prompts: nothing to guide towards
        self.states, self.mask = pipeline.encode_prompt(list(prompts) + [""])[:2]  # the last row: unconditional

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, noise: torch.Tensor, clips: torch.Tensor, timesteps: Sequence[float]) -> tuple:
        """D at each of the strictly decreasing ``timesteps`` for every clip, and the sigmas there.

        Returns estimates shaped (len(timesteps), len(x0), ...). ``clips`` maps each row of ``x0`` to its
        prompt; the same noise is used at every timestep, so the differences between timesteps are not
        drowned in sampling noise.
        """
        self.scheduler.set_timesteps(timesteps=timesteps)
        count, rest = len(x0), [1] * (x0.ndim - 1)
        t_rows = self.scheduler.timesteps.repeat_interleave(count)
        sigmas = self.scheduler.sigmas[:-1].to(self.device)
        sigma_rows = sigmas.repeat_interleave(count).view(-1, *rest)
        noisy = self.scheduler.add_noise(x0.repeat(len(timesteps), *rest), noise.repeat(len(timesteps), *rest), t_rows)
        estimates = self.estimate(noisy, sigma_rows, t_rows, clips.repeat(len(timesteps)))
        return estimates.view(len(timesteps), *x0.shape), sigmas

    @torch.no_grad()
    def estimate(self, noisy: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        """D at the states ``noisy`` (rows with their own ``sigma``, timestep ``t`` and clip), ``batch_size`` rows a call."""
        step = self.batch_size
        return torch.cat([
            self._estimate_batch(noisy[i : i + step], sigma[i : i + step], t[i : i + step], clips[i : i + step])
            for i in range(0, len(noisy), step)
        ])

    def _estimate_batch(self, noisy: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        scale = (sigma**2 + 1) ** 0.5
        dtype = getattr(self.transformer, "dtype", torch.float32)
        model_input, rows = (noisy / scale).to(dtype), clips.to(self.states.device)
        guided = self.guidance_scale > 1.0
        if guided:  # unconditional rows first, as the pipelines batch them
            model_input, t = torch.cat([model_input] * 2), torch.cat([t] * 2)
            rows = torch.cat([torch.full_like(rows, len(self.states) - 1), rows])
        out = self.transformer(
            model_input, timestep=t.to(self.device), return_dict=False,
            **transformer_inputs(self.transformer, model_input, self.states[rows], self.mask[rows]),
        )[0].float()
        if out.shape[1] == 2 * noisy.shape[1]:  # models that also predict the variance (learned sigma)
            out = out[:, : noisy.shape[1]]
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noisy - sigma * out
        if kind == "v_prediction":
            return out * (-sigma / scale) + noisy / scale**2
        if kind == "sample":
            return out
        raise ValueError(f"prediction_type={kind!r} is not supported: allowed 'epsilon', 'v_prediction', 'sample'")


def klub(d_low: torch.Tensor, d_up: torch.Tensor, sigma_low: torch.Tensor, sigma_up: torch.Tensor) -> torch.Tensor:
    """Per-clip KLUB of stepping from ``up`` to ``low``: mean squared denoiser change times the weight w."""
    weight = 1.0 / (KLUB_C**2 + sigma_low**2) - 1.0 / (KLUB_C**2 + sigma_up**2)
    return (d_low - d_up).pow(2).flatten(1).mean(1) * weight
