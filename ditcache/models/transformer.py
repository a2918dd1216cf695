"""A miniature text-to-video DiT with the structure of Open-Sora-Plan v1.2's ``OpenSoraT2V``.

Same parts, same order, same block calls: 3D patch embedding, sin-cos position embedding over the
whole (t, h, w) token grid, adaLN-single timestep modulation, caption projection, a
``transformer_blocks`` list of diffusers ``BasicTransformerBlock`` (full self-attention over the
tokens of all frames, cross-attention to the caption), then the final scale-shift table, projection
and unpatchify. Tokens of all frames form one flat sequence, frame-major, so a sequence-parallel run
can split it by frames. Only diffusers APIs present since 0.28 are used.

The head predicts the clean clip and ``forward`` returns it converted to v (the target its
schedulers are configured for). Large patches (8x8 pixels of 2 frames: 384 values per token) are
what make the model cheap enough to train on a CPU, and a token narrower than its patch cannot carry
per-pixel noise: a head that must output noise (epsilon or v) leaves noisy backgrounds, while the
clean clip lies on a low-dimensional set that a narrow token can represent. The conversion needs
the training noise schedule, which the config therefore holds.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(N, dim) sin-cos embedding of 1-D positions, as in the original Transformer."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = positions.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_3d(dim: int, grid: Tuple[int, int, int]) -> torch.Tensor:
    """(T*H*W, dim) position embedding for a (T, H, W) token grid, frame-major like the tokens.

    A quarter of the channels encode time, the rest split evenly between rows and columns.
    """
    dim_t = dim // 4 // 2 * 2
    dim_hw = (dim - dim_t) // 2
    if dim % 2 or dim_hw % 2 or dim_t == 0:
        raise ValueError(f"dim={dim} cannot be split into even time/row/column parts; use a multiple of 8")
    t, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim_t, t), _sincos_1d(dim_hw, h), _sincos_1d(dim_hw, w)], axis=1)
    return torch.from_numpy(emb).float()


class ShapesT2V(ModelMixin, ConfigMixin):
    """Pixel-space OSP-style text-to-video transformer; input and output are (B, C, T, H, W)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: Optional[int] = None,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        num_layers: int = 12,
        patch_size_t: int = 1,
        patch_size: int = 4,
        caption_channels: int = 64,
        ff_inner_dim: Optional[int] = None,
        norm_eps: float = 1e-6,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.pos_embed_proj = nn.Conv3d(
            in_channels, inner_dim, kernel_size=(patch_size_t, patch_size, patch_size),
            stride=(patch_size_t, patch_size, patch_size),
        )
        self.caption_projection = PixArtAlphaTextProjection(caption_channels, inner_dim)
        self.adaln_single = AdaLayerNormSingle(inner_dim, use_additional_conditions=False)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    cross_attention_dim=inner_dim,
                    activation_fn="gelu-approximate",
                    attention_bias=True,
                    norm_type="ada_norm_single",
                    norm_elementwise_affine=False,
                    norm_eps=norm_eps,
                    ff_inner_dim=ff_inner_dim,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(inner_dim, elementwise_affine=False, eps=norm_eps)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
        self.proj_out = nn.Linear(inner_dim, patch_size_t * patch_size * patch_size * self.out_channels)
        self._pos_cache: dict = {}
        # sqrt((1 - alpha_bar) / alpha_bar) of the linear ("DDPM") schedule, as diffusers' Euler samplers use it
        alphas_cumprod = torch.cumprod(1 - torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64), 0)
        self.register_buffer("train_sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float(), persistent=False)

    def sigma_at(self, timestep: torch.Tensor) -> torch.Tensor:
        """Noise level sigma of (possibly fractional) timesteps, interpolated linearly in t as Euler does."""
        table = self.train_sigmas
        t = timestep.float().clamp(0, len(table) - 1)
        low = t.floor().long().clamp(max=len(table) - 2)
        frac = t - low
        return table[low] * (1 - frac) + table[low + 1] * frac

    def sample_to_v(self, sample: torch.Tensor, noisy: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """v for a clean-clip estimate, given the variance-preserving noisy input it was made from.

        With ``noisy = sqrt(a) x0 + sqrt(1 - a) eps`` and ``sigma^2 = (1 - a) / a``:
        ``v = sqrt(a) eps - sqrt(1 - a) x0 = noisy / sigma - x0 * sqrt(1 + sigma^2) / sigma``.
        Computed in float32: near t=0, sigma is ~0.01 and the terms are large.
        """
        sigma = self.sigma_at(timestep).view(-1, *([1] * (sample.ndim - 1)))
        v = noisy.float() / sigma - sample.float() * (1 + sigma**2).sqrt() / sigma
        return v.to(sample.dtype)

    def _pos_embed(self, grid: Tuple[int, int, int], device: torch.device) -> torch.Tensor:
        key = (grid, device)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed_3d(self.config.num_attention_heads * self.config.attention_head_dim, grid).to(device)
        return self._pos_cache[key]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        return_dict: bool = False,
    ) -> Tuple[torch.Tensor]:
        """Predict v for noisy (B, C, T, H, W) pixels at ``timestep`` (via a clean-clip estimate).

        ``encoder_attention_mask`` is (B, L) with 1 for caption tokens and 0 for padding.
        Returns a 1-tuple, like diffusers models with ``return_dict=False``.
        """
        cfg = self.config
        batch, _, frames, height, width = hidden_states.shape
        pt, p = cfg.patch_size_t, cfg.patch_size
        if frames % pt or height % p or width % p:
            raise ValueError(
                f"input (frames={frames}, height={height}, width={width}) must be divisible by the patch size "
                f"(t={pt}, h=w={p})"
            )
        grid = (frames // pt, height // p, width // p)
        x = self.pos_embed_proj(hidden_states.to(self.dtype)).flatten(2).transpose(1, 2)
        x = x + self._pos_embed(grid, x.device).to(x.dtype)

        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        timestep_input = timestep
        timestep, embedded_timestep = self.adaln_single(
            timestep, {"resolution": None, "aspect_ratio": None}, batch_size=batch, hidden_dtype=x.dtype
        )
        encoder_hidden_states = self.caption_projection(encoder_hidden_states.to(x.dtype))
        if encoder_attention_mask is not None:
            # (B, L) keep-mask -> (B, 1, L) additive bias, as PixArt and OSP pass it to the blocks
            encoder_attention_mask = (1 - encoder_attention_mask.to(x.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

        for block in self.transformer_blocks:
            x = block(
                x,
                attention_mask=None,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                timestep=timestep,
            )

        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale) + shift
        x = self.proj_out(x)
        sample = self._unpatchify(x, grid)
        return (self.sample_to_v(sample, hidden_states, timestep_input),)

    def _unpatchify(self, x: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
        """(B, N, pt*p*p*C) tokens -> (B, C, T, H, W)."""
        pt, p, c = self.config.patch_size_t, self.config.patch_size, self.out_channels
        t, h, w = grid
        x = x.reshape(x.shape[0], t, h, w, pt, p, p, c)
        x = torch.einsum("bthwopqc->bctohpwq", x)
        return x.reshape(x.shape[0], c, t * pt, h * p, w * p)
