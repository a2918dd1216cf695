"""The ``ditcache`` command: thin subcommands over the library.

Each subcommand registers itself with ``_register_<name>(subparsers)`` and sets ``handler``;
``main`` parses, dispatches, and turns ``ValueError`` from bad input into a usage error.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

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


def _name_flag(message: str) -> str:
    """Rewrite a leading ``argument=value`` in an error message as ``--flag value``."""
    for argument, flag in _FLAG_FOR_ARGUMENT.items():
        if message.startswith(argument + "="):
            return f"{flag} {message[len(argument) + 1:]}"
    return message


def _run_sample(args: argparse.Namespace) -> None:
    import torch

    from .models.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_bundled_pipeline
    from .video import write_contact_sheet, write_video

    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out {args.out!r} is invalid: it must be an .mp4 path")
    if args.png is not None and not args.png.lower().endswith(".png"):
        raise ValueError(f"--png {args.png!r} is invalid: it must be a .png path")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is invalid: {err}") from None
    pipe = load_bundled_pipeline(args.model, scheduler=args.scheduler, device=device)
    try:
        pipe.tokenizer(args.prompt)
    except ValueError as err:
        raise ValueError(f"--prompt: {err}") from None
    video = pipe(
        args.prompt,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=DEFAULT_STEPS if args.steps is None else args.steps,
        guidance_scale=DEFAULT_GUIDANCE if args.guidance is None else args.guidance,
        seed=args.seed,
        progress=not args.quiet,
    ).images[0]
    write_video(args.out, video, fps=args.fps)
    if args.png is not None:
        write_contact_sheet(args.png, video)
    if not args.quiet:
        print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))


def _register_sample(subparsers: argparse._SubParsersAction) -> None:
    from .models.pipeline import SCHEDULERS

    p = subparsers.add_parser("sample", help="generate a clip with the bundled text-to-video DiT")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving right"')
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--png", help="also write a PNG contact sheet of the frames here")
    p.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--scheduler", default="euler_ancestral", choices=sorted(SCHEDULERS))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--model", help="a saved pipeline directory (default: the bundled weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(handler=_run_sample)


_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [_register_sample]


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
        parser.exit(2, f"ditcache {args.command}: error: {_name_flag(str(err))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
