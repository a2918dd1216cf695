"""Which input each output of a block continues ("streams").

A block that returns one tensor continues its first argument (``hidden_states``).
A dual-stream block returns a tuple whose order differs between models:
diffusers' CogVideoX block returns ``(hidden_states, encoder_hidden_states)``,
its Flux blocks ``(encoder_hidden_states, hidden_states)``. The cache needs the
pairing to form ``delta = out - in`` per stream and to hand inputs on when
blocks are skipped. Known classes are listed by name (so the core never imports
diffusers); for others the pairing is read off the first call: by shape, and
where streams share a shape, by value (a block adds a residual to each stream,
so an output lies far nearer the input it continues than the other one).
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

# A pairing by value is taken only when its outputs lie this many times nearer
# their inputs than under any other pairing; else it is ambiguous.
CLEAR_PAIRING_FACTOR = 2.0

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
    return BlockStreams(signature, primary, _pair_by_shape_and_value(name, output, tensor_inputs))


def _pair_by_shape_and_value(name: str, output: Any, tensor_inputs: Mapping[str, torch.Tensor]) -> Tuple[Optional[str], ...]:
    """The input each output continues: the one pairing by shape, or the clearly nearest of several."""
    slots = [k for k, value in enumerate(output) if isinstance(value, torch.Tensor)]  # others are handed on
    options = [[key for key, tensor in tensor_inputs.items() if tensor.shape == output[k].shape] for k in slots]
    pairings = [p for p in itertools.product(*options) if len(set(p)) == len(p)]
    if not pairings:
        k = next((k for k, found in zip(slots, options) if not found), slots[0])
        raise ValueError(
            f"cannot tell which input output {k} of block {name} continues (no input has its shape "
            f"{tuple(output[k].shape)}); declare it with ditcache.register_block_outputs({name!r}, "
            "(<input name per output>))"
        )
    if len(pairings) > 1:
        distances = sorted((_distance(output, slots, pairing, tensor_inputs), pairing) for pairing in pairings)
        (best, pairing), (runner_up, _) = distances[0], distances[1]
        if not best * CLEAR_PAIRING_FACTOR <= runner_up:
            k = next(k for k, found in zip(slots, options) if len(found) > 1)
            raise ValueError(
                f"cannot tell which input output {k} of block {name} continues (inputs of the same shape: "
                f"{[key for key in tensor_inputs if tensor_inputs[key].shape == output[k].shape]}, and the "
                f"outputs lie about as near each pairing: relative distances {best:.3g} and {runner_up:.3g}); "
                f"declare it with ditcache.register_block_outputs({name!r}, (<input name per output>))"
            )
        pairings = [pairing]
    paired = dict(zip(slots, pairings[0]))
    return tuple(paired.get(k) for k in range(len(output)))


def _distance(output: Any, slots: Any, pairing: Tuple[str, ...], tensor_inputs: Mapping[str, torch.Tensor]) -> float:
    """Summed relative distance of each output from the input ``pairing`` gives it."""
    total = 0.0
    for k, key in zip(slots, pairing):
        out, inp = output[k].detach().float(), tensor_inputs[key].detach().float()
        total += ((out - inp).norm() / out.norm().clamp_min(1e-12)).item()
    return total
