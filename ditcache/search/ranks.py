"""The search's processes under torchrun: rank 0 decides, runs are spread or shared.

When every rank holds the whole model, candidate runs are spread over the
ranks and every rank gets every record; with ``sequence_parallel`` (the ranks
share one model) every rank takes part in every run and rank 0 scores it.
This is the only module of the search that talks to :mod:`ditcache.distributed`.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, TypeVar

from ..distributed import all_gather_objects, broadcast_object, current_context

T = TypeVar("T")


class Ranks:
    def __init__(self, sequence_parallel: bool = False) -> None:
        self.context = current_context()
        self.sequence_parallel = sequence_parallel

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def rank(self) -> int:
        return self.context.rank

    @property
    def world_size(self) -> int:
        return self.context.world_size

    @property
    def spread(self) -> bool:
        """Whether candidate runs are divided between the ranks (each holds the whole model)."""
        return self.context.enabled and not self.sequence_parallel

    @property
    def width(self) -> int:
        """Configs that one round of runs makes at once: one per rank when they are spread."""
        return self.world_size if self.spread else 1

    @property
    def makes_runs(self) -> bool:
        """Whether this rank makes the runs that rank 0 times alone (confirmation pairs)."""
        return self.is_main or self.sequence_parallel

    def decide(self, decision: Callable[[], T]) -> T:
        """Run ``decision`` on rank 0 and hand its result (or its ValueError) to every rank."""
        outcome: Any = None
        if self.is_main:
            try:
                outcome = ("ok", decision())
            except ValueError as err:
                outcome = ("error", str(err))
        kind, value = self.share(outcome)
        if kind == "error":
            raise ValueError(value)
        return value

    def share(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (and on one process, ``value`` itself)."""
        return broadcast_object(value)

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value``, in rank order."""
        return all_gather_objects(value)

    def mine(self, items: Sequence[T]) -> List[T]:
        """This rank's share of ``items`` when runs are spread, else all of them."""
        return list(items[self.rank :: self.world_size]) if self.spread else list(items)

    def collect(self, mine: List[T]) -> List[T]:
        """Every rank's records of one round, on every rank."""
        if self.spread:
            return [item for part in self.gather(mine) for item in part]
        if self.context.enabled:
            return self.share(mine)
        return mine
