"""The search driver: ask a generation, evaluate it on a Ray worker pool, record, tell, commit; resume.

One generation:
1. `optimizer.ask()` -> genomes -> recipes (the space decodes and repairs) -> recipe hashes.
2. A candidate already recorded for this generation (an interrupted run) is reused as it is; a recipe the
   job already evaluated is copied from the store's cache (`find_by_hash`); a recipe that appears twice in
   the generation is evaluated once. Only the rest go to the workers.
3. Each candidate is recorded as soon as it finishes (its own transaction), so a crash loses nothing
   evaluated. A failure is recorded `failed` with its one-line error; the optimizer gets NaN objectives for
   it, which it turns into its penalty. A first generation that failed whole ends the job (`failed`, the
   first candidate's error as its message): the job as written cannot score anything.
4. `optimizer.tell`, then one `commit_generation`: the optimizer's state, the job's Pareto front so far
   (over every done candidate) and its hypervolume.

Resume restores the optimizer from the last committed generation; asking again must give the genomes that
were recorded for the generation in progress, and the driver checks that it does before reusing them.
The front is re-scored in full on each objective's report split (never seen by the search) after every
generation or at the end, as the job says.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from evosearch.errors import RunFailure, one_line
from evosearch.merge.sources import SourceError
from evosearch.optimizers import Optimizer, ParetoFront, make_optimizer
from evosearch.recipe import recipe_hash, recipe_sources
from evosearch.search.calibrate import refit_if_in_finishing_order
from evosearch.search.calibration_spec import stored_irt_settings
from evosearch.search.costs import COST_TERMS, path_length
from evosearch.search.events import RunEvent
from evosearch.search.job import JobSpec, TaskObjective
from evosearch.search.lease import DriverLease, LeaseLost, LeaseSettings
from evosearch.search.memory import MemoryFitError, check_job_memory
from evosearch.search.preflight import TaskCheckError, check_search_models, check_search_tasks
from evosearch.search.scheduler import SteadyStateScheduler, generations_to_ask
from evosearch.search.ray_session import ensure_ray
from evosearch.spaces import SearchSpace, build_space
from fitness.evaluator import LmEvalEvaluator
from fitness.reduced import ReducedFitness
from fitness.splits import carve_holdout, search_only, split_docs
from storage import CalibrationRecord, CandidateRecord, JobRecord, ScoreRecord, Store, StoreError
from workers.candidate import CandidateTask, candidate_pool

log = logging.getLogger(__name__)

# Genomes recorded by an interrupted run and the optimizer's ask after restore must agree this closely
# (they went through the store as JSON floats).
GENOME_ATOL = 1e-9


class DriverError(RunFailure, RuntimeError):
    """A job that cannot start or continue; the message is one line."""


@dataclass
class RunSummary:
    job_id: int
    status: str  # finished | stopped
    generations: int  # committed generations
    candidates: int
    evaluated: int  # evaluated by workers in this run (not served from a cache or an earlier run)
    front_ids: list[int]
    hypervolume: Optional[float]
    seconds: float
    reason: Optional[str] = None  # why it ended before max_generations (budget, convergence, stop_after)


@dataclass
class _Pending:
    """A candidate of the current generation, before it is recorded."""

    index: int
    genome: list[float]
    recipe: dict
    recipe_hash: str
    duplicates: list[int] = field(default_factory=list)  # later indices with the same recipe


def hypervolume_reference(spec: JobSpec) -> list[float]:
    """A fixed reference point, so hypervolumes compare across generations: the worst possible value of
    each objective (accuracy 0 when maximised, 1 when minimised; a cost just past its largest value)."""
    ref = []
    for obj in spec.objectives:
        if isinstance(obj, TaskObjective):
            ref.append(0.0 if obj.direction == "max" else 1.0)
        else:
            ref.append(COST_TERMS[obj.cost].largest(spec.search_space) + 1.0 if obj.direction == "min" else 0.0)
    return ref


class SearchDriver:
    """Runs one job against one store; `run()` drives it to the end (or `stop_after` generations)."""

    def __init__(self, spec: JobSpec, store: Store, job: JobRecord, *, on_event: Optional[Callable[[RunEvent], None]] = None,
                 lease: Optional[DriverLease] = None, pool=None):
        self.spec, self.store, self.job = spec, store, job
        self.lease = lease  # checked before every write: a driver whose job was taken over writes nothing more
        self.space: SearchSpace = build_space(spec.search_space)
        self.optimizer: Optimizer = make_optimizer(spec.optimizer, self.space.dim, spec.directions, spec.seed,
                                                   spec.start_genome())
        self.on_event = on_event
        self.splits: dict = {}  # task -> TaskSplitRecord, for tasks whose report split is a carved hold-out
        self.fitness = None  # ReducedFitness in reduced mode, set by `_prepare` once the splits are known
        # A pool handed in (started, holding the job's sources and tasks) is the caller's: it stays up.
        self._pool, self._owns_pool = pool, pool is None
        self._started = time.monotonic()
        self._evaluated = self._cached = self._running = 0
        self._gen_size = self._front_size = 0

    # --- splits and fitness: what a worker is asked, and how its answer becomes scores --------------
    def _prepare(self) -> None:
        self.splits = self._task_splits()
        self.fitness = self._fitness()

    def _task_splits(self) -> dict:
        """The carved hold-out of every single-split task: read back from the store, or carved (from the
        task's doc count, the job's seed and holdout fraction) and recorded before anything is evaluated."""
        tasks = self.spec.holdout_tasks
        if not tasks:
            return {}
        splits = self.store.task_splits(self.job.id)
        missing = [t for t in tasks if t not in splits]
        if missing:
            counter = LmEvalEvaluator(self.spec.tasks.source(), missing)
            carved = [carve_holdout(t, len(counter.doc_ids(t)), self.spec.holdout.fraction, self.spec.seed)
                      for t in missing]
            self.store.record_task_splits(self.job.id, carved)
            splits.update({c.task: c for c in carved})
            log.info("carved report hold-outs: %s", ", ".join(
                f"{c.task} {len(c.report_doc_ids)} of {c.n_docs} docs" for c in carved))
        return splits

    def _fitness(self):
        if self.spec.fitness.mode == "full":
            return None
        f = self.spec.fitness
        calibration = stored_calibration(self.spec, self.store)
        # Anchors and the IRT fit must never touch a hold-out doc: the calibration loses them first.
        calibration = search_only(calibration, {t: s.search_doc_ids for t, s in self.splits.items()})
        return ReducedFitness.from_calibration(calibration, estimator=f.estimator, k=f.k, strategy=f.strategy,
                                               seed=self.spec.seed, irt_settings=stored_irt_settings(calibration.spec))

    def _docs(self, tasks: list[str], split: str) -> Optional[dict[str, list[int]]]:
        return split_docs(tasks, self.splits, split, self.spec.fitness.limit)

    def _search_task(self, key: str, recipe: dict):
        tasks = self.spec.search_tasks
        if self.fitness is not None:
            return CandidateTask(key=key, recipe=recipe, samples={t: self.fitness.samples[t] for t in tasks},
                                 tasks=tasks)
        return CandidateTask(key=key, recipe=recipe, samples=self._docs(tasks, "search"), tasks=tasks)

    def _search_scores(self, result, recipe: dict) -> list:
        if self.fitness is not None:
            models, weights = recipe_sources(recipe)
            estimated = self.fitness.estimate(result.correct, source_models=models, source_weights=weights)
            anchor = self.fitness.anchor_accuracy(result.correct)
        scores = []
        for obj in self.spec.objectives:
            if isinstance(obj, TaskObjective):
                read = dict(metric=obj.metric, filter=obj.filter)
                if self.fitness is not None:
                    scores.append(ScoreRecord(objective=obj.objective, split="search",
                                              estimated=float(estimated[obj.task]),
                                              anchor_accuracy=float(anchor[obj.task]), **read))
                else:
                    acc = float(result.accuracy[obj.task])
                    # Full mode measures the score itself: the "estimate" the optimizer sees is exact.
                    scores.append(ScoreRecord(objective=obj.objective, split="search", estimated=acc, full=acc,
                                              **read))
            else:
                value = COST_TERMS[obj.cost].value(recipe)
                scores.append(ScoreRecord(objective=obj.objective, split="search", estimated=value, full=value))
        return scores

    def objective_row(self, cand: CandidateRecord) -> list[float]:
        if cand.status != "done":
            return [np.nan] * len(self.spec.objectives)
        by_name = {s.objective: s.estimated for s in cand.scores if s.split == "search"}
        return [float(by_name[n]) if by_name.get(n) is not None else np.nan for n in self.spec.objective_names]

    # --- workers --------------------------------------------------------------------------------
    def _workers(self):
        if self._pool is None:
            w = self.spec.workers
            ensure_ray(num_cpus=max(os.cpu_count() or 1, w.count * w.num_cpus))
            self._pool = candidate_pool(w, self.spec.source_paths, self.spec.tasks.source(),
                                        self.spec.worker_tasks, scoring=self.spec.scoring).start()
        return self._pool

    def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            self._pool.shutdown()
            self._pool = None

    # --- one generation ------------------------------------------------------------------------
    def _emit(self, generation: int, phase: str = "search") -> None:
        if self.on_event is None:
            return
        progress = self.store.progress(self.job.id)  # counts and bests in SQL, not by reading every candidate
        self.on_event(RunEvent(
            job=self.spec.name, generation=generation, max_generations=self.spec.optimizer.max_generations,
            in_generation=self._gen_size, done=progress.done, failed=progress.failed, running=self._running,
            cached=self._cached, best=dict(progress.best), elapsed_seconds=time.monotonic() - self._started,
            evaluated=self._evaluated, front_size=self._front_size, phase=phase))

    def _record(self, rec: CandidateRecord) -> CandidateRecord:
        self._check_lease()
        rec.id = self.store.record_candidate(rec)
        return rec

    def run_generation(self, generation: int) -> None:
        genomes = self.optimizer.ask()
        final, primaries = self.admit(generation, genomes)
        if primaries:
            self._running = len(primaries)
            self._emit(generation)
            for pending, outcome in self._evaluate(generation, primaries):
                self._running -= 1
                self.settle(generation, genomes, final, pending, outcome)
                self._emit(generation)
        self.conclude(generation, genomes, final)

    # --- the steps of a generation, which the steady-state scheduler runs too ----------------------
    def admit(self, generation: int, genomes: np.ndarray) -> tuple[dict[int, CandidateRecord], list[_Pending]]:
        """The candidates of a generation already settled (recorded by an interrupted run, copied from the
        cache), and those a worker must evaluate (a recipe that appears twice is evaluated once)."""
        self._gen_size = len(genomes)
        recorded = {c.index: c for c in self.store.candidates(self.job.id, generation=generation)}
        for i, cand in recorded.items():
            if i >= len(genomes) or not np.allclose(cand.genome, genomes[i], rtol=0, atol=GENOME_ATOL):
                raise DriverError(f"job {self.spec.name}: generation {generation} candidate {i} was recorded "
                                  "with another genome than the restored optimizer asks for; cannot resume")
        final: dict[int, CandidateRecord] = dict(recorded)
        primaries: dict[str, _Pending] = {}
        for i, genome in enumerate(genomes):
            if i in final:
                continue
            decoded = self.space.decode(genome)
            recipe, h = decoded.model_dump(mode="json"), recipe_hash(decoded)
            base = dict(job_id=self.job.id, generation=generation, index=i, genome=[float(x) for x in genome],
                        recipe=recipe, recipe_hash=h)
            if h in primaries:
                primaries[h].duplicates.append(i)
                continue
            cached = self.store.find_by_hash(self.job.id, h)
            if cached is not None:
                final[i] = self._record(CandidateRecord(**base, status="done", worker=cached.worker, attempts=0,
                                                        scores=_search_only(cached.scores),
                                                        cached_from=cached.id))
                self._cached += 1
                continue
            primaries[h] = _Pending(index=i, genome=base["genome"], recipe=recipe, recipe_hash=h)
        # Longest path first (LPT): a generation's last candidates out are its shortest, so a worker left
        # without work at a barrier (the generation's tell, the end of the run) waits the least. PS
        # candidates all cost the same and keep their order.
        return final, sorted(primaries.values(), key=lambda p: -path_length(p.recipe))

    def settle(self, generation: int, genomes: np.ndarray, final: dict[int, CandidateRecord], pending: _Pending,
               outcome) -> None:
        """Records a worker's outcome for `pending` and for the later duplicates of its recipe."""
        self._evaluated += 1
        rec = self._record(self._candidate(generation, pending, outcome))
        final[pending.index] = rec
        for j in pending.duplicates:
            final[j] = self._record(CandidateRecord(
                job_id=self.job.id, generation=generation, index=j, genome=[float(x) for x in genomes[j]],
                recipe=pending.recipe, recipe_hash=pending.recipe_hash, status=rec.status, worker=rec.worker,
                attempts=0, error=rec.error, scores=_search_only(rec.scores),
                cached_from=rec.id if rec.status == "done" else None))
            self._cached += rec.status == "done"

    def conclude(self, generation: int, genomes: np.ndarray, final: dict[int, CandidateRecord]) -> None:
        """Tells the optimizer the generation (its oldest batch out) and commits it with the front so far."""
        if generation == 0 and all(final[i].status == "failed" for i in range(len(genomes))):
            # Nothing to learn from, and a job that goes on would only report an empty front.
            raise DriverError(f"job {self.spec.name}: every candidate of the first generation failed; "
                              f"the first: {final[0].error}")
        objectives = np.array([self.objective_row(final[i]) for i in range(len(genomes))], dtype=float)
        self.optimizer.tell(genomes, objectives)
        front_ids, hv = self.front()
        self._front_size = len(front_ids)
        self._check_lease()
        self.store.commit_generation(self.job.id, generation, self.optimizer.state_dict(), front_ids, hv)

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def search_task(self, generation: int, pending: _Pending) -> CandidateTask:
        return self._search_task(f"{self.spec.name}/g{generation}/i{pending.index}", pending.recipe)

    def _evaluate(self, generation: int, pending: list[_Pending]):
        """Yields (pending, PoolOutcome) as the workers finish."""
        tasks = {p.index: self.search_task(generation, p) for p in pending}
        by_index = {p.index: p for p in pending}
        for outcome in self._workers().map_unordered([p.index for p in pending], lambda i: (tasks[i],)):
            yield by_index[outcome.item], outcome

    def _candidate(self, generation: int, pending: _Pending, outcome):
        common = dict(job_id=self.job.id, generation=generation, index=pending.index, genome=pending.genome,
                      recipe=pending.recipe, recipe_hash=pending.recipe_hash, attempts=outcome.attempts)
        if not outcome.ok:
            return CandidateRecord(**common, status="failed", worker=outcome.worker, error=outcome.error)
        result = outcome.value
        try:
            scores = self._search_scores(result, pending.recipe)
        except Exception as e:  # noqa: BLE001 - an estimator failing on one candidate fails that candidate
            return CandidateRecord(**common, status="failed", worker=result.worker,
                                   error=one_line(e))
        return CandidateRecord(**common, status="done", worker=result.worker, build_seconds=result.build_seconds,
                               eval_seconds=result.eval_seconds, overhead_seconds=result.overhead_seconds,
                               scores=scores)

    # --- front and report split ------------------------------------------------------------------
    def front(self) -> tuple[list[int], Optional[float]]:
        """The Pareto front over every done candidate of the job (cache copies left out: same recipe)."""
        done = [c for c in self.store.candidates(self.job.id, status="done") if c.cached_from is None]
        if not done:
            return [], None
        f = np.array([self.objective_row(c) for c in done], dtype=float)
        front = ParetoFront.from_objectives(f, self.spec.directions)
        ids = [done[i].id for i in front.indices]
        return ids, front.hypervolume(hypervolume_reference(self.spec))

    def report_front(self, generation: int) -> None:
        """Scores the front's candidates in full on each objective's report split (once per candidate)."""
        tasks = self.spec.report_tasks
        todo = [c for c in self.store.front(self.job.id)
                if not any(s.split == "report" for s in c.scores)]
        if not todo:
            return
        self._running = len(todo)
        self._emit(generation, phase="report")
        by_id = {c.id: c for c in todo}
        items = {c.id: CandidateTask(key=f"{self.spec.name}/report/c{c.id}", recipe=c.recipe,
                                     samples=self._docs(tasks, "report"), tasks=tasks) for c in todo}
        for outcome in self._workers().map_unordered(list(by_id), lambda cid: (items[cid],)):
            self._running -= 1
            if not outcome.ok:
                log.warning("report split of candidate %s failed: %s", outcome.item, outcome.error)
                continue
            acc = outcome.value.accuracy
            self.store.add_scores(outcome.item, [
                ScoreRecord(objective=o.objective, split="report", full=float(acc[o.report]), metric=o.metric,
                            filter=o.filter)
                for o in self.spec.task_objectives])
            self._emit(generation, phase="report")

    # --- the whole job ----------------------------------------------------------------------------
    def workers(self):
        return self._workers()

    def running(self, count: int, generation: int) -> None:
        self._running = count
        self._emit(generation)

    def _run_steady_state(self, stop_after: Optional[int]) -> tuple[str, Optional[str]]:
        """The search with workers never waiting for a generation to end (`scheduler.py`)."""
        per_generation = self.spec.population_size
        limit = generations_to_ask(self.spec.optimizer.max_generations, self.spec.budget, per_generation, stop_after)
        SteadyStateScheduler(self, limit).run()
        told = self.optimizer.generation
        if stop_after is not None and told >= stop_after and not self.optimizer.done():
            return "stopped", f"stopped after generation {told - 1} as asked"
        if self.spec.budget is not None and not self.optimizer.done():
            return "finished", f"budget of {self.spec.budget} candidates reached after {told} generation(s)"
        return "finished", None

    def run(self, stop_after: Optional[int] = None) -> RunSummary:
        """Runs generations until the optimizer is done, the budget would be passed, or `stop_after`
        generations are committed (counted from 0: the job then stops, resumable)."""
        last = self.store.last_generation(self.job.id)
        if last is not None:
            self.optimizer.load_state(last.optimizer_state)
        per_generation = self.spec.population_size
        status, reason = "finished", None
        self.store.set_job_status(self.job.id, "running")
        try:
            self._prepare()
            if self.spec.scheduling == "steady_state":
                status, reason = self._run_steady_state(stop_after)
            while self.spec.scheduling == "generational" and not self.optimizer.done():
                generation = self.optimizer.generation
                if stop_after is not None and generation >= stop_after:
                    status, reason = "stopped", f"stopped after generation {generation - 1} as asked"
                    break
                so_far = generation * per_generation
                if self.spec.budget is not None and so_far + per_generation > self.spec.budget:
                    reason = f"budget of {self.spec.budget} candidates reached after {generation} generation(s)"
                    break
                self.run_generation(generation)
                if self.spec.report.when == "every_generation":
                    self.report_front(generation)
                self._emit(generation)
            max_generations = self.spec.optimizer.max_generations
            if reason is None and self.optimizer.generation < max_generations:
                # e.g. CMA-ES stops on a flat generation, which coarse (anchor) scores make likely: say so.
                reason = (f"{self.optimizer.name} converged after {self.optimizer.generation} of "
                          f"{max_generations} generations")
            if status == "finished" and self.spec.report.when != "never":
                self.report_front(self.optimizer.generation - 1)
        except LeaseLost:
            raise  # the job is another driver's now: its status is that driver's to write
        except BaseException as e:
            message = "interrupted" if isinstance(e, KeyboardInterrupt) else one_line(e)
            self.store.set_job_status(self.job.id, "stopped" if isinstance(e, KeyboardInterrupt) else "failed",
                                      message)
            raise
        finally:
            self.close()
        self.store.set_job_status(self.job.id, status, reason)
        self._emit(self.optimizer.generation - 1, phase=status)
        committed = self.store.last_generation(self.job.id)
        return RunSummary(job_id=self.job.id, status=status,
                          generations=0 if committed is None else committed.generation + 1,
                          candidates=len(self.store.candidates(self.job.id)), evaluated=self._evaluated,
                          front_ids=[] if committed is None else list(committed.front_candidate_ids),
                          hypervolume=None if committed is None else committed.hypervolume,
                          seconds=time.monotonic() - self._started, reason=reason)


def _search_only(scores: list[ScoreRecord]) -> list[ScoreRecord]:
    return [dataclasses.replace(s) for s in scores if s.split == "search"]


def stored_calibration(spec: JobSpec, store: Store) -> CalibrationRecord:
    """The calibration a reduced-fitness job names, from the job's store; DriverError unless it is there and
    covers every search task."""
    name = spec.fitness.calibration
    try:
        calibration = store.get_calibration(name)
    except StoreError as e:
        raise DriverError(f"job {spec.name}: fitness.calibration: {e} (run `evosearch calibrate` with "
                          "this store first)") from None
    calibration, note = refit_if_in_finishing_order(store, calibration)
    if note is not None:
        log.warning("%s", note)
    missing = [t for t in spec.search_tasks if t not in calibration.tasks]
    if missing:
        raise DriverError(f"calibration {name!r} does not cover task {missing[0]!r} "
                          f"(it has {', '.join(calibration.tasks)})")
    stored = (calibration.spec or {}).get("tasks")
    scored = stored.get("scoring", {}) if isinstance(stored, dict) else {}  # none in a hand-made calibration
    for o in spec.task_objectives:
        theirs = scored.get(o.task)
        if theirs and (theirs.get("metric"), theirs.get("filter")) != (o.metric, o.filter):
            raise DriverError(f"calibration {name!r} scored task {o.task!r} by {theirs.get('metric')}/"
                              f"{theirs.get('filter')}, the objective by {o.metric}/{o.filter}")
    return calibration


def run_job(spec: JobSpec, store: Store, resume: bool = False, *, stop_after: Optional[int] = None,
            on_event: Optional[Callable[[RunEvent], None]] = None, force: bool = False,
            on_notice: Optional[Callable[[str], None]] = None, on_info: Optional[Callable[[str], None]] = None,
            pool=None) -> RunSummary:
    """Runs a job from its spec (`resume=False`: a new job of that name) or continues the stored job of
    that name (`resume=True`) from its last committed generation, holding the job's lease throughout
    (`LeaseHeld` while another driver's is live, unless `force`; `on_notice` hears what a forced take-over
    risks; `on_info` hears a new job's predicted memory peak). `pool`: a started worker pool
    (`workers.candidate.candidate_pool`) whose workers hold the job's sources and tasks, to run several
    jobs on one set of workers (a benchmark); it is left running."""
    lease_settings = LeaseSettings.from_env()
    if resume:
        job = store.get_job(spec.name)
    else:
        # Models the space cannot build would fail every candidate of a job already in the store.
        try:
            check_search_models(spec.source_paths, spec.search_space)
        except SourceError as e:
            raise DriverError(f"job {spec.name}: {e}") from None
        try:  # fills in each objective's metric and filter, so the stored job names them
            check_search_tasks(spec)
        except TaskCheckError as e:
            raise TaskCheckError(f"job {spec.name}: {e}") from None
        w = spec.workers
        ensure_ray(num_cpus=max(os.cpu_count() or 1, w.count * w.num_cpus))
        try:
            memory = check_job_memory(spec)
        except MemoryFitError as e:
            raise MemoryFitError(f"job {spec.name}: {e}") from None
        if spec.fitness.mode == "reduced":
            stored_calibration(spec, store)  # before the job is stored: a job without one could never run
        try:
            job = store.create_job(spec.name, spec.to_dict(), spec.seed, spec.output_dir,
                                   objectives=dict(zip(spec.objective_names, spec.directions)))
        except StoreError as e:
            raise DriverError(f"{e} (continue it with `evosearch resume {spec.name}`)") from None
        if on_info is not None:  # once the job is stored: no line beside a refusal
            on_info(f"job {spec.name}: {memory}")
    lease = DriverLease(store, job, lease_settings)
    notice = lease.take(force=force)
    if notice is not None and on_notice is not None:
        on_notice(notice)
    lease.start()
    try:
        return SearchDriver(spec, store, job, on_event=on_event, lease=lease, pool=pool).run(stop_after=stop_after)
    finally:
        lease.release()
