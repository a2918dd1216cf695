"""A resumable record of a search: the calibration and every finished candidate run.

A journal belongs to one set of inputs. ``fingerprint.json`` holds what is
known before any run (the blocks, steps and prompts, a fingerprint of the
model's weights, the caller's settings); the calibration's reference videos
pin down the rest, and the search checks them against a fresh uncached run
before resuming. A journal for other inputs is set aside with a warning and
the search starts fresh: stale results are never returned.

``calibration.pt`` is written atomically once and read back with
``weights_only=True``, so a journal folder handed over by anyone cannot run
code. ``runs.jsonl`` gets one line per finished run, flushed to disk, so an
interrupted search loses at most the run it was in; a line cut short by a
crash is dropped before anything is appended.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from .._atomic import atomic_write, atomic_write_text
from .recording import Calibration

logger = logging.getLogger("ditcache.search")

FINGERPRINT_FILE = "fingerprint.json"
CALIBRATION_FILE = "calibration.pt"
RUNS_FILE = "runs.jsonl"


class Journal:
    def __init__(self, directory: Optional[str], fingerprint: Dict[str, Any]) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.runs: Dict[str, Dict[str, Any]] = {}
        if directory is None:
            return
        os.makedirs(directory, exist_ok=True)
        found = self._read_fingerprint()
        if found is None:
            self.start_fresh(None)
        elif found != fingerprint:
            changed = sorted(key for key in set(found) | set(fingerprint) if found.get(key) != fingerprint.get(key))
            self.start_fresh(f"it was made for other inputs (changed: {', '.join(changed)})")
        else:
            self.runs = _read_runs(self._path(RUNS_FILE))

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _read_fingerprint(self) -> Optional[Dict[str, Any]]:
        path = self._path(FINGERPRINT_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path, "r", encoding="utf-8") as handle:
                found = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {"unreadable": path}
        return found if isinstance(found, dict) else {"unreadable": path}

    def start_fresh(self, reason: Optional[str]) -> None:
        """Drop what the journal holds (saying why, when it held anything) and key it to this search's inputs."""
        if self.directory is None:
            return
        held = [name for name in (CALIBRATION_FILE, RUNS_FILE) if os.path.exists(self._path(name))]
        if reason is not None and held:
            logger.warning(
                "search journal %r is not resumed: %s. Its runs are discarded and the search starts fresh",
                self.directory, reason,
            )
        for name in held:
            os.unlink(self._path(name))
        self.runs = {}
        atomic_write_text(self._path(FINGERPRINT_FILE), json.dumps(self.fingerprint, indent=2) + "\n")

    def load_calibration(self) -> Optional[Calibration]:
        """The journal's calibration, or ``None`` (after a warning, if the file is not a genuine one)."""
        if self.directory is None or not os.path.exists(self._path(CALIBRATION_FILE)):
            return None
        try:
            state = torch.load(self._path(CALIBRATION_FILE), map_location="cpu", weights_only=True)
            return Calibration.from_state_dict(state)
        except (pickle.UnpicklingError, RuntimeError, EOFError, TypeError, KeyError, AttributeError) as err:
            self.start_fresh(f"its {CALIBRATION_FILE} is not a calibration this version can read safely ({err})")
            return None

    def save_calibration(self, calibration: Calibration) -> None:
        """Keep a new calibration; runs made against any earlier one no longer apply."""
        if self.directory is None:
            return
        if os.path.exists(self._path(RUNS_FILE)):
            os.unlink(self._path(RUNS_FILE))
        self.runs = {}
        atomic_write(self._path(CALIBRATION_FILE), lambda tmp: torch.save(calibration.state_dict(), tmp))

    def update_calibration(self, calibration: Calibration) -> None:
        """Rewrite the calibration with more measured (the same references): the runs made against it stand."""
        if self.directory is None:
            return
        atomic_write(self._path(CALIBRATION_FILE), lambda tmp: torch.save(calibration.state_dict(), tmp))

    def add_run(self, record: Dict[str, Any]) -> None:
        self.runs[record["key"]] = record
        if self.directory is None:
            return
        with open(self._path(RUNS_FILE), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _read_runs(path: str) -> Dict[str, Dict[str, Any]]:
    """The records of ``runs.jsonl``; a last line cut short is cut off the file, so the next record starts clean."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        os.truncate(path, complete)
    runs: Dict[str, Dict[str, Any]] = {}
    for line in data[:complete].splitlines():
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # a line torn by an interruption before this version cut them off
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            runs[record["key"]] = record
    return runs


def weights_fingerprint(modules: Iterable[nn.Module]) -> str:
    """A digest of every parameter and buffer of ``modules``: names, shapes, dtypes and three sums of the values.

    The sums (plain, of squares, and weighted by position) are computed on the
    tensors' own device, so it costs a few reductions, not a copy of the model.
    """
    seen: set = set()
    names: List[str] = []
    sums: List[torch.Tensor] = []
    for m, module in enumerate(modules):
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            names.append(f"{m}.{name}:{tuple(tensor.shape)}:{tensor.dtype}")
            if tensor.numel() == 0 or tensor.is_complex():
                continue
            flat = tensor.detach().reshape(-1).to(torch.float64)
            position = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64).remainder_(101).add_(1)
            sums.append(torch.stack([flat.sum(), flat.square().sum(), (flat * position).sum()]).cpu())
    digest = hashlib.sha256("\n".join(names).encode())
    for value in torch.cat(sums).tolist() if sums else []:
        digest.update(f"{value:.12g},".encode())
    return digest.hexdigest()[:32]


def pipeline_modules(pipeline: Any, blocks: nn.Module) -> List[nn.Module]:
    """The modules whose weights decide a pipeline's videos: itself if a module, else its module attributes."""
    if isinstance(pipeline, nn.Module):
        return [pipeline]
    found = [value for _, value in sorted(vars(pipeline).items()) if isinstance(value, nn.Module)]
    return found or [blocks]
