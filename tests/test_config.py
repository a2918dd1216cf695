"""Configs and every bad input: clear ValueErrors that name field, value and what is allowed."""
import json
import os

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
from toy import ToyPipeline

GOOD = dict(cache_step_start=10, cache_step_interval=2, cache_block_start=2, cache_num_blocks=3)


def test_round_trips_and_dict():
    config = DitCacheConfig(**GOOD)
    assert dict(config) == GOOD == config.to_dict()
    assert DitCacheConfig.from_dict(dict(config)) == config


def test_cache_step_end_is_optional_and_spares_the_last_steps(tmp_path):
    spared = DitCacheConfig(**GOOD, num_sampling_steps=20, cache_step_end=17)
    assert spared.to_dict() == {**GOOD, "num_sampling_steps": 20, "cache_step_end": 17}
    assert DitCacheConfig.from_dict(spared.to_dict()) == spared
    assert [spared.step_mode(t) for t in (9, 10, 11, 15, 17, 19)] == ["full", "store", "reuse", "reuse", "full", "full"]
    plain = DitCacheConfig(**GOOD)  # absent: caching goes on to the last step, as the spec's files mean
    assert plain.cache_step_end is None and "cache_step_end" not in plain.to_dict() and plain.step_mode(19) == "reuse"
    for bad in (10, 3, 21, 17.0, True):
        with pytest.raises(ValueError, match=rf"cache_step_end must be an int > cache_step_start=10 and "
                                             rf"<= num_sampling_steps=20 .*got {bad!r}"):
            DitCacheConfig(**GOOD, num_sampling_steps=20, cache_step_end=bad)
    pipe = ToyPipeline(DDIMScheduler())
    with dit_cache(pipe, {**GOOD, "cache_step_end": 25}):
        with pytest.raises(ValueError, match=r"cache_step_end=25 is beyond this run's 20 steps \(allowed 11..20\)"):
            pipe(num_inference_steps=20)


def test_save_is_atomic_json_and_load_reads_spec_files(tmp_path):
    path = tmp_path / "dit_cache_config.json"
    DitCacheConfig(**GOOD).save(path)
    assert json.loads(path.read_text()) == GOOD
    assert DitCacheConfig.load(path) == DitCacheConfig(**GOOD)
    assert [p.name for p in tmp_path.iterdir()] == ["dit_cache_config.json"]  # no temp files left
    spec_file = tmp_path / "spec.json"
    spec_file.write_text('{"cache_block_start": 8, "cache_num_blocks": 4, "cache_step_start": 20, "cache_step_interval": 2}')
    assert DitCacheConfig.load(spec_file) == DitCacheConfig(20, 2, 8, 4)


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    DitCacheConfig(**GOOD).save(path)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        DitCacheConfig(1, 1, 1, 1).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("cache_step_start", -1, ">= 0"),
        ("cache_step_interval", 0, ">= 1"),
        ("cache_block_start", -2, ">= 0"),
        ("cache_num_blocks", 0, ">= 1"),
        ("cache_num_blocks", True, "int"),
        ("cache_step_start", 2.0, "int"),
        ("cache_block_start", "1", "int"),
        ("cache_step_interval", None, "int"),
    ],
)
def test_bad_fields(field, value, allowed):
    with pytest.raises(ValueError) as err:
        DitCacheConfig(**{**GOOD, field: value})
    message = str(err.value)
    assert field in message
    assert repr(value) in message or str(value) in message
    assert allowed in message


def test_unknown_and_missing_keys_and_malformed_json(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['cache_ratio'\]"):
        DitCacheConfig.from_dict({**GOOD, "cache_ratio": 1.3})
    with pytest.raises(ValueError, match=r"missing keys \['cache_num_blocks'\]"):
        DitCacheConfig.from_dict({k: v for k, v in GOOD.items() if k != "cache_num_blocks"})
    bad = tmp_path / "bad.json"
    bad.write_text("{'cache_step_start': 1,")
    with pytest.raises(ValueError, match="not valid JSON"):
        DitCacheConfig.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        DitCacheConfig.load(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        DitCacheConfig.load(tmp_path / "list.json")
    with pytest.raises(ValueError, match=f"cache config file '{tmp_path}' is a directory, not a JSON file"):
        DitCacheConfig.load(tmp_path)
    (tmp_path / "binary.json").write_bytes(bytes([0x80, 0xff, 0x00, 0x9c]) * 8)
    with pytest.raises(ValueError, match=r"cache config file '.*binary\.json' is not a text \(UTF-8 JSON\) file"):
        DitCacheConfig.load(tmp_path / "binary.json")


def test_num_sampling_steps_bounds_the_step_start():
    with pytest.raises(ValueError, match=r"cache_step_start must be an int in \[0, 19\], got 20"):
        DitCacheConfig(20, 2, 0, 1, num_sampling_steps=20)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cache_ratio=1.0), "cache_ratio must be a finite number > 1.0, got 1.0"),
        (dict(cache_ratio="fast"), "cache_ratio"),
        (dict(cache_ratio=float("nan")), "cache_ratio"),
        (dict(num_sampling_steps=None), "num_sampling_steps must be set"),
        (dict(num_sampling_steps=1), "num_sampling_steps must be an int >= 2, got 1"),
        (dict(min_psnr=-3), "min_psnr must be a finite number > 0.0, got -3"),
        (dict(min_psnr="30"), "min_psnr"),
        (dict(cache_ratio=2, min_psnr=30), "give either cache_ratio .* or min_psnr .* not both: got cache_ratio=2, min_psnr=30"),
        (dict(cache_ratio=1.3, min_psnr=30), "not both"),
        (dict(candidates_to_run=0), "candidates_to_run must be an int >= 1, got 0"),
        (dict(confirm_pairs=-1), "confirm_pairs must be an int >= 0, got -1"),
        (dict(speed_margin=1.5), "speed_margin must be a number in"),
        (dict(journal_dir=3), "journal_dir must be a path"),
        (dict(reuse_modes=("taylor3",)), r"reuse_modes must be a non-empty list of distinct values from \['delta', 'taylor1', 'taylor2'\]"),
        (dict(reuse_modes=()), "reuse_modes"),
        (dict(reuse_modes="delta"), "reuse_modes"),
        (dict(dit_block_num=0), "dit_block_num"),
        (dict(cache_step_interval=1), "cache_step_interval must be an int >= 2, got 1"),
        (dict(num_hidden_states=0), "num_hidden_states"),
    ],
)
def test_search_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DitCacheSearchConfig(**{"num_sampling_steps": 50, **kwargs})


def test_search_config_accepts_high_ratios():
    assert DitCacheSearchConfig(cache_ratio=3.5, num_sampling_steps=50).cache_ratio == 3.5
    assert DitCacheSearchConfig(num_sampling_steps=50).cache_ratio == 1.3  # the spec's default target


def unpatched(pipe):
    return all("forward" not in block.__dict__ for block in pipe.transformer.transformer_blocks) and (
        "step" not in pipe.scheduler.__dict__
    )


class NotAList(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(2, 2))
        self.empty = nn.ModuleList()


@pytest.mark.parametrize(
    "path,match",
    [
        ("", "non-empty string"),
        ([], "dotted path"),
        (["transformer.transformer_blocks", 3], "dotted path"),
        ("transformer.transformer_blocks,transformer.transformer_blocks", "appears twice"),
        ("transformer..blocks", "identifiers"),
        ("transformer.transformer_blocks.0", "identifiers"),
        ("transformer.missing", "has no attribute 'missing'"),
        ("transformer.proj_in", "nn.ModuleList"),
        ("extra.blocks", "nn.ModuleList"),
        ("extra.empty", "empty"),
    ],
)
def test_bad_block_paths(path, match):
    pipe = ToyPipeline(DDIMScheduler())
    pipe.extra = NotAList()
    with pytest.raises(ValueError, match=match):
        DitCacheAdaptor(pipe, dit_block_path=path)
    with pytest.raises(ValueError, match=match):
        with dit_cache(pipe, GOOD, dit_block_path=path):
            pass
    assert unpatched(pipe)


@pytest.mark.parametrize(
    "config,match",
    [
        ({**GOOD, "cache_block_start": 6}, r"cache_block_start must be an int in \[0, 5\], got 6"),
        ({**GOOD, "cache_num_blocks": 5}, r"cache_num_blocks must be an int in \[1, 4\], got 5"),
        ({**GOOD, "cache_num_blocks": 0}, "cache_num_blocks"),
        ({**GOOD, "cache_step_start": -1}, "cache_step_start"),
        ({**GOOD, "cache_block_start": False}, "cache_block_start"),
        (42, "config must be a DitCacheConfig, a ComponentCacheConfig, a dict, a path"),
        ("/nonexistent/dir/cfg.json", "does not exist"),
    ],
)
def test_bad_configs_leave_the_model_unpatched(config, match):
    pipe = ToyPipeline(DDIMScheduler())
    with pytest.raises(ValueError, match=match):
        with dit_cache(pipe, config):
            pass
    assert unpatched(pipe)


def test_wrong_config_type_for_the_adaptor():
    pipe = ToyPipeline(DDIMScheduler())
    with pytest.raises(ValueError, match="config must be a DitCacheSearchConfig"):
        DitCacheAdaptor(pipe, config={"cache_ratio": 1.3})
    with pytest.raises(ValueError, match="dit_block_num=4 does not match the 6 blocks"):
        DitCacheAdaptor(pipe, config=DitCacheSearchConfig(num_sampling_steps=10, dit_block_num=4))
    assert unpatched(pipe)
    given = DitCacheSearchConfig(num_sampling_steps=10)
    adaptor = DitCacheAdaptor(pipe, config=given)
    assert adaptor.search_config.dit_block_num == 6
    assert given.dit_block_num is None  # the caller's config is a value: not written to
    with pytest.raises(ValueError, match="cache_num_blocks"):
        adaptor.update_cache_config(cache_block_start=3, cache_num_blocks=4, cache_step_start=0, cache_step_interval=2)
    with pytest.raises(ValueError, match="already patched"):
        DitCacheAdaptor(pipe)
    adaptor.remove()
    assert unpatched(pipe)


def test_config_from_dict_and_path(tmp_path):
    path = tmp_path / "c.json"
    DitCacheConfig(**GOOD).save(path)
    for config in (GOOD, str(path), path):
        pipe = ToyPipeline(DDIMScheduler())
        with dit_cache(pipe, config) as adaptor:
            assert adaptor.cache_config == DitCacheConfig(**GOOD)


def test_step_count_mismatch_is_refused_at_run_start():
    pipe = ToyPipeline(DDIMScheduler())
    with dit_cache(pipe, {**GOOD, "num_sampling_steps": 50}):
        with pytest.raises(ValueError, match="made for num_sampling_steps=50, but this run has 20"):
            pipe(num_inference_steps=20)
    with dit_cache(pipe, {**GOOD, "cache_step_start": 30}):
        with pytest.raises(ValueError, match=r"cache_step_start=30 is beyond this run's 20 steps \(allowed 0..19\)"):
            pipe(num_inference_steps=20)
    assert unpatched(pipe)
    out = pipe(num_inference_steps=5)
    assert torch.isfinite(out).all()


def test_saved_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "c.json"
    DitCacheConfig(**GOOD).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    DitCacheConfig(**GOOD).save(path)
    assert path.stat().st_mode & 0o777 == 0o640
