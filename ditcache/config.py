"""Cache and search configurations: validation and JSON round trips.

Every check names the field, the value it got and what is allowed, so a bad
config fails before any block is patched.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

from ._atomic import atomic_write_text
from .cache.reuse import REUSE_RULES

PathLike = Union[str, "os.PathLike[str]"]
REUSE_MODES = tuple(REUSE_RULES)
REUSE_POINTS = ("region", "output")
DEFAULT_CACHE_RATIO = 1.3
SCHEDULE_KINDS = ("region", "component", "any")


def check_int(field: str, value: Any, minimum: int, maximum: Optional[int] = None) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[minimum, maximum]``."""
    allowed = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{field} must be {allowed}, got {value}")
    return value


def check_number(field: str, value: Any, above: float) -> float:
    """Return ``value`` as a float if it is a real number strictly above ``above``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number > {above}, got {value!r} ({type(value).__name__})")
    if not value > above or value != value or value == float("inf"):
        raise ValueError(f"{field} must be a finite number > {above}, got {value}")
    return float(value)


def read_json(path: PathLike) -> Any:
    """The JSON value in a cache config file; a missing or malformed file is a ``ValueError``."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"cache config file {os.fspath(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"cache config file {os.fspath(path)!r} is a directory, not a JSON file") from None
    except OSError as err:
        raise ValueError(f"cache config file {os.fspath(path)!r} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cache config file {os.fspath(path)!r} is not a text (UTF-8 JSON) file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"cache config file {os.fspath(path)!r} is not valid JSON: {err}") from None


TIMESTEP_TOLERANCE = 1e-3  # a schedule file stores t/1000 to 9 digits; float32 schedulers round too


def check_timesteps(values: Any, num_sampling_steps: Optional[int]) -> Tuple[float, ...]:
    """``values`` as a tuple of floats, if they are a list of finite numbers, one per scheduler timestep."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values or not all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"timesteps must be a non-empty list of finite numbers (the schedule searched on, high noise "
                         f"first), got {values!r}")
    # second-order schedulers list 2N - 1 timesteps for N steps
    if num_sampling_steps is not None and len(values) not in (num_sampling_steps, 2 * num_sampling_steps - 1):
        raise ValueError(f"timesteps has {len(values)} values, but num_sampling_steps={num_sampling_steps} "
                         f"(allowed {num_sampling_steps}, or {2 * num_sampling_steps - 1} for a second-order scheduler)")
    return tuple(float(v) for v in values)


def _short(timesteps: Sequence[float]) -> str:
    shown = ", ".join(f"{t:g}" for t in timesteps[:6])
    return f"[{shown}{', ...' if len(timesteps) > 6 else ''}] ({len(timesteps)} values)"


@dataclass(frozen=True)
class DitCacheConfig:
    """Which blocks are reused on which steps.

    Region: blocks ``cache_block_start .. cache_block_start + cache_num_blocks - 1``.
    Steps before ``cache_step_start`` run every block; from there on, every
    ``cache_step_interval``-th step stores the region's residual and the others
    reuse it. ``num_sampling_steps`` is optional: when set, a run with another
    number of steps is refused instead of being silently mis-cached.

    ``reuse`` says what a reuse step adds: ``"delta"`` (the spec's) adds the
    residual of the last store step; ``"taylor1"`` extrapolates it to first
    order from the last two store steps by the step distance (falling back to
    the constant residual until two store steps exist); ``"taylor2"`` to second
    order from the last three. A file without the key
    means ``"delta"``, so the spec's four-key files keep their meaning.

    ``reuse_at`` says what is reused: ``"region"`` (the spec's, and a file
    without the key) the region's residual; ``"output"`` the transformer's
    final projected output (after its last norm, before any unpatchify): a
    reuse step skips every block and the output head returns the rule's guess
    of its own output. It needs the region to be the whole chain.

    ``cache_step_end`` (optional) spares the last steps: from that step on every
    block runs again, as before ``cache_step_start``. The final steps' errors
    reach the output least damped. A file without the key caches to the end.

    ``timesteps`` (optional, the search fills it in when the run's scheduler
    tells them) are the sampling timesteps the config was searched on, high
    noise first: which steps can be reused depends on where they are, so a run
    whose scheduler samples other timesteps (a searched ReStep schedule instead
    of the uniform one, or the reverse) is refused instead of being silently
    mis-cached.
    """

    cache_step_start: int
    cache_step_interval: int
    cache_block_start: int
    cache_num_blocks: int
    num_sampling_steps: Optional[int] = None
    reuse: str = "delta"
    cache_step_end: Optional[int] = None
    reuse_at: str = "region"
    timesteps: Optional[Tuple[float, ...]] = None

    _REQUIRED = ("cache_step_start", "cache_step_interval", "cache_block_start", "cache_num_blocks")

    def __post_init__(self) -> None:
        check_int("cache_step_start", self.cache_step_start, 0)
        check_int("cache_step_interval", self.cache_step_interval, 1)
        check_int("cache_block_start", self.cache_block_start, 0)
        check_int("cache_num_blocks", self.cache_num_blocks, 1)
        if self.num_sampling_steps is not None:
            check_int("num_sampling_steps", self.num_sampling_steps, 1)
            check_int("cache_step_start", self.cache_step_start, 0, self.num_sampling_steps - 1)
        if self.cache_step_end is not None:
            last = "" if self.num_sampling_steps is None else f" and <= num_sampling_steps={self.num_sampling_steps}"
            if (isinstance(self.cache_step_end, bool) or not isinstance(self.cache_step_end, int)
                    or self.cache_step_end <= self.cache_step_start
                    or (self.num_sampling_steps is not None and self.cache_step_end > self.num_sampling_steps)):
                raise ValueError(
                    f"cache_step_end must be an int > cache_step_start={self.cache_step_start}{last} "
                    f"(or absent, to cache to the last step), got {self.cache_step_end!r}"
                )
        if self.reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {self.reuse!r}")
        if self.reuse_at not in REUSE_POINTS:
            raise ValueError(f"reuse_at must be one of {list(REUSE_POINTS)}, got {self.reuse_at!r}")
        if self.reuse_at == "output" and self.cache_block_start != 0:
            raise ValueError(
                f"reuse_at='output' skips every block, so cache_block_start must be 0, got {self.cache_block_start}"
            )
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", check_timesteps(self.timesteps, self.num_sampling_steps))

    def schedule_mismatch(self, timesteps: Sequence[float]) -> Optional[str]:
        """Why a run at ``timesteps`` is not the schedule this config was searched on (``None``: it is, or unknown)."""
        if self.timesteps is None:
            return None
        if len(timesteps) == len(self.timesteps) and all(
                abs(a - b) <= TIMESTEP_TOLERANCE for a, b in zip(timesteps, self.timesteps)):
            return None
        return (f"the cache config was searched on the timesteps {_short(self.timesteps)}, but this run samples "
                f"{_short(timesteps)}; search the cache again on this schedule (ditcache search --schedule-timestep, "
                "search_t2v_sp --schedule_timestep) or sample on the one it was searched on")

    @property
    def cache_block_end(self) -> int:
        """Index of the last block of the region (inclusive)."""
        return self.cache_block_start + self.cache_num_blocks - 1

    def step_mode(self, step: int) -> str:
        """``"full"`` (no caching), ``"store"`` or ``"reuse"`` for a step index."""
        if step < self.cache_step_start or (self.cache_step_end is not None and step >= self.cache_step_end):
            return "full"
        if (step - self.cache_step_start) % self.cache_step_interval == 0:
            return "store"
        return "reuse"

    def to_dict(self) -> Dict[str, Any]:
        """The spec's four keys, plus ``num_sampling_steps``, ``reuse``, ``cache_step_end``, ``reuse_at`` and
        ``timesteps`` when not the defaults."""
        out: Dict[str, Any] = {name: getattr(self, name) for name in self._REQUIRED}
        if self.num_sampling_steps is not None:
            out["num_sampling_steps"] = self.num_sampling_steps
        if self.reuse != "delta":
            out["reuse"] = self.reuse
        if self.cache_step_end is not None:
            out["cache_step_end"] = self.cache_step_end
        if self.reuse_at != "region":
            out["reuse_at"] = self.reuse_at
        if self.timesteps is not None:
            out["timesteps"] = list(self.timesteps)
        return out

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        """Makes ``dict(config)`` work, as the spec's config does."""
        return iter(self.to_dict().items())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "DitCacheConfig":
        """Build from a mapping, refusing unknown or missing keys."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a JSON object / dict, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{source} has unknown keys {unknown}; allowed keys: {known}")
        missing = [name for name in cls._REQUIRED if name not in data]
        if missing:
            raise ValueError(f"{source} is missing keys {missing}; required keys: {list(cls._REQUIRED)}")
        return cls(**dict(data))

    def save(self, path: PathLike) -> None:
        """Write the config as JSON atomically (temp file, then rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=4) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> "DitCacheConfig":
        """Read and validate a JSON config (the spec's four-key files included)."""
        return cls.from_dict(read_json(path), source=f"cache config file {os.fspath(path)!r}")


@dataclass
class DitCacheSearchConfig:
    """What the cache search aims for.

    The spec's fields: ``cache_ratio`` is the end-to-end speedup target (any
    value > 1.0, 1.3 when neither it nor ``min_psnr`` is given; the search
    says when it cannot be reached); ``dit_block_num``
    is filled in from the model when left ``None``; ``num_sampling_steps`` must
    match the runs searched on; ``cache_step_interval`` is the largest reuse
    interval the search tries (it tries every interval from 2 up to it);
    ``num_hidden_states`` is the number of streams a block carries (checked
    against what the blocks return).

    Beyond the spec: ``min_psnr`` switches the goal to a quality floor (the
    fastest config whose PSNR against the uncached videos stays at or above
    it); ``reuse_modes`` are the reuse modes searched (the spec's ``"delta"``
    and the extrapolating ``"taylor1"`` and ``"taylor2"``); ``candidates_to_run`` is how many top-ranked configs are run for real
    for a speedup target; ``speed_margin`` is headroom over the target a
    candidate's predicted speedup must have (0 by default: the winner's speed is measured by
    confirmation pairs anyway, and a margin would set aside configs that pass them); ``confirm_pairs`` is the most interleaved
    uncached / cached run pairs that measure the winner's speedup (median ratio; more than two only
    while they fall on both sides of the target); until then choices are made
    on predicted speedups, which carry no run-to-run noise (0: on each candidate's single screening timing
    instead, with no pairs); ``sensitivity_every`` spaces the probe runs that measure how much an
    error at each step reaches the videos, which the ranking then weighs errors by (1: every step,
    the most thorough; 0: no probes); ``journal_dir`` makes the search resumable;
    ``schedule_kind`` is the family of configs searched: ``"region"`` (block regions,
    :class:`DitCacheConfig`), ``"component"`` (sub-layer schedules,
    :class:`~ditcache.component_config.ComponentCacheConfig`, SmoothCache's format) or ``"any"``
    (both, the winner chosen on measured speed and PSNR like the rest).
    """

    cache_ratio: Optional[float] = None
    dit_block_num: Optional[int] = None
    num_sampling_steps: Optional[int] = None
    cache_step_interval: int = 4
    num_hidden_states: int = 1
    min_psnr: Optional[float] = None
    candidates_to_run: int = 3
    speed_margin: float = 0.0
    confirm_pairs: int = 3
    sensitivity_every: int = 0
    journal_dir: Optional[str] = None
    reuse_modes: Tuple[str, ...] = ("delta", "taylor1")
    schedule_kind: str = "region"

    def __post_init__(self) -> None:
        if self.min_psnr is None:
            self.cache_ratio = DEFAULT_CACHE_RATIO if self.cache_ratio is None else check_number(
                "cache_ratio", self.cache_ratio, 1.0)
        elif self.cache_ratio is not None:
            raise ValueError(
                f"give either cache_ratio (a speedup target) or min_psnr (a quality floor), not both: got "
                f"cache_ratio={self.cache_ratio!r}, min_psnr={self.min_psnr!r}"
            )
        if self.dit_block_num is not None:
            check_int("dit_block_num", self.dit_block_num, 1)
        if self.num_sampling_steps is None:
            raise ValueError("num_sampling_steps must be set (an int >= 2, the steps of the runs to search on)")
        check_int("num_sampling_steps", self.num_sampling_steps, 2)
        check_int("cache_step_interval", self.cache_step_interval, 2)
        check_int("num_hidden_states", self.num_hidden_states, 1)
        if self.min_psnr is not None:
            self.min_psnr = check_number("min_psnr", self.min_psnr, 0.0)
        check_int("candidates_to_run", self.candidates_to_run, 1)
        check_int("confirm_pairs", self.confirm_pairs, 0)
        check_int("sensitivity_every", self.sensitivity_every, 0)
        if isinstance(self.speed_margin, bool) or not isinstance(self.speed_margin, (int, float)) or not (
            0.0 <= self.speed_margin < 1.0
        ):
            raise ValueError(f"speed_margin must be a number in [0, 1), got {self.speed_margin!r}")
        modes = tuple(self.reuse_modes) if isinstance(self.reuse_modes, (list, tuple)) else None
        if not modes or any(mode not in REUSE_MODES for mode in modes) or len(set(modes)) != len(modes):
            raise ValueError(
                f"reuse_modes must be a non-empty list of distinct values from {list(REUSE_MODES)}, "
                f"got {self.reuse_modes!r}"
            )
        self.reuse_modes = modes
        if self.journal_dir is not None and not isinstance(self.journal_dir, (str, os.PathLike)):
            raise ValueError(f"journal_dir must be a path or None, got {type(self.journal_dir).__name__}")
        if self.schedule_kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule_kind must be one of {list(SCHEDULE_KINDS)}, got {self.schedule_kind!r}")

    @property
    def goal(self) -> str:
        """A readable statement of what the search aims for."""
        if self.min_psnr is not None:
            return f"fastest config with PSNR >= {self.min_psnr:g} dB"
        return f"best quality at >= {self.cache_ratio:g}x measured speedup"
