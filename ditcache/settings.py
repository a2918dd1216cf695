"""Flags into settings, for both front ends: the ``ditcache`` command and the torchrun samplers.

Each front end spells its flags its own way (``--cache-ratio`` there, the spec's ``--cache_ratio``
here); the rules that turn them into settings (defaults, ranges, how the step count follows a cache
config or a schedule file) live once, here, and run before any model loads. Depends on the core only.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

from .adaptor import AnyCacheConfig, as_cache_config
from .config import DEFAULT_CACHE_RATIO, REUSE_MODES, SCHEDULE_KINDS, DitCacheConfig, DitCacheSearchConfig

DEFAULT_REUSE: Sequence[str] = DitCacheSearchConfig.reuse_modes
REUSE_CHOICES: Sequence[str] = REUSE_MODES
SCHEDULE_KIND_CHOICES: Sequence[str] = SCHEDULE_KINDS
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class Flags:
    """How one front end spells the flags behind each setting, so errors name what the user typed."""

    steps: str
    cache_config: str
    schedule: str
    cache_ratio: str
    min_psnr: str
    max_interval: str
    reuse: str
    confirm_pairs: str
    candidates_to_run: str
    sensitivity_every: str
    journal: str
    schedule_kind: str

    def for_field(self, field: str) -> Optional[str]:
        """The flag of a :class:`DitCacheSearchConfig` field, if this front end has one."""
        names = {"cache_ratio": self.cache_ratio, "min_psnr": self.min_psnr, "num_sampling_steps": self.steps,
                 "cache_step_interval": self.max_interval, "reuse_modes": self.reuse,
                 "confirm_pairs": self.confirm_pairs, "candidates_to_run": self.candidates_to_run,
                 "sensitivity_every": self.sensitivity_every, "journal_dir": self.journal,
                 "schedule_kind": self.schedule_kind}
        return names.get(field)


CLI_FLAGS = Flags(
    steps="--steps", cache_config="--dit-cache-config", schedule="--schedule-timestep", cache_ratio="--cache-ratio",
    min_psnr="--min-psnr", max_interval="--max-interval", reuse="--reuse", confirm_pairs="--confirm-pairs",
    candidates_to_run="--candidates-to-run", sensitivity_every="--sensitivity-every", journal="--journal",
    schedule_kind="--schedule-kind",
)
SAMPLER_FLAGS = Flags(
    steps="--num_sampling_steps", cache_config="--dit_cache_config", schedule="--schedule_timestep",
    cache_ratio="--cache_ratio", min_psnr="--min_psnr", max_interval="--cache_step_interval", reuse="--reuse",
    confirm_pairs="--confirm_pairs", candidates_to_run="--candidates_to_run", sensitivity_every="--sensitivity_every",
    journal="--journal_dir", schedule_kind="--schedule_kind",
)


def check_positive(flag: str, value: Optional[float]) -> None:
    """``value`` (when given) must be a number > 0; nan is refused too."""
    if value is not None and not value > 0:
        raise ValueError(f"{flag} must be > 0, got {value}")


def check_guidance(flag: str, value: Optional[float]) -> None:
    """A classifier-free guidance scale (when given) must be finite and >= 1 (1 disables guidance)."""
    if value is not None and not 1.0 <= value < float("inf"):
        raise ValueError(f"{flag} must be a finite number >= 1 (1 disables guidance), got {value}")


def check_device(flag: str, device: str) -> None:
    """A device this machine has: ``cuda`` on a CPU-only torch is an error here, not an assertion at load."""
    import torch

    from .distributed import DEVICES, select_device

    if device in DEVICES:
        kind, index = device, 0
    else:
        try:
            parsed = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"{flag} {device!r} is invalid: {err}") from None
        if parsed.type not in DEVICES:
            return  # a device kind torch knows and ditcache does not pick (mps, xpu, ...)
        kind, index = parsed.type, parsed.index or 0
    try:
        select_device(kind, index)
    except ValueError as err:
        raise ValueError(f"{flag} {device!r}: {err}") from None


def _writable_folder(flag: str, folder: str) -> None:
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: folder {folder!r} does not exist")
    try:  # a real write: permission bits do not tell for root, nor on a read-only file system
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(f"{flag}: folder {folder!r} is not writable ({err.strerror or err})") from None


def check_output_file(flag: str, path: str) -> None:
    """``path`` can be written (checked before any work, so a finished run is not lost at the end)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file path")
    _writable_folder(flag, os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path!r} exists and is not writable")


def check_output_folder(flag: str, path: str) -> None:
    """``path`` is, or can be made, a writable folder (checked before any work)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; give a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path!r} cannot be made: {existing!r} is a file")
    _writable_folder(flag, existing)


def name_flag(message: str, flags: Mapping[str, str]) -> str:
    """Rewrite a leading ``argument=value`` in an error message as ``--flag value``."""
    for argument, flag in flags.items():
        if message.startswith(argument + "="):
            return f"{flag} {message[len(argument) + 1:]}"
    return message


def _existing_file(flag: str, path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"{flag} file {path!r} does not exist")
    return path


@dataclass(frozen=True)
class Sampling:
    """What a sampling run resolves to: its step count, its cache config, its custom timesteps."""

    num_steps: int
    cache_config: Optional[AnyCacheConfig]
    timesteps: Optional[List[float]]


def resolve_sampling(steps: Optional[int], cache_config_path: Optional[str], schedule_path: Optional[str],
                     flags: Flags, default_steps: int = DEFAULT_STEPS) -> Sampling:
    """Reconcile the steps asked for with a cache config's searched steps and a schedule file's length.

    The step count defaults to the schedule file's length, else the steps the cache config was searched
    for, else ``default_steps``; any two that disagree are an error, never a silent override.
    """
    cache_config = None
    if cache_config_path is not None:
        cache_config = as_cache_config(_existing_file(flags.cache_config, cache_config_path))
    timesteps = None
    if schedule_path is not None:
        from .restep import read_schedule_timesteps

        timesteps = read_schedule_timesteps(_existing_file(flags.schedule, schedule_path))
        if steps is not None and steps != len(timesteps):
            raise ValueError(f"{flags.steps} {steps} does not match the {len(timesteps)} timesteps in schedule "
                             f"file {schedule_path!r}; omit it or pass {len(timesteps)}")
        steps = len(timesteps)
    searched = cache_config.num_sampling_steps if cache_config is not None else None
    if steps is None:
        steps = searched or default_steps
    if searched is not None and searched != steps:
        raise ValueError(f"{flags.cache_config} was searched for {searched} steps, but this run has {steps} "
                         f"({flags.steps} / {flags.schedule})")
    # a config searched on other timesteps than the schedule file's (uniform ones are checked when the run starts)
    mismatch = cache_config.schedule_mismatch(timesteps) if timesteps is not None and isinstance(
        cache_config, DitCacheConfig) else None
    if mismatch is not None:
        raise ValueError(f"{flags.cache_config} {cache_config_path!r} and {flags.schedule} {schedule_path!r}: {mismatch}")
    return Sampling(steps, cache_config, timesteps)


def for_timesteps(scheduler: Any) -> Any:
    """A scheduler that accepts ``timesteps=``: the stock Euler ancestral one refuses them, so it becomes
    the same sampler that does; any other scheduler is returned as it is."""
    from diffusers import EulerAncestralDiscreteScheduler

    if type(scheduler) is EulerAncestralDiscreteScheduler:
        from .schedulers import TimestepEulerAncestralScheduler

        return TimestepEulerAncestralScheduler.from_config(scheduler.config)
    return scheduler


def journal_beside(config_path: str) -> str:
    """The default journal folder: beside the config, named after it."""
    return os.path.splitext(config_path)[0] + ".journal"


def search_config(flags: Flags, *, config_path: str, num_sampling_steps: int, cache_ratio: Optional[float] = None,
                  min_psnr: Optional[float] = None, max_interval: int = DitCacheSearchConfig.cache_step_interval,
                  reuse: Sequence[str] = DEFAULT_REUSE, confirm_pairs: int = DitCacheSearchConfig.confirm_pairs,
                  candidates_to_run: int = DitCacheSearchConfig.candidates_to_run,
                  sensitivity_every: int = DitCacheSearchConfig.sensitivity_every,
                  journal_dir: Optional[str] = None,
                  schedule_kind: str = DitCacheSearchConfig.schedule_kind) -> DitCacheSearchConfig:
    """The cache search's config from the flags, checked (ranges, nan) with errors naming the flags."""
    if cache_ratio is not None and min_psnr is not None:
        raise ValueError(f"give either {flags.cache_ratio} (a speedup target) or {flags.min_psnr} "
                         "(a quality floor), not both")
    try:
        return DitCacheSearchConfig(
            cache_ratio=cache_ratio, min_psnr=min_psnr,
            num_sampling_steps=num_sampling_steps, cache_step_interval=max_interval, reuse_modes=tuple(reuse),
            confirm_pairs=confirm_pairs, candidates_to_run=candidates_to_run, sensitivity_every=sensitivity_every,
            journal_dir=journal_dir or journal_beside(config_path), schedule_kind=schedule_kind,
        )
    except ValueError as err:
        field, _, rest = str(err).partition(" ")
        flag = flags.for_field(field)
        raise ValueError(f"{flag} {rest}" if flag else str(err)) from None
