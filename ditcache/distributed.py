"""Processes, devices and collectives for torchrun, on CPU, CUDA and Ascend NPU.

The device index comes from ``LOCAL_RANK`` (so multi-node runs work), the
process-group backend follows the device (gloo, nccl, hccl), and ``torch_npu`` is
imported only when asked for or installed.

The timeout is for dead or stuck ranks, not for long work: ranks often wait
while rank 0 works alone (a ReStep search, saving files, timing the winner),
for longer than any sensible timeout. So every rank beats a counter in the
job's store, and a rank waiting for the others (:func:`broadcast_object`,
:func:`all_gather_objects`, :func:`barrier`) first waits in the store until
all have arrived, failing only when one of those still missing has shown no
sign of life for the timeout. The collective itself then runs with every
rank present, under the process group's timeout.
"""
from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
DEVICES = ("auto", "cpu", "cuda", "npu")
DEFAULT_TIMEOUT_S = 600


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    if not value.strip().isdigit():
        raise ValueError(f"environment variable {name} must be a non-negative integer, got {value!r}")
    return int(value)


def import_torch_npu(required: bool) -> bool:
    """Import torch_npu if it is installed (or fail clearly if ``required``); True when usable."""
    if importlib.util.find_spec("torch_npu") is None:
        if required:
            raise ValueError("device 'npu' needs torch_npu: pip install 'ditcache[npu]' (and Ascend's CANN toolkit)")
        return False
    importlib.import_module("torch_npu")
    return True


def available_devices() -> Dict[str, int]:
    """How many devices of each kind this process can see."""
    counts = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0, "npu": 0}
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        counts["npu"] = npu.device_count()
    return counts


def select_device(requested: str, local_rank: int, available: Optional[Mapping[str, int]] = None) -> str:
    """The device this process should use, as a string (``torch.device("npu")`` needs torch_npu loaded).

    ``auto`` picks NPU, then CUDA, then CPU. Accelerators are indexed by
    ``local_rank``; asking for one that is missing, or for more processes on a
    node than it has devices, is a clear error.
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {requested!r}")
    if available is None:
        if requested in ("npu", "auto"):
            import_torch_npu(required=requested == "npu")
        available = available_devices()
    kind = requested
    if requested == "auto":
        kind = "npu" if available.get("npu", 0) else "cuda" if available.get("cuda", 0) else "cpu"
    if kind == "cpu":
        return "cpu"
    count = available.get(kind, 0)
    if count == 0:
        raise ValueError(f"device {kind!r} was asked for, but this machine has no {kind.upper()} device; use --device cpu")
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} needs {kind}:{local_rank}, but this node has {count} {kind} device(s); "
            f"start at most {count} processes per node (--nproc_per_node)"
        )
    return f"{kind}:{local_rank}"


@dataclass
class DistributedContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


class _Liveness:
    """This rank's heartbeat in the job's store, and waits for the others that tell dead ranks from busy ones."""

    PREFIX = "ditcache/liveness/"

    def __init__(self, store: Any, rank: int, world_size: int, timeout_s: float) -> None:
        self.store, self.rank, self.world_size, self.timeout_s = store, rank, world_size, timeout_s
        self.arrivals = 0  # sync points passed; every rank passes them in the same order
        self._stop = threading.Event()
        beat_store = store.clone() if hasattr(store, "clone") else store  # its own connection, where possible
        self._thread = threading.Thread(target=self._beat, args=(beat_store,), daemon=True,
                                        name="ditcache-heartbeat")
        self._thread.start()

    def _beat(self, store: Any) -> None:
        interval = min(5.0, self.timeout_s / 4)
        while not self._stop.is_set():
            try:
                store.add(f"{self.PREFIX}beat/{self.rank}", 1)
            except Exception:  # the store is gone: the job is ending, and waits will say so
                return
            self._stop.wait(interval)

    def wait_for_all(self) -> None:
        """Return once every rank has arrived here; raise if a missing one stopped beating for the timeout."""
        key = f"{self.PREFIX}arrive/{self.arrivals}"
        self.arrivals += 1
        self.store.add(key, 1)
        last_beat = {r: (self._beats(r), time.monotonic()) for r in range(self.world_size)}
        pause = 0.001
        while self.store.add(key, 0) < self.world_size:
            time.sleep(pause)
            pause = min(0.1, pause * 2)
            now = time.monotonic()
            for other, (count, since) in last_beat.items():
                current = self._beats(other)
                if current != count:
                    last_beat[other] = (current, now)
                elif now - since > self.timeout_s:
                    raise RuntimeError(
                        f"rank {other} stopped responding: no heartbeat for {self.timeout_s:g} s (--timeout) while "
                        f"rank {self.rank} waited for every rank at sync point {self.arrivals - 1}; it died or hangs"
                    )

    def _beats(self, rank: int) -> int:
        return self.store.add(f"{self.PREFIX}beat/{rank}", 0)

    def stop(self) -> None:
        self._stop.set()


_liveness: Optional[_Liveness] = None


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
    """Pick the device and, under torchrun with several processes, join the process group."""
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    chosen = torch.device(select_device(device, local_rank))
    if chosen.type != "cpu":
        getattr(torch, chosen.type).set_device(chosen)
    context = DistributedContext(rank, world_size, local_rank, chosen)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=BACKENDS[chosen.type], timeout=datetime.timedelta(seconds=timeout_s),
            rank=rank, world_size=world_size,
        )
        global _liveness
        _liveness = _Liveness(torch.distributed.distributed_c10d._get_default_store(), rank, world_size, timeout_s)
    return context


def _wait_for_all() -> None:
    """Wait until every rank reaches the same sync point, however long the others work (see the module's note)."""
    if _liveness is not None:
        _liveness.wait_for_all()


def current_context() -> DistributedContext:
    """The context of an already initialised job (or a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistributedContext(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                                  _env_int("LOCAL_RANK", 0))
    return DistributedContext()


def broadcast_object(value: Any, source: int = 0) -> Any:
    """``value`` from rank ``source`` on every rank (itself when not distributed)."""
    if not current_context().enabled:
        return value
    box = [value]
    _wait_for_all()
    torch.distributed.broadcast_object_list(box, src=source)
    return box[0]


def all_gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order."""
    context = current_context()
    if not context.enabled:
        return [value]
    out: List[Any] = [None] * context.world_size
    _wait_for_all()
    torch.distributed.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if current_context().enabled:
        _wait_for_all()
        torch.distributed.barrier()


def destroy() -> None:
    global _liveness
    if _liveness is not None:
        _liveness.stop()
        _liveness = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
