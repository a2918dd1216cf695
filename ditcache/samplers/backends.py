"""Model backends of the samplers: the bundled model, Open-Sora-Plan v1.2, any diffusers pipeline.

Each builds a pipeline from the flags, says where its blocks are, makes one
uint8 ``(frames, h, w, c)`` video per prompt and seed, and says how several
processes share the work: the bundled model and Open-Sora-Plan split each
video's tokens (sequence parallel); a diffusers pipeline gets a share of the
prompts (data parallel).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
from typing import Any, ContextManager, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ditcache.distributed import DistributedContext, all_gather_objects
from ditcache.settings import for_timesteps

from .args import BUNDLED_FRAMES, BUNDLED_SIZE, SAMPLE_METHODS


class Backend:
    """What the samplers need from a model."""

    block_path = "transformer.transformer_blocks"
    # True: every process takes part in every video (their outputs are the same video);
    # False: each process makes its own videos.
    sequence_parallel = False

    def __init__(self, args: argparse.Namespace, context: DistributedContext) -> None:
        self.args = args
        self.context = context
        self.pipeline: Any = None

    def generate(self, prompt: str, seed: int, timesteps: Optional[Sequence[int]] = None) -> np.ndarray:
        raise NotImplementedError

    def parallel(self) -> ContextManager[Any]:
        """Active while sampling: splits the work over the processes where the backend does that itself."""
        return contextlib.nullcontext()

    def generate_each(self, prompts: Sequence[str], timesteps: Optional[Sequence[int]] = None) -> List[np.ndarray]:
        """One video per prompt (prompt ``i`` seeded ``seed + i``), made by this process (with its peers
        when the backend is sequence parallel)."""
        return [self.generate(p, self.args.seed + i, timesteps) for i, p in enumerate(prompts)]

    def generate_all(self, prompts: Sequence[str], timesteps: Optional[Sequence[int]] = None) -> List[np.ndarray]:
        """Like :meth:`generate_each`, with the prompts shared out over the processes where the backend
        does not split videos itself; the same list on every process."""
        if self.sequence_parallel or not self.context.enabled:
            return self.generate_each(prompts, timesteps)
        rank, world = self.context.rank, self.context.world_size
        mine = {i: self.generate(prompts[i], self.args.seed + i, timesteps) for i in range(rank, len(prompts), world)}
        merged = {}
        for part in all_gather_objects(mine):
            merged.update(part)
        return [merged[i] for i in range(len(prompts))]


class BundledBackend(Backend):
    """The moving-shapes model shipped with ditcache (or another checkpoint of its kind)."""

    def __init__(self, args: argparse.Namespace, context: DistributedContext, split_tokens: bool) -> None:
        super().__init__(args, context)
        from ditcache.models import load_bundled_pipeline
        from ditcache.models.pipeline import DEFAULT_GUIDANCE

        self.pipeline = load_bundled_pipeline(args.model_path, scheduler=SAMPLE_METHODS[args.sample_method],
                                              device=context.device)
        if getattr(args, "timesteps", None) is not None:
            self.pipeline.scheduler = for_timesteps(self.pipeline.scheduler)
        self.sequence_parallel = split_tokens and context.enabled
        self.num_frames = args.num_frames or BUNDLED_FRAMES
        self.height, self.width = args.height or BUNDLED_SIZE, args.width or BUNDLED_SIZE
        self.guidance = DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale
        if args.compile:
            self.pipeline.transformer = torch.compile(self.pipeline.transformer)

    def parallel(self) -> ContextManager[Any]:
        if not self.sequence_parallel:
            return contextlib.nullcontext()
        from ditcache.models.parallel import SequenceParallel

        return SequenceParallel(self.pipeline.transformer)

    def generate(self, prompt: str, seed: int, timesteps: Optional[Sequence[int]] = None) -> np.ndarray:
        return self.pipeline(
            prompt, num_frames=self.num_frames, height=self.height, width=self.width,
            num_inference_steps=self.args.num_sampling_steps, guidance_scale=self.guidance, seed=seed,
            timesteps=timesteps, progress=self.context.is_main,
        ).images[0]


OSP_POSITIVE = (
    "(masterpiece), (best quality), (ultra-detailed), (unwatermarked), {}. emotional, harmonious, vignette, "
    "4k epic detailed, shot on kodak, 35mm photo, sharp focus, high budget, cinemascope, moody, epic, gorgeous"
)
OSP_NEGATIVE = (
    "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)
OSP_SCHEDULERS = {
    "EulerAncestralDiscrete": "EulerAncestralDiscreteScheduler",
    "DDIM": "DDIMScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "PNDM": "PNDMScheduler",
    "EulerDiscrete": "EulerDiscreteScheduler",
}


def import_opensora() -> Any:
    """Open-Sora-Plan's package, or a ValueError saying how to install it."""
    try:
        return importlib.import_module("opensora")
    except ImportError as err:
        raise ValueError(
            f"the Open-Sora-Plan backend needs its `opensora` package, which is not importable here ({err}). "
            "Install Open-Sora-Plan v1.2.0 beside ditcache: git clone the v1.2.0 tag of "
            "PKU-YuanGroup/Open-Sora-Plan, then `pip install -e .` in it (it pins torch 2.1 and diffusers 0.28)"
        ) from None


class OpenSoraBackend(Backend):
    """Open-Sora-Plan v1.2, built as its own ``opensora/sample/sample_t2v_sp.py`` builds it.

    Its pipeline splits latent frames over the processes itself; the cache
    follows the steps through the pipeline's scheduler, without editing its code.
    """

    def __init__(self, args: argparse.Namespace, context: DistributedContext) -> None:
        super().__init__(args, context)
        import_opensora()
        import diffusers.schedulers as schedulers
        from opensora.models.causalvideovae import CausalVAEModelWrapper, ae_stride_config
        from opensora.sample.pipeline_opensora_sp import OpenSoraPipeline
        from transformers import MT5EncoderModel, T5Tokenizer

        if args.ae_path is None or args.text_encoder_name is None:
            raise ValueError("the Open-Sora-Plan backend needs --ae_path and --text_encoder_name")
        if context.enabled:
            try:
                from opensora.acceleration.parallel_states import initialize_sequence_parallel_state
            except ImportError:
                from opensora.utils.parallel_states import initialize_sequence_parallel_state
            initialize_sequence_parallel_state(context.world_size)
        self.sequence_parallel = context.enabled
        dtype = torch.bfloat16 if context.device.type != "cpu" else torch.float32
        vae = CausalVAEModelWrapper(args.ae_path)
        vae.vae = vae.vae.to(device=context.device, dtype=dtype)
        if args.enable_tiling:
            vae.vae.enable_tiling()
            if args.tile_overlap_factor is not None:
                vae.vae.tile_overlap_factor = args.tile_overlap_factor
        vae.vae_scale_factor = ae_stride_config[args.ae]
        text_encoder = MT5EncoderModel.from_pretrained(
            args.text_encoder_name, cache_dir=args.cache_dir, low_cpu_mem_usage=True, torch_dtype=dtype
        ).to(context.device)
        tokenizer = T5Tokenizer.from_pretrained(args.text_encoder_name, cache_dir=args.cache_dir)
        if args.model_type == "udit":
            from opensora.models.diffusion.udit.modeling_udit import UDiTT2V as Transformer
        else:
            from opensora.models.diffusion.opensora.modeling_opensora import OpenSoraT2V as Transformer
        transformer = Transformer.from_pretrained(
            args.model_path, cache_dir=args.cache_dir, low_cpu_mem_usage=False, device_map=None, torch_dtype=dtype
        ).eval()
        scheduler = getattr(schedulers, OSP_SCHEDULERS[args.sample_method])()
        if getattr(args, "timesteps", None) is not None:
            scheduler = for_timesteps(scheduler)
        self.pipeline = OpenSoraPipeline(
            vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler,
            transformer=transformer,
        ).to(context.device)
        if args.compile:
            self.pipeline.transformer = torch.compile(self.pipeline.transformer)

    def generate(self, prompt: str, seed: int, timesteps: Optional[Sequence[int]] = None) -> np.ndarray:
        args = self.args
        torch.manual_seed(seed)
        videos = self.pipeline(
            OSP_POSITIVE.format(prompt), negative_prompt=OSP_NEGATIVE, num_frames=args.num_frames or 29,
            height=args.height or 480, width=args.width or 640, num_inference_steps=args.num_sampling_steps,
            guidance_scale=7.5 if args.guidance_scale is None else args.guidance_scale, num_images_per_prompt=1,
            mask_feature=True, device=self.context.device, max_sequence_length=args.max_sequence_length,
            timesteps=timesteps,
        ).images
        return to_uint8_video(videos[0])


def to_uint8_video(video: Any) -> np.ndarray:
    """A pipeline's video or image (float in [0, 1] or uint8; CHW or HWC) as uint8 (frames, h, w, c)."""
    array = video.detach().float().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"cannot read a video from an output of shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


class DiffusersBackend(Backend):
    """Any diffusers ``DiffusionPipeline`` folder whose transformer has a list of blocks."""

    def __init__(self, args: argparse.Namespace, context: DistributedContext) -> None:
        super().__init__(args, context)
        from diffusers import DiffusionPipeline

        self.pipeline = DiffusionPipeline.from_pretrained(args.model_path).to(context.device)
        self.pipeline.set_progress_bar_config(disable=not context.is_main)
        self.block_path = args.dit_block_path  # None: ditcache finds the transformer's block lists
        if args.compile:
            self.pipeline.transformer = torch.compile(self.pipeline.transformer)

    def generate(self, prompt: str, seed: int, timesteps: Optional[Sequence[int]] = None) -> np.ndarray:
        import inspect

        args = self.args
        accepted = inspect.signature(type(self.pipeline).__call__).parameters
        kwargs = {
            "num_inference_steps": args.num_sampling_steps,
            "generator": torch.Generator("cpu").manual_seed(seed),
            "output_type": "np",
        }
        optional = {"guidance_scale": args.guidance_scale, "height": args.height, "width": args.width,
                    "num_frames": args.num_frames, "timesteps": timesteps}
        kwargs.update({k: v for k, v in optional.items() if v is not None and k in accepted})
        if "class_labels" in accepted:  # class-conditional (DiT): the prompt is a label name or a class id
            output = self.pipeline(self._class_ids(prompt), **kwargs)
        else:
            output = self.pipeline(prompt, **kwargs)
        frames = getattr(output, "frames", None)
        return to_uint8_video(frames[0] if frames is not None else output.images[0])


    def _class_ids(self, prompt: str) -> List[int]:
        labels = getattr(self.pipeline, "labels", None) or {}
        if prompt in labels:
            return [int(labels[prompt])]
        if prompt.strip().isdigit():
            return [int(prompt)]
        raise ValueError(f"prompt {prompt!r} of a class-conditional pipeline must be a class id or one of its "
                         f"labels {sorted(labels)[:20]}")


def make_backend(args: argparse.Namespace, context: DistributedContext, split_tokens: bool = True) -> Backend:
    """The backend the flags ask for; ``split_tokens=False`` keeps a whole bundled model on every process."""
    if args.backend == "bundled":
        backend: Backend = BundledBackend(args, context, split_tokens)
    elif args.backend == "osp":
        backend = OpenSoraBackend(args, context)
    else:
        backend = DiffusersBackend(args, context)
    if args.dit_block_path:
        backend.block_path = args.dit_block_path
    return backend
