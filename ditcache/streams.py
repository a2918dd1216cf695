"""Which input each output of a block continues ("streams").

A block that returns one tensor continues its first argument (``hidden_states``).
A dual-stream block returns a tuple whose order differs between models:
diffusers' CogVideoX block returns ``(hidden_states, encoder_hidden_states)``,
its Flux blocks ``(encoder_hidden_states, hidden_states)``. The cache needs the
pairing to form ``delta = out - in`` per stream and to hand inputs on when
blocks are skipped. Known classes are listed by name (so the core never imports
diffusers); for others the pairing is read off the first call by shape.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

# Output order of tuple-returning blocks, by class name. Entries name the input
# each output continues; ``None`` marks an output that is not a stream.
KNOWN_TUPLE_OUTPUTS: Dict[str, Tuple[Optional[str], ...]] = {
    "CogVideoXBlock": ("hidden_states", "encoder_hidden_states"),
    "CogView4TransformerBlock": ("hidden_states", "encoder_hidden_states"),
    "FluxTransformerBlock": ("encoder_hidden_states", "hidden_states"),
    "FluxSingleTransformerBlock": ("encoder_hidden_states", "hidden_states"),
    "Flux2TransformerBlock": ("encoder_hidden_states", "hidden_states"),
    "HunyuanVideoTransformerBlock": ("hidden_states", "encoder_hidden_states"),
    "HunyuanVideoSingleTransformerBlock": ("hidden_states", "encoder_hidden_states"),
    "MochiTransformerBlock": ("hidden_states", "encoder_hidden_states"),
    "JointTransformerBlock": ("encoder_hidden_states", "hidden_states"),
}


def register_block_outputs(class_name: str, outputs: Tuple[Optional[str], ...]) -> None:
    """Declare the output order of a tuple-returning block class, by input names."""
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"class_name must be a class name, got {class_name!r}")
    if not isinstance(outputs, tuple) or not outputs or not all(o is None or isinstance(o, str) for o in outputs):
        raise ValueError(f"outputs must be a non-empty tuple of input names (or None), got {outputs!r}")
    KNOWN_TUPLE_OUTPUTS[class_name] = outputs


@dataclass(frozen=True)
class BlockStreams:
    """How one block's outputs pair with its inputs.

    ``outputs is None``: the block returns one tensor continuing ``primary``.
    Otherwise ``outputs[k]`` names the input that output ``k`` continues, or is
    ``None`` for an output that is not a stream (``None``, a side output): a
    skipped block hands on what that output was on the last store step.
    """

    signature: inspect.Signature
    primary: str
    outputs: Optional[Tuple[Optional[str], ...]]

    @property
    def names(self) -> Tuple[str, ...]:
        """The stream inputs, in output order."""
        if self.outputs is None:
            return (self.primary,)
        return tuple(name for name in self.outputs if name is not None)

    def inputs(
        self, args: Tuple[Any, ...], kwargs: Mapping[str, Any], names: Optional[Tuple[str, ...]] = None
    ) -> Dict[str, Any]:
        """The stream tensors of one call (or the inputs ``names``), by input name."""
        if names is None and self.outputs is None and args:
            return {self.primary: args[0]}
        bound = self.signature.bind_partial(*args, **kwargs).arguments
        return {name: bound.get(name) for name in (self.names if names is None else names)}

    def pack(self, values: Mapping[str, Any], aux: Optional[Mapping[int, Any]] = None) -> Any:
        """Build the block's return value from per-stream tensors and the other outputs (``aux``, by position)."""
        if self.outputs is None:
            return values[self.primary]
        aux = aux or {}
        return tuple(aux.get(k) if name is None else values[name] for k, name in enumerate(self.outputs))

    def aux(self, output: Any) -> Dict[int, Any]:
        """The outputs of a block's tuple that are not streams (``None``, or side outputs), by position."""
        if self.outputs is None:
            return {}
        return {k: output[k] for k, name in enumerate(self.outputs) if name is None}

    def unpack(self, output: Any) -> Dict[str, Any]:
        """Per-stream tensors of a block's return value."""
        if self.outputs is None:
            return {self.primary: output}
        return {name: output[k] for k, name in enumerate(self.outputs) if name is not None}


def _signature(block: torch.nn.Module) -> inspect.Signature:
    """The forward signature without ``self``."""
    signature = inspect.signature(type(block).forward)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def block_streams(block: torch.nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> BlockStreams:
    """Work out the pairing of ``block`` from one real call and its output."""
    signature = _signature(block)
    params = list(signature.parameters)
    if not params:
        raise ValueError(f"block {type(block).__name__}.forward takes no arguments; it cannot be cached")
    primary = params[0]
    if isinstance(output, torch.Tensor):
        return BlockStreams(signature, primary, None)
    name = type(block).__name__
    if not isinstance(output, (tuple, list)):
        raise ValueError(
            f"block {name} returned {type(output).__name__}; the cache handles blocks returning a tensor "
            "or a tuple of tensors"
        )
    if name in KNOWN_TUPLE_OUTPUTS:
        outputs = KNOWN_TUPLE_OUTPUTS[name]
        if len(outputs) != len(output):
            raise ValueError(f"block {name} returned {len(output)} outputs; its registered order has {len(outputs)}")
        # an output that is None here (SD3's last joint block returns no text stream) is handed on as it is
        outputs = tuple(key if isinstance(output[k], torch.Tensor) else None for k, key in enumerate(outputs))
        return BlockStreams(signature, primary, outputs)
    bound = signature.bind_partial(*args, **kwargs).arguments
    tensor_inputs = {key: value for key, value in bound.items() if isinstance(value, torch.Tensor)}
    outputs = []
    for k, value in enumerate(output):
        if not isinstance(value, torch.Tensor):
            outputs.append(None)
            continue
        matches = [key for key, tensor in tensor_inputs.items() if tensor.shape == value.shape and key not in outputs]
        if len(matches) != 1:
            raise ValueError(
                f"cannot tell which input output {k} of block {name} continues (inputs of the same shape: "
                f"{matches}); declare it with ditcache.register_block_outputs({name!r}, (<input name per output>))"
            )
        outputs.append(matches[0])
    return BlockStreams(signature, primary, tuple(outputs))
