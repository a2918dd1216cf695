"""``ditcache sample --schedule-timestep FILE``: sampling at a schedule file's timesteps."""
import re

import numpy as np
import pytest

from ditcache.cli import main
from ditcache.restep import write_schedule
from ditcache.video import read_video

PROMPT = "a red circle moving right"
STOCK_4 = [0.249, 0.499, 0.749, 0.999]  # what euler_ancestral samples with 4 "trailing" steps, as t/1000

pytestmark = pytest.mark.usefixtures("one_thread")


def sample(tmp_path, name, *flags):
    out = str(tmp_path / f"{name}.mp4")
    assert main(["sample", "--prompt", PROMPT, "--out", out, "--seed", "3", "--quiet", *flags]) == 0
    return read_video(out)


def test_schedule_file_sets_the_timesteps(tmp_path):
    stock_file, other_file = str(tmp_path / "stock.txt"), str(tmp_path / "other.txt")
    write_schedule(stock_file, STOCK_4)
    write_schedule(other_file, [0.1, 0.3, 0.6, 0.999])
    uniform = sample(tmp_path, "uniform", "--steps", "4")
    assert uniform.shape == (8, 32, 32, 3)
    assert np.array_equal(sample(tmp_path, "stock", "--schedule-timestep", stock_file), uniform)
    assert np.array_equal(sample(tmp_path, "stock4", "--schedule_timestep", stock_file, "--steps", "4"), uniform)
    assert not np.array_equal(sample(tmp_path, "other", "--schedule-timestep", other_file), uniform)


def test_bad_schedule_flags_are_usage_errors(tmp_path, capsys):
    path = str(tmp_path / "schedule.txt")
    write_schedule(path, STOCK_4)
    (tmp_path / "broken.txt").write_text("[0.5, 0.2]")
    cases = [
        (["--schedule-timestep", path, "--steps", "5"], "--steps 5 does not match the 4 timesteps in schedule file"),
        (["--schedule-timestep", str(tmp_path / "broken.txt")], "must be strictly increasing"),
        (["--schedule-timestep", str(tmp_path / "missing.txt")], "--schedule-timestep file .*missing.txt.* does not exist"),
        (["--schedule-timestep", path, "--scheduler", "pndm"], "timesteps= is not supported by the PNDMScheduler"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["sample", "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4"), "--quiet", *flags])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x.mp4").exists()
