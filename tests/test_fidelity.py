import numpy as np
import pytest

from ditcache.models.fidelity import check_clip, classify_clip, evaluate_pipeline, hit_rates
from ditcache.models.shapes import ALL_PROMPTS, render_clip
from ditcache.video import write_video

# A fixed subset covering every colour, shape and direction.
SUBSET = ALL_PROMPTS[::7]


def test_subset_covers_every_attribute_value():
    found = [tuple(p.split()[i] for p in SUBSET) for i in (1, 2, 4)]
    assert [len(set(f)) for f in found] == [7, 3, 4]


def test_ground_truth_clips_are_recognised():
    rng = np.random.default_rng(123)
    results = [check_clip(render_clip(p, rng), p) for p in ALL_PROMPTS for _ in range(3)]
    assert hit_rates(results) == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "mean": 1.0}


def test_larger_frames_and_video_files(tmp_path):
    rng = np.random.default_rng(5)
    for prompt in SUBSET:
        clip = render_clip(prompt, rng, num_frames=8, height=48, width=64)
        path = str(tmp_path / "clip.mp4")
        write_video(path, clip)
        assert all(check_clip(path, prompt).hits.values()), prompt


def test_wrong_prompt_and_empty_clip_are_misses():
    clip = render_clip("a red circle moving left", np.random.default_rng(0))
    assert check_clip(clip, "a blue triangle moving right").hits == {
        "colour": False, "shape": False, "direction": False,
    }
    assert classify_clip(np.zeros((8, 32, 32, 3), np.uint8)) == (None, None, None)
    still = np.repeat(clip[:1], 8, axis=0)
    assert classify_clip(still) == ("red", "circle", None)
    with pytest.raises(ValueError, match="uint8"):
        classify_clip(clip.astype(np.float32))


@pytest.mark.slow
def test_shipped_model_on_a_fixed_subset():
    """Default sampling settings, 12 prompts x 1 seed, one miss of slack per bar (a regression guard)."""
    from ditcache.models import load_bundled_pipeline

    results = evaluate_pipeline(load_bundled_pipeline(), SUBSET, seeds=[0], progress=False)
    rates = hit_rates(results)
    assert rates["colour"] >= 11 / 12, rates
    assert rates["direction"] >= 10 / 12, rates
    assert rates["shape"] >= 9 / 12, rates
    assert rates["mean"] >= 0.85, rates


@pytest.mark.slow
def test_shipped_model_meets_the_quality_bar():
    """All 84 prompts x 2 seeds at default settings, against the exact bars (as bench/fidelity.py)."""
    from ditcache.models import load_bundled_pipeline

    rates = hit_rates(evaluate_pipeline(load_bundled_pipeline(), ALL_PROMPTS, seeds=[0, 1], progress=False))
    assert rates["colour"] >= 0.95 and rates["direction"] >= 0.90, rates
    assert rates["shape"] >= 0.80 and rates["mean"] >= 0.90, rates
