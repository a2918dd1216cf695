"""What a cache knows, per thread, of the run it is in: the run, its current step, the last step reached.

The region cache and the component cache both keep their stored tensors per run
and refuse a run whose step count does not fit their config, when it starts (if
the step source knows its total) or when it ends; this is the part they share.
"""
from __future__ import annotations

import threading
from typing import Optional

from .. import steps


class RunState(threading.local):
    """Per thread; subclasses add what they store and clear it in :meth:`reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, run: Optional[int] = None) -> None:
        self.run = run
        self.step: Optional[int] = None
        self.highest: Optional[int] = None  # the last step this run reached

    def enter_step(self, step: int) -> bool:
        """Note that ``step`` is under way; True when it is a new step for this thread."""
        if self.step == step:
            return False
        self.step = step
        self.highest = step if self.highest is None else max(step, self.highest)
        return True

    def steps_made(self) -> Optional[int]:
        """How many steps the current run made, or ``None`` when this thread saw none of it."""
        if self.run != steps.current_run() or self.highest is None:
            return None
        return self.highest + 1
