"""Flags of the torchrun samplers: Open-Sora-Plan v1.2's, the spec's, and ours, checked before any model loads."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from ditcache.config import DitCacheSearchConfig
from ditcache.distributed import DEVICES
from ditcache.restep.config import METHODS, ReStepSearchConfig
from ditcache.settings import (DEFAULT_CACHE_RATIO, DEFAULT_REUSE, REUSE_CHOICES, SAMPLER_FLAGS, SCHEDULE_KIND_CHOICES,
                               check_device, check_guidance, check_output_file, check_output_folder, check_positive,
                               name_flag, resolve_sampling, search_config)

# Open-Sora-Plan's --sample_method names, and the bundled pipeline's scheduler for each.
SAMPLE_METHODS = {
    "EulerAncestralDiscrete": "euler_ancestral",
    "DDIM": "ddim",
    "DPMSolverMultistep": "dpm_solver",
    "PNDM": "pndm",
    "EulerDiscrete": "euler",
}
MODEL_TYPES = ("bundled", "osp", "dit", "udit", "diffusers")
BUNDLED_FRAMES, BUNDLED_SIZE = 8, 32  # the bundled model's clip when --num_frames / --height / --width are omitted
# The bundled pipeline's argument names -> these flags, so its errors name what the user typed.
_FLAG_FOR_ARGUMENT = {"num_frames": "--num_frames", "height": "--height", "width": "--width",
                      "num_inference_steps": "--num_sampling_steps", "guidance_scale": "--guidance_scale",
                      "path": "--model_path"}
OSP_ONLY = ("ae", "ae_path", "text_encoder_name", "tile_overlap_factor", "enable_tiling", "save_memory")


def _common(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model_path", default=None,
                       help="checkpoint folder; omitted: the bundled moving-shapes model")
    model.add_argument("--model_type", choices=MODEL_TYPES, default=None,
                       help="backend; detected from --model_path when omitted (dit/udit = Open-Sora-Plan)")
    model.add_argument("--dit_block_path", default=None,
                       help="dotted path of the block list inside the pipeline, or several separated by commas in run order "
                            "(found automatically if omitted)")
    model.add_argument("--ae", default="CausalVAEModel_4x8x8", help="Open-Sora-Plan: VAE kind")
    model.add_argument("--ae_path", default=None, help="Open-Sora-Plan: VAE weights")
    model.add_argument("--text_encoder_name", default=None, help="Open-Sora-Plan: text encoder (e.g. google/mt5-xxl)")
    model.add_argument("--cache_dir", default="./cache_dir")
    model.add_argument("--max_sequence_length", type=int, default=512)
    model.add_argument("--tile_overlap_factor", type=float, default=None)
    model.add_argument("--enable_tiling", action="store_true")
    model.add_argument("--save_memory", action="store_true")
    model.add_argument("--compile", action="store_true", help="torch.compile the transformer")

    run = parser.add_argument_group("sampling")
    run.add_argument("--text_prompt", nargs="+", required=True, help="prompts, or one .txt file with a prompt a line")
    run.add_argument("--num_frames", type=int, default=None)
    run.add_argument("--height", type=int, default=None)
    run.add_argument("--width", type=int, default=None)
    run.add_argument("--num_sampling_steps", type=int, default=None,
                     help="default: the length of --schedule_timestep, the steps --dit_cache_config was "
                          "searched for, or 50")
    run.add_argument("--guidance_scale", type=float, default=None)
    run.add_argument("--sample_method", choices=sorted(SAMPLE_METHODS), default="EulerAncestralDiscrete")
    run.add_argument("--seed", type=int, default=0, help="seed of prompt i is seed + i")
    run.add_argument("--fps", type=int, default=8)
    run.add_argument("--save_img_path", default="./sample_videos")
    run.add_argument("--device", choices=DEVICES, default="auto")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds without a sign of life from a rank before the job fails (long work on one rank is not a timeout)")


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample_t2v_sp", description="Sample videos, optionally with the DiT cache.")
    _common(parser)
    accel = parser.add_argument_group("acceleration")
    accel.add_argument("--dit_cache_config", default=None, help="JSON file from search_t2v_sp --search_type dit_cache, or a "
                       "component schedule (SmoothCache's format)")
    accel.add_argument("--schedule_timestep", default=None, help="timestep file from search_t2v_sp --search_type restep")
    return parser


def search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search_t2v_sp", description="Search a DiT cache config or a timestep schedule.")
    _common(parser)
    search = parser.add_argument_group("search")
    search.add_argument("--search_type", choices=("dit_cache", "restep"), default="dit_cache")
    search.add_argument("--cache_ratio", type=float, default=None, help=f"dit_cache: speedup target (default {DEFAULT_CACHE_RATIO})")
    search.add_argument("--min_psnr", type=float, default=None, help="dit_cache: quality floor in dB instead")
    search.add_argument("--cache_step_interval", type=int, default=4, help="dit_cache: largest interval tried")
    search.add_argument("--reuse", nargs="+", default=list(DEFAULT_REUSE), choices=REUSE_CHOICES,
                        help="dit_cache: reuse modes tried")
    search.add_argument("--candidates_to_run", type=int, default=DitCacheSearchConfig.candidates_to_run,
                        help="dit_cache: best-ranked configs run for real for a speedup target")
    search.add_argument("--confirm_pairs", type=int, default=DitCacheSearchConfig.confirm_pairs,
                        help="dit_cache: most interleaved uncached/cached run pairs confirming the winner's speedup")
    search.add_argument("--sensitivity_every", type=int, default=DitCacheSearchConfig.sensitivity_every,
                        help="dit_cache: steps between sensitivity probes (1: every step, the most thorough; 0: none)")
    search.add_argument("--schedule_kind", default=DitCacheSearchConfig.schedule_kind, choices=SCHEDULE_KIND_CHOICES,
                        help="dit_cache: configs searched: block regions, component schedules (SmoothCache's "
                        "format), or any (both)")
    search.add_argument("--schedule_timestep", default=None,
                        help="dit_cache: search on the timesteps of this file (from --search_type restep)")
    search.add_argument("--cache_save_path", default="./dit_cache_config.json")
    search.add_argument("--journal_dir", default=None, help="dit_cache: resumable journal (default: beside the config)")
    search.add_argument("--videos_path", default=None, help="restep: folder of calibration videos")
    search.add_argument("--save_dir", default=None, help="restep: where searched_schedule.txt is written")
    search.add_argument("--neighbour_type", choices=("uniform", "random"), default="uniform")
    search.add_argument("--monte_carlo_iters", type=int, default=5,
                        help="restep: calibration clips scoring each candidate (klub) or teacher prompts (dp)")
    search.add_argument("--restep_method", choices=METHODS, default="klub",
                        help="restep: the spec's KLUB sweep, or dp (steps chosen against a fine-step Euler teacher)")
    search.add_argument("--teacher_steps", type=int, default=ReStepSearchConfig.teacher_steps,
                        help="restep dp: Euler steps of the teacher whose timesteps are the candidates")
    return parser


def read_prompts(values: List[str]) -> List[str]:
    """The prompts given on the command line, or read from one .txt file (a prompt a line)."""
    if len(values) == 1 and values[0].endswith(".txt"):
        if not os.path.isfile(values[0]):
            raise ValueError(f"--text_prompt file {values[0]!r} does not exist")
        with open(values[0], "r", encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip()]
        if not prompts:
            raise ValueError(f"--text_prompt file {values[0]!r} has no prompts")
        return prompts
    return list(values)


def detect_model_type(model_path: Optional[str]) -> str:
    """bundled without a path; a diffusers pipeline folder has model_index.json; else Open-Sora-Plan."""
    if model_path is None:
        return "bundled"
    if not os.path.isdir(model_path):
        raise ValueError(f"--model_path {model_path!r} is not a folder")
    if os.path.isfile(os.path.join(model_path, "model_index.json")):
        return "diffusers"
    if os.path.isdir(os.path.join(model_path, "transformer")) and os.path.isdir(os.path.join(model_path, "tokenizer")):
        return "bundled"
    return "osp"


def check_bundled(args: argparse.Namespace) -> None:
    """What the bundled model would refuse (sizes, prompt words, guidance), before it loads."""
    from ditcache.models.pipeline import DEFAULT_GUIDANCE, check_request

    try:
        check_request(args.model_path, args.prompts, args.num_frames or BUNDLED_FRAMES, args.height or BUNDLED_SIZE,
                      args.width or BUNDLED_SIZE, args.num_sampling_steps,
                      DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale)
    except ValueError as err:
        message = str(err)
        raise ValueError(f"--text_prompt: {message}" if message.startswith("prompt ")
                         else name_flag(message, _FLAG_FOR_ARGUMENT)) from None


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Settle defaults and refuse impossible combinations, before anything heavy happens."""
    args.prompts = read_prompts(args.text_prompt)
    kind = args.model_type or detect_model_type(args.model_path)
    args.backend = "osp" if kind in ("osp", "dit", "udit") else kind
    if args.backend == "osp" and args.model_type is None:
        args.model_type = "dit"
    if args.backend != "osp":
        given = [name for name in OSP_ONLY if getattr(args, name) != parser.get_default(name)]
        if given:
            raise ValueError(f"--{given[0]} applies to Open-Sora-Plan models only (backend here: {args.backend})")
    if args.backend == "osp" and args.model_path is None:
        raise ValueError("--model_type osp/dit/udit needs --model_path (the Open-Sora-Plan checkpoint folder)")
    for name in ("num_frames", "height", "width", "num_sampling_steps", "fps", "timeout", "max_sequence_length"):
        check_positive(f"--{name}", getattr(args, name))
    check_guidance("--guidance_scale", args.guidance_scale)
    if getattr(args, "search_type", None) == "restep" and args.schedule_timestep is not None:
        raise ValueError("--schedule_timestep belongs to --search_type dit_cache (a restep search makes a schedule)")
    sampling = resolve_sampling(args.num_sampling_steps, getattr(args, "dit_cache_config", None),
                                getattr(args, "schedule_timestep", None), SAMPLER_FLAGS)
    args.num_sampling_steps, args.cache_config, args.timesteps = sampling.num_steps, sampling.cache_config, \
        sampling.timesteps
    if getattr(args, "search_type", None) is None:
        check_output_folder("--save_img_path", args.save_img_path)
    args.search_config = None
    if getattr(args, "search_type", None) == "dit_cache":
        if args.videos_path is not None or args.save_dir is not None:
            raise ValueError("--videos_path and --save_dir belong to --search_type restep")
        check_output_file("--cache_save_path", args.cache_save_path)
        args.search_config = search_config(
            SAMPLER_FLAGS, config_path=args.cache_save_path, num_sampling_steps=args.num_sampling_steps,
            cache_ratio=args.cache_ratio, min_psnr=args.min_psnr, max_interval=args.cache_step_interval,
            reuse=args.reuse, confirm_pairs=args.confirm_pairs, candidates_to_run=args.candidates_to_run,
            sensitivity_every=args.sensitivity_every, journal_dir=args.journal_dir,
            schedule_kind=args.schedule_kind,
        )
        check_output_folder("--journal_dir", args.search_config.journal_dir)
    if getattr(args, "search_type", None) == "restep":
        if args.videos_path is None or args.save_dir is None:
            raise ValueError("--search_type restep needs --videos_path (calibration videos) and --save_dir")
        check_output_folder("--save_dir", args.save_dir)
        if args.cache_ratio is not None or args.min_psnr is not None:
            raise ValueError("--cache_ratio and --min_psnr belong to --search_type dit_cache")
        args.restep_config = restep_config(args)
    check_device("--device", args.device)
    if args.backend == "bundled":
        check_bundled(args)
    return args


def restep_config(args: argparse.Namespace) -> ReStepSearchConfig:
    """The timestep search's config from the flags, checked, with errors naming the flags."""
    flags = {"videos_path": "--videos_path", "save_dir": "--save_dir", "neighbour_type": "--neighbour_type",
             "monte_carlo_iters": "--monte_carlo_iters", "num_sampling_steps": "--num_sampling_steps",
             "guidance_scale": "--guidance_scale", "seed": "--seed", "method": "--restep_method",
             "teacher_steps": "--teacher_steps"}
    values = {"videos_path": args.videos_path, "save_dir": args.save_dir, "neighbour_type": args.neighbour_type,
              "monte_carlo_iters": args.monte_carlo_iters, "num_sampling_steps": args.num_sampling_steps,
              "seed": args.seed, "method": args.restep_method, "teacher_steps": args.teacher_steps}
    if args.guidance_scale is not None:
        values["guidance_scale"] = float(args.guidance_scale)
    try:
        return ReStepSearchConfig(**values)
    except ValueError as err:
        field, _, rest = str(err).partition("=")
        raise ValueError(f"{flags[field]} {rest}" if field in flags else str(err)) from None


def parse(kind: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the flags of ``kind`` ("sample" or "search"); errors exit with a usage message."""
    parser = sample_parser() if kind == "sample" else search_parser()
    args = parser.parse_args(argv)
    try:
        return check_args(args, parser)
    except ValueError as err:
        parser.error(str(err))
