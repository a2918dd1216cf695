"""The cache search over component schedules (schedule_kind "component" and "any") on the bundled model."""
import json

import pytest

from ditcache import ComponentCacheConfig, DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
from ditcache.cli import main
from ditcache.metrics import compare_videos
from ditcache.models import load_bundled_pipeline
from ditcache.samplers.args import parse
from ditcache.search.candidates import Candidate, config_key
from ditcache.search.strategy import Strategy, screening_picks
from ditcache.video import read_video
from test_search import Calls, make_pipeline, speedup
from test_search_strategy import SPACE, STEPS as SCRIPTED_STEPS, ScriptedRuns

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
PROMPT = "a red circle moving right"


def videos(pipe):
    return list(pipe([PROMPT], num_inference_steps=STEPS, seed=0, progress=False).images)


@pytest.mark.slow
def test_a_component_search_meets_its_speed_target_and_its_file_samples(tmp_path):
    pipe = load_bundled_pipeline()
    search = DitCacheSearchConfig(cache_ratio=1.3, num_sampling_steps=STEPS, speed_margin=0.08,
                                  schedule_kind="component", journal_dir=str(tmp_path / "journal"))
    adaptor = DitCacheAdaptor(pipe, search)
    config = adaptor.search(videos)
    report = adaptor.last_search
    calls = []  # resumed from the journal (the sub-layer measurement read back too): one run checks the references
    assert adaptor.search(lambda p: calls.append(1) or videos(p)) == config and len(calls) == 1
    adaptor.remove()
    assert isinstance(config, ComponentCacheConfig) and config.num_sampling_steps == STEPS
    assert all(run.kind == "component" for run in report.runs) and report.chosen.confirmed_speedup >= 1.3
    # the calibration measured the sub-layers in a run of its own: 3 runs, then every candidate's
    assert report.full_runs == 3 + sum(run.runs for run in report.runs)
    assert set(report.calibration["component_seconds"]) == {"attn1", "attn2", "ff"}
    assert "| component |" in report.table() and "chosen" in report.table()
    assert speedup(pipe, config, calls=videos) >= 1.3 * 0.95  # re-measured, interleaved (5% for timing noise)

    written = report.save(str(tmp_path / "schedule.json"))
    saved = json.loads((tmp_path / "schedule.json").read_text())
    assert saved == config.to_dict() and all(isinstance(line, list) for key, line in saved.items() if key != "reuse")
    runs = json.loads((tmp_path / "schedule.search.json").read_text())["runs"]
    assert all(run["kind"] == "component" and run["key"].startswith("components-") for run in runs)
    assert len(written) >= 2
    uncached = videos(pipe)
    with dit_cache(pipe, str(tmp_path / "schedule.json")):  # the saved file is a cache config as it is
        cached = videos(pipe)
    assert compare_videos(cached, uncached)["psnr"] == pytest.approx(report.chosen.psnr)
    clip = tmp_path / "clip.mp4"
    assert main(["sample", "--prompt", PROMPT, "--steps", str(STEPS), "--out", str(clip), "--quiet",
                 "--dit-cache-config", str(tmp_path / "schedule.json")]) == 0
    assert read_video(str(clip)).shape == (8, 32, 32, 3)


@pytest.mark.slow
def test_any_screens_both_kinds_on_the_bundled_model():
    pipe = load_bundled_pipeline()
    # a target both kinds are predicted to reach with room to spare, so both are screened
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(cache_ratio=1.15, num_sampling_steps=STEPS, speed_margin=0.05,
                                                         schedule_kind="any", candidates_to_run=2))
    config = adaptor.search(videos)
    report = adaptor.last_search
    adaptor.remove()
    assert {run.kind for run in report.runs} == {"region", "component"}
    assert isinstance(config, (DitCacheConfig, ComponentCacheConfig)) and report.chosen.confirmed_speedup >= 1.15
    keys = [run.key for run in report.runs]
    assert len(set(keys)) == len(keys)
    assert "| region |" in report.table() and "| component |" in report.table()


def component(share, reuse="delta"):
    """A hand-made schedule reusing ``attn1`` at every ``share``-th step."""
    line = [0 if step % share and step != SCRIPTED_STEPS - 1 else 1 for step in range(SCRIPTED_STEPS)]
    return ComponentCacheConfig({"attn1": line}, reuse=reuse)


COMPONENTS = [Candidate(component(share, reuse), 1.0 + 0.1 * share, 1e-3 * share)
              for share in range(2, 8) for reuse in ("delta", "taylor1")]


@pytest.mark.parametrize("winner", ["region", "component"])
def test_any_returns_whichever_kind_the_runs_show_best(winner):
    def psnr(config):
        best = isinstance(config, ComponentCacheConfig) == (winner == "component")
        return 45.0 if best else 35.0

    runs = ScriptedRuns(psnr)
    space = SPACE + COMPONENTS
    assert {type(c.config) for c in screening_picks(space, 1.3, 3)} == {DitCacheConfig, ComponentCacheConfig}
    config = DitCacheSearchConfig(cache_ratio=1.3, num_sampling_steps=SCRIPTED_STEPS, speed_margin=0.0,
                                  schedule_kind="any")
    chosen = Strategy(list(space), config, runs).for_speedup()
    assert chosen.kind == winner and chosen.psnr == 45.0 and chosen.speedup >= 1.3


def test_component_and_region_keys_never_collide():
    keys = {config_key(c.config) for c in SPACE + COMPONENTS}
    assert len(keys) == len(SPACE) + len(COMPONENTS)
    assert all(config_key(c.config).startswith("components-") for c in COMPONENTS)


def test_bad_schedule_kind_names_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"schedule_kind must be one of \['region', 'component', 'any'\], got 'blocks'"):
        DitCacheSearchConfig(num_sampling_steps=STEPS, schedule_kind="blocks")
    assert DitCacheSearchConfig(num_sampling_steps=STEPS).schedule_kind == "region"


def test_unknown_sub_layers_refuse_component_and_narrow_any_to_regions():
    pipe = make_pipeline()  # its blocks are a class whose sub-layers ditcache does not know
    calls = Calls()
    adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=16,
                                                         schedule_kind="component"))
    with pytest.raises(ValueError, match=r"schedule_kind='component' cannot be searched: block 0 is a CountingBlock"):
        adaptor.search(calls, prompts_num=2)
    assert calls.count == 0  # before any run
    adaptor.search_config = DitCacheSearchConfig(min_psnr=30.0, num_sampling_steps=16, schedule_kind="any",
                                                 dit_block_num=8)
    with pytest.warns(UserWarning, match=r"schedule_kind='any': block 0 is a CountingBlock.*block regions only"):
        config = adaptor.search(calls, prompts_num=2)
    assert isinstance(config, DitCacheConfig) and all(run.kind == "region" for run in adaptor.last_search.runs)


def test_the_flags_reach_the_search_config(monkeypatch, tmp_path):
    config = parse("search", ["--text_prompt", PROMPT, "--schedule_kind", "any",
                              "--cache_save_path", str(tmp_path / "c.json")]).search_config
    assert config.schedule_kind == "any"
    assert parse("search", ["--text_prompt", PROMPT]).search_config.schedule_kind == "region"
    seen = []

    class Stop(Exception):
        pass

    def search(self, *args, **kwargs):  # the search itself is tested above: here, what the flags made of it
        seen.append(self.search_config)
        raise Stop

    monkeypatch.setattr(DitCacheAdaptor, "search", search)
    with pytest.raises(Stop):
        main(["search", "--schedule-kind", "component", "--steps", "4", "--quiet", "--out", str(tmp_path / "c.json")])
    assert seen[0].schedule_kind == "component"


@pytest.mark.parametrize("argv", [["search", "--schedule-kind", "blocks"]])
def test_a_bad_schedule_kind_flag_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "invalid choice: 'blocks'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("search", ["--text_prompt", PROMPT, "--schedule_kind", "blocks"])
    assert "invalid choice: 'blocks'" in capsys.readouterr().err


@pytest.mark.slow
def test_one_journal_serves_searches_of_every_kind(tmp_path):
    pipe = load_bundled_pipeline()
    calls = []

    def counted(pipeline):
        calls.append(1)
        return videos(pipeline)

    def search(kind):
        adaptor = DitCacheAdaptor(pipe, DitCacheSearchConfig(cache_ratio=1.2, num_sampling_steps=STEPS, confirm_pairs=0,
                                                             schedule_kind=kind, journal_dir=str(tmp_path / "j")))
        calls.clear()
        adaptor.search(counted)
        adaptor.remove()
        return adaptor.last_search

    region = search("region")
    assert len(calls) == 2 + sum(run.runs for run in region.runs)
    both = search("any")  # the region search's runs stand; the sub-layers are measured in one more run
    made = {run.key for run in region.runs}
    assert len(calls) == 2 + sum(run.runs for run in both.runs if run.key not in made)
    assert both.calibration["component_seconds"] and {run.kind for run in both.runs} == {"region", "component"}
    again = search("component")  # now nothing more to measure: one run checks the references
    assert len(calls) == 1 + sum(run.runs for run in again.runs if run.key not in {r.key for r in both.runs})
