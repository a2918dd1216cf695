"""Knowing which denoising step the cache is on.

One clock per thread holds the current step index and a run counter. Three
things move it:

* ``set_timestep_idx(i)`` (the spec's explicit call, kept working every step);
* a scheduler made step-aware (by ``@timestep_aware`` on its class, or by
  ``dit_cache`` for the duration of the context): ``set_timesteps()`` starts a
  run at step 0 and every ``step()`` advances by one, so the index is the number
  of ``step()`` calls since ``set_timesteps()`` whatever the model does between
  them (CFG as two forwards, aborted runs, repeated calls);
* a loop function decorated with ``@timestep_aware``: iterating its
  ``timesteps`` argument sets the index of each element.

Thread-local state keeps two pipelines in two threads from disturbing each
other. Listeners hear when a run ends so they can free cached tensors at once.
"""
from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from ._patch import InstancePatch

T = TypeVar("T")


class _Clock(threading.local):
    def __init__(self) -> None:
        self.index: Optional[int] = None
        self.run = 0
        self.total: Optional[int] = None


_clock = _Clock()
_listeners: "weakref.WeakSet[Any]" = weakref.WeakSet()
_listeners_lock = threading.Lock()


def current_step() -> Optional[int]:
    """The calling thread's step index, or ``None`` if nothing has set it."""
    return _clock.index


def current_run() -> int:
    """A counter that changes whenever the calling thread starts a new run."""
    return _clock.run


def current_total() -> Optional[int]:
    """The number of steps of the calling thread's run, when its scheduler told it."""
    return _clock.total


def add_listener(listener: Any) -> None:
    """Register an object with ``on_run_start(total)`` and ``on_run_end()`` methods.

    Held weakly: a listener that is garbage collected stops hearing.
    """
    with _listeners_lock:
        _listeners.add(listener)


def remove_listener(listener: Any) -> None:
    with _listeners_lock:
        _listeners.discard(listener)


def _notify(method: str, *args: Any) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        getattr(listener, method)(*args)


def start_run(total: Optional[int] = None) -> None:
    """Begin a new run at step 0; ``total`` is its number of steps if known."""
    _clock.run += 1
    _clock.index = 0
    _clock.total = total
    _notify("on_run_start", total)


def end_run() -> None:
    """Finish the current run: listeners free what they cached for it."""
    _clock.run += 1
    _clock.index = 0
    _clock.total = None
    _notify("on_run_end")


def advance() -> None:
    """One ``scheduler.step()`` done: move to the next step, ending the run after the last."""
    _clock.index = (_clock.index or 0) + 1
    if _clock.total is not None and _clock.index >= _clock.total:
        end_run()


def set_step(index: int) -> None:
    """Set the step explicitly; going back (or to 0 from elsewhere) starts a new run."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"t_idx must be an int >= 0, got {index!r}")
    previous = _clock.index
    if previous is None or index < previous:
        _clock.run += 1
        _clock.total = None
    _clock.index = index


# --- making schedulers and loops step-aware -------------------------------------------

_WRAPPED = "__ditcache_timestep_aware__"


def _count_timesteps(scheduler: Any) -> Optional[int]:
    timesteps = getattr(scheduler, "timesteps", None)
    try:
        return len(timesteps) if timesteps is not None else None
    except TypeError:
        return None


def _wrap_set_timesteps(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def set_timesteps(self: Any, *args: Any, **kwargs: Any) -> T:
        result = method(self, *args, **kwargs)
        start_run(_count_timesteps(self))
        return result

    setattr(set_timesteps, _WRAPPED, True)
    return set_timesteps


def _wrap_step(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def step(self: Any, *args: Any, **kwargs: Any) -> T:
        if _clock.total is None and _clock.index in (None, 0):
            # No set_timesteps() seen (only `step` was decorated): learn the run's length here.
            _clock.total = _count_timesteps(self)
            _clock.index = 0
        result = method(self, *args, **kwargs)
        advance()
        return result

    setattr(step, _WRAPPED, True)
    return step


def is_timestep_aware(method: Any) -> bool:
    return getattr(method, _WRAPPED, False)


def track_scheduler(scheduler: Any) -> Callable[[], None]:
    """Make one scheduler instance step-aware; returns a function that undoes it exactly.

    Instance attributes shadow the class methods (:mod:`ditcache._patch`), so
    undoing leaves the scheduler as it was.
    """
    patch = InstancePatch()
    for name, wrap in (("set_timesteps", _wrap_set_timesteps), ("step", _wrap_step)):
        current = getattr(scheduler, name, None)
        if current is None or is_timestep_aware(current):
            continue
        wrapped = wrap(functools.wraps(current)(lambda _self, *args, _call=current, **kwargs: _call(*args, **kwargs)))
        patch.set(scheduler, name, types.MethodType(wrapped, scheduler))
    return patch.restore


class _StepIterable:
    """Iterates ``timesteps`` and sets the step index of each element as it goes."""

    def __init__(self, timesteps: Iterable[Any]) -> None:
        self._timesteps = timesteps

    def __iter__(self) -> Iterator[Any]:
        for index, timestep in enumerate(self._timesteps):
            set_step(index)
            yield timestep

    def __len__(self) -> int:
        return len(self._timesteps)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        return self._timesteps[item]  # type: ignore[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._timesteps, name)


def timestep_aware(target: T) -> T:
    """Make a scheduler class, its ``step`` method, or a denoising loop tell the cache the step.

    * a class: its ``set_timesteps`` starts a run and its ``step`` advances it;
    * a function named ``step``: each call advances the step (the run ends after
      ``len(self.timesteps)`` calls when the scheduler has ``timesteps``);
    * any other function with a ``timesteps`` parameter: iterating that argument
      sets the step index of each element; the run ends when the function returns.
    """
    if inspect.isclass(target):
        for name, wrap in (("set_timesteps", _wrap_set_timesteps), ("step", _wrap_step)):
            method = target.__dict__.get(name) or getattr(target, name, None)
            if method is not None and not is_timestep_aware(method):
                setattr(target, name, wrap(method))
        if getattr(target, "step", None) is None:
            raise ValueError(f"timestep_aware: class {target.__name__} has no `step` method to track")
        return target
    if not callable(target):
        raise ValueError(f"timestep_aware expects a scheduler class or a function, got {type(target).__name__}")
    if target.__name__ == "step":
        return _wrap_step(target)  # type: ignore[return-value]
    signature = inspect.signature(target)
    if "timesteps" not in signature.parameters:
        raise ValueError(
            f"timestep_aware: function {target.__name__} has no `timesteps` parameter; decorate a loop "
            "function that takes `timesteps`, a scheduler class, or its `step` method"
        )

    @functools.wraps(target)
    def loop(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["timesteps"] = _StepIterable(bound.arguments["timesteps"])
        start_run(None)
        try:
            return target(*bound.args, **bound.kwargs)
        finally:
            end_run()

    return loop  # type: ignore[return-value]
