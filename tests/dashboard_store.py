"""A search written into a real store the way the driver writes one (job, candidates one transaction each,
generations with their front and hypervolume, report-split scores for the front, a final status), with
decoded PS recipes and made-up scores instead of Ray workers: for the dashboard's tests and its load bench
(`bench/dashboard_load.py`), which need thousands of candidates or a job that grows while a page watches."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from evosearch.optimizers.pareto import ParetoFront
from evosearch.recipe import recipe_hash
from evosearch.search.driver import hypervolume_reference
from evosearch.search.job import JobSpec
from evosearch.spaces import build_space
from storage import CandidateRecord, ScoreRecord, Store

SOURCES = {"base": "/models/base", "math": "/models/math", "lang": "/models/lang"}
WORKERS = ("worker-a", "worker-b", "worker-c")


def synthetic_spec(name: str, output_dir: Path, per_generation: int, generations: int) -> JobSpec:
    """A two-objective NSGA-II job over a PS task-arithmetic space (4 layers in 2 blocks) of made-up models."""
    return JobSpec.model_validate({
        "name": name, "seed": 0, "output_dir": str(output_dir), "sources": SOURCES, "base_model": SOURCES["base"],
        "search_space": {"kind": "ps", "sources": [SOURCES["math"], SOURCES["lang"]], "base_model": SOURCES["base"],
                         "methods": "task_arithmetic", "num_layers": 4, "layer_groups": 2,
                         "bounds": {"weight": [0.0, 1.5]}, "fixed_per_model": {"density": 1.0}},
        "optimizer": {"name": "nsga2", "pop_size": per_generation}, "generations": generations,
        "objectives": [{"task": "zoo_target", "direction": "max"}, {"task": "zoo_math", "direction": "max"}],
        "fitness": {"mode": "full"}, "tasks": {"include_path": "/tasks"}})


class SyntheticSearch:
    """`run(generations)` or, a candidate at a time, `record(generation, index)` then `commit(generation)`."""

    def __init__(self, store: Store, name: str, output_dir: Path, per_generation: int = 8, generations: int = 4,
                 seed: int = 0, failure_every: int = 0, error: str = "RuntimeError: CUDA out of memory"):
        self.store, self.per_generation = store, per_generation
        self.spec = synthetic_spec(name, output_dir, per_generation, generations)
        self.space = build_space(self.spec.search_space)
        self.rng = np.random.default_rng(seed)
        self.failure_every, self.error = failure_every, error
        self.job = store.create_job(name, self.spec.to_dict(), 0, str(output_dir),
                                    dict(zip(self.spec.objective_names, self.spec.directions)))
        store.set_job_status(self.job.id, "running")
        self.front_ids: list[int] = []
        self._front_rows: dict[int, list[float]] = {}
        self._generation_rows: dict[int, list[float]] = {}
        self._count = 0

    def record(self, generation: int, index: int) -> CandidateRecord:
        genome = self.rng.random(self.space.dim)
        recipe = self.space.decode(genome)
        self._count += 1
        base = dict(job_id=self.job.id, generation=generation, index=index, genome=[float(g) for g in genome],
                    recipe=recipe.model_dump(mode="json"), recipe_hash=recipe_hash(recipe),
                    worker=WORKERS[self._count % len(WORKERS)], attempts=1)
        if self.failure_every and self._count % self.failure_every == 0:
            rec = CandidateRecord(**base, status="failed", error=self.error)
        else:
            target = float(np.clip(0.4 + 0.4 * genome.mean() + self.rng.normal(0, 0.05), 0, 1))
            math_score = float(np.clip(1.1 - target + self.rng.normal(0, 0.05), 0, 1))
            rec = CandidateRecord(**base, status="done", build_seconds=float(self.rng.uniform(0.5, 1.5)),
                                  eval_seconds=float(self.rng.uniform(2.0, 4.0)), overhead_seconds=0.1,
                                  scores=[ScoreRecord(objective="zoo_target", split="search", estimated=target,
                                                      full=target),
                                          ScoreRecord(objective="zoo_math", split="search", estimated=math_score,
                                                      full=math_score)])
        rec.id = self.store.record_candidate(rec)
        if rec.status == "done":
            self._generation_rows[rec.id] = [s.estimated for s in rec.scores]
        return rec

    def commit(self, generation: int) -> None:
        """The front over every done candidate so far (the last front and this generation suffice), as the
        driver commits it, and the front's members scored on the report split."""
        rows = {**self._front_rows, **self._generation_rows}
        ids = list(rows)
        front = ParetoFront.from_objectives(np.array([rows[i] for i in ids], dtype=float).reshape(-1, 2),
                                            self.spec.directions)
        self.front_ids = [ids[i] for i in front.indices]
        self._front_rows = {i: rows[i] for i in self.front_ids}
        self._generation_rows = {}
        self.store.commit_generation(self.job.id, generation, b"synthetic", self.front_ids,
                                     front.hypervolume(hypervolume_reference(self.spec)))
        for candidate_id in self.front_ids:
            target, math_score = self._front_rows[candidate_id]
            self.store.add_scores(candidate_id, [
                ScoreRecord(objective="zoo_target", split="report", full=max(0.0, target - 0.03)),
                ScoreRecord(objective="zoo_math", split="report", full=max(0.0, math_score - 0.02))])

    def run(self, generations: int, finish: bool = True) -> None:
        for generation in range(generations):
            for index in range(self.per_generation):
                self.record(generation, index)
            self.commit(generation)
        if finish:
            self.store.set_job_status(self.job.id, "finished", "synthetic search done")


@contextmanager
def running_dashboard(store_url: str | None = None, runs_dir: Path | None = None, token: str | None = None):
    """The dashboard app served on 127.0.0.1 on a free port, in a thread: yields its base URL."""
    from evosearch.views.dashboard.app import DashboardServer, create_app
    from evosearch.views.dashboard.stores import StoreSet

    stores = StoreSet(store_url, runs_dir)
    server = DashboardServer(create_app(stores, token), "127.0.0.1", 0).start()
    try:
        yield server.url
    finally:
        server.stop()
        stores.close()


def fetch(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def fetch_json(url: str, headers: dict | None = None):
    status, _, body = fetch(url, headers)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)
