"""The schedule file: a JSON list of ``t / 1000`` values, ascending, as the spec's sampler reads it.

A sampler multiplies the values by 1000 and reverses them (high noise first) before passing them as
``timesteps=``. Files are written atomically, so a reader never sees half a schedule.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from .._atomic import atomic_write_text

SCHEDULE_FILE = "searched_schedule.txt"
TIME_SCALE = 1000  # the spec's unit: schedule values are timesteps / 1000


def check_schedule(values: object, source: str = "schedule") -> List[float]:
    """The schedule as floats, or a ValueError unless it is >= 2 strictly increasing values in [0, 1]."""
    if not isinstance(values, (list, tuple)) or len(values) < 2:
        raise ValueError(f"{source} must be a JSON list of at least 2 numbers in [0, 1]; got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{source} holds {value!r}: every value must be a number in [0, 1]")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{source} must be strictly increasing (low noise first); got {list(values)}")
    return [float(v) for v in values]


def write_schedule(path: str, values: Sequence[float]) -> None:
    """Check ``values`` and write them to ``path`` atomically."""
    atomic_write_text(path, json.dumps(check_schedule(list(values))) + "\n")


def read_schedule(path: str) -> List[float]:
    """The checked schedule stored at ``path``."""
    if not os.path.isfile(path):
        raise ValueError(f"schedule file {path!r} does not exist")
    with open(path, "r", encoding="utf-8") as handle:
        text = handle.read()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"schedule file {path!r} is not valid JSON ({err}); it must hold a list of t/1000 values") from None
    return check_schedule(values, source=f"schedule file {path!r}")


def schedule_to_timesteps(values: Sequence[float]) -> List[float]:
    """t/1000 values, ascending -> the ``timesteps=`` a pipeline takes: x1000, high noise first."""
    return [round(v * TIME_SCALE, 6) for v in reversed(check_schedule(list(values)))]


def timesteps_to_schedule(timesteps: Sequence[float]) -> List[float]:
    """The inverse of :func:`schedule_to_timesteps`: descending timesteps -> ascending t/1000 values."""
    return check_schedule([round(float(t) / TIME_SCALE, 9) for t in reversed(list(timesteps))])


def read_schedule_timesteps(path: str, num_inference_steps: Optional[int] = None) -> List[float]:
    """The ``timesteps=`` for sampling with the schedule at ``path``.

    ``num_inference_steps`` (a step count the user also gave) must equal the file's length, so a
    mismatch is an error instead of a silent override.
    """
    timesteps = schedule_to_timesteps(read_schedule(path))
    if num_inference_steps is not None and num_inference_steps != len(timesteps):
        raise ValueError(
            f"num_inference_steps={num_inference_steps} does not match the {len(timesteps)} timesteps in schedule "
            f"file {path!r}; omit it or pass {len(timesteps)}"
        )
    return timesteps

