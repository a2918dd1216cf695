"""`ditcache search` then `ditcache sample --dit-cache-config` on the bundled model."""
import json

import pytest

from ditcache import DitCacheConfig
from ditcache.cli import main
from ditcache.video import read_video


@pytest.mark.slow
def test_search_then_sample_with_the_config(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a green triangle moving left\n")
    out = tmp_path / "dit_cache_config.json"
    assert main(["search", "--prompts", str(prompts), "--steps", "10", "--min-psnr", "30", "--out", str(out),
                 "--quiet"]) == 0
    config = DitCacheConfig.load(out)
    assert config.num_sampling_steps == 10
    report = json.loads((tmp_path / "dit_cache_config.search.json").read_text())
    assert report["chosen"]["psnr"] >= 30 and report["full_runs"] >= 3
    assert (tmp_path / "dit_cache_config.search.png").exists()
    video = tmp_path / "clip.mp4"
    assert main(["sample", "--prompt", "a green triangle moving left", "--out", str(video), "--quiet",
                 "--dit-cache-config", str(out)]) == 0
    assert read_video(str(video)).shape == (8, 32, 32, 3)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["search", "--cache-ratio", "1.5", "--min-psnr", "30"], "either --cache-ratio"),
        (["search", "--out", "config.txt"], "--out 'config.txt' is invalid: it must be a .json path"),
        (["search", "--prompts", "/nonexistent/prompts.txt"], "--prompts '/nonexistent/prompts.txt' cannot be read"),
        (["search", "--cache-ratio", "0.9"], "--cache-ratio must be a finite number > 1.0, got 0.9"),
        (["search", "--reuse", "taylor9"], "invalid choice: 'taylor9'"),
        (["search", "--cache-ratio", "nan"], "--cache-ratio must be a finite number > 1.0, got nan"),
        (["search", "--guidance", "inf"], "--guidance must be a finite number >= 1 (1 disables guidance), got inf"),
        (["search", "--height", "36"], "--height 36 is invalid"),
        (["search", "--out", "/proc/c.json"], "--out: folder '/proc' is not writable"),
        (["search", "--journal", "/proc/j"], "--journal: folder '/proc' is not writable"),
        (["search", "--sensitivity-every", "-1"], "--sensitivity-every must be an int >= 0, got -1"),
        (["profile", "--every", "0"], "--every must be an int >= 1, got 0"),
        (["profile", "--out", "p.txt"], "--out 'p.txt' is invalid: it must be a .json path"),
    ],
)
def test_bad_search_input(argv, message, capsys, tmp_path, monkeypatch):
    import ditcache.models.pipeline as pipeline

    loads = []  # every bad input is refused before the model loads
    monkeypatch.setattr(pipeline, "load_bundled_pipeline", lambda *a, **k: loads.append(1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err and not loads


def test_unknown_words_in_the_prompts_file(tmp_path, capsys, monkeypatch):
    import ditcache.models.pipeline as pipeline

    loads = []
    monkeypatch.setattr(pipeline, "load_bundled_pipeline", lambda *a, **k: loads.append(1))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a purple circle moving right\n")
    with pytest.raises(SystemExit):
        main(["search", "--prompts", str(prompts), "--out", str(tmp_path / "c.json")])
    error = capsys.readouterr().err
    assert "--prompts:" in error and "purple" in error and not loads


def test_sample_refuses_a_config_for_other_steps(tmp_path, capsys):
    config = tmp_path / "c.json"
    DitCacheConfig(2, 2, 0, 4, num_sampling_steps=20).save(config)
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a red circle moving up", "--out", str(tmp_path / "a.mp4"), "--steps", "30",
              "--dit-cache-config", str(config)])
    assert "--dit-cache-config was searched for 20 steps, but this run has 30" in capsys.readouterr().err
