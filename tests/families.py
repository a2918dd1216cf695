"""Every diffusers DiT family as a tiny seeded random model with a real scheduler and a real loop.

Each :class:`Family` names the real diffusers transformer class, a tiny config,
the shape of its latents and how its pipeline calls it (the conditioning
inputs, the timestep's scale, classifier-free guidance as one batched call, two
calls a step, or none). :class:`FamilyPipe` builds the model (parameters that
diffusers initialises to zero, such as adaLN-zero gates and output
projections, get random values so every block changes what it is given) and
runs a short denoising loop with a real scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

import diffusers
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

STEPS = 8
Inputs = Callable[[torch.Generator, int], Dict[str, Any]]


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _flux_ids(height: int, width: int, text: int, axes: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image and text position ids as Flux-style pipelines build them."""
    grid = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), -1).reshape(-1, 2)
    img = torch.zeros(height * width, axes)
    img[:, axes - 2:] = grid.float()
    return img, torch.zeros(text, axes)


def _flux2_ids(height: int, width: int, text: int, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    img = torch.cartesian_prod(torch.arange(1), torch.arange(height), torch.arange(width), torch.arange(1))
    txt = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text))
    return img.unsqueeze(0).expand(batch, -1, -1), txt.unsqueeze(0).expand(batch, -1, -1)


@dataclass
class Family:
    """One model family: its transformer, a tiny config, and how its pipeline calls it."""

    name: str
    model: str
    config: Dict[str, Any]
    latent: Tuple[int, ...]
    inputs: Inputs
    cfg: str = "batched"  # "batched", "two" (two calls a step) or "none"
    flow: bool = True  # flow matching (Euler) or DDIM
    timestep_scale: float = 1.0
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"
    call: Optional[Callable[..., torch.Tensor]] = None
    lists: Tuple[str, ...] = ("transformer_blocks",)
    tolerance: float = 0.5  # relative error allowed with the whole chain reused every other step


def _first(output: Any) -> torch.Tensor:
    output = output[0] if isinstance(output, (tuple, list)) else output
    return output.sample if hasattr(output, "sample") else output


class FamilyPipe:
    """A pipeline-like object: ``transformer`` and ``scheduler`` attributes and a short sampling loop."""

    def __init__(self, family: Family, seed: int = 0) -> None:
        self.family = family
        torch.manual_seed(seed)
        self.transformer = getattr(diffusers, family.model)(**family.config).eval()
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in self.transformer.parameters():
                if param.numel() and not param.abs().sum():
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        self.scheduler = FlowMatchEulerDiscreteScheduler() if family.flow else DDIMScheduler()

    def predict(self, latents: torch.Tensor, t: torch.Tensor, inputs: Dict[str, Any]) -> torch.Tensor:
        family = self.family
        timestep = t.expand(latents.shape[0]).float() * family.timestep_scale
        if family.call is not None:
            return family.call(self.transformer, latents, timestep, inputs)
        kwargs = {family.latent_arg: latents, family.timestep_arg: timestep, **inputs}
        out = _first(self.transformer(**kwargs, return_dict=False))
        return out[:, : latents.shape[1]] if out.shape[1] != latents.shape[1] else out

    @torch.no_grad()
    def __call__(self, steps: int = STEPS, guidance: float = 3.0, seed: int = 7) -> torch.Tensor:
        family = self.family
        gen = torch.Generator().manual_seed(seed)
        latents = _randn(gen, 1, *family.latent)
        cond = family.inputs(torch.Generator().manual_seed(11), 1)
        self.scheduler.set_timesteps(steps)
        if family.cfg == "batched":
            both = family.inputs(torch.Generator().manual_seed(11), 2)
        elif family.cfg == "two":
            uncond = family.inputs(torch.Generator().manual_seed(13), 1)
        for t in self.scheduler.timesteps:
            if family.cfg == "batched":
                c, u = self.predict(torch.cat([latents] * 2), t, both).chunk(2)
                pred = u + guidance * (c - u)
            elif family.cfg == "two":
                c = self.predict(latents, t, cond)
                u = self.predict(latents, t, uncond)
                pred = u + guidance * (c - u)
            else:
                pred = self.predict(latents, t, cond)
            latents = self.scheduler.step(pred, t, latents).prev_sample
        return latents


# --- inputs per family ---------------------------------------------------------------------


def _text(dim: int, seq: int = 6, **extra: Callable[[torch.Generator, int], Any]) -> Inputs:
    def inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
        out = {"encoder_hidden_states": _randn(gen, batch, seq, dim)}
        out.update({key: make(gen, batch) for key, make in extra.items()})
        return out
    return inputs


def _flux_inputs(dim: int, pooled: Optional[int], h: int = 4, w: int = 4, seq: int = 6, guidance: bool = False) -> Inputs:
    def inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
        img_ids, txt_ids = _flux_ids(h, w, seq)
        out = {"encoder_hidden_states": _randn(gen, batch, seq, dim), "img_ids": img_ids, "txt_ids": txt_ids}
        if pooled:
            out["pooled_projections"] = _randn(gen, batch, pooled)
        if guidance:
            out["guidance"] = torch.full((batch,), 3.5)
        return out
    return inputs


def _flux2_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    img_ids, txt_ids = _flux2_ids(4, 4, 6, batch)
    return {"encoder_hidden_states": _randn(gen, batch, 6, 32), "img_ids": img_ids, "txt_ids": txt_ids,
            "guidance": torch.full((batch,), 3.5)}


def _flux3_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    img_ids, txt_ids = _flux2_ids(4, 4, 6, 1)
    return {"encoder_hidden_states": _randn(gen, batch, 6, 32), "img_ids": img_ids[0], "txt_ids": txt_ids[0]}


def _ones(*shape: int, dtype=torch.float32) -> Callable[[torch.Generator, int], torch.Tensor]:
    return lambda gen, batch: torch.ones(batch, *shape, dtype=dtype)


def _sizes(height: int, width: int) -> Dict[str, Callable[[torch.Generator, int], torch.Tensor]]:
    return {
        "original_size": lambda g, b: torch.tensor([[height * 8, width * 8]] * b),
        "target_size": lambda g, b: torch.tensor([[height * 8, width * 8]] * b),
        "crop_coords": lambda g, b: torch.tensor([[0, 0]] * b),
    }


def _hunyuan_dit_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    return {
        "encoder_hidden_states": _randn(gen, batch, 4, 8), "text_embedding_mask": torch.ones(batch, 4),
        "encoder_hidden_states_t5": _randn(gen, batch, 4, 8), "text_embedding_mask_t5": torch.ones(batch, 4),
        "image_meta_size": torch.tensor([[64.0, 64, 64, 64, 0, 0]] * batch), "style": torch.zeros(batch, dtype=torch.long),
        "image_rotary_emb": (torch.ones(16, 8), torch.zeros(16, 8)),
    }


def _hidream_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    return {
        "encoder_hidden_states_t5": _randn(gen, batch, 6, 8),
        "encoder_hidden_states_llama3": _randn(gen, 4, batch, 6, 4),
        "pooled_embeds": _randn(gen, batch, 8),
    }


def _lumina_next_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return {
        "encoder_hidden_states": _randn(gen, batch, 6, 32), "encoder_mask": torch.ones(batch, 6),
        "image_rotary_emb": get_2d_rotary_pos_embed_lumina(24 // 3, 384, 384, linear_factor=1.0, ntk_factor=1.0),
        "cross_attention_kwargs": {},
    }


def _qwen_inputs(dim: int, h: int, w: int) -> Inputs:
    def inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
        return {"encoder_hidden_states": _randn(gen, batch, 6, dim),
                "encoder_hidden_states_mask": torch.ones(batch, 6, dtype=torch.long), "img_shapes": [(1, h, w)] * batch}
    return inputs


def _krea2_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    position_ids = torch.zeros(4 + 4, 3)
    position_ids[4:, 1] = torch.arange(2).repeat_interleave(2).float()
    position_ids[4:, 2] = torch.arange(2).repeat(2).float()
    return {"encoder_hidden_states": _randn(gen, batch, 4, 3, 16), "position_ids": position_ids,
            "encoder_attention_mask": torch.ones(batch, 4, dtype=torch.bool)}


def _kandinsky5_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    return {"encoder_hidden_states": _randn(gen, batch, 6, 16), "pooled_projections": _randn(gen, batch, 16),
            "visual_rope_pos": [torch.arange(1), torch.arange(2), torch.arange(2)], "text_rope_pos": torch.arange(6),
            "scale_factor": (1.0, 1.0, 1.0), "sparse_params": None}


def _z_image_call(model: Any, latents: torch.Tensor, timestep: torch.Tensor, inputs: Dict[str, Any]) -> torch.Tensor:
    out = model(x=list(latents.unbind(0)), t=timestep, cap_feats=list(inputs["cap_feats"].unbind(0)), return_dict=False)[0]
    return torch.stack(out)


def _ltx2_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    return {
        "audio_hidden_states": _randn(gen, batch, 5, 4), "encoder_hidden_states": _randn(gen, batch, 6, 16),
        "audio_encoder_hidden_states": _randn(gen, batch, 6, 16),
        "encoder_attention_mask": torch.ones(batch, 6, dtype=torch.bool),
        "num_frames": 2, "height": 4, "width": 4, "audio_num_frames": 5, "fps": 25.0,
    }


def _consisid_inputs(gen: torch.Generator, batch: int) -> Dict[str, Any]:
    return {"encoder_hidden_states": _randn(gen, batch, 8, 8), "id_vit_hidden": [torch.ones(batch, 2, 2)],
            "id_cond": torch.ones(batch, 2)}


FAMILIES = [
    Family("PixArt", "PixArtTransformer2DModel", dict(
        sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        cross_attention_dim=16, out_channels=8, norm_type="ada_norm_single", norm_elementwise_affine=False,
        use_additional_conditions=False, caption_channels=12),
        (4, 8, 8), _text(12, added_cond_kwargs=lambda g, b: {"aspect_ratio": None, "resolution": None}), flow=False),
    Family("DiT", "DiTTransformer2DModel", dict(
        in_channels=4, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=3,
        norm_type="ada_norm_zero", num_embeds_ada_norm=8, patch_size=2, sample_size=8),
        (4, 8, 8), lambda g, b: {"class_labels": torch.tensor([1, 0][:b])}, flow=False),
    Family("CogVideoX", "CogVideoXTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=3, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=6),
        (3, 4, 8, 8), _text(8), flow=False),
    Family("CogView3Plus", "CogView3PlusTransformer2DModel", dict(
        patch_size=2, in_channels=4, num_layers=3, attention_head_dim=4, num_attention_heads=2, out_channels=4,
        text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8),
        (4, 8, 8), _text(8, **_sizes(8, 8)), flow=False),
    Family("CogView4", "CogView4Transformer2DModel", dict(
        patch_size=2, in_channels=4, num_layers=3, attention_head_dim=4, num_attention_heads=4, out_channels=4,
        text_embed_dim=8, time_embed_dim=8, condition_dim=4),
        (4, 8, 8), _text(8, **_sizes(8, 8)), cfg="two"),
    Family("ConsisID", "ConsisIDTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, cross_attn_interval=1, is_kps=False,
        is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2, LFE_vit_dim=2,
        LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=10,
        LFE_ff_mult=1, LFE_num_scale=1),
        (1, 4, 8, 8), _consisid_inputs, flow=False),
    Family("Allegro", "AllegroTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=3,
        cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
        (4, 2, 8, 8), _text(8), flow=False),
    Family("Latte", "LatteTransformer3DModel", dict(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4, num_attention_heads=2, caption_channels=8,
        in_channels=4, cross_attention_dim=8, out_channels=8, num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=2),
        (4, 2, 8, 8), _text(8, enable_temporal_attentions=lambda g, b: True), flow=False,
        lists=("transformer_blocks", "temporal_transformer_blocks")),
    Family("HunyuanDiT", "HunyuanDiT2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
        cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4, hidden_size=16, text_len=4,
        text_len_t5=4),
        (4, 8, 8), _hunyuan_dit_inputs, flow=False, lists=("blocks",),
        # this random model's output changes by 60-120% between neighbouring steps (DDIM, 8 or 20 steps), so
        # reusing any of its blocks costs more than elsewhere; still closer than a sample from other noise (1.0)
        tolerance=0.9),
    Family("LuminaNext", "LuminaNextDiT2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=3, num_attention_heads=3,
        num_kv_heads=1, multiple_of=16, learn_sigma=False, qk_norm=True, cross_attention_dim=32, scaling_factor=1.0),
        (4, 8, 8), _lumina_next_inputs, timestep_scale=1 / 1000, lists=("layers",)),
    Family("Lumina2", "Lumina2Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1,
        num_attention_heads=3, num_kv_heads=1, multiple_of=2, scaling_factor=1.0, axes_dim_rope=(4, 2, 2),
        axes_lens=(128, 128, 128), cap_feat_dim=32),
        (4, 8, 8), _text(32, encoder_attention_mask=_ones(6, dtype=torch.bool)), cfg="two",
        timestep_scale=1 / 1000, lists=("context_refiner", "noise_refiner", "layers")),
    Family("SD3", "SD3Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=16),
        (4, 8, 8), _text(16, pooled_projections=lambda g, b: _randn(g, b, 8))),
    Family("AuraFlow", "AuraFlowTransformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2,
        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
        out_channels=4, pos_embed_max_size=16),
        (4, 8, 8), _text(16), timestep_scale=1 / 1000, lists=("joint_transformer_blocks", "single_transformer_blocks")),
    Family("Flux", "FluxTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 2, 2), guidance_embeds=True),
        (16, 4), _flux_inputs(32, 32, guidance=True), cfg="none", timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("Flux2", "Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=256, axes_dims_rope=(2, 2, 2, 2)),
        (16, 4), _flux2_inputs, cfg="none", timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("Flux3", "Flux3Transformer2DModel", dict(
        in_channels=4, cond_in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(2, 2, 2, 2)),
        (16, 4), _flux3_inputs, cfg="two", timestep_scale=1 / 1000,
        lists=("txt_mode_blocks", "mode_blocks.image", "single_transformer_blocks")),
    Family("Chroma", "ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 2, 2), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1),
        (16, 4), _flux_inputs(32, None), cfg="two", timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("Bria", "BriaTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=None, axes_dims_rope=(0, 4, 4)),
        (16, 4), _flux_inputs(32, None), timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("OvisImage", "OvisImageTransformer2DModel", dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 2, 2)),
        (16, 4), _flux_inputs(32, None), cfg="two", timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("LongCatImage", "LongCatImageTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 2, 2)),
        (16, 4), _flux_inputs(32, None), cfg="two", timestep_scale=1 / 1000,
        lists=("transformer_blocks", "single_transformer_blocks")),
    Family("HiDream", "HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(8, 8), llama_layers=(0, 1, 2, 3),
        force_inference_output=True),
        (4, 8, 8), _hidream_inputs, timestep_arg="timesteps", timestep_scale=1.0,
        lists=("double_stream_blocks", "single_stream_blocks")),
    Family("HunyuanVideo", "HunyuanVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None),
        (4, 2, 4, 4), _text(16, pooled_projections=lambda g, b: _randn(g, b, 8),
                            encoder_attention_mask=_ones(6), guidance=lambda g, b: torch.full((b,), 6000.0)),
        cfg="none", lists=("transformer_blocks", "single_transformer_blocks")),
    Family("HunyuanVideo15", "HunyuanVideo15Transformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=3,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v"),
        (4, 1, 4, 4), _text(16, encoder_attention_mask=_ones(6), encoder_hidden_states_2=lambda g, b: _randn(g, b, 4, 8),
                            encoder_attention_mask_2=_ones(4), image_embeds=lambda g, b: torch.zeros(b, 3, 12)),
        cfg="two"),
    Family("HunyuanImage", "HunyuanImageTransformer2DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False, text_embed_dim=16,
        text_embed_2_dim=16, rope_axes_dim=(4, 4)),
        (4, 4, 4), _text(16, encoder_attention_mask=_ones(6), encoder_hidden_states_2=lambda g, b: _randn(g, b, 4, 16),
                         encoder_attention_mask_2=_ones(4)),
        cfg="two", lists=("transformer_blocks", "single_transformer_blocks")),
    Family("MotifVideo", "MotifVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_single_layers=2, num_decoder_layers=0, mlp_ratio=2.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
        norm_type="layer_norm", text_embed_dim=16, image_embed_dim=4, rope_theta=256.0, rope_axes_dim=(4, 4, 4),
        enable_text_cross_attention_dual=False, enable_text_cross_attention_single=False),
        (4, 1, 4, 4), _text(16), lists=("transformer_blocks", "single_transformer_blocks")),
    Family("Mochi", "MochiTransformer3DModel", dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=3, pooled_projection_dim=16,
        in_channels=4, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=6),
        (4, 2, 8, 8), _text(16, encoder_attention_mask=_ones(6, dtype=torch.bool))),
    Family("LTXVideo", "LTXVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=3, qk_norm="rms_norm_across_heads", caption_channels=16),
        (2 * 4 * 4, 4), _text(16, encoder_attention_mask=_ones(6, dtype=torch.bool), num_frames=lambda g, b: 2,
                               height=lambda g, b: 4, width=lambda g, b: 4)),
    Family("LTX2", "LTX2VideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=3, qk_norm="rms_norm_across_heads",
        caption_channels=16, rope_double_precision=False),
        (2 * 4 * 4, 4), _ltx2_inputs),
    Family("Sana", "SanaTransformer2DModel", dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=4, num_attention_heads=2,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=8),
        (4, 8, 8), _text(8)),
    Family("SanaVideo", "SanaVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=3,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
        mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2), norm_elementwise_affine=False,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        (4, 2, 8, 8), _text(16)),
    Family("EasyAnimate", "EasyAnimateTransformer3DModel", dict(
        attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=3, num_layers=3, out_channels=4,
        patch_size=2, sample_height=60, sample_width=90, text_embed_dim=16, time_embed_dim=8,
        time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
        (4, 2, 8, 8), _text(16)),
    Family("Cosmos", "CosmosTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=3, mlp_ratio=2,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable"),
        (4, 1, 8, 8), _text(16, attention_mask=_ones(6), fps=lambda g, b: 30),
        cfg="two"),
    Family("Wan", "WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32),
        (4, 2, 8, 8), _text(16), cfg="two", lists=("blocks",)),
    Family("SkyReelsV2", "SkyReelsV2Transformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32),
        (4, 2, 8, 8), _text(16), cfg="two", lists=("blocks",)),
    Family("ChronoEdit", "ChronoEditTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64, rope_temporal_skip_len=8),
        (4, 2, 8, 8), _text(16), cfg="two", lists=("blocks",)),
    Family("WanVACE", "WanVACETransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, vace_layers=[0, 2], vace_in_channels=12),
        (4, 2, 8, 8), _text(16, control_hidden_states=lambda g, b: _randn(g, b, 12, 2, 8, 8)),
        cfg="two", lists=("vace_blocks", "blocks")),
    Family("QwenImage", "QwenImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(4, 2, 2)),
        (16, 16), _qwen_inputs(16, 4, 4), cfg="two", timestep_scale=1 / 1000),
    Family("NucleusMoE", "NucleusMoEImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(4, 2, 2), moe_enabled=False, capacity_factors=[8.0, 8.0, 8.0]),
        (16, 16), _qwen_inputs(16, 4, 4), cfg="two", timestep_scale=1 / 1000),
    Family("GlmImage", "GlmImageTransformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64),
        (4, 8, 8), _text(16, prior_token_id=lambda g, b: torch.randint(0, 64, (b, 16), generator=g),
                         prior_token_drop=lambda g, b: torch.zeros(b, dtype=torch.bool),
                         target_size=lambda g, b: torch.tensor([[8.0, 8.0]] * b),
                         crop_coords=lambda g, b: torch.tensor([[0.0, 0.0]] * b)),
        cfg="two"),
    Family("ErnieImage", "ErnieImageTransformer2DModel", dict(
        hidden_size=16, num_attention_heads=1, num_layers=3, ffn_hidden_size=16, in_channels=4, out_channels=4,
        patch_size=1, text_in_dim=16, rope_theta=256, rope_axes_dim=(8, 4, 4), qk_layernorm=True),
        (4, 4, 4), lambda g, b: {"text_bth": _randn(g, b, 6, 16), "text_lens": torch.tensor([6] * b)},
        lists=("layers",)),
    Family("PRX", "PRXTransformer2DModel", dict(
        in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=3,
        axes_dim=[8, 8], theta=10_000),
        (4, 8, 8), _text(16), lists=("blocks",)),
    Family("Krea2", "Krea2Transformer2DModel", dict(
        in_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
        text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2), rope_theta=1000.0),
        (4, 16), _krea2_inputs, cfg="two", timestep_scale=1 / 1000),
    Family("Kandinsky5", "Kandinsky5Transformer3DModel", dict(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=16, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=2, num_visual_blocks=2, axes_dims=(1, 1, 2), visual_cond=False,
        attention_type="regular"),
        (1, 4, 4, 4), _kandinsky5_inputs, cfg="two", lists=("text_transformer_blocks", "visual_transformer_blocks")),
    Family("ZImage", "ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16, n_layers=2, n_refiner_layers=1, n_heads=1,
        n_kv_heads=2, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32]),
        (4, 1, 8, 8), lambda g, b: {"cap_feats": _randn(g, b, 6, 16)}, call=_z_image_call, timestep_scale=1 / 1000,
        lists=("noise_refiner", "context_refiner", "layers")),
]
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}
