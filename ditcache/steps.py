"""Knowing which denoising step the cache is on.

One clock per thread holds the live run (its id, its source, its step index).
Three sources move it:

* ``set_timestep_idx(i)`` (the spec's explicit call, once per step): ``0``, or
  an index lower than the current one, starts a new run;
* a scheduler made step-aware (by ``@timestep_aware`` on its class or its
  ``step`` method, or by ``dit_cache`` for the duration of the context):
  ``set_timesteps()`` starts a run of known length, and the index is the number
  of denoising steps ``step()`` has completed, whatever the model does between
  calls (CFG as two forwards, second-order schedulers whose ``step()`` is
  called twice per step, aborted runs, repeated calls);
* a function decorated with ``@timestep_aware``: a call is one run, and a new
  step begins whenever the timestep argument the transformer receives changes
  (:func:`watch_timesteps`). That survives whatever the loop does to its
  schedule (tensor conversion, device moves, slicing, indexing); a repeated
  value (CFG as two forwards, a second-order corrector evaluated at the next
  step's noise level) stays in one step.

Listeners hear when a run starts or ends, so they free cached tensors at once
and check a run's length once it is known (:meth:`on_run_end` with
``check=True`` for runs that finished and whose length no scheduler told).
Thread-local state keeps two pipelines in two threads from disturbing each
other.
"""
from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from typing import Any, Callable, Optional, Tuple, TypeVar

import torch

from ._patch import InstancePatch

T = TypeVar("T")

SCHEDULER, LOOP, EXPLICIT = "scheduler", "loop", "explicit"


class _Clock(threading.local):
    def __init__(self) -> None:
        self.run = 0
        self.index: Optional[int] = None
        self.source: Optional[str] = None  # who started the live run; None: no live run
        self.total: Optional[int] = None  # denoising steps of the run, when its scheduler told
        self.timesteps: Optional[Tuple[float, ...]] = None  # the run's timesteps, when its scheduler told
        self.scheduler_calls = 0  # step() calls so far, and how many the run makes
        self.scheduler_calls_total: Optional[int] = None
        self.last_timestep: Optional[float] = None  # the transformer's last timestep, in a loop run
        self.timestep_seen = False
        self.loop_depth = 0


_clock = _Clock()
_listeners: "weakref.WeakSet[Any]" = weakref.WeakSet()
_listeners_lock = threading.Lock()


def current_step() -> Optional[int]:
    """The calling thread's step index, or ``None`` if no live run has one."""
    return _clock.index


def require_step() -> int:
    """The calling thread's step index; a clear error, naming what to do, when nothing tells it."""
    if _clock.index is not None:
        return _clock.index
    if _clock.source == LOOP and not _clock.timestep_seen:
        raise ValueError(
            "the cache does not know the denoising step: this @timestep_aware loop calls the transformer, but "
            "the transformer takes no argument named one of "
            f"{', '.join(TIMESTEP_PARAMETERS)}, so no new step can be seen; decorate the scheduler class "
            "with @timestep_aware instead, or call DitCacheAdaptor.set_timestep_idx(i) at the top of each step"
        )
    raise ValueError(
        "the cache does not know the denoising step: call DitCacheAdaptor.set_timestep_idx(i) at the top of "
        "each step, decorate the loop function or the scheduler class with @timestep_aware, or give the "
        "pipeline a `scheduler` attribute before attaching the cache"
    )


def current_run() -> int:
    """A counter that changes whenever the calling thread starts or ends a run."""
    return _clock.run


def current_total() -> Optional[int]:
    """The number of denoising steps of the calling thread's run, when its scheduler told it."""
    return _clock.total


def current_timesteps() -> Optional[Tuple[float, ...]]:
    """The timesteps of the calling thread's run (its scheduler's ``timesteps``), when its scheduler told them."""
    return _clock.timesteps


def add_listener(listener: Any) -> None:
    """Register an object with ``on_run_start(total)`` and ``on_run_end(check)`` methods.

    Held weakly: a listener that is garbage collected stops hearing.
    """
    with _listeners_lock:
        _listeners.add(listener)


def remove_listener(listener: Any) -> None:
    with _listeners_lock:
        _listeners.discard(listener)


def _notify(method: str, *args: Any) -> None:
    """Tell every listener; the first error raised is raised after all have heard."""
    with _listeners_lock:
        listeners = list(_listeners)
    error: Optional[BaseException] = None
    for listener in listeners:
        try:
            getattr(listener, method)(*args)
        except Exception as raised:  # noqa: BLE001 - re-raised below, once every listener heard
            error = error or raised
    if error is not None:
        raise error


class ScheduleWatch:
    """Inside ``with``: the timesteps of every run started (``None`` for one whose scheduler did not tell them)."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_run_start(self, total: Optional[int]) -> None:
        self.seen.append(_clock.timesteps)

    def on_run_end(self, check: bool) -> None:
        pass

    def __enter__(self) -> "ScheduleWatch":
        add_listener(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_listener(self)

    def schedule(self) -> Optional[Tuple[float, ...]]:
        """The one schedule every run sampled; ``None`` if no run told it; an error if runs sampled different ones."""
        known = set(self.seen)
        if not known or None in known:
            return None
        if len(known) > 1:
            raise ValueError(f"the runs sampled {len(known)} different timestep schedules; the cache is searched "
                             "for one: make every run of the callable use the same timesteps")
        return known.pop()


def end_run(check: bool = True) -> None:
    """End the live run, if any: listeners free its tensors, and check its length when ``check``."""
    live = _clock.source is not None
    run, depth = _clock.run, _clock.loop_depth
    try:
        if live:
            _notify("on_run_end", check)
    finally:
        _clock.__init__()
        _clock.run, _clock.loop_depth = run + 1, depth


def start_run(total: Optional[int] = None, source: str = SCHEDULER, scheduler_calls: Optional[int] = None,
              timesteps: Optional[Tuple[float, ...]] = None) -> None:
    """Begin a new run; ``total`` is its number of denoising steps and ``timesteps`` its timesteps, if known.

    Inside a ``@timestep_aware`` loop a scheduler does not start runs: the loop does.
    """
    if source == SCHEDULER and _clock.loop_depth:
        return
    end_run(check=_clock.source == EXPLICIT)  # an explicit run ends when the next begins
    _clock.source = source
    _clock.index = None if source == LOOP else 0
    _clock.total = total
    _clock.timesteps = timesteps
    _clock.scheduler_calls_total = scheduler_calls
    _notify("on_run_start", total)


def set_step(index: int) -> None:
    """Set the step explicitly; ``0``, or going back, starts a new run."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"t_idx must be an int >= 0, got {index!r}")
    previous = _clock.index
    if _clock.source != EXPLICIT or previous is None or index == 0 or index < previous:
        start_run(None, EXPLICIT)
    _clock.index = index


def _scheduler_stepped(scheduler: Any) -> None:
    """One ``scheduler.step()`` call done: count a denoising step when it completed one."""
    if _clock.source != SCHEDULER:
        return
    _clock.scheduler_calls += 1
    if _clock.scheduler_calls_total is not None and _clock.scheduler_calls >= _clock.scheduler_calls_total:
        end_run(check=False)  # its length was checked when it started
    elif getattr(scheduler, "state_in_first_order", True):  # a second-order scheduler between its two calls
        _clock.index += 1


# --- the transformer's timestep: the step signal of decorated loops -----------------------------

TIMESTEP_PARAMETERS = ("timestep", "timesteps", "t", "sigma", "sigmas")


def _timestep_value(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.detach().reshape(-1)[0]) if value.numel() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def observe_timestep(value: Any) -> None:
    """The transformer was called with timestep ``value``: in a loop run, a new value is a new step."""
    if _clock.source != LOOP:
        return
    value = _timestep_value(value)
    if value is None:
        return
    _clock.timestep_seen = True
    if value != _clock.last_timestep:
        _clock.last_timestep = value
        _clock.index = 0 if _clock.index is None else _clock.index + 1


def watch_timesteps(module: Any) -> Callable[[], None]:
    """Report the timestep argument of every call of ``module``; returns a function that stops it.

    Does nothing (and returns a no-op) when ``module`` is not an ``nn.Module``
    or its ``forward`` takes no argument named one of :data:`TIMESTEP_PARAMETERS`.
    """
    if not isinstance(module, torch.nn.Module):
        return lambda: None
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return lambda: None
    found = next((p for p in parameters if p.name in TIMESTEP_PARAMETERS), None)
    if found is None:
        return lambda: None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    position = parameters.index(found) if found.kind in positional else None

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        if _clock.source != LOOP:
            return
        if found.name in kwargs:
            observe_timestep(kwargs[found.name])
        elif position is not None and position < len(args):
            observe_timestep(args[position])

    return module.register_forward_pre_hook(hook, with_kwargs=True).remove


# --- making schedulers and loops step-aware -------------------------------------------

_WRAPPED = "__ditcache_timestep_aware__"


def _scheduler_timesteps(scheduler: Any) -> Optional[Tuple[float, ...]]:
    """The scheduler's ``timesteps`` as floats, or ``None`` when it has none a run could be checked against."""
    timesteps = getattr(scheduler, "timesteps", None)
    try:
        return tuple(float(t) for t in timesteps) if timesteps is not None else None
    except (TypeError, ValueError):
        return None


def _wrap_set_timesteps(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def set_timesteps(self: Any, *args: Any, **kwargs: Any) -> T:
        result = method(self, *args, **kwargs)
        timesteps = _scheduler_timesteps(self)
        calls = None if timesteps is None else len(timesteps)
        # Second-order schedulers (Heun, DPM-2) list 2N-1 timesteps for N steps, one step() call each.
        total = (calls + 1) // 2 if calls is not None and hasattr(self, "state_in_first_order") else calls
        start_run(total, SCHEDULER, calls, timesteps)
        return result

    setattr(set_timesteps, _WRAPPED, True)
    return set_timesteps


def _wrap_step(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def step(self: Any, *args: Any, **kwargs: Any) -> T:
        result = method(self, *args, **kwargs)
        _scheduler_stepped(self)
        return result

    setattr(step, _WRAPPED, True)
    return step


def is_timestep_aware(method: Any) -> bool:
    return getattr(method, _WRAPPED, False)


_SCHEDULER_METHODS = (("set_timesteps", _wrap_set_timesteps), ("step", _wrap_step))


def track_scheduler(scheduler: Any) -> Callable[[], None]:
    """Make one scheduler instance step-aware; returns a function that undoes it exactly.

    Instance attributes shadow the class methods (:mod:`ditcache._patch`), so
    undoing leaves the scheduler as it was.
    """
    patch = InstancePatch()
    for name, wrap in _SCHEDULER_METHODS:
        current = getattr(scheduler, name, None)
        if current is None or is_timestep_aware(current):
            continue
        wrapped = wrap(functools.wraps(current)(lambda _self, *args, _call=current, **kwargs: _call(*args, **kwargs)))
        patch.set(scheduler, name, types.MethodType(wrapped, scheduler))
    return patch.restore


def _track_scheduler_class(cls: type) -> None:
    for name, wrap in _SCHEDULER_METHODS:
        method = cls.__dict__.get(name) or getattr(cls, name, None)
        if method is not None and not is_timestep_aware(method):
            setattr(cls, name, wrap(method))


class _StepMethod:
    """``@timestep_aware`` on a ``step`` method: when its class is made, the class's
    ``set_timesteps`` is tracked too, so runs start where the scheduler starts them."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        functools.update_wrapper(self, function)

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, name, self.function)
        _track_scheduler_class(owner)

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        return _wrap_step(self.function).__get__(instance, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _wrap_step(self.function)(*args, **kwargs)


def timestep_aware(target: T) -> T:
    """Make a scheduler class, its ``step`` method, or a denoising loop tell the cache the step.

    * a class: its ``set_timesteps`` starts a run and its ``step`` advances it;
    * a function named ``step`` (a method, in its class body): the same, for its class;
    * any other function: a call is one run; a new step begins whenever the
      timestep argument the transformer receives changes.
    """
    if inspect.isclass(target):
        if getattr(target, "step", None) is None:
            raise ValueError(f"timestep_aware: class {target.__name__} has no `step` method to track")
        _track_scheduler_class(target)
        return target
    if not callable(target):
        raise ValueError(f"timestep_aware expects a scheduler class or a function, got {type(target).__name__}")
    if getattr(target, "__name__", None) == "step":
        return _StepMethod(target)  # type: ignore[return-value]

    @functools.wraps(target)
    def loop(*args: Any, **kwargs: Any) -> Any:
        if _clock.loop_depth:  # called from inside another decorated loop: part of its run
            return target(*args, **kwargs)
        start_run(None, LOOP)
        _clock.loop_depth = 1
        try:
            result = target(*args, **kwargs)
        except BaseException:
            _clock.loop_depth = 0
            end_run(check=False)
            raise
        _clock.loop_depth = 0
        end_run(check=True)
        return result

    return loop  # type: ignore[return-value]
