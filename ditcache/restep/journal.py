"""A resumable record of a timestep search: the schedule so far and the next point to optimise.

It is rewritten atomically after every point, so an interrupted search restarts at the point it
was on. A journal made for other settings (steps, clips, seed, ...) is refused, not mixed in.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from .._atomic import atomic_write_text

JOURNAL_FILE = "restep_journal.json"


class SearchJournal:
    def __init__(self, save_dir: str, fingerprint: Dict[str, Any], schedule: List[float]) -> None:
        """Resume from ``save_dir``'s journal, or start at point 1 of ``schedule``."""
        self.path = os.path.join(save_dir, JOURNAL_FILE)
        self.fingerprint = fingerprint
        self.schedule, self.next_point = list(schedule), 1
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"search journal {self.path!r} is unreadable ({err}); delete it to start over") from None
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"search journal {self.path!r} was made for other settings ({state.get('fingerprint')}); now "
                f"{fingerprint}. Use another save_dir or delete the journal"
            )
        self.schedule, self.next_point = state["schedule"], state["next_point"]

    def record(self, schedule: List[float], next_point: int) -> None:
        """Save progress: ``schedule`` with every point before ``next_point`` optimised."""
        self.schedule, self.next_point = list(schedule), next_point
        state = {"fingerprint": self.fingerprint, "schedule": self.schedule, "next_point": next_point}
        atomic_write_text(self.path, json.dumps(state, indent=1) + "\n")
