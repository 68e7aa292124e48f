"""A pool of long-lived Ray actors that keeps every actor busy and survives actor deaths.

Ray's own `ActorPool` gives up when an actor dies; a search must not. Here a dead actor is replaced
(its resident weights are loaded again) and its in-flight item is queued again, up to `max_retries`
times per item. An exception raised *inside* the actor's method is the item's own failure (a bad recipe,
a NaN score): it is reported once and never retried, since retrying would fail the same way.

An actor the cluster cannot place (its node is gone, the GPUs are taken) may wait for resources forever, or
until an autoscaler adds a node: the pool goes on with the actors it has and takes that one in when it is
ready, be it a replacement or one of the first actors still unplaced after `start_timeout_s`. Only when no
actor at all is ready for `start_timeout_s` does the pool give up.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from evosearch.errors import RunFailure, one_line

log = logging.getLogger(__name__)

Item = TypeVar("Item")
EXHAUSTED = object()  # what a `WorkerPool.stream` source returns when it has no more items, ever


@dataclass(frozen=True)
class ActorOptions:
    """Resources per actor. One GPU each when the cluster has GPUs; CPUs otherwise."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    max_concurrency: int = 1

    def as_ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                "max_concurrency": self.max_concurrency}
        if self.memory_bytes:
            opts["memory"] = self.memory_bytes
        return opts


@dataclass
class PoolOutcome(Generic[Item]):
    """One finished item: `value` when the actor returned, `error` (one line) when it did not."""

    item: Item
    value: Any = None
    error: str | None = None
    attempts: int = 1
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Slot:
    actor: Any
    name: str
    generation: int = 0  # bumped on every restart so names stay unique in the store
    ready: Any = None  # the actor's readiness ref until it has answered, then None
    died_running: int | None = None  # once the actor died: the call it was running (`_InFlight.seq`)


@dataclass
class _InFlight(Generic[Item]):
    item: Item
    slot: _Slot
    attempts: int
    seq: int  # submission order: an actor runs its calls in that order, so its oldest one is the running one


class WorkerStartError(RunFailure, RuntimeError):
    """An actor could not start (bad source path, out of memory while loading weights)."""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def init_failure_line(exc: RayActorError) -> str:
    """The constructor's own exception line, buried at the end of Ray's creation-task traceback."""
    lines = [ln.strip() for ln in str(getattr(exc, "error_msg", exc)).splitlines() if ln.strip()]
    raised = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return raised[-1] if raised else (lines[0] if lines else type(exc).__name__)


def remote_one_line(exc: BaseException) -> str:
    """`Type: first line` of an exception, of the remote cause for a task error: as the store shows it."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return one_line(exc)


@dataclass
class WorkerPool(Generic[Item]):
    """`num_workers` actors of `actor_cls(*init_args)`; `call` names the method run on each item."""

    actor_cls: type
    init_args: tuple = ()
    num_workers: int = 1
    options: ActorOptions = field(default_factory=ActorOptions)
    call: str = "run"
    max_retries: int = 2
    start_timeout_s: float = 600.0
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _remote_cls: Any = field(default=None, init=False)

    def start(self) -> "WorkerPool[Item]":
        if self.num_workers < 1:
            raise ValueError("num_workers must be at least 1")
        self._remote_cls = ray.remote(self.actor_cls).options(**self.options.as_ray_options())
        self._slots = [self._spawn(i) for i in range(self.num_workers)]
        # Actors the cluster cannot place within the timeout join later, in `map_unordered`, when they are ready.
        answered, _ = ray.wait([s.ready for s in self._slots], num_returns=len(self._slots),
                               timeout=self.start_timeout_s)
        if not answered:
            error = self._nothing_ready()
            self.shutdown()
            raise error
        self._wait_ready([s for s in self._slots if s.ready in answered])
        return self

    def _nothing_ready(self) -> WorkerStartError:
        waiting = sum(s.ready is not None for s in self._slots)
        return WorkerStartError(f"no worker ready after {self.start_timeout_s:g} s: {waiting} waiting for "
                                f"resources {self.options.as_ray_options()}")

    def _wait_ready(self, slots: list[_Slot]) -> None:
        """Fail fast, with the constructor's error, when actors cannot start: retrying would not help. An
        actor that died while starting without an error of its own (killed, its node lost) is replaced."""
        for slot in slots:
            self._started(slot)

    def _spawn(self, index: int, generation: int = 0) -> _Slot:
        actor = self._remote_cls.remote(*self.init_args)
        return _Slot(actor=actor, name=f"worker-{index}.{generation}", generation=generation,
                     ready=actor.__ray_ready__.remote())

    def _restart(self, slot: _Slot) -> _Slot:
        """A fresh actor in the dead one's place, not yet ready: `map_unordered` takes it in when it is."""
        ray.kill(slot.actor, no_restart=True)
        index = self._slots.index(slot)
        fresh = self._spawn(index, slot.generation + 1)
        self._slots[index] = fresh
        return fresh

    def _started(self, slot: _Slot) -> _Slot:
        """The slot once its actor answered: itself, or a fresh one if the actor died while starting
        (its node lost, say) rather than raising in its constructor."""
        try:
            ray.get(slot.ready)
        except RayActorError as exc:
            if exc.actor_init_failed:
                raise WorkerStartError(f"worker failed to start: {init_failure_line(exc)}") from None
            log.warning("%s died while starting; starting another: %s", slot.name, remote_one_line(exc))
            return self._restart(slot)
        slot.ready = None
        return slot

    def map_unordered(self, items: Iterable[Item], args_of: Callable[[Item], tuple]) -> Iterator[PoolOutcome[Item]]:
        """Runs `actor.<call>(*args_of(item))` for every item, yielding outcomes as they finish.

        Every idle actor gets the next queued item at once, so no actor waits while work is queued.
        """
        queue = deque(items)
        return self.stream(lambda: queue.popleft() if queue else EXHAUSTED, args_of)

    def stream(self, next_item: Callable[[], Any], args_of: Callable[[Item], tuple],
               depth: int = 1) -> Iterator[PoolOutcome[Item]]:
        """Like `map_unordered`, over items that `next_item()` makes as actors fall idle: it returns an item,
        None (nothing yet: asked again after the next outcome) or EXHAUSTED (no more, ever). The caller may
        act on each outcome before the pool asks for more, so what it hands out next can depend on it.

        `depth`: calls out per actor at once. With 2, an actor's next item waits in its own queue while it
        runs the current one, so it starts the moment the current one ends instead of after the result's
        round trip through this loop (and the caller's work on it); items are then asked one outcome
        earlier. When an actor dies, only the call it was running counts as an attempt: the ones queued
        behind it are handed out again as they were."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if not self._slots:
            self.start()
        retry: deque[tuple[Item, int]] = deque()  # items whose actor died, before any new one
        # One entry per call an actor may still take: each ready actor `depth` times, interleaved so that
        # every actor has one call before any has two.
        idle: deque[_Slot] = deque(s for _ in range(depth) for s in self._slots if s.ready is None)
        starting: dict[Any, _Slot] = {s.ready: s for s in self._slots if s.ready is not None}
        running: dict[Any, _InFlight[Item]] = {}
        exhausted = False
        submitted = 0

        def submit() -> None:
            nonlocal exhausted, submitted
            while idle and (retry or not exhausted):
                if retry:
                    item, attempts = retry.popleft()
                else:
                    item, attempts = next_item(), 0
                    if item is EXHAUSTED:
                        exhausted = True
                        return
                    if item is None:
                        return
                slot = idle.popleft()
                ref = getattr(slot.actor, self.call).remote(*args_of(item))
                running[ref] = _InFlight(item=item, slot=slot, attempts=attempts + 1, seq=submitted)
                submitted += 1

        submit()
        while running or retry or not exhausted:
            if not running and not starting:
                # Idle actors, and a source with nothing yet: no outcome will ever change its mind.
                raise RuntimeError("the pool's item source has nothing to hand out while nothing runs")
            # With nothing running, only a starting actor can take the queue: wait for one, not forever.
            done, _ = ray.wait([*running, *starting], num_returns=1,
                               timeout=None if running else self.start_timeout_s)
            if not done:
                raise self._nothing_ready()
            ref = done[0]
            if ref in starting:
                slot = self._started(starting.pop(ref))
                if slot.ready is None:
                    idle.extend([slot] * depth)
                else:
                    starting[slot.ready] = slot
                submit()
                continue
            flight = running.pop(ref)
            try:
                value = ray.get(ref)
            except (RayActorError, WorkerCrashedError, ObjectLostError) as exc:
                # The actor process died (OOM, segfault, node loss; a result kept on a lost node is lost
                # with it): the item is innocent until it has killed `max_retries + 1` actors.
                dead = flight.slot
                if dead.died_running is None:  # the first of its calls to come back: replace the actor once
                    dead.died_running = min([flight.seq] + [f.seq for f in running.values() if f.slot is dead])
                    kept = [s for s in idle if s is not dead]
                    idle.clear()
                    idle.extend(kept)
                    fresh = self._restart(dead)
                    starting[fresh.ready] = fresh
                if flight.seq != dead.died_running:  # queued behind the running call: it never started
                    retry.append((flight.item, flight.attempts - 1))
                elif flight.attempts <= self.max_retries:
                    log.warning("%s died on an item (attempt %d); re-queued: %s", flight.slot.name,
                                flight.attempts, remote_one_line(exc))
                    retry.appendleft((flight.item, flight.attempts))
                else:
                    yield PoolOutcome(item=flight.item, error=f"worker died {flight.attempts} times: {remote_one_line(exc)}",
                                      attempts=flight.attempts, worker=flight.slot.name)
            except RayTaskError as exc:
                if flight.slot.died_running is None:  # a replaced actor's slot takes no more calls
                    idle.append(flight.slot)
                yield PoolOutcome(item=flight.item, error=remote_one_line(exc), attempts=flight.attempts,
                                  worker=flight.slot.name)
            else:
                if flight.slot.died_running is None:
                    idle.append(flight.slot)
                yield PoolOutcome(item=flight.item, value=value, attempts=flight.attempts, worker=flight.slot.name)
            submit()

    def shutdown(self) -> None:
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
