"""The built wheel: only the ``ditcache`` namespace, the bundled weights, and the console scripts."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_installs_only_the_ditcache_namespace(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, built without isolation (no network)
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                             str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "is absent from the `packages` configuration" not in result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"ditcache"}
    assert "ditcache/samplers/search_t2v_sp.py" in names
    assert "ditcache/models/weights/transformer/diffusion_pytorch_model.safetensors" in names
    for script in ("ditcache = ditcache.cli:main", "ditcache-search-t2v-sp = ditcache.samplers.search_t2v_sp:main",
                   "ditcache-sample-t2v-sp = ditcache.samplers.sample_t2v_sp:main"):
        assert script in entry_points
