"""Component schedules: which sub-layers of which blocks run at which steps.

The file format is SmoothCache's: a JSON object whose keys are sub-layer names
(``"attn1"``: that sub-layer in every block) or a name and a block index
(``"attn1-3"``: block 3 only, taking precedence over ``"attn1"``), each holding
one 0/1 per denoising step: 1 computes the sub-layer, 0 reuses its output from
the last step where it was computed. A sub-layer without a key always runs.
Beyond SmoothCache, an optional ``"reuse"`` key names how a skipped sub-layer's
output is guessed (:mod:`ditcache.cache.reuse`: ``"delta"`` reuses the last
output, as SmoothCache does; ``"taylor1"`` extrapolates it to first order).

Unlike SmoothCache, every line must cover exactly the run's steps, and a line
that asks to reuse at step 0 is allowed only because step 0 then computes (there
is nothing to reuse yet), as SmoothCache does too.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ._atomic import atomic_write_text
from .config import REUSE_MODES, PathLike, read_json

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:-(\d+))?$")


def parse_key(key: str) -> Tuple[str, Optional[int]]:
    """``"attn1-3"`` -> ``("attn1", 3)``; ``"attn1"`` -> ``("attn1", None)``."""
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise ValueError(
            f"component schedule key {key!r} must be a sub-layer name (e.g. 'attn1') or a name and a block "
            "index (e.g. 'attn1-3')"
        )
    name, block = match.groups()
    return name, (int(block) if block is not None else None)


@dataclass(frozen=True)
class ComponentCacheConfig:
    """A SmoothCache-style schedule: per sub-layer (optionally per block), 1 = compute, 0 = reuse, per step."""

    schedule: Mapping[str, Tuple[int, ...]]
    reuse: str = "delta"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Mapping) or not self.schedule:
            raise ValueError(f"schedule must be a non-empty mapping of sub-layer keys to 0/1 lists, got {self.schedule!r}")
        lines: Dict[str, Tuple[int, ...]] = {}
        for key, line in self.schedule.items():
            parse_key(key)
            if not isinstance(line, (list, tuple)) or not line:
                raise ValueError(f"schedule[{key!r}] must be a non-empty list of 0/1 per step, got {line!r}")
            bad = [(step, value) for step, value in enumerate(line) if type(value) is not int or value not in (0, 1)]
            if bad:
                step, value = bad[0]
                raise ValueError(f"schedule[{key!r}][{step}] must be 0 (reuse) or 1 (compute), got {value!r}")
            lines[key] = tuple(line)
        lengths = {len(line) for line in lines.values()}
        if len(lengths) != 1:
            by_key = {key: len(line) for key, line in lines.items()}
            raise ValueError(f"every schedule line must have one entry per step (the same length), got lengths {by_key}")
        if self.reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {self.reuse!r}")
        object.__setattr__(self, "schedule", lines)

    @property
    def num_sampling_steps(self) -> int:
        """The steps of the run this schedule was made for."""
        return len(next(iter(self.schedule.values())))

    @property
    def components(self) -> Tuple[str, ...]:
        """The sub-layer names the schedule mentions, sorted."""
        return tuple(sorted({parse_key(key)[0] for key in self.schedule}))

    def line(self, component: str, block: int) -> Optional[Tuple[int, ...]]:
        """The 0/1 line governing ``component`` of block ``block`` (``None``: it always runs)."""
        specific = self.schedule.get(f"{component}-{block}")
        return specific if specific is not None else self.schedule.get(component)

    def computes(self, component: str, block: int, step: int) -> bool:
        """Whether ``component`` of block ``block`` is computed at ``step``."""
        line = self.line(component, block)
        return line is None or line[step] == 1

    def step_mode(self, step: int) -> Union[str, Tuple[int, ...]]:
        """What the schedule does at ``step``: ``"full"`` at step 0 (nothing is kept yet), else the 0/1 entry
        of every line; steps alike cost the same."""
        if step == 0:
            return "full"
        return tuple(line[step] for line in self.schedule.values())

    def to_dict(self) -> Dict[str, Any]:
        """SmoothCache's format, plus ``reuse`` when it is not ``"delta"``."""
        out: Dict[str, Any] = {key: list(line) for key, line in self.schedule.items()}
        if self.reuse != "delta":
            out["reuse"] = self.reuse
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "component schedule") -> "ComponentCacheConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a JSON object / dict, got {type(data).__name__}")
        schedule = {key: value for key, value in data.items() if key != "reuse"}
        try:
            return cls(schedule, data.get("reuse", "delta"))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, path: PathLike) -> None:
        """Write the schedule as SmoothCache writes it (one compact line per key), atomically."""
        items = [f"    {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}" for key, value in self.to_dict().items()]
        atomic_write_text(path, "{\n" + ",\n".join(items) + "\n}\n")

    @classmethod
    def load(cls, path: PathLike) -> "ComponentCacheConfig":
        return cls.from_dict(read_json(path), source=f"component schedule file {os.fspath(path)!r}")


def is_component_schedule(data: Mapping[str, Any]) -> bool:
    """Whether a config mapping is a component schedule (list values) rather than a region config.

    A region config's lists are its ``timesteps`` (the schedule it was searched on).
    """
    return any(isinstance(value, list) for key, value in data.items() if key not in ("reuse", "timesteps"))
