"""The ``ditcache`` command: thin subcommands over the library.

Each subcommand registers itself with ``_register_<name>(subparsers)`` and sets ``handler``;
``main`` parses, dispatches, and turns ``ValueError`` from bad input into a usage error.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import DitCacheSearchConfig
from .settings import (CLI_FLAGS, DEFAULT_CACHE_RATIO, DEFAULT_REUSE, REUSE_CHOICES, SCHEDULE_KIND_CHOICES,
                       check_device, check_guidance, check_output_file, check_output_folder, for_timesteps, name_flag,
                       resolve_sampling, search_config)

# Pipeline argument names -> the flags that set them, so errors name what the user typed.
_FLAG_FOR_ARGUMENT: Dict[str, str] = {
    "num_frames": "--frames",
    "height": "--height",
    "width": "--width",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "scheduler": "--scheduler",
    "path": "--model",
    "prompt": "--prompt",
}


def _check_request(args: argparse.Namespace, prompts: List[str], prompt_flag: str, steps: int) -> None:
    """Everything the bundled model would refuse, before it loads."""
    from .models.pipeline import DEFAULT_GUIDANCE, check_request

    check_device("--device", args.device)
    check_guidance("--guidance", args.guidance)
    try:
        check_request(args.model, prompts, args.frames, args.height, args.width, steps,
                      DEFAULT_GUIDANCE if args.guidance is None else args.guidance)
    except ValueError as err:
        message = str(err)
        raise ValueError(f"{prompt_flag}: {message}" if message.startswith("prompt ") else message) from None


def _run_sample(args: argparse.Namespace) -> None:
    import torch

    from .models.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_bundled_pipeline
    from .video import write_contact_sheet, write_video

    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out {args.out!r} is invalid: it must be an .mp4 path")
    if args.png is not None and not args.png.lower().endswith(".png"):
        raise ValueError(f"--png {args.png!r} is invalid: it must be a .png path")
    check_output_file("--out", args.out)
    if args.png is not None:
        check_output_file("--png", args.png)
    sampling = resolve_sampling(args.steps, args.dit_cache_config, args.schedule_timestep, CLI_FLAGS,
                                default_steps=DEFAULT_STEPS)
    _check_request(args, [args.prompt], "--prompt", sampling.num_steps)
    pipe = load_bundled_pipeline(args.model, scheduler=args.scheduler, device=torch.device(args.device))
    if sampling.timesteps is not None:
        pipe.scheduler = for_timesteps(pipe.scheduler)
    from . import dit_cache

    with dit_cache(pipe, sampling.cache_config):
        video = pipe(
            args.prompt,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=sampling.num_steps,
            guidance_scale=DEFAULT_GUIDANCE if args.guidance is None else args.guidance,
            seed=args.seed,
            timesteps=sampling.timesteps,
            progress=not args.quiet,
        ).images[0]
    write_video(args.out, video, fps=args.fps)
    if args.png is not None:
        write_contact_sheet(args.png, video)
    if not args.quiet:
        print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The bundled model's sampling settings, shared by the subcommands."""
    from .models.pipeline import SCHEDULERS

    p.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    p.add_argument(
        "--schedule-timestep", "--schedule_timestep", dest="schedule_timestep", metavar="FILE",
        help="run at the timesteps of a ReStep schedule file (searched_schedule.txt); --steps may be omitted",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--scheduler", default="euler_ancestral", choices=sorted(SCHEDULERS))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--model", help="a saved pipeline directory (default: the bundled weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def _register_sample(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate a clip with the bundled text-to-video DiT")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving right"')
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--png", help="also write a PNG contact sheet of the frames here")
    _add_model_flags(p)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--dit-cache-config", help="sample with the DiT cache: a JSON config from `ditcache search` (a block "
                   "region), or a component schedule (SmoothCache's format, e.g. from calibration)")
    p.set_defaults(handler=_run_sample)


DEFAULT_SEARCH_PROMPTS = ("a red circle moving right", "a blue square moving up")


def _read_prompts(path: Optional[str]) -> List[str]:
    if path is None:
        return list(DEFAULT_SEARCH_PROMPTS)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip()]
    except OSError as err:
        raise ValueError(f"--prompts {path!r} cannot be read: {err.strerror}") from None
    if not prompts:
        raise ValueError(f"--prompts {path!r} holds no prompts (one a line)")
    return prompts


def _search_inputs(args: argparse.Namespace, **search: Any) -> Tuple[Any, Callable[[Any], List[Any]], int]:
    """The search config, every flag checked before the model loads; then the loaded bundled pipeline,
    the callable making the videos searched on, and the number of prompts."""
    from .models.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_bundled_pipeline

    if not args.out.lower().endswith(".json"):
        raise ValueError(f"--out {args.out!r} is invalid: it must be a .json path")
    prompts = _read_prompts(args.prompts)
    sampling = resolve_sampling(args.steps, None, args.schedule_timestep, CLI_FLAGS, default_steps=DEFAULT_STEPS)
    steps, timesteps = sampling.num_steps, sampling.timesteps
    config = search_config(CLI_FLAGS, config_path=args.out, num_sampling_steps=steps, journal_dir=args.journal,
                           **search)
    check_output_file("--out", args.out)
    check_output_folder("--journal", config.journal_dir)
    _check_request(args, prompts, "--prompts", steps)
    pipe = load_bundled_pipeline(args.model, scheduler=args.scheduler, device=args.device)
    if timesteps is not None:
        pipe.scheduler = for_timesteps(pipe.scheduler)
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance

    def run_pipeline_and_save_videos(pipeline):
        return list(pipeline(prompts, num_frames=args.frames, height=args.height, width=args.width,
                             num_inference_steps=steps, guidance_scale=guidance, seed=args.seed,
                             timesteps=timesteps, progress=False).images)

    import logging

    from . import DitCacheAdaptor

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    return DitCacheAdaptor(pipe, config), run_pipeline_and_save_videos, len(prompts)


def _run_search(args: argparse.Namespace) -> None:
    adaptor, run_pipeline_and_save_videos, prompts_num = _search_inputs(
        args, cache_ratio=args.cache_ratio, min_psnr=args.min_psnr, max_interval=args.max_interval, reuse=args.reuse,
        confirm_pairs=args.confirm_pairs, candidates_to_run=args.candidates_to_run,
        sensitivity_every=args.sensitivity_every, schedule_kind=args.schedule_kind)
    try:
        adaptor.search(run_pipeline_and_save_videos, prompts_num=prompts_num)
    finally:
        adaptor.remove()
    report = adaptor.last_search
    written = report.save(args.out)
    if not args.quiet:
        print(report.table())
        print(report.summary())
        print("wrote " + ", ".join(written))


def _run_profile(args: argparse.Namespace) -> None:
    if isinstance(args.every, bool) or args.every < 1:
        raise ValueError(f"--every must be an int >= 1, got {args.every}")
    adaptor, run_pipeline_and_save_videos, prompts_num = _search_inputs(args)
    try:
        profile = adaptor.profile(run_pipeline_and_save_videos, prompts_num=prompts_num, every=args.every)
    finally:
        adaptor.remove()
    written = profile.save(args.out)
    if not args.quiet:
        worst = sorted(zip(profile.probe_psnr, profile.sensitivity.steps))[:5]
        print("steps where one reuse hurts most: " + ", ".join(f"{step} ({psnr:.1f} dB)" for psnr, step in worst))
        print(f"{profile.full_runs} full runs; wrote " + ", ".join(written))


def _register_profile(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="measure where caching hurts the bundled model: by step and block")
    p.add_argument("--out", default="dit_cache_profile.json", help="the profile; a .png heatmap is written beside it")
    p.add_argument("--every", type=int, default=1, help="probe every n-th step (1: every step)")
    p.add_argument("--prompts", help="a text file with one prompt a line (default: two built-in prompts)")
    p.add_argument("--journal", help="resumable journal folder (default: beside --out; a search given the same "
                   "folder reuses the probes)")
    _add_model_flags(p)
    p.set_defaults(handler=_run_profile)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="search a DiT cache config on the bundled model")
    p.add_argument("--cache-ratio", type=float, help=f"speedup target, measured end to end (default {DEFAULT_CACHE_RATIO})")
    p.add_argument("--min-psnr", type=float, help="quality floor in dB instead: the fastest config above it")
    p.add_argument("--prompts", help="a text file with one prompt a line (default: two built-in prompts)")
    p.add_argument("--out", default="dit_cache_config.json", help="the config; a .search.json table and a "
                   ".search.png plot are written beside it")
    p.add_argument("--journal", help="resumable journal folder (default: beside --out)")
    p.add_argument("--max-interval", type=int, default=DitCacheSearchConfig.cache_step_interval,
                   help="largest reuse interval tried")
    p.add_argument("--reuse", nargs="+", default=list(DEFAULT_REUSE), choices=REUSE_CHOICES, help="reuse modes tried")
    p.add_argument("--candidates-to-run", type=int, default=DitCacheSearchConfig.candidates_to_run,
                   help="best-ranked configs run for real for a speedup target")
    p.add_argument("--confirm-pairs", type=int, default=DitCacheSearchConfig.confirm_pairs,
                   help="most interleaved uncached/cached run pairs confirming the winner's speedup (0: none)")
    p.add_argument("--sensitivity-every", type=int, default=DitCacheSearchConfig.sensitivity_every,
                   help="steps between the probe runs measuring each step's sensitivity (1: every step, the most "
                   "thorough; 0: none)")
    p.add_argument("--schedule-kind", default=DitCacheSearchConfig.schedule_kind, choices=SCHEDULE_KIND_CHOICES,
                   help="configs searched: block regions, component schedules (sub-layers per step, saved in "
                   "SmoothCache's format), or any (both, decided on measured speed and PSNR)")
    _add_model_flags(p)
    p.set_defaults(handler=_run_search)


_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [_register_sample, _register_search,
                                                                    _register_profile]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditcache", description="Diffusion Transformer caching toolkit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in _SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ValueError as err:
        parser.exit(2, f"ditcache {args.command}: error: {name_flag(str(err), _FLAG_FOR_ARGUMENT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
