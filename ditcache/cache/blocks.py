"""Finding a model's blocks: the chain of ``nn.ModuleList``s its transformer runs on the denoising path.

Block indices in a config count over the whole chain, in the order the
transformer runs the blocks. The chain comes from, in this order:

* ``dit_block_path``: one dotted path, or several (a sequence, or one string
  with commas), in run order;
* the registry: one :class:`BlockFamily` per transformer class that needs
  help (which lists, in what order, what their blocks return), so the core
  never imports diffusers; :func:`register_family` adds a user's own;
* discovery: the spec's default ``transformer.transformer_blocks`` when it is
  the only list of transformer blocks, otherwise every such list, in
  attribute order. A discovered chain of several lists is checked against the
  order the blocks really run in on the first forward pass (see
  :class:`OrderCheck`), and refused loudly if they differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..streams import register_block_outputs

DEFAULT_BLOCK_PATH = "transformer.transformer_blocks"
BlockPath = Union[str, Sequence[str], None]


@dataclass(frozen=True)
class BlockFamily:
    """Where a transformer's blocks are and how they run.

    ``lists``: dotted paths relative to the transformer, in run order.
    ``interleaved``: the lists run in turn, block ``i`` of each before block
    ``i + 1`` of any (Latte's spatial and temporal blocks).
    ``block_outputs``: per block class, the input each output of its tuple
    continues (``None``: not a stream; see :mod:`ditcache.streams`).
    """

    lists: Tuple[str, ...]
    interleaved: bool = False
    block_outputs: Mapping[str, Tuple[Optional[str], ...]] = field(default_factory=dict)


_DUAL = ("transformer_blocks", "single_transformer_blocks")
_ENC_FIRST = ("encoder_hidden_states", "hidden_states")

# Transformer classes whose blocks are not exactly one list at ``transformer_blocks``.
FAMILIES: Dict[str, BlockFamily] = {
    "FluxTransformer2DModel": BlockFamily(_DUAL),
    "Flux2Transformer2DModel": BlockFamily(_DUAL),
    "Flux3Transformer2DModel": BlockFamily(("txt_mode_blocks", "mode_blocks.image", "single_transformer_blocks"),
                                           block_outputs={"Flux3SingleTransformerBlock": _ENC_FIRST}),
    "ChromaTransformer2DModel": BlockFamily(_DUAL, block_outputs={"ChromaTransformerBlock": _ENC_FIRST}),
    "BriaTransformer2DModel": BlockFamily(_DUAL, block_outputs={"BriaTransformerBlock": _ENC_FIRST,
                                                                "BriaSingleTransformerBlock": _ENC_FIRST}),
    "OvisImageTransformer2DModel": BlockFamily(_DUAL, block_outputs={"OvisImageTransformerBlock": _ENC_FIRST,
                                                                     "OvisImageSingleTransformerBlock": _ENC_FIRST}),
    "LongCatImageTransformer2DModel": BlockFamily(_DUAL, block_outputs={
        "LongCatImageTransformerBlock": _ENC_FIRST, "LongCatImageSingleTransformerBlock": _ENC_FIRST}),
    "HunyuanVideoTransformer3DModel": BlockFamily(_DUAL),
    "HunyuanImageTransformer2DModel": BlockFamily(_DUAL),
    "MotifVideoTransformer3DModel": BlockFamily(_DUAL),
    "AuraFlowTransformer2DModel": BlockFamily(("joint_transformer_blocks", "single_transformer_blocks"),
                                              block_outputs={"AuraFlowJointTransformerBlock": _ENC_FIRST}),
    "HiDreamImageTransformer2DModel": BlockFamily(("double_stream_blocks", "single_stream_blocks"),
                                                  block_outputs={"HiDreamBlock": ("hidden_states", "encoder_hidden_states")}),
    "LatteTransformer3DModel": BlockFamily(("transformer_blocks", "temporal_transformer_blocks"), interleaved=True),
    "Lumina2Transformer2DModel": BlockFamily(("context_refiner", "noise_refiner", "layers")),
    "ZImageTransformer2DModel": BlockFamily(("noise_refiner", "context_refiner", "layers")),
    "LuminaNextDiT2DModel": BlockFamily(("layers",)),
    "ErnieImageTransformer2DModel": BlockFamily(("layers",)),
    "WanTransformer3DModel": BlockFamily(("blocks",)),
    "SkyReelsV2Transformer3DModel": BlockFamily(("blocks",)),
    "ChronoEditTransformer3DModel": BlockFamily(("blocks",)),
    "HunyuanDiT2DModel": BlockFamily(("blocks",)),
    "PRXTransformer2DModel": BlockFamily(("blocks",)),
    "WanVACETransformer3DModel": BlockFamily(("vace_blocks", "blocks"),
                                             block_outputs={"WanVACETransformerBlock": (None, "control_hidden_states")}),
    "Kandinsky5Transformer3DModel": BlockFamily(("text_transformer_blocks", "visual_transformer_blocks")),
    "QwenImageTransformer2DModel": BlockFamily(("transformer_blocks",),
                                               block_outputs={"QwenImageTransformerBlock": _ENC_FIRST}),
    "ConsisIDTransformer3DModel": BlockFamily(("transformer_blocks",)),
    "Krea2Transformer2DModel": BlockFamily(("transformer_blocks",)),
    "HunyuanVideo15Transformer3DModel": BlockFamily(("transformer_blocks",)),
}

def _register_outputs(families: Mapping[str, BlockFamily]) -> None:
    """Merge the families' block outputs into the one table (so explicit paths to their blocks know them too)."""
    for family in families.values():
        for class_name, outputs in family.block_outputs.items():
            register_block_outputs(class_name, outputs)


_register_outputs(FAMILIES)


def register_family(
    transformer_class: str,
    lists: Sequence[str],
    *,
    interleaved: bool = False,
    block_outputs: Optional[Mapping[str, Tuple[Optional[str], ...]]] = None,
) -> None:
    """Declare where the blocks of ``transformer_class`` (a class name) are, in run order."""
    if not isinstance(transformer_class, str) or not transformer_class.isidentifier():
        raise ValueError(f"transformer_class must be a class name, got {transformer_class!r}")
    lists = tuple(lists) if not isinstance(lists, str) else (lists,)
    if not lists or not all(isinstance(path, str) and _is_dotted(path) for path in lists):
        raise ValueError(f"lists must be dotted attribute paths relative to the transformer, got {lists!r}")
    for class_name, outputs in (block_outputs or {}).items():
        register_block_outputs(class_name, outputs)
    FAMILIES[transformer_class] = BlockFamily(lists, interleaved, dict(block_outputs or {}))


def _is_dotted(path: str) -> bool:
    return bool(path) and all(part.isidentifier() for part in path.split("."))


@dataclass(frozen=True)
class BlockChain:
    """The blocks a region can cover, in run order.

    ``paths[k]`` names list ``k`` (from the pipeline); ``blocks[i]`` is block
    ``i`` of the chain, ``list_of[i]`` the list it belongs to and
    ``index_in_list[i]`` its index there.
    """

    paths: Tuple[str, ...]
    lists: Tuple[nn.ModuleList, ...]
    blocks: Tuple[nn.Module, ...]
    list_of: Tuple[int, ...]
    index_in_list: Tuple[int, ...]
    owner: Any = None  # the module whose forward runs the chain (the transformer)
    discovered: bool = False  # found by discovery: its run order is checked on the first forward

    def __len__(self) -> int:
        return len(self.blocks)

    def name(self, index: int) -> str:
        """``path[i]`` of block ``index`` of the chain."""
        return f"{self.paths[self.list_of[index]]}[{self.index_in_list[index]}]"

    def describe(self) -> str:
        return " + ".join(f"{path} ({len(blocks)})" for path, blocks in zip(self.paths, self.lists))


def _chain(
    paths: Sequence[str], lists: Sequence[nn.ModuleList], interleaved: bool, owner: Any, discovered: bool = False
) -> BlockChain:
    order: List[Tuple[int, int]] = []
    if interleaved:
        for i in range(max(len(blocks) for blocks in lists)):
            order.extend((k, i) for k, blocks in enumerate(lists) if i < len(blocks))
    else:
        order = [(k, i) for k, blocks in enumerate(lists) for i in range(len(blocks))]
    seen = set()
    for k, i in order:
        if id(lists[k][i]) in seen:
            raise ValueError(f"block {paths[k]}[{i}] appears twice in the block lists {list(paths)}")
        seen.add(id(lists[k][i]))
    return BlockChain(
        tuple(paths), tuple(lists), tuple(lists[k][i] for k, i in order),
        tuple(k for k, _ in order), tuple(i for _, i in order), owner, discovered,
    )


def resolve_blocks(pipeline: Any, dit_block_path: str) -> Tuple[Any, nn.ModuleList]:
    """The ``nn.ModuleList`` at ``dit_block_path`` inside ``pipeline``, checked, and the module that holds it."""
    if not isinstance(dit_block_path, str) or not dit_block_path:
        raise ValueError(f"dit_block_path must be a non-empty string, got {dit_block_path!r}")
    parts = dit_block_path.split(".")
    if not _is_dotted(dit_block_path):
        raise ValueError(
            f"dit_block_path must be dot-separated Python identifiers (e.g. {DEFAULT_BLOCK_PATH!r}), "
            f"got {dit_block_path!r}"
        )
    owner = current = pipeline
    for i, part in enumerate(parts):
        if not isinstance(current, nn.ModuleDict):
            owner = current  # a list inside a ModuleDict (Flux3's mode blocks) is run by the dict's holder
        if isinstance(current, nn.ModuleDict) and part in current:
            current = current[part]
            continue
        if not hasattr(current, part):
            raise ValueError(
                f"dit_block_path {dit_block_path!r}: {type(current).__name__} at "
                f"{'.'.join(parts[:i]) or 'the pipeline'!r} has no attribute {part!r}"
            )
        current = getattr(current, part)
    if not isinstance(current, nn.ModuleList):
        raise ValueError(
            f"dit_block_path {dit_block_path!r} must lead to an nn.ModuleList of blocks, got {type(current).__name__}"
        )
    if len(current) == 0:
        raise ValueError(f"dit_block_path {dit_block_path!r} leads to an empty nn.ModuleList")
    return owner, current


def _split_paths(dit_block_path: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(dit_block_path, str):
        return [part.strip() for part in dit_block_path.split(",")]
    if isinstance(dit_block_path, Sequence) and dit_block_path and all(isinstance(p, str) for p in dit_block_path):
        return [p.strip() for p in dit_block_path]
    raise ValueError(
        f"dit_block_path must be a dotted path, several separated by commas, or a list of them; got {dit_block_path!r}"
    )


def _is_block_list(module: nn.Module) -> bool:
    """A non-empty ``ModuleList`` of one kind of module that attends (a transformer block, not a layer)."""
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    kinds = {type(block) for block in module}
    if len(kinds) != 1 or next(iter(kinds)).__module__.startswith("torch.nn"):
        return False
    return any("Attention" in type(sub).__name__ or "Attn" in type(sub).__name__ for sub in module[0].modules())


def _discover(root: nn.Module) -> List[str]:
    """Dotted paths (relative to ``root``) of its lists of transformer blocks, in attribute order."""
    found: List[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _is_block_list(child):
                found.append(path)
            else:
                walk(child, path + ".")

    walk(root, "")
    return found


def _transformer(pipeline: Any) -> Tuple[nn.Module, str]:
    transformer = getattr(pipeline, "transformer", None)
    if isinstance(transformer, nn.Module):
        return transformer, "transformer."
    if isinstance(pipeline, nn.Module):
        return pipeline, ""
    raise ValueError(
        f"{type(pipeline).__name__} has no `transformer` module to find blocks in; give dit_block_path "
        f"(e.g. {DEFAULT_BLOCK_PATH!r})"
    )


def _family(transformer: nn.Module) -> Optional[BlockFamily]:
    for cls in type(transformer).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    return None


def find_blocks(pipeline: Any, dit_block_path: BlockPath = None) -> BlockChain:
    """The chain of blocks to cache in ``pipeline`` (see the module docstring for where it comes from)."""
    if dit_block_path is not None:
        paths = _split_paths(dit_block_path)
        resolved = [resolve_blocks(pipeline, path) for path in paths]
        return _chain(paths, [blocks for _, blocks in resolved], False, resolved[0][0])
    transformer, prefix = _transformer(pipeline)
    family = _family(transformer)
    if family is not None:
        paths = [prefix + path for path in family.lists]
        return _chain(paths, [resolve_blocks(pipeline, path)[1] for path in paths], family.interleaved, transformer)
    found = [prefix + path for path in _discover(transformer)]
    default = prefix + "transformer_blocks"
    if isinstance(getattr(transformer, "transformer_blocks", None), nn.ModuleList) and found in ([], [default]):
        return _chain([default], [resolve_blocks(pipeline, default)[1]], False, transformer)
    if not found:
        raise ValueError(
            f"no list of transformer blocks found in {type(transformer).__name__}; give dit_block_path, or declare "
            "the model with ditcache.register_family"
        )
    return _chain(found, [resolve_blocks(pipeline, path)[1] for path in found], False, transformer, len(found) > 1)


class OrderCheck:
    """Checks that a discovered chain's blocks run in chain order, on the first forward pass.

    Each call reports its chain index; a pass starts at block 0. The first
    full pass must call every block once, in order; afterwards nothing is
    checked.
    """

    def __init__(self, chain: BlockChain) -> None:
        self.chain = chain
        self.expected: Optional[int] = 0 if chain.discovered else None
        self.seen: List[int] = []

    def called(self, index: int) -> None:
        if self.expected is None:
            return
        self.seen.append(index)
        if index != self.expected:
            observed = " -> ".join(self.chain.name(i) for i in self.seen[-6:])
            self.expected = None
            raise ValueError(
                f"the blocks found in {self.chain.describe()} do not run in that order (seen: {observed}); give "
                "dit_block_path with the lists in the order the model runs them, or declare the model with "
                "ditcache.register_family"
            )
        self.expected = index + 1
        if self.expected == len(self.chain):
            self.expected = None
