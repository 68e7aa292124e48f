"""The worker pool on a real local Ray: every item finishes once, dead actors are replaced."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workers.pool import EXHAUSTED, ActorOptions, WorkerPool


class SquareWorker:
    """Squares numbers; dies (the whole process) or raises on request, like a real worker could."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = Path(marker_dir)
        self.pid = os.getpid()

    def run(self, item):
        if item == "die-always":
            os._exit(1)
        if item == "die-once":
            marker = self.marker_dir / "died"
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return "survived"
        if item == "bad":
            raise ValueError("candidate 'bad' has a NaN score\nsecond line")
        return item * item, self.pid


def test_pool_runs_every_item_and_spreads_over_actors(ray_local, tmp_path):
    pool = WorkerPool(SquareWorker, (str(tmp_path),), num_workers=2, options=ActorOptions(num_cpus=0.5)).start()
    try:
        outcomes = list(pool.map_unordered(range(20), lambda i: (i,)))
    finally:
        pool.shutdown()
    assert sorted(o.value[0] for o in outcomes) == [i * i for i in range(20)]
    assert all(o.ok and o.attempts == 1 for o in outcomes)
    assert len({o.value[1] for o in outcomes}) == 2, "both actors should have taken work"


def test_stream_hands_out_items_made_from_earlier_outcomes(ray_local, tmp_path):
    """A source that has nothing until an outcome arrives (None), then makes items from it, then stops."""
    pool = WorkerPool(SquareWorker, (str(tmp_path),), num_workers=2, options=ActorOptions(num_cpus=0.5)).start()
    made, seen = [2], []

    def next_item():
        if made:
            return made.pop()
        return EXHAUSTED if len(seen) >= 4 else None

    try:
        for outcome in pool.stream(next_item, lambda i: (i,)):
            seen.append(outcome.value[0])
            if outcome.value[0] < 1000:
                made.append(outcome.value[0])  # the next item is this result: 2, 4, 16, 256
        with pytest.raises(RuntimeError, match="nothing to hand out"):
            list(pool.stream(lambda: None, lambda i: (i,)))
    finally:
        pool.shutdown()
    assert seen == [4, 16, 256, 65536]


def test_stream_at_depth_two_queues_a_second_call_and_a_death_charges_only_the_running_one(ray_local, tmp_path):
    """One actor, two calls out at once: the item queued behind one that kills the actor is handed to the
    replacement as it was (attempts 1), while the killer is charged its attempt."""
    pool = WorkerPool(SquareWorker, (str(tmp_path),), num_workers=1, options=ActorOptions(num_cpus=0.5),
                      max_retries=0).start()
    items, outcomes, asked_before_any_outcome = ["die-always", 5, 6], [], []

    def next_item():
        if not outcomes:
            asked_before_any_outcome.append(items[0] if items else None)
        return items.pop(0) if items else EXHAUSTED

    try:
        for outcome in pool.stream(next_item, lambda i: (i,), depth=2):
            outcomes.append(outcome)
        with pytest.raises(ValueError, match="depth must be at least 1"):
            list(pool.stream(next_item, lambda i: (i,), depth=0))
    finally:
        pool.shutdown()
    assert asked_before_any_outcome[:2] == ["die-always", 5]  # both out on the one actor before any result
    by_item = {str(o.item): o for o in outcomes}
    assert set(by_item) == {"die-always", "5", "6"} and len(outcomes) == 3
    assert by_item["die-always"].error.startswith("worker died 1 times") and by_item["die-always"].attempts == 1
    assert by_item["5"].value[0] == 25 and by_item["5"].attempts == 1 and by_item["5"].worker == "worker-0.1"
    assert by_item["6"].value[0] == 36 and by_item["6"].attempts == 1


def test_pool_requeues_after_actor_death_and_reports_task_errors(ray_local, tmp_path):
    pool = WorkerPool(SquareWorker, (str(tmp_path),), num_workers=2, options=ActorOptions(num_cpus=0.5),
                      max_retries=1).start()
    try:
        outcomes = {str(o.item): o for o in pool.map_unordered([3, "die-once", "bad", "die-always", 4],
                                                               lambda i: (i,))}
    finally:
        pool.shutdown()
    assert outcomes["3"].value[0] == 9 and outcomes["4"].value[0] == 16
    assert outcomes["die-once"].value == "survived" and outcomes["die-once"].attempts == 2
    assert outcomes["bad"].error == "ValueError: candidate 'bad' has a NaN score"
    assert outcomes["bad"].attempts == 1
    assert outcomes["die-always"].error.startswith("worker died 2 times")


class BrokenWorker:
    def __init__(self, path: str) -> None:
        raise FileNotFoundError(f"source model not found: {path}")

    def run(self, item):
        return item


def test_pool_fails_fast_with_the_constructor_error(ray_local):
    import pytest

    from workers.pool import WorkerStartError

    with pytest.raises(WorkerStartError, match=r"^worker failed to start: FileNotFoundError: source model not found: /nope$"):
        WorkerPool(BrokenWorker, ("/nope",), num_workers=1, options=ActorOptions(num_cpus=0.5)).start()


def test_pool_that_the_cluster_cannot_place_fails_after_its_timeout_instead_of_hanging(ray_local, tmp_path):
    import pytest

    from workers.pool import WorkerStartError

    huge = ActorOptions(num_cpus=0.5, num_gpus=64)  # more GPUs than any node has
    with pytest.raises(WorkerStartError, match=r"^no worker ready after 1 s: 2 waiting for resources "):
        WorkerPool(SquareWorker, (str(tmp_path),), num_workers=2, options=huge, start_timeout_s=1).start()


def test_pool_goes_on_with_the_actors_the_cluster_could_place(ray_local, tmp_path):
    import ray

    deadline = time.monotonic() + 30  # earlier tests' killed actors give their CPUs back asynchronously
    while ray.available_resources().get("CPU", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    # Room for one actor of three CPUs on the session's four: the second waits for resources all along,
    # and when the first dies only one of its replacement and the waiting actor can take its place.
    pool = WorkerPool(SquareWorker, (str(tmp_path),), num_workers=2, options=ActorOptions(num_cpus=3),
                      start_timeout_s=10).start()
    try:
        outcomes = {str(o.item): o for o in pool.map_unordered([2, "die-once", 3, 4], lambda i: (i,))}
    finally:
        pool.shutdown()
    assert outcomes["die-once"].value == "survived" and outcomes["die-once"].attempts == 2
    assert [outcomes[k].value[0] for k in ("2", "3", "4")] == [4, 9, 16]


class KilledWhileStartingWorker(SquareWorker):
    """Its first process is killed while loading (a chaos SIGKILL, the OOM killer); later ones start."""

    def __init__(self, marker_dir: str) -> None:
        super().__init__(marker_dir)
        marker = self.marker_dir / "killed-while-starting"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), 9)


def test_an_actor_killed_while_starting_is_replaced_not_taken_for_a_broken_worker(ray_local, tmp_path):
    """Found by bench/chaos.py: a worker SIGKILLed while it loaded its sources failed the whole job."""
    pool = WorkerPool(KilledWhileStartingWorker, (str(tmp_path),), num_workers=1,
                      options=ActorOptions(num_cpus=0.5)).start()
    try:
        outcomes = list(pool.map_unordered(range(3), lambda i: (i,)))
    finally:
        pool.shutdown()
    assert sorted(o.value[0] for o in outcomes) == [0, 1, 4] and (tmp_path / "killed-while-starting").exists()
