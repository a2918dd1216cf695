import torch

from ditcache.models.pipeline import ShapesPipeline
from ditcache.models.train import CHECKPOINT, LOG, main

TINY = ["--layers", "1", "--heads", "1", "--head-dim", "16", "--ff-inner", "32", "--text-dim", "16",
        "--batch-size", "2", "--warmup", "2", "--log-seconds", "0", "--threads", "1"]


def _state(directory):
    return torch.load(directory / CHECKPOINT, map_location="cpu", weights_only=False)


def test_resume_continues_exactly_and_export_loads(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(["--out", str(straight), "--max-steps", "3"] + TINY)
    main(["--out", str(split), "--max-steps", "2"] + TINY)
    main(["--out", str(split), "--max-steps", "3", "--resume", "--threads", "1"])
    a, b = _state(straight), _state(split)
    assert a["step"] == b["step"] == 3
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert len((split / LOG).read_text().splitlines()) == 1 + 3  # header + one line per step

    main(["--out", str(split), "--export", str(tmp_path / "weights")])
    pipe = ShapesPipeline.from_pretrained(str(tmp_path / "weights"))
    assert torch.equal(pipe.transformer.proj_out.weight, b["ema"]["transformer.proj_out.weight"])
    video = pipe("a red circle moving up", num_inference_steps=2, seed=0, progress=False).images
    assert video.shape == (1, 8, 32, 32, 3)
