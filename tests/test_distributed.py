"""Device selection and process-group settings, without accelerators."""
import pytest
import torch

from ditcache.distributed import BACKENDS, DistributedContext, init_distributed, select_device


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
