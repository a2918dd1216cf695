"""Shadowing an attribute in one instance's ``__dict__`` and restoring it exactly.

An instance attribute hides the class's attribute of the same name; restoring
deletes it again (or puts back what the instance held before), so the object
is left as if never patched.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

_MISSING = object()


class InstancePatch:
    """Attributes set on instances, each remembered with what the instance held before."""

    def __init__(self) -> None:
        self._saved: List[Tuple[Any, str, Any]] = []

    def set(self, instance: Any, name: str, value: Any) -> None:
        """Shadow ``instance.name`` with ``value`` (in its ``__dict__``) until :meth:`restore`."""
        self._saved.append((instance, name, instance.__dict__.get(name, _MISSING)))
        instance.__dict__[name] = value

    def restore(self) -> None:
        """Put every patched attribute back as it was, the latest first."""
        for instance, name, previous in reversed(self._saved):
            if previous is _MISSING:
                instance.__dict__.pop(name, None)
            else:
                instance.__dict__[name] = previous
        self._saved = []

    def __bool__(self) -> bool:
        return bool(self._saved)



After = Callable[[int, Any, Tuple[Any, ...], Any, Any], None]  # (index, block, args, kwargs, output)


class ObservedForward:
    """A block's ``forward`` that reports each call; it sees ``block(...)`` and ``block.forward(...)`` alike."""

    def __init__(self, index: int, block: Any, forward: Callable[..., Any], after: After,
                 before: Optional[Callable[[int], None]]) -> None:
        self.index, self.block, self.forward, self.after, self.before = index, block, forward, after, before

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.before is not None:
            self.before(self.index)
        output = self.forward(*args, **kwargs)
        self.after(self.index, self.block, args, kwargs, output)
        return output


def observe_forwards(blocks: Sequence[Any], after: After, before: Optional[Callable[[int], None]] = None) -> InstancePatch:
    """Shadow every block's ``forward`` (as the cache patches them) with one that reports its calls.

    Forward hooks would miss a model that calls ``block.forward(...)`` directly. Restore the
    returned patch to undo it.
    """
    patch = InstancePatch()
    for i, block in enumerate(blocks):
        patch.set(block, "forward", ObservedForward(i, block, block.forward, after, before))
    return patch
