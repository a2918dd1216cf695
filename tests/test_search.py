"""The cache search on a real (small) model and sampling loop: goals, errors, resume, report."""
import json
import os
import statistics
import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from ditcache import DitCacheAdaptor, DitCacheSearchConfig, dit_cache
from ditcache.metrics import compare_videos
from ditcache.search import strategy
from toy import ToyPipeline

STEPS = 16


def make_pipeline():
    pipe = ToyPipeline(DDIMScheduler(), num_blocks=8)
    for block in pipe.transformer.transformer_blocks:  # a wider model, so blocks dominate the step
        block.mlp[0] = torch.nn.Linear(16, 512)
        block.mlp[2] = torch.nn.Linear(512, 16)
    return pipe


def to_video(latents):
    return ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(4, 8, 8, 4).numpy()


class Calls:
    """The user's callable: two prompts (seeds), each a video; counts its calls."""

    def __init__(self, fail_on=None):
        self.count = 0
        self.fail_on = fail_on

    def __call__(self, pipe):
        self.count += 1
        if self.count == self.fail_on:
            raise KeyboardInterrupt("interrupted")
        return [to_video(pipe(num_inference_steps=STEPS, batch=1, tokens=256, seed=s)) for s in range(2)]


def speedup(pipe, config, repeats=5, calls=None):
    """Median of interleaved (uncached / cached) time ratios of ``calls(pipe)`` (default: :class:`Calls`)."""
    ratios = []
    calls = calls or Calls()
    for _ in range(repeats):
        start = time.perf_counter()
        calls(pipe)
        plain = time.perf_counter() - start
        with dit_cache(pipe, config):
            start = time.perf_counter()
            calls(pipe)
            ratios.append(plain / (time.perf_counter() - start))
    return statistics.median(ratios)


def test_metrics_known_values():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    same = compare_videos([video], [video])
    assert same["mse"] == 0 and same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    flat = np.full((2, 32, 32, 3), 100, np.uint8)
    shifted = compare_videos([flat + 10], [flat])
    assert shifted["mse"] == pytest.approx(100.0)
    assert shifted["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 100))  # 28.13 dB
    c1 = (0.01 * 255) ** 2  # flat frames: only SSIM's luminance term differs from 1
    assert shifted["ssim"] == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1), rel=1e-6)
    noisy = np.clip(video.astype(int) + rng.normal(0, 5, video.shape).round(), 0, 255).astype(np.uint8)
    measured = compare_videos([noisy], [video])
    assert measured["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 25), abs=0.3)
    variance = 255 ** 2 / 12  # uniform frames: SSIM ~ 2 var / (2 var + noise var)
    assert measured["ssim"] == pytest.approx(2 * variance / (2 * variance + 25), rel=2e-3)


def test_speedup_target_is_met_as_measured(tmp_path):
    pipe = make_pipeline()
    # 8% headroom over the target in the predictions, against timing noise on a shared machine
    settings = dict(cache_ratio=1.4, num_sampling_steps=STEPS, speed_margin=0.08, journal_dir=str(tmp_path / "j"))
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(**settings))
    calls = Calls()
    config = adaptor.search(calls, prompts_num=2)
    report = adaptor.last_search
    assert config == report.config and config.num_sampling_steps == STEPS
    chosen = report.chosen
    assert chosen.predicted_speedup >= 1.4
    # and its speed measured: the median of two interleaved uncached/cached pairs, or three if two left it unsure
    assert len(chosen.pairs) in (2, 3)
    assert chosen.confirmed_speedup == statistics.median(p / c for p, c in chosen.pairs) >= 1.4
    # calibration, 3 picks and up to 3 refining ones, up to 3 winners measured
    assert report.full_runs == calls.count <= 2 + 6 + 3 * 6 + 3  # and up to 3 configs aimed anew
    assert report.full_runs == 2 + sum(r.runs for r in report.runs)
    # nothing better was left: every config run is either worse, measured short, or predicted short once
    # the predictions are scaled by the shortfall the configs confirmed before the winner agreed on
    shortfall = strategy.shortfall([r for r in report.runs if r.pairs and r.key != chosen.key])
    assert all(r.psnr <= chosen.psnr for r in report.runs
               if r.predicted_speedup * shortfall >= 1.4 and (r.confirmed_speedup or 1.4) >= 1.4)
    assert adaptor.cache_config is None  # the search leaves the adaptor as it found it
    again = Calls()  # resumed from the journal: one run checks the references, nothing is run or confirmed again
    assert adaptor.search(again, prompts_num=2) == config and again.count == 1
    adaptor.remove()
    assert speedup(pipe, config) >= 1.4 * 0.97  # re-measured, interleaved (3% for timing noise)

    written = report.save(str(tmp_path / "dit_cache_config.json"))
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "dit_cache_config.json", "dit_cache_config.search.json", "dit_cache_config.search.png"
    ]
    saved = json.loads((tmp_path / "dit_cache_config.search.json").read_text())
    assert saved["config"] == config.to_dict() and len(saved["runs"]) == len(report.runs)
    assert saved["chosen"]["confirmed_speedup"] == chosen.confirmed_speedup  # the file says how sure it is
    assert saved["chosen"]["confirmed_bounds"] == list(chosen.speed_bounds())
    assert "chosen" in report.table()


def test_quality_floor_gives_the_fastest_config_above_it():
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=STEPS))
    config = adaptor.search(Calls(), prompts_num=2)
    report = adaptor.last_search
    assert report.chosen.psnr >= 30.0
    above = [r for r in report.runs if r.psnr >= 30.0]
    assert report.chosen.predicted_speedup == max(r.predicted_speedup for r in above)
    assert len(report.chosen.pairs) == 2  # reported with its speed measured
    adaptor.update_cache_config(**{k: v for k, v in config.to_dict().items()})
    videos = Calls()(pipe)
    adaptor.disable()
    assert compare_videos(videos, Calls()(pipe))["psnr"] >= 30.0


def test_extrapolated_reuse_is_searched_like_the_rest():
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=STEPS,
                                                         reuse_modes=("taylor1",)))
    config = adaptor.search(Calls(), prompts_num=2)
    assert config.reuse == "taylor1"
    assert all(run.config.reuse == "taylor1" for run in adaptor.last_search.runs)


def test_unreachable_goals_name_the_best_reachable_value():
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(cache_ratio=40.0, num_sampling_steps=STEPS))
    with pytest.raises(ValueError, match=r"cache_ratio=40 cannot be reached.*ask for at most \d+\.\d\d"):
        adaptor.search(Calls(), prompts_num=2)
    adaptor.search_config = DitCacheSearchConfig(min_psnr=500.0, num_sampling_steps=STEPS, dit_block_num=8)
    with pytest.raises(ValueError, match=r"min_psnr=500 dB cannot be reached.*ask for at most"):
        adaptor.search(Calls(), prompts_num=2)


def test_resume_skips_finished_runs(tmp_path):
    journal = str(tmp_path / "journal")
    settings = dict(min_psnr=30.0, num_sampling_steps=STEPS, journal_dir=journal)  # no timing in the outcome
    first = Calls(fail_on=4)  # calibration (2 runs) and one candidate run finish, then an interruption
    adaptor = DitCacheAdaptor(make_pipeline(), DitCacheSearchConfig(**settings))
    with pytest.raises(KeyboardInterrupt):
        adaptor.search(first, prompts_num=2)
    adaptor.remove()
    runs_file = os.path.join(journal, "runs.jsonl")
    finished = 0  # no candidate finished if the interruption came while re-timing the first one
    if os.path.exists(runs_file):
        with open(runs_file) as handle:
            finished = sum(json.loads(line)["runs"] for line in handle)  # a candidate re-timed takes 2 runs

    resumed = Calls()
    adaptor = DitCacheAdaptor(make_pipeline(), DitCacheSearchConfig(**settings))
    config = adaptor.search(resumed, prompts_num=2)
    report = adaptor.last_search
    assert report.resumed_runs == 2 + finished
    assert resumed.count == report.full_runs - report.resumed_runs
    adaptor.remove()

    again = Calls()
    adaptor = DitCacheAdaptor(make_pipeline(), DitCacheSearchConfig(**settings))
    assert adaptor.search(again, prompts_num=2) == config
    assert again.count == 1  # the run that checks the journal's references


class Seeds(Calls):
    """The same callable with other prompts (seeds)."""

    def __init__(self, seeds):
        super().__init__()
        self.seeds = seeds

    def __call__(self, pipe):
        self.count += 1
        return [to_video(pipe(num_inference_steps=STEPS, batch=1, tokens=256, seed=s)) for s in self.seeds]


def test_journal_of_other_inputs_is_not_resumed(tmp_path, caplog):
    settings = dict(min_psnr=30.0, num_sampling_steps=STEPS, journal_dir=str(tmp_path / "j"), confirm_pairs=0)
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(**settings))
    adaptor.search(Seeds([0, 1]), prompts_num=2)
    # other prompts, same weights, blocks, steps and journal: the references differ, so nothing is resumed
    other = Seeds([5, 6])
    with caplog.at_level("WARNING", logger="ditcache.search"):
        adaptor.search(other, prompts_num=2)
    report = adaptor.last_search
    assert "is not resumed: the callable's uncached videos are not its reference videos" in caplog.text
    assert report.resumed_runs == 0 and other.count == report.full_runs  # the check run, then a fresh search
    config = report.config
    adaptor.remove()
    with dit_cache(pipe, config):  # the PSNR reported is the config's on the new prompts
        cached = Seeds([5, 6])(pipe)
    assert compare_videos(cached, Seeds([5, 6])(pipe))["psnr"] == pytest.approx(report.chosen.psnr, abs=1e-6)

    # other weights: the journal's key says so before any run
    caplog.clear()
    with torch.no_grad():
        pipe.transformer.transformer_blocks[3].mlp[2].bias.add_(1e-3)
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(**settings))
    calls = Seeds([5, 6])
    with caplog.at_level("WARNING", logger="ditcache.search"):
        adaptor.search(calls, prompts_num=2)
    assert "made for other inputs (changed: weights)" in caplog.text
    assert adaptor.last_search.resumed_runs == 0 and calls.count == adaptor.last_search.full_runs
    adaptor.remove()


def test_a_crafted_calibration_file_runs_no_code(tmp_path, caplog):
    journal = tmp_path / "j"
    settings = dict(min_psnr=30.0, num_sampling_steps=STEPS, journal_dir=str(journal), confirm_pairs=0)
    adaptor = DitCacheAdaptor(make_pipeline(), DitCacheSearchConfig(**settings))
    adaptor.search(Calls(), prompts_num=2)  # a genuine journal, its fingerprint kept
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"videos": Payload()}, str(journal / "calibration.pt"))
    calls = Calls()
    with caplog.at_level("WARNING", logger="ditcache.search"):
        adaptor.search(calls, prompts_num=2)
    assert not marker.exists()
    assert "calibration.pt is not a calibration this version can read safely" in caplog.text
    assert adaptor.last_search.resumed_runs == 0 and calls.count == adaptor.last_search.full_runs
    adaptor.remove()


def test_a_journal_line_cut_short_does_not_swallow_the_next(tmp_path):
    from ditcache.search.journal import Journal

    directory = str(tmp_path / "j")
    journal = Journal(directory, {"blocks": 8})
    journal.add_run({"key": "a", "psnr": 30.0})
    journal.add_run({"key": "b", "psnr": 31.0})
    runs = os.path.join(directory, "runs.jsonl")
    os.truncate(runs, os.path.getsize(runs) - 7)  # a crash in the middle of writing "b"
    journal = Journal(directory, {"blocks": 8})
    assert list(journal.runs) == ["a"]
    journal.add_run({"key": "c", "psnr": 32.0})
    assert list(Journal(directory, {"blocks": 8}).runs) == ["a", "c"]


class Bad:
    def __init__(self, make):
        self.make = make
        self.count = 0

    def __call__(self, pipe):
        self.count += 1
        return self.make(self.count, Calls.__call__(Calls(), pipe))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda n, v: "videos", "must return a list of numpy arrays or a batched uint8 array, got str"),
        (lambda n, v: np.stack(v)[:, 0], r"returned an array of uint8 with shape \(2, 8, 8, 4\); a batch of videos"),
        (lambda n, v: np.stack(v).astype(np.float32), "returned an array of float32 .* must be uint8"),
        (lambda n, v: [torch.from_numpy(x) for x in v], "must be a numpy array, got Tensor"),
        (lambda n, v: [x.astype(np.float32) for x in v], "must be uint8 .* got float32"),
        (lambda n, v: [x[0] for x in v], r"got uint8 with shape \(8, 8, 4\)"),
        (lambda n, v: v[:1], "returned 1 videos, expected prompts_num=2"),
        (lambda n, v: v if n == 1 else [x[:, :4] for x in v], r"shape \(4, 4, 8, 4\), but the calibration run gave"),
        (lambda n, v: v if n == 1 else [255 - x for x in v], "made different videos in two uncached runs"),
    ],
)
def test_bad_callables_are_clear_errors(make, match):
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(num_sampling_steps=STEPS))
    with pytest.raises(ValueError, match=match):
        adaptor.search(Bad(make), prompts_num=2)
    adaptor.remove()


@pytest.mark.parametrize("batch", [np.stack, lambda v: torch.from_numpy(np.stack(v))], ids=["array", "tensor"])
def test_a_batched_uint8_array_or_tensor_is_that_many_videos(batch):
    """The spec's example returns ``pipeline(...).images``, one (B, T, H, W, C) array."""
    adaptor = DitCacheAdaptor(make_pipeline(), DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=STEPS,
                                                                    confirm_pairs=0))
    as_list = Calls()
    adaptor.search(lambda pipe: batch(as_list(pipe)), prompts_num=2)
    report = adaptor.last_search
    assert report.chosen.psnr >= 30.0 and len(report.calibration["block_seconds"]) == 8
    adaptor.remove()


def test_a_model_calling_block_forward_directly_is_searched():
    """As the reference's own tests call blocks: ``block.forward(...)``, past any module hooks."""
    pipe = make_pipeline()
    transformer = pipe.transformer

    def forward(sample, timestep):
        temb = transformer.time(timestep.float().reshape(-1, 1).expand(sample.shape[0], 1) / 1000.0)
        hidden = transformer.proj_in(sample)
        for block in transformer.transformer_blocks:
            hidden = block.forward(hidden, temb=temb)
        return transformer.proj_out(hidden)

    transformer.forward = forward
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=STEPS, confirm_pairs=0))
    config = adaptor.search(Calls(), prompts_num=2)
    report = adaptor.last_search
    assert all(seconds > 0 for seconds in report.calibration["block_seconds"])
    assert report.calibration["block_share"] > 0.5
    adaptor.remove()
    assert "forward" not in vars(transformer.transformer_blocks[0])  # every block as it was
    reference = Calls()(pipe)
    with dit_cache(pipe, config):
        cached = Calls()(pipe)
    assert compare_videos(cached, reference)["psnr"] == pytest.approx(report.chosen.psnr, abs=1e-6)


def test_bad_search_arguments():
    pipe = make_pipeline()
    adaptor = DitCacheAdaptor(pipe)
    with pytest.raises(ValueError, match="search needs a DitCacheSearchConfig"):
        adaptor.search(Calls())
    adaptor.search_config = DitCacheSearchConfig(num_sampling_steps=STEPS)
    with pytest.raises(ValueError, match="must be callable"):
        adaptor.search("videos")
    with pytest.raises(ValueError, match="prompts_num must be an int >= 1, got 0"):
        adaptor.search(Calls(), prompts_num=0)
    adaptor.search_config = DitCacheSearchConfig(num_sampling_steps=STEPS + 4)
    with pytest.raises(ValueError, match=f"made {STEPS} denoising steps .* but num_sampling_steps={STEPS + 4}"):
        adaptor.search(Calls(), prompts_num=2)
