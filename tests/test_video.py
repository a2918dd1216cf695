import os

import numpy as np
import pytest

from ditcache.models.shapes import render_clip
from ditcache.video import contact_sheet, read_video, write_contact_sheet, write_video


def test_mp4_round_trip(tmp_path):
    clip = render_clip("a yellow square moving right", np.random.default_rng(0), num_frames=8, height=32, width=48)
    path = str(tmp_path / "sub" / "clip.mp4")
    write_video(path, clip, fps=8)
    back = read_video(path)
    assert back.shape == (8, 32, 48, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clip.astype(int)).mean() < 4  # lossy, but close
    assert os.listdir(tmp_path / "sub") == ["clip.mp4"]  # no temporary files left


def test_contact_sheet_png(tmp_path):
    import imageio

    clip = render_clip("a red circle moving up", np.random.default_rng(0))
    path = str(tmp_path / "sheet.png")
    write_contact_sheet(path, clip, scale=2)
    sheet = imageio.v2.imread(path)
    assert sheet.shape == (64, 8 * 64 + 7 * 2, 3)
    assert np.array_equal(sheet, contact_sheet(clip, scale=2))
    assert np.array_equal(sheet[:, 66:130], clip[1].repeat(2, 0).repeat(2, 1))


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(str(tmp_path / "a.mp4"), np.zeros((2, 33, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(str(tmp_path / "a.mp4"), np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="not a file"):
        read_video(str(tmp_path / "missing.mp4"))
    assert os.listdir(tmp_path) == []
