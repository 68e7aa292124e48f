"""A job's results for notebooks and the `export`/`plot` verbs: its front, its candidates, choosing one, exporting it.

    job = open_job("zoo-ps")                  # the job's default store under runs/, or open_job(name, store=URL)
    job.front(by="report")                    # the rows `evosearch front --json` prints
    job.export("out/best", best="zoo_target") # the HF directory with a model card
    job.plot("front.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer

from evosearch.config_file import name_and_store
from evosearch.merge.export import export_recipe
from evosearch.optimizers.pareto import knee_index
from evosearch.recipe import parse_recipe, recipe_source_paths
from evosearch.search.job import JobError, JobSpec, load_job, spec_of_job
from evosearch.views.model_card import Verification, search_section
from evosearch.views.plot import plot_job
from evosearch.views.scores import SPLITS, QueryError, split_scores
from fitness.evaluator import LmEvalEvaluator
from fitness.splits import split_docs
from storage import CandidateRecord, JobRecord, Store, StoreError

__all__ = ["Choice", "Job", "QueryError", "SPLITS", "open_job", "split_scores"]


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, and how it was chosen (said on the model card)."""

    candidate: CandidateRecord
    rule: str


@dataclass
class Job:
    store: Store
    record: JobRecord

    @cached_property
    def spec(self) -> JobSpec:
        return spec_of_job(self.record)

    @property
    def name(self) -> str:
        return self.record.name

    def candidates(self, generation: Optional[int] = None, status: Optional[str] = "done") -> list[CandidateRecord]:
        return self.store.candidates(self.record.id, generation, status)

    def front_candidates(self, generation: Optional[int] = None) -> list[CandidateRecord]:
        return self.store.front(self.record.id, generation)

    def front(self, generation: Optional[int] = None, by: str = "search") -> list[dict[str, Any]]:
        """The front of `generation` (default: the last), best first on the first objective on split `by`;
        rows as `evosearch front --json` prints them."""
        if by not in SPLITS:
            raise QueryError(f"by must be 'search' or 'report', not {by!r}")
        spec = self.spec
        first, direction = spec.objective_names[0], spec.directions[0]

        def key(c: CandidateRecord) -> float:
            value = split_scores(c, by).get(first)
            if value is None:
                return math.inf
            return -value if direction == "max" else value

        return [{"id": c.id, "generation": c.generation, "index": c.index, "recipe_hash": c.recipe_hash,
                 "search": split_scores(c, "search"), "report": split_scores(c, "report"), "recipe": c.recipe}
                for c in sorted(self.front_candidates(generation), key=key)]

    # --- choosing one candidate ------------------------------------------------------------------------
    def choose(self, candidate: Optional[int] = None, best: Optional[str] = None, knee: bool = False) -> Choice:
        """By id, best on an objective (held-out report split where scored, else search split), or the knee of
        the last front; with none given, best on the first objective."""
        if sum((candidate is not None, best is not None, knee)) > 1:
            raise QueryError("give at most one of candidate, best and knee")
        if candidate is not None:
            return self._by_id(candidate)
        if knee:
            return self._knee()
        return self._best(best or self.spec.objective_names[0])

    def _by_id(self, candidate_id: int) -> Choice:
        found = [c for c in self.candidates(status=None) if c.id == candidate_id]
        if not found:
            raise QueryError(f"job {self.name} has no candidate {candidate_id}")
        if found[0].status != "done":
            cause = (found[0].error or "no error recorded").strip().splitlines()[0]
            raise QueryError(f"candidate {candidate_id} of job {self.name} failed ({cause}); nothing to export")
        return Choice(found[0], f"candidate {candidate_id}, as asked")

    def _best(self, objective: str) -> Choice:
        spec = self.spec
        if objective not in spec.objective_names:
            raise QueryError(f"job {self.name} has no objective {objective!r}; its objectives: "
                             f"{', '.join(spec.objective_names)}")
        sign = -1.0 if spec.directions[spec.objective_names.index(objective)] == "max" else 1.0
        done = self.candidates()
        reported = [c for c in done if split_scores(c, "report").get(objective) is not None]
        split = "report" if reported else "search"
        pool = reported or [c for c in done if split_scores(c, "search").get(objective) is not None]
        if not pool:
            raise QueryError(f"job {self.name} has no scored candidate to choose from")
        # Ties on the held-out score go to the better search estimate, then to the earlier candidate.
        chosen = min(pool, key=lambda c: (sign * split_scores(c, split)[objective],
                                          sign * (split_scores(c, "search").get(objective) or 0.0), c.id))
        where = ("the report split (held out from the search), among the "
                 f"{len(pool)} candidate(s) scored on it" if split == "report"
                 else "the search split (no candidate has a report-split score for it)")
        return Choice(chosen, f"best {objective} ({'highest' if sign < 0 else 'lowest'}) on {where}")

    def _knee(self) -> Choice:
        spec = self.spec
        front = self.front_candidates()
        if not front:
            raise QueryError(f"job {self.name} has no committed front yet")
        table = np.array([[split_scores(c, "search").get(o, math.nan) for o in spec.objective_names] for c in front],
                         dtype=float)
        chosen = front[knee_index(table, spec.directions)]
        return Choice(chosen, f"knee of the last front ({len(front)} candidates) on the search-split estimates")

    # --- export and plot -----------------------------------------------------------------------------------
    def export(self, out: str | Path, candidate: Optional[int] = None, best: Optional[str] = None,
               knee: bool = False, force: bool = False, verify: bool = False) -> Path:
        """Rebuild the chosen candidate into the HF directory `out`, with its model card; returns `out`."""
        return self.export_choice(self.choose(candidate, best, knee), out, force=force, verify=verify)

    def export_choice(self, choice: Choice, out: str | Path, force: bool = False, verify: bool = False) -> Path:
        out = Path(out)
        recipe = parse_recipe(choice.candidate.recipe, source=f"recipe of candidate {choice.candidate.id}")
        out = export_recipe(recipe, out, force=force)  # the directory as resolved and written
        splits = self.store.task_splits(self.record.id)
        verification = self._verify(out, splits) if verify else None
        card = out / "README.md"
        card.write_text(card.read_text() + search_section(self.name, self.spec, choice.candidate, choice.rule,
                                                          recipe_source_paths(recipe), verification, splits))
        return out

    def _verify(self, out: Path, splits: dict):
        """The exported directory, loaded with plain transformers, scored on the report split by lm-eval
        (`splits`: the job's carved hold-outs)."""
        spec = self.spec
        tasks = spec.report_tasks
        if not tasks:
            raise QueryError(f"job {self.name} has no task objective to verify")
        model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True, trust_remote_code=False)
        evaluator = LmEvalEvaluator(spec.tasks.source(), tasks, batch_size=spec.workers.batch_size,
                                    scoring=spec.scoring)
        samples = split_docs(tasks, splits, "report", spec.fitness.limit)
        return Verification(evaluator.evaluate(model, tokenizer, samples=samples).accuracy, spec.fitness.limit)

    def plot(self, path: str | Path) -> Path:
        return plot_job(self, Path(path))


def open_job(name: str, store: Optional[str] = None) -> Job:
    """A job by name or job file, in `store` (a URL) or, by default, the job's store (as `evosearch front`)."""
    try:
        name, url, _ = name_and_store(name, store, load_job, "job")
    except JobError:  # a bad job file: its own one-line error, as `load_job` gives it
        raise
    except ValueError as e:  # a name that could leave runs/
        raise QueryError(str(e)) from None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise QueryError(f"no store at {url.removeprefix('sqlite:///')} (pass store=URL)")
    opened = Store.open(url)
    try:
        return Job(opened, opened.get_job(name))
    except StoreError:
        opened.close()
        raise
