"""Device selection, process-group settings and the timeout, without accelerators (real gloo processes)."""
import os
import subprocess
import sys
import time

import pytest
import torch

from ditcache.distributed import BACKENDS, DistributedContext, init_distributed, select_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "requested,local_rank,available,expected",
    [
        ("auto", 0, {"cpu": 1, "cuda": 0, "npu": 0}, "cpu"),
        ("auto", 1, {"cpu": 1, "cuda": 2, "npu": 0}, "cuda:1"),
        ("auto", 3, {"cpu": 1, "cuda": 8, "npu": 8}, "npu:3"),  # NPU first, as on Atlas machines
        ("cpu", 5, {"cpu": 1, "cuda": 8, "npu": 0}, "cpu"),
        ("cuda", 0, {"cpu": 1, "cuda": 1, "npu": 0}, "cuda:0"),
        ("npu", 7, {"cpu": 1, "cuda": 0, "npu": 8}, "npu:7"),
    ],
)
def test_device_follows_the_request_and_local_rank(requested, local_rank, available, expected):
    assert select_device(requested, local_rank, available) == expected


@pytest.mark.parametrize(
    "requested,local_rank,available,match",
    [
        ("cuda", 0, {"cpu": 1, "cuda": 0, "npu": 0}, "no CUDA device"),
        ("npu", 0, {"cpu": 1, "cuda": 0, "npu": 0}, "no NPU device"),
        ("cuda", 2, {"cpu": 1, "cuda": 2, "npu": 0}, "LOCAL_RANK=2 needs cuda:2, but this node has 2"),
        ("gpu", 0, {"cpu": 1}, "device must be one of"),
    ],
)
def test_impossible_devices_are_clear_errors(requested, local_rank, available, match):
    with pytest.raises(ValueError, match=match):
        select_device(requested, local_rank, available)


def test_npu_without_torch_npu_says_how_to_get_it():
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed")
    with pytest.raises(ValueError, match=r"pip install 'ditcache\[npu\]'"):
        select_device("npu", 0)


def test_backend_follows_the_device():
    assert BACKENDS == {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized()


def test_malformed_rank_variables(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK must be a non-negative integer, got 'one'"):
        init_distributed("cpu")


WORKING_ALONE_SCRIPT = """
import time
from ditcache.distributed import all_gather_objects, barrier, broadcast_object, destroy, init_distributed
context = init_distributed("cpu", timeout_s=3)
if context.rank == 0:
    time.sleep(8)  # rank 0 works alone for longer than the timeout, as in a ReStep search
assert broadcast_object("decided" if context.rank == 0 else None) == "decided"
time.sleep(5 * context.rank)  # now rank 1 is the slow one
assert all_gather_objects(context.rank) == [0, 1]
if context.rank == 0:
    time.sleep(5)  # writing the results
barrier()
destroy()
print("rank", context.rank, "done")
"""

DYING_RANK_SCRIPT = """
import os, signal
from ditcache.distributed import broadcast_object, init_distributed
context = init_distributed("cpu", timeout_s=3)
if context.rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
broadcast_object("rank 0 waits here for rank 1")
"""


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_timeout_spares_ranks_waiting_for_long_work(tmp_path):
    script = tmp_path / "alone.py"
    script.write_text(WORKING_ALONE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(_free_port()), str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 done" in result.stdout and "rank 1 done" in result.stdout


def test_a_rank_that_dies_is_caught_by_the_timeout(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text(DYING_RANK_SCRIPT)
    port = _free_port()
    started = time.perf_counter()
    processes = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "RANK": str(rank),
                              "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": str(port)})
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert processes[1].returncode == -9
    assert processes[0].returncode != 0
    assert "rank 1 stopped responding: no heartbeat for 3 s" in outputs[0][1], outputs[0][1][-3000:]
    assert time.perf_counter() - started < 60
