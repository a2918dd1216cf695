"""Finding a transformer's output head: the projection after its last norm, where ``reuse_at="output"`` reuses.

Most diffusers transformers (PixArt, Flux, SD3, CogVideoX, Wan, Latte, Open-Sora-Plan) call it
``proj_out``; classes that name it otherwise are listed by class name (the core never imports
diffusers) and :func:`register_output_head` adds a user's own.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

DEFAULT_OUTPUT_HEAD = "proj_out"

# Transformer classes whose output head is not ``proj_out``.
OUTPUT_HEADS: Dict[str, str] = {
    "DiTTransformer2DModel": "proj_out_2",  # proj_out_1 makes the final norm's shift and scale
}


def register_output_head(transformer_class: str, attribute: str) -> None:
    """Declare the attribute of ``transformer_class`` (a class name) holding its final projection."""
    if not isinstance(transformer_class, str) or not transformer_class.isidentifier():
        raise ValueError(f"transformer_class must be a class name, got {transformer_class!r}")
    if not isinstance(attribute, str) or not attribute.isidentifier():
        raise ValueError(f"attribute must be an attribute name, got {attribute!r}")
    OUTPUT_HEADS[transformer_class] = attribute


def output_head_name(transformer: Any) -> str:
    for cls in type(transformer).__mro__:
        if cls.__name__ in OUTPUT_HEADS:
            return OUTPUT_HEADS[cls.__name__]
    return DEFAULT_OUTPUT_HEAD


def find_output_head(transformer: Any) -> nn.Module:
    """The module ``transformer`` ends its forward with; a ``ValueError`` naming the class when there is none."""
    name = output_head_name(transformer)
    head = getattr(transformer, name, None)
    if not isinstance(head, nn.Module):
        cls = type(transformer).__name__
        raise ValueError(
            f"reuse_at='output' needs the output head of {cls}, but it has no module at {name!r}; declare it "
            f"with ditcache.register_output_head({cls!r}, '<attribute of its final projection>')"
        )
    return head
