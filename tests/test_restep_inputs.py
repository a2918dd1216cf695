"""ReStep's inputs: every bad config, calibration directory and schedule file is a clear ValueError."""
import dataclasses
import io
import json
import os
import sys

import pytest

from ditcache.restep import ReStepAdaptor, ReStepSearchConfig, read_schedule, read_schedule_timesteps, write_schedule
from ditcache.restep.calibration import find_clips


def make_dir(path, count=5, prompts=None):
    """``count`` .mp4 names (the config only counts and lists them) and an optional prompts.json."""
    os.makedirs(path, exist_ok=True)
    for k in range(count):
        open(os.path.join(path, f"v{k:02d}.mp4"), "wb").close()
    if prompts is not None:
        with open(os.path.join(path, "prompts.json"), "w", encoding="utf-8") as handle:
            handle.write(prompts if isinstance(prompts, str) else json.dumps(prompts))
    return str(path)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "ays", r"method='ays' is invalid: allowed values are \['klub', 'dp'\]"),
        ("neighbour_type", "gaussian", r"neighbour_type='gaussian' is invalid: allowed values are \['uniform', 'random'\]"),
        ("num_sampling_steps", 2, "num_sampling_steps=2 is invalid: must be an int >= 3"),
        ("num_sampling_steps", 10.0, "num_sampling_steps=10.0 is invalid"),
        ("num_sampling_steps", True, "num_sampling_steps=True is invalid"),
        ("monte_carlo_iters", 0, r"monte_carlo_iters=0 is invalid: must be an int in \[1, 20\]"),
        ("monte_carlo_iters", 21, r"monte_carlo_iters=21 is invalid: must be an int in \[1, 20\]"),
        ("monte_carlo_iters", True, "monte_carlo_iters=True is invalid"),
        ("teacher_steps", 1, r"teacher_steps=1 is invalid: must be an int in \[2, 1000\]"),
        ("teacher_steps", 1001, r"teacher_steps=1001 is invalid"),
        ("seed", -1, "seed=-1 is invalid: must be an int >= 0"),
        ("guidance_scale", 0.5, "guidance_scale=0.5 is invalid: must be a finite number >= 1"),
        ("guidance_scale", float("nan"), "guidance_scale=nan is invalid"),
        ("guidance_scale", "4", "guidance_scale='4' is invalid"),
        ("guidance_scale", True, "guidance_scale=True is invalid"),
        ("videos_path", None, "videos_path=None is invalid: must be a directory of calibration videos"),
        ("save_dir", None, "save_dir=None is invalid: must be a directory path"),
        ("save_dir", "", "save_dir='' is invalid: must be a directory path"),
    ],
)
def test_bad_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        ReStepSearchConfig(**{"videos_path": "videos", "save_dir": "out", field: value})


def test_dp_needs_more_teacher_steps_than_sampling_steps():
    with pytest.raises(ValueError, match=r"teacher_steps=50 is invalid: must be an int in \[51, 1000\] \(more than"):
        ReStepSearchConfig("videos", "out", method="dp", num_sampling_steps=50, teacher_steps=50)
    assert ReStepSearchConfig("videos", "out", num_sampling_steps=500).teacher_steps == 200  # klub has no teacher


def test_config_is_a_value_that_touches_no_file(tmp_path):
    """Making a config lists, creates and writes nothing; the files are checked when the search starts."""
    config = ReStepSearchConfig(str(tmp_path / "missing"), str(tmp_path / "new" / "out"), monte_carlo_iters=20)
    assert list(tmp_path.iterdir()) == []
    assert config == ReStepSearchConfig(str(tmp_path / "missing"), str(tmp_path / "new" / "out"), monte_carlo_iters=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_sampling_steps = 10


@pytest.fixture(scope="module")
def pipe():
    from ditcache.models import load_bundled_pipeline

    return load_bundled_pipeline(scheduler="euler")


def start(pipe, videos, save_dir, **kwargs):
    """Start a search: its inputs are checked before any clip is read or model called."""
    ReStepAdaptor(pipe, ReStepSearchConfig(videos, str(save_dir), **kwargs)).search()


def test_monte_carlo_iters_above_the_clip_count(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"monte_carlo_iters=6 is invalid: must be an int in \[1, 5\]"):
        start(pipe, make_dir(tmp_path / "videos"), tmp_path / "out", monte_carlo_iters=6)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [4, 21])
def test_video_count_out_of_range(pipe, tmp_path, count):
    with pytest.raises(ValueError, match=f"holds {count} calibration videos; 5 to 20 are needed"):
        start(pipe, make_dir(tmp_path / "videos", count=count), tmp_path / "out")


def test_bad_paths(pipe, tmp_path):
    videos = make_dir(tmp_path / "videos")
    with pytest.raises(ValueError, match="videos_path=.*missing.* is invalid"):
        start(pipe, str(tmp_path / "missing"), tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="save_dir=.*file.* is invalid: it exists and is not a directory"):
        start(pipe, videos, tmp_path / "file")
    with pytest.raises(ValueError, match="save_dir=.* is invalid: cannot write there"):
        start(pipe, videos, tmp_path / "file" / "below")


def test_prompts_json_selects_and_labels_clips(tmp_path):
    listed = {f"v{k:02d}.mp4": f"prompt {k}" for k in (4, 0, 2, 1, 3)}
    clips = find_clips(make_dir(tmp_path / "a", count=7, prompts=listed))
    assert [os.path.basename(c.path) for c in clips] == ["v00.mp4", "v01.mp4", "v02.mp4", "v03.mp4", "v04.mp4"]
    assert [c.prompt for c in clips] == ["prompt 0", "prompt 1", "prompt 2", "prompt 3", "prompt 4"]
    unlisted = find_clips(make_dir(tmp_path / "b", count=6))
    assert len(unlisted) == 6 and {c.prompt for c in unlisted} == {""}


@pytest.mark.parametrize(
    "prompts, message",
    [
        ("{not json", "is unreadable or not JSON"),
        (["a"], "must be a JSON object mapping video file names to prompt strings"),
        ({"v00.mp4": 3}, "must be a JSON object mapping video file names to prompt strings"),
        ({"v99.mp4": "a red circle"}, "lists 'v99.mp4', which is not a file name in"),
        ({"../v00.mp4": "a red circle"}, "lists '../v00.mp4', which is not a file name in"),
    ],
)
def test_bad_prompts_json(tmp_path, prompts, message):
    with pytest.raises(ValueError, match=message):
        find_clips(make_dir(tmp_path / "videos", prompts=prompts))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[0.1, 0.5", "is not valid JSON"),
        ('{"a": 1}', "must be a JSON list of at least 2 numbers in \\[0, 1\\]"),
        ("[0.5]", "must be a JSON list of at least 2 numbers"),
        ("[0.1, 1.5]", "holds 1.5: every value must be a number in \\[0, 1\\]"),
        ("[-0.1, 0.5]", "holds -0.1"),
        ('[0.1, "0.5"]', "holds '0.5'"),
        ("[0.1, true]", "holds True"),
        ("[0.1, NaN]", "holds nan"),
        ("[0.5, 0.1]", "must be strictly increasing"),
        ("[0.1, 0.1, 0.5]", "must be strictly increasing"),
    ],
)
def test_bad_schedule_files(tmp_path, text, message):
    path = tmp_path / "schedule.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_schedule(str(path))


def test_schedule_file_to_timesteps(tmp_path):
    path = str(tmp_path / "searched_schedule.txt")
    write_schedule(path, [0.019, 0.25, 0.6, 0.999])
    assert read_schedule(path) == [0.019, 0.25, 0.6, 0.999]
    assert read_schedule_timesteps(path) == [999.0, 600.0, 250.0, 19.0]  # x1000, high noise first
    assert read_schedule_timesteps(path, num_inference_steps=4) == [999.0, 600.0, 250.0, 19.0]
    with pytest.raises(ValueError, match="num_inference_steps=5 does not match the 4 timesteps in schedule file"):
        read_schedule_timesteps(path, num_inference_steps=5)
    with pytest.raises(ValueError, match="schedule file .*missing.* does not exist"):
        read_schedule(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="strictly increasing"):
        write_schedule(path, [0.5, 0.2])
    assert read_schedule(path) == [0.019, 0.25, 0.6, 0.999]  # a refused write leaves the file alone


INTERRUPT_AT = {
    "writing": lambda f: getattr(f, "__name__", "") == "write" and isinstance(getattr(f, "__self__", None), io.TextIOBase),
    "renaming": lambda f: f is os.replace,
}


@pytest.mark.parametrize("moment", sorted(INTERRUPT_AT))
def test_interrupted_write_leaves_the_old_schedule_whole(tmp_path, moment):
    """Ctrl-C while the new schedule is being written to disk or renamed into place."""
    path = str(tmp_path / "searched_schedule.txt")
    write_schedule(path, [0.1, 0.5, 0.9])

    def interrupt(frame, event, arg):
        if event == "c_call" and INTERRUPT_AT[moment](arg):
            sys.setprofile(None)
            raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_schedule(path, [0.2, 0.4, 0.6, 0.8])
    finally:
        sys.setprofile(None)
    assert read_schedule(path) == [0.1, 0.5, 0.9]
    assert os.listdir(tmp_path) == ["searched_schedule.txt"]  # no temporary file left behind
