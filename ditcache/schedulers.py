"""Schedulers shared by the bundled model and ReStep: an Euler-ancestral one that also accepts custom timesteps.

diffusers' ``EulerAncestralDiscreteScheduler.set_timesteps`` takes only a step count, so a searched
schedule cannot be passed to a pipeline as ``timesteps=``. This subclass adds that argument (the
keyword diffusers pipelines and Open-Sora-Plan's ``retrieve_timesteps`` look for) and otherwise
behaves exactly like the stock class; it relies only on what diffusers 0.28 already has.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler


class TimestepEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """``set_timesteps(timesteps=[...])`` samples at any strictly decreasing times in [0, T-1]."""

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[Sequence[float]] = None,
    ) -> None:
        """Evenly spaced steps as the stock class, or exactly ``timesteps`` with sigmas interpolated at them."""
        if timesteps is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps; got neither")
            super().set_timesteps(num_inference_steps, device=device)
            return
        values = self.check_timesteps(timesteps)
        if num_inference_steps is not None and num_inference_steps != len(values):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} does not match the {len(values)} timesteps given; "
                "pass only one of them"
            )
        super().set_timesteps(len(values), device=device)  # resets step state exactly as the stock class does
        train_sigmas = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        sigmas = np.interp(values, np.arange(0, len(train_sigmas)), train_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(values).to(device=device)

    def check_timesteps(self, timesteps: Sequence[float]) -> np.ndarray:
        """float32 timesteps, or a ValueError unless they are finite, strictly decreasing and in [0, T-1]."""
        try:
            values = np.asarray([float(t) for t in timesteps], dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"timesteps={timesteps!r} is invalid: must be a sequence of numbers") from None
        last = self.config.num_train_timesteps - 1
        if len(values) < 1 or not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > last:
            raise ValueError(f"timesteps={values.tolist()} is invalid: need at least one value, each in [0, {last}]")
        if np.any(np.diff(values) >= 0):
            raise ValueError(f"timesteps={values.tolist()} is invalid: must be strictly decreasing (high noise first)")
        return values
