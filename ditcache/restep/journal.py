"""A resumable record of a timestep search: its settings' fingerprint and the state reached so far.

It is rewritten atomically whenever the search makes progress, so an interrupted search restarts
from the last state recorded. A journal made for other settings (steps, clips, seed, method, ...)
is refused, not mixed in.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from .._atomic import atomic_write_text

JOURNAL_FILE = "restep_journal.json"


class ReStepJournal:
    def __init__(self, save_dir: str, fingerprint: Dict[str, Any]) -> None:
        """Resume from ``save_dir``'s journal (``state`` is then what was recorded), or start fresh (``None``)."""
        self.path = os.path.join(save_dir, JOURNAL_FILE)
        self.fingerprint = fingerprint
        self.state: Optional[Dict[str, Any]] = None
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"search journal {self.path!r} is unreadable ({err}); delete it to start over") from None
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            found = saved.get("fingerprint") if isinstance(saved, dict) else saved
            raise ValueError(
                f"search journal {self.path!r} was made for other settings ({found}); now "
                f"{fingerprint}. Use another save_dir or delete the journal"
            )
        self.state = saved.get("state")

    def record(self, state: Dict[str, Any]) -> None:
        """Save progress: ``state`` is JSON data that lets the search continue from here."""
        self.state = state
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "state": state}) + "\n")
