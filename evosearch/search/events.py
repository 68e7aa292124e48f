"""What a running search tells its watchers (the live view of `evosearch run`), after every change."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunEvent:
    """What the progress view shows; sent after every change."""

    job: str
    generation: int
    max_generations: int
    in_generation: int  # candidates in the current generation
    done: int  # done candidates of the job so far (cache hits included)
    failed: int
    running: int
    cached: int  # candidates served from the recipe cache this run
    best: dict[str, float]  # objective -> best search-split value so far
    elapsed_seconds: float
    evaluated: int  # candidates the workers actually evaluated this run
    front_size: int = 0  # candidates on the last committed front
    phase: str = "search"  # search | report | finished | stopped
