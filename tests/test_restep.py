"""ReStep on the bundled model: the search, its journal, its output file and sampling with it."""
import json
import os
import time

import numpy as np
import pytest
import torch

from ditcache.metrics import compare_videos
from ditcache.models import load_bundled_pipeline
from ditcache.models.shapes import render_clip
from ditcache.restep import ReStepAdaptor, ReStepSearchConfig, read_schedule, read_schedule_timesteps
from ditcache.restep.journal import JOURNAL_FILE
from ditcache.restep.objective import Denoiser
from ditcache.schedulers import TimestepEulerAncestralScheduler
from ditcache.video import write_video

PROMPTS = [
    "a red circle moving right", "a cyan triangle moving up", "a white square moving down",
    "a green circle moving left", "a blue square moving up",
]
STEPS = 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_bundled_pipeline(scheduler="euler_ancestral_timesteps")


def write_clips(directory, prompts=PROMPTS, with_prompts=True, num_frames=8):
    """Real mp4 clips of the training distribution, and the prompts.json a sampler leaves beside them."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    names = {}
    for k, prompt in enumerate(prompts):
        names[f"clip_{k}.mp4"] = prompt
        write_video(os.path.join(directory, f"clip_{k}.mp4"), render_clip(prompt, rng, num_frames=num_frames))
    if with_prompts:
        with open(os.path.join(directory, "prompts.json"), "w", encoding="utf-8") as handle:
            json.dump(names, handle)
    return str(directory)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("calibration"))


class CountForwards:
    """Counts transformer calls; raises KeyboardInterrupt (as Ctrl-C would) after ``stop_after`` of them."""

    def __init__(self, module, stop_after=None):
        self.calls, self.stop_after = 0, stop_after
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def search(pipe, videos, save_dir, **kwargs):
    config = ReStepSearchConfig(videos, str(save_dir), monte_carlo_iters=1, num_sampling_steps=STEPS, **kwargs)
    return ReStepAdaptor(pipe, config)


def test_short_search_writes_a_schedule_that_samples(pipe, videos, tmp_path):
    adaptor = search(pipe, videos, tmp_path / "out")
    start = time.perf_counter()
    schedule = adaptor.search()
    assert time.perf_counter() - start < 60
    uniform = adaptor.uniform_schedule()
    assert uniform == [0.199, 0.399, 0.599, 0.799, 0.999]  # the pipeline's default "trailing" spacing
    assert read_schedule(str(tmp_path / "out" / "searched_schedule.txt")) == schedule
    assert len(schedule) == STEPS and schedule[0] == uniform[0] and schedule[-1] == uniform[-1]
    assert schedule != uniform  # the interior moved
    timesteps = read_schedule_timesteps(str(tmp_path / "out" / "searched_schedule.txt"))
    video = pipe(PROMPTS[0], timesteps=timesteps, seed=0, progress=False).images
    assert pipe.scheduler.timesteps.tolist() == pytest.approx(timesteps)
    assert video.shape == (1, 8, 32, 32, 3) and video.max() > 0


def test_resume_continues_where_it_stopped_and_ends_the_same(pipe, videos, tmp_path):
    with CountForwards(pipe.transformer) as full:
        expected = search(pipe, videos, tmp_path / "full").search()

    with CountForwards(pipe.transformer, stop_after=full.calls // 2):
        with pytest.raises(KeyboardInterrupt):
            search(pipe, videos, tmp_path / "resumed").search()
    journal = json.loads((tmp_path / "resumed" / JOURNAL_FILE).read_text())
    assert journal["state"]["next_point"] >= 2  # at least one point was finished and recorded
    assert not (tmp_path / "resumed" / "searched_schedule.txt").exists()

    with CountForwards(pipe.transformer) as second:
        assert search(pipe, videos, tmp_path / "resumed").search() == expected
    assert 0 < second.calls < full.calls  # finished points were not searched again
    with CountForwards(pipe.transformer) as third:
        assert search(pipe, videos, tmp_path / "resumed").search() == expected
    assert third.calls == 0


def test_journal_for_other_settings_is_refused(pipe, videos, tmp_path):
    search(pipe, videos, tmp_path).search()
    with pytest.raises(ValueError, match="journal .* was made for other settings"):
        search(pipe, videos, tmp_path, seed=1).search()


def test_random_neighbours_and_unconditional_clips(pipe, tmp_path):
    videos = write_clips(tmp_path / "videos", with_prompts=False)
    first = search(pipe, videos, tmp_path / "a", neighbour_type="random").search()
    again = search(pipe, videos, tmp_path / "b", neighbour_type="random").search()
    assert first == again  # a seed fixes the result
    assert len(first) == STEPS and first == sorted(first)


def captured_states(pipe, directory, save_dir, **kwargs):
    """The caption states of every transformer call made by a search."""
    captured = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: captured.append(kw["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        search(pipe, directory, save_dir, **kwargs).search()
    finally:
        handle.remove()
    return captured


def test_each_clip_is_conditioned_on_its_prompt(pipe, videos, tmp_path):
    """With prompts.json every clip's estimate sees its own caption; without it, the empty prompt."""
    known = pipe.encode_prompt(PROMPTS)[0]
    empty = pipe.encode_prompt([""])[0][0]
    cond = torch.cat(captured_states(pipe, videos, tmp_path / "cond"))
    assert all(any(torch.equal(row, k) for k in known) for row in cond)
    assert len({tuple(row.flatten().tolist()) for row in cond}) > 1  # several clips, several prompts
    bare = write_clips(tmp_path / "bare", with_prompts=False)
    assert all(torch.equal(row, empty) for row in torch.cat(captured_states(pipe, bare, tmp_path / "uncond")))


def test_guided_search_batches_unconditional_then_conditional(pipe, videos, tmp_path):
    known = pipe.encode_prompt(PROMPTS)[0]
    empty = pipe.encode_prompt([""])[0][0]
    calls = captured_states(pipe, videos, tmp_path / "guided", guidance_scale=4.0)
    for states in calls:
        uncond, cond = states.chunk(2)
        assert all(torch.equal(row, empty) for row in uncond)
        assert all(any(torch.equal(row, k) for k in known) for row in cond)
    assert len(read_schedule(str(tmp_path / "guided" / "searched_schedule.txt"))) == STEPS


def test_guided_estimate_is_the_classifier_free_combination(pipe):
    scheduler = TimestepEulerAncestralScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 32, 32, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    args = (x0, noise, torch.tensor([0, 1]), [800.0, 300.5, 20.0])
    guided, sigmas = Denoiser(pipe, scheduler, PROMPTS[:2], 4, guidance_scale=4.0)(*args)
    cond, _ = Denoiser(pipe, scheduler, PROMPTS[:2], 4)(*args)
    uncond, _ = Denoiser(pipe, scheduler, ["", ""], 4, guidance_scale=4.0)(*args)  # no prompts: no guidance
    assert guided.shape == (3, *x0.shape) and sigmas[0] > sigmas[1] > sigmas[2] > 0
    assert torch.allclose(guided, uncond + 4.0 * (cond - uncond), atol=1e-4)
    assert not torch.allclose(guided, cond, atol=1e-3)


def test_clips_of_different_sizes_are_refused(pipe, tmp_path):
    videos = write_clips(tmp_path / "videos")
    write_video(str(tmp_path / "videos" / "clip_4.mp4"), render_clip(PROMPTS[4], np.random.default_rng(1), num_frames=6))
    with pytest.raises(ValueError, match="calibration videos differ in shape: .*clip_4.mp4"):
        search(pipe, videos, tmp_path / "out").search()


def test_pipeline_without_latent_encoder_is_refused(pipe, videos, tmp_path):
    class TransformerOnly:  # a pipeline that cannot reach latent space
        transformer, scheduler, encode_prompt, device = pipe.transformer, pipe.scheduler, pipe.encode_prompt, pipe.device

    with pytest.raises(ValueError, match="neither encode_videos\\(\\) nor a vae"):
        ReStepAdaptor(TransformerOnly(), ReStepSearchConfig(videos, str(tmp_path), num_sampling_steps=3)).search()
    with pytest.raises(ValueError, match=r"lacks \['transformer', 'scheduler', 'encode_prompt', 'device'\]"):
        ReStepAdaptor(object(), ReStepSearchConfig(videos, str(tmp_path)))
    with pytest.raises(ValueError, match="config must be a ReStepSearchConfig, got dict"):
        ReStepAdaptor(pipe, {"videos_path": videos})


def test_open_sora_transformers_are_called_as_their_pipeline_calls_them(pipe):
    """OSP v1.2's OpenSoraT2V indexes a (B, 1, L, D) caption, a (B, 1, L) mask and a (B, T, H, W) mask."""
    from ditcache.models.transformer import ShapesT2V

    class OpenSoraT2V(ShapesT2V):
        def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, attention_mask,
                    added_cond_kwargs, return_dict=True):
            assert encoder_hidden_states.ndim == 4 and encoder_attention_mask.ndim == 3
            assert attention_mask.shape == hidden_states[:, 0].shape and added_cond_kwargs is not None
            return super().forward(hidden_states, timestep, encoder_hidden_states[:, 0], encoder_attention_mask[:, 0])

    osp_like = OpenSoraT2V.from_config(pipe.transformer.config)
    osp_like.load_state_dict(pipe.transformer.state_dict())
    scheduler = TimestepEulerAncestralScheduler.from_config(pipe.scheduler.config)
    x0 = torch.zeros(1, 3, 8, 32, 32)
    args = (x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), torch.tensor([0]), [700.0, 100.0])
    expected, _ = Denoiser(pipe, scheduler, PROMPTS[:1], 4, guidance_scale=4.0)(*args)

    class OspPipeline:
        transformer, device, encode_prompt = osp_like.eval(), pipe.device, pipe.encode_prompt

    got, _ = Denoiser(OspPipeline(), scheduler, PROMPTS[:1], 4, guidance_scale=4.0)(*args)
    assert torch.allclose(got, expected, atol=1e-5)


def dp_search(pipe, videos, save_dir, steps=STEPS, **kwargs):
    config = ReStepSearchConfig(videos, str(save_dir), method="dp", monte_carlo_iters=2, num_sampling_steps=steps,
                                teacher_steps=20, guidance_scale=2.0, **kwargs)
    return ReStepAdaptor(pipe, config)


def test_dp_search_writes_teacher_timesteps_and_reuses_its_teacher(pipe, videos, tmp_path):
    with CountForwards(pipe.transformer) as first:
        schedule = dp_search(pipe, videos, tmp_path).search()
    assert first.calls == 20  # one guided batch per teacher step
    assert read_schedule(str(tmp_path / "searched_schedule.txt")) == schedule
    scheduler = TimestepEulerAncestralScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(20)
    teacher = {round(t / 1000, 9) for t in scheduler.timesteps.tolist()}
    assert len(schedule) == STEPS and set(schedule) <= teacher and schedule[-1] == 0.999
    with CountForwards(pipe.transformer) as other_count:
        longer = dp_search(pipe, videos, tmp_path, steps=8).search()
    assert other_count.calls == 0 and len(longer) == 8  # the journalled teacher serves any step count
    with pytest.raises(ValueError, match="journal .* was made for other settings"):
        dp_search(pipe, videos, tmp_path, seed=3).search()


def test_dp_step_costs_are_the_distances_of_real_euler_jumps():
    from ditcache.restep.dp import step_costs

    generator = torch.Generator().manual_seed(0)
    states, slopes = torch.randn(6, 2, 3, 4, generator=generator) * 5, torch.randn(5, 2, 3, 4, generator=generator)
    sigmas = torch.tensor([14.6, 6.0, 2.5, 0.9, 0.1, 0.0])
    costs = step_costs(states, slopes, sigmas)
    for i in range(5):
        for j in range(i + 1, 6):
            landed = states[i] + (sigmas[j] - sigmas[i]) * slopes[i]
            assert costs[i][j - i - 1] == pytest.approx(float((landed - states[j]).pow(2).mean()), rel=1e-5)


def test_dp_path_is_the_cheapest_of_its_length():
    """Against every path of the given length through a small random grid."""
    import itertools

    from ditcache.restep.dp import cheapest_path

    rng = np.random.default_rng(0)
    points = 7
    costs = [rng.uniform(0.1, 1.0, points - i).tolist() for i in range(points)]
    for steps in (1, 3, 5, 7):
        def total(path):
            nodes = [*path, points]
            return sum(costs[a][b - a - 1] for a, b in zip(nodes, nodes[1:]))

        best = min((p for p in itertools.combinations(range(1, points), steps - 1)), key=lambda rest: total((0, *rest)))
        assert cheapest_path(costs, steps) == [0, *best]


@pytest.mark.slow
def test_dp_schedule_beats_uniform_against_the_teacher(pipe, videos, tmp_path):
    """The step costs predict the error of real Euler sampling: from new noise, the dp schedule ends closer to the teacher."""
    config = ReStepSearchConfig(videos, str(tmp_path), method="dp", monte_carlo_iters=3, num_sampling_steps=6,
                                teacher_steps=30, guidance_scale=2.0)
    schedule = ReStepAdaptor(pipe, config).search()
    euler = load_bundled_pipeline(scheduler="euler")
    run = dict(prompt=PROMPTS[:3], seed=5, progress=False)
    teacher = list(euler(num_inference_steps=30, **run).images)
    uniform = compare_videos(list(euler(num_inference_steps=6, **run).images), teacher)["psnr"]
    searched = compare_videos(list(euler(timesteps=[t * 1000 for t in reversed(schedule)], **run).images), teacher)["psnr"]
    assert searched > uniform + 0.5, (searched, uniform)
