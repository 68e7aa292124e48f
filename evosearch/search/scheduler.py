"""Steady-state scheduling: a worker that finishes gets a candidate at once.

The generational driver waits for the slowest candidate of each generation before it asks the next, and
every other worker idles meanwhile (DFS candidates with paths of different lengths make the wait long).
Here the optimizer is asked ahead (`Optimizer.ask_ahead`: GA, NSGA-II, random search), so that up to
`LOOKAHEAD` generations are out at once and an idle worker always takes the next candidate of the oldest
generation that still has one. A generation asked ahead is bred from the population as the optimizer
knows it then, without the results still out (an asynchronous evolutionary algorithm); the optimizer is
told generations in the order it asked them, each as soon as it and every earlier one are complete, and
each tell is committed at once, before anything else is asked. So a committed optimizer state always
holds exactly the generations out at that moment, and a resumed run re-opens those and re-asks the rest,
getting the same genomes (the driver checks them against what the interrupted run recorded).

Only the order in which candidates *finish* differs from the generational mode; every candidate is still
recorded as it finishes, and what the report split scores is unchanged (the front, once the search ends).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np

from evosearch.optimizers import Optimizer
from workers.pool import EXHAUSTED

LOOKAHEAD = 3  # generations out at once: enough that a straggler never leaves a worker without a candidate
# Calls out per worker: the next candidate waits on the worker while it runs the current one, so it
# never idles through the result's trip to the driver, the store write and the next ask.
QUEUE_DEPTH = 2


class BatchDriver(Protocol):
    """What the scheduler needs of the search driver: a generation's steps and its workers."""

    optimizer: Optimizer

    def admit(self, generation: int, genomes: np.ndarray) -> tuple[dict, list]: ...

    def settle(self, generation: int, genomes: np.ndarray, final: dict, pending: Any, outcome: Any) -> None: ...

    def conclude(self, generation: int, genomes: np.ndarray, final: dict) -> None: ...

    def search_task(self, generation: int, pending: Any) -> Any: ...

    def workers(self) -> Any: ...

    def running(self, count: int, generation: int) -> None: ...


@dataclass
class _Open:
    """A generation asked and not yet told."""

    generation: int
    genomes: np.ndarray
    final: dict
    waiting: int  # candidates out on workers or queued for them


@dataclass
class SteadyStateScheduler:
    driver: BatchDriver
    ask_limit: int  # generations to ask in all (max_generations, the budget and stop_after in generations)
    lookahead: int = LOOKAHEAD

    def __post_init__(self) -> None:
        self._open: deque[_Open] = deque()
        self._queue: deque[tuple[_Open, Any]] = deque()
        self._in_flight = 0

    def run(self) -> None:
        """Evaluates generations until `ask_limit` are asked and all of them told (or the optimizer is done)."""
        optimizer = self.driver.optimizer
        # Generations out when the last state was committed (a resumed run): opened again, in order.
        for genomes in optimizer.pending():
            self._admit(optimizer.generation + len(self._open), genomes)
        self._conclude_complete()
        for outcome in self.driver.workers().stream(self._next_item, lambda item: (item[2],),
                                                    depth=QUEUE_DEPTH):
            batch, pending, _ = outcome.item
            self._in_flight -= 1
            self.driver.settle(batch.generation, batch.genomes, batch.final, pending, outcome)
            batch.waiting -= 1
            self._conclude_complete()
            self.driver.running(self._in_flight, batch.generation)

    def _next_item(self):
        optimizer = self.driver.optimizer
        while not self._queue and self._may_ask() and optimizer.can_ask_ahead():
            if len(self._open) >= self.lookahead:
                return None  # a worker idles rather than the search run further ahead of what it knows
            self._admit(optimizer.asked, optimizer.ask_ahead())
            self._conclude_complete()
        if self._queue:
            batch, pending = self._queue.popleft()
            self._in_flight += 1
            return batch, pending, self.driver.search_task(batch.generation, pending)
        # Nothing to hand out now: more later (the initial population is still out), or never.
        return None if self._may_ask() or self._open else EXHAUSTED

    def _may_ask(self) -> bool:
        optimizer = self.driver.optimizer
        return optimizer.asked < self.ask_limit and not optimizer.done()

    def _admit(self, generation: int, genomes: np.ndarray) -> None:
        final, primaries = self.driver.admit(generation, genomes)
        batch = _Open(generation, genomes, final, waiting=len(primaries))
        self._open.append(batch)
        self._queue.extend((batch, p) for p in primaries)

    def _conclude_complete(self) -> None:
        while self._open and self._open[0].waiting == 0:
            batch = self._open.popleft()
            self.driver.conclude(batch.generation, batch.genomes, batch.final)


def generations_to_ask(max_generations: int, budget: Optional[int], per_generation: int,
                       stop_after: Optional[int]) -> int:
    """How many generations a run may ask in all: the optimizer's, the budget's and `stop_after`'s limit."""
    limit = max_generations
    if budget is not None:
        limit = min(limit, budget // per_generation)
    if stop_after is not None:
        limit = min(limit, stop_after)
    return limit
