import re

import numpy as np
import pytest

from ditcache.cli import main
from ditcache.video import read_video


def test_sample_writes_video_and_sheet(tmp_path, capsys):
    out, png = tmp_path / "clip.mp4", tmp_path / "sheet.png"
    code = main(["sample", "--prompt", "a green square moving left", "--out", str(out), "--png", str(png),
                 "--steps", "3", "--seed", "2", "--width", "64"])
    assert code == 0 and out.is_file() and png.is_file()
    video = read_video(str(out))
    assert video.shape == (8, 32, 64, 3) and video.dtype == np.uint8
    assert "wrote" in capsys.readouterr().out


def test_sample_takes_a_component_schedule_file_and_its_step_count(tmp_path, capsys):
    schedule = tmp_path / "schedule.json"
    schedule.write_text('{"attn1": [1, 0, 1], "ff-0": [1, 1, 0]}')
    out = tmp_path / "clip.mp4"
    code = main(["sample", "--prompt", "a green square moving left", "--out", str(out), "--width", "64",
                 "--dit-cache-config", str(schedule), "--quiet"])
    assert code == 0 and read_video(str(out)).shape == (8, 32, 64, 3)
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a green square moving left", "--out", str(out), "--steps", "4",
              "--dit-cache-config", str(schedule), "--quiet"])
    assert "searched for 3 steps, but this run has 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prompt", "a pink circle moving up"], "--prompt: .*known words"),
        (["--prompt", "a red circle moving up", "--scheduler", "heun"], "--scheduler: invalid choice: 'heun'"),
        (["--prompt", "a red circle moving up", "--frames", "5"], "--frames 5 is invalid"),
        (["--prompt", "a red circle moving up", "--steps", "0"], "--steps 0 is invalid"),
        (["--prompt", "a red circle moving up", "--guidance", "0"], "--guidance must be a finite number >= 1"),
        (["--prompt", "a red circle moving up", "--guidance", "nan"], "--guidance must be a finite number >= 1 .*got nan"),
        (["--prompt", "a red circle moving up", "--guidance", "inf"], "--guidance must be a finite number >= 1 .*got inf"),
        (["--prompt", "a red circle moving up", "--frames", "3"], "--frames 3 is invalid"),
        (["--prompt", "a red circle moving up", "--height", "36"], "--height 36 is invalid: must be >= 32 and a multiple of 8"),
        (["--prompt", "a red circle moving up", "--png", "/proc/sheet.png"], "--png: folder '/proc' is not writable"),
        (["--prompt", "a red circle moving up", "--device", "cuda"], "--device 'cuda': .* no CUDA device"),
        (["--prompt", "a red circle moving up", "--device", "warp"], "--device 'warp' is invalid"),
    ],
)
def test_bad_flags_are_named(tmp_path, capsys, flags, message, monkeypatch):
    import ditcache.models.pipeline as pipeline
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    loads = []  # every bad flag is refused before the model loads
    monkeypatch.setattr(pipeline, "load_bundled_pipeline", lambda *a, **k: loads.append(1))
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--out", str(tmp_path / "x.mp4"), "--quiet"] + flags)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x.mp4").exists() and not loads


@pytest.mark.parametrize("out", ["/proc/clip.mp4", "{tmp}/folder.mp4"])
def test_an_unwritable_out_is_refused_before_sampling(tmp_path, capsys, out, monkeypatch):
    import ditcache.models.pipeline as pipeline

    (tmp_path / "folder.mp4").mkdir()
    loads = []
    monkeypatch.setattr(pipeline, "load_bundled_pipeline", lambda *a, **k: loads.append(1))
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a red circle moving up", "--out", out.format(tmp=tmp_path)])
    assert re.search("--out.* (is not writable|is a directory)", capsys.readouterr().err) and not loads


def test_out_must_be_mp4(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a red circle moving up", "--out", str(tmp_path / "x.gif")])
    assert "--out" in capsys.readouterr().err
