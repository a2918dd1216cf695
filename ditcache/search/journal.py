"""A resumable record of a search: the calibration and every finished candidate run.

``calibration.pt`` is written atomically once; ``runs.jsonl`` gets one line per
finished run, flushed to disk, so an interrupted search loses at most the run
it was in. A journal made for other settings (blocks, steps, videos) is
refused rather than silently mixed in.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch

from .._atomic import atomic_write
from .recording import Calibration


class Journal:
    def __init__(self, directory: Optional[str], fingerprint: Dict[str, Any]) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.runs: Dict[str, Dict[str, Any]] = {}
        if directory is None:
            return
        os.makedirs(directory, exist_ok=True)
        meta = os.path.join(directory, "fingerprint.json")
        if os.path.exists(meta):
            with open(meta, "r", encoding="utf-8") as handle:
                found = json.load(handle)
            if found != fingerprint:
                raise ValueError(
                    f"search journal {directory!r} was made for other settings ({found}); now {fingerprint}. "
                    "Use another journal directory or delete this one"
                )
        else:
            atomic_write(meta, lambda tmp: _dump_json(tmp, fingerprint))
        path = os.path.join(directory, "runs.jsonl")
        if os.path.exists(path):
            with open(path, "r", encoding="utf-8") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by an interruption
                    self.runs[record["key"]] = record

    def load_calibration(self) -> Optional[Calibration]:
        if self.directory is None:
            return None
        path = os.path.join(self.directory, "calibration.pt")
        if not os.path.exists(path):
            return None
        return Calibration.from_state_dict(torch.load(path, weights_only=False))

    def save_calibration(self, calibration: Calibration) -> None:
        if self.directory is not None:
            path = os.path.join(self.directory, "calibration.pt")
            atomic_write(path, lambda tmp: torch.save(calibration.state_dict(), tmp))

    def add_run(self, record: Dict[str, Any]) -> None:
        self.runs[record["key"]] = record
        if self.directory is None:
            return
        with open(os.path.join(self.directory, "runs.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _dump_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
