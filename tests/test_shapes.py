import numpy as np
import pytest

from ditcache.models.shapes import (
    ALL_PROMPTS, COLOURS, DIRECTIONS, SHAPES, Prompt, parse_prompt, render_clip, sample_batch,
)


def test_prompt_list_is_the_full_product():
    assert len(ALL_PROMPTS) == 84 == len(set(ALL_PROMPTS))
    assert "a red circle moving left" in ALL_PROMPTS
    for prompt in ALL_PROMPTS:
        assert str(parse_prompt(prompt)) == prompt


@pytest.mark.parametrize("bad", ["a pink circle moving left", "a red circle moving", "red circle moving left", ""])
def test_parse_rejects_other_prompts(bad):
    with pytest.raises(ValueError, match="colour in"):
        parse_prompt(bad)


def test_same_seed_same_clip_other_seed_other_clip():
    a = render_clip("a blue square moving up", np.random.default_rng(7))
    b = render_clip("a blue square moving up", np.random.default_rng(7))
    c = render_clip("a blue square moving up", np.random.default_rng(8))
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("prompt", ALL_PROMPTS[::5])
def test_clip_shows_its_prompt(prompt):
    p = parse_prompt(prompt)
    rng = np.random.default_rng(0)
    for _ in range(10):
        clip = render_clip(prompt, rng, num_frames=8, height=32, width=40)
        mask = clip.max(axis=-1) > 0
        # exactly the prompt's colour, on black
        assert {tuple(px) for px in clip[mask]} == {COLOURS[p.colour]}
        # the shape is never clipped by the frame: its area barely changes over the clip
        areas = mask.sum(axis=(1, 2))
        assert areas.min() >= 0.7 * areas.max() and areas.min() >= 20
        # it moves at least 30% of the frame along its direction, and not across it
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (mask[0], mask[-1]))
        ux, uy = DIRECTIONS[p.direction]
        along, across = (x1 - x0, y1 - y0) if ux else (y1 - y0, x1 - x0)
        assert (ux or uy) * along >= 0.3 * (40 if ux else 32) - 1.5
        assert abs(across) < 1.0


def test_batch_draws_prompts_and_sizes_are_checked():
    clips, prompts = sample_batch(5, np.random.default_rng(0))
    assert clips.shape == (5, 8, 32, 32, 3) and all(p in ALL_PROMPTS for p in prompts)
    with pytest.raises(ValueError, match="height=16"):
        render_clip(ALL_PROMPTS[0], np.random.default_rng(0), height=16)
    with pytest.raises(ValueError, match="num_frames=1"):
        render_clip(ALL_PROMPTS[0], np.random.default_rng(0), num_frames=1)
    with pytest.raises(ValueError, match="batch_size=2"):
        sample_batch(2, np.random.default_rng(0), prompts=["a red circle moving up"])


def test_vocabulary_sizes():
    assert len(COLOURS) == 7 and len(SHAPES) == 3 and len(DIRECTIONS) == 4
    assert Prompt("red", "circle", "up") == parse_prompt("a red circle moving up")
