"""The core must import with only torch, numpy and tqdm (Open-Sora-Plan's pinned environment)."""
import subprocess
import sys
import textwrap

OPTIONAL = ["diffusers", "transformers", "safetensors", "decord", "imageio", "imageio_ffmpeg", "av",
            "torchmetrics", "skimage", "matplotlib", "torch_npu"]


def test_core_imports_without_optional_packages():
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import ditcache, ditcache.adaptor, ditcache.steps, ditcache.config, ditcache.timing
        from ditcache import dit_cache, timestep_aware, DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {OPTIONAL!r})
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
