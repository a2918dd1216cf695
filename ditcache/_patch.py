"""Shadowing an attribute in one instance's ``__dict__`` and restoring it exactly.

An instance attribute hides the class's attribute of the same name; restoring
deletes it again (or puts back what the instance held before), so the object
is left as if never patched.
"""
from __future__ import annotations

from typing import Any, List, Tuple

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

