"""Steady-state scheduling end to end: real Ray workers, a real SQLite store, real lm-eval on the tiny zoo;
the driver process SIGKILLed mid-run and resumed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from evosearch.search.driver import run_job
from evosearch.search.job import JobError, parse_job
from test_driver import run_and_kill, wait_for_lease_expiry
from test_job import zoo_job

pytestmark = pytest.mark.slow


def _steady_job(zoo, tmp_path: Path, name: str) -> dict:
    job = zoo_job(zoo, name=name, generations=2, optimizer={"name": "ga", "pop_size": 4},
                  scheduling="steady_state", workers={"count": 2, "num_cpus": 0.5},
                  fitness={"mode": "full", "limit": 20}, report={"when": "never"})
    job["output_dir"] = str(tmp_path / name)
    return job


def test_cmaes_and_a_report_every_generation_cannot_be_scheduled_steady_state(tiny_zoo, tmp_path):
    with pytest.raises(JobError, match="scheduling: steady_state needs an optimizer .* not cmaes"):
        parse_job(zoo_job(tiny_zoo, scheduling="steady_state"))
    with pytest.raises(JobError, match="report.when: every_generation"):
        parse_job(zoo_job(tiny_zoo, scheduling="steady_state", optimizer={"name": "random"},
                          report={"when": "every_generation"}))


def test_killed_steady_state_driver_resumes_without_reevaluating(ray_local, tiny_zoo, tmp_path):
    """`evosearch run` of a steady-state GA job SIGKILLed once generation 1 has a candidate recorded (so with
    generations asked ahead and out), then resumed: every candidate recorded once, none evaluated twice."""
    job = _steady_job(tiny_zoo, tmp_path, "steady")
    store = run_and_kill(job, tmp_path, ray_local)
    job_id = store.get_job("steady").id
    before = {(c.generation, c.index): c for c in store.candidates(job_id)}
    assert len(before) < 8

    wait_for_lease_expiry(store, job_id)  # the killed driver's lease refuses a resume while it may be live
    resumed = run_job(parse_job(job), store, resume=True)
    after = store.candidates(job_id)
    assert resumed.status == "finished" and resumed.generations == 2
    assert Counter((c.generation, c.index) for c in after) == {(g, i): 1 for g in range(2) for i in range(4)}
    for c in after:  # what the killed run recorded is kept as it was
        if (c.generation, c.index) in before:
            assert (c.id, c.eval_seconds, c.genome) == (before[c.generation, c.index].id,
                                                        before[c.generation, c.index].eval_seconds,
                                                        before[c.generation, c.index].genome)
    # Evaluated by a worker (a cache copy or a duplicate has no attempts): the resumed run did the rest only.
    assert resumed.evaluated == sum(c.attempts > 0 for c in after) - sum(c.attempts > 0 for c in before.values())
    assert store.last_generation(job_id).generation == 1
    assert resumed.front_ids and resumed.hypervolume is not None
