"""Searching and sampling with a schedule through the front ends: ``ditcache sample --schedule-timestep`` and the samplers."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ditcache.cli import main
from ditcache.models.shapes import render_clip
from ditcache.restep import read_schedule, write_schedule
from ditcache.video import read_video, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION_PROMPTS = ["a cyan triangle moving up", "a white square moving down", "a green circle moving left",
                       "a blue square moving up", "a yellow circle moving down"]

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


def write_calibration(directory, count=5):
    """Real mp4 clips of the training distribution and the prompts.json a sampler leaves beside them."""
    os.makedirs(directory)
    rng = np.random.default_rng(0)
    names = {f"clip_{k}.mp4": prompt for k, prompt in enumerate(CALIBRATION_PROMPTS[:count])}
    for name, prompt in names.items():
        write_video(os.path.join(directory, name), render_clip(prompt, rng))
    with open(os.path.join(directory, "prompts.json"), "w", encoding="utf-8") as handle:
        json.dump(names, handle)
    return str(directory)


def run_sampler(module, args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


@pytest.mark.parametrize("method, flags", [("klub", ["--num_sampling_steps", "4", "--monte_carlo_iters", "1"]),
                                           ("dp", ["--num_sampling_steps", "5", "--teacher_steps", "12",
                                                   "--monte_carlo_iters", "2"])])
def test_each_method_searches_and_samples_through_the_samplers(tmp_path, method, flags):
    videos, save_dir = write_calibration(tmp_path / "videos"), str(tmp_path / "restep")
    searched = run_sampler("samplers.search_t2v_sp", [
        "--text_prompt", PROMPT, "--search_type", "restep", "--restep_method", method, "--videos_path", videos,
        "--save_dir", save_dir, "--neighbour_type", "uniform", *flags])
    assert searched.returncode == 0, searched.stderr[-3000:]
    schedule_file = os.path.join(save_dir, "searched_schedule.txt")
    schedule = read_schedule(schedule_file)
    assert len(schedule) == int(flags[1]) and schedule[-1] == 0.999

    out = tmp_path / "videos_out"
    sampled = run_sampler("samplers.sample_t2v_sp", ["--text_prompt", PROMPT, "--schedule_timestep", schedule_file,
                                                     "--sample_method", "EulerDiscrete", "--save_img_path", str(out)])
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    names = json.loads((out / "prompts.json").read_text())
    assert len(names) == 1 and all("_restep" in name for name in names)
    assert sample(tmp_path, "cli", "--schedule-timestep", schedule_file, "--scheduler", "euler").shape == (8, 32, 32, 3)


@pytest.mark.parametrize("flags, message", [
    (["--restep_method", "ays"], "invalid choice: 'ays'"),
    (["--restep_method", "dp", "--num_sampling_steps", "20", "--teacher_steps", "10"],
     r"--teacher_steps 10 is invalid: must be an int in \[21, 1000\]"),
    (["--monte_carlo_iters", "0"], r"--monte_carlo_iters 0 is invalid: must be an int in \[1, 20\]"),
    (["--schedule_timestep", "s.txt"], "--schedule_timestep belongs to --search_type dit_cache"),
])
def test_bad_restep_flags_fail_before_any_model_loads(tmp_path, flags, message, capsys):
    from ditcache.samplers.args import parse

    with pytest.raises(SystemExit) as exit_info:
        parse("search", ["--text_prompt", PROMPT, "--search_type", "restep", "--videos_path", str(tmp_path),
                         "--save_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
