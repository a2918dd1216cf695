"""The bundled moving-shapes text-to-video DiT (needs the ``models`` extra: diffusers, safetensors).

ditcache's core never imports this package; the CLI, samplers and benchmarks use it as their
default model.
"""
from .pipeline import SCHEDULERS, ShapesPipeline, load_bundled_pipeline
from .shapes import ALL_PROMPTS, parse_prompt
from .transformer import ShapesT2V

__all__ = ["ALL_PROMPTS", "SCHEDULERS", "ShapesPipeline", "ShapesT2V", "load_bundled_pipeline", "parse_prompt"]
