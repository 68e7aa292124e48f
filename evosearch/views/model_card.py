"""The search section of an exported model's card: where the candidate came from and its scores, each number
labelled with the split (and task) it was measured on, so a reader never takes a search estimate for a
held-out score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from evosearch.recipe import parse_recipe, recipe_methods
from evosearch.search.job import JobSpec, TaskObjective
from evosearch.views.scores import measured_by
from fitness.splits import describe
from storage import CandidateRecord, TaskSplitRecord


@dataclass(frozen=True)
class Verification:
    """Report-split scores re-measured with lm-eval on the exported directory itself."""

    accuracy: dict[str, float]  # report task -> accuracy
    docs: Optional[int]  # docs per task (the job's fitness.limit), None for every doc


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _method(recipe: dict) -> str:
    if "merge_method" in recipe:
        return f"PS ({recipe_methods(parse_recipe(recipe))})"
    return "DFS (layer path)"


def search_section(job_name: str, spec: JobSpec, candidate: CandidateRecord, rule: str,
                   sources: list[str], verification: Optional[Verification] = None,
                   splits: Optional[Mapping[str, TaskSplitRecord]] = None) -> str:
    """Markdown appended to the card the export writes; `splits` are the job's carved hold-outs."""
    splits = splits or {}
    docs = f"first {spec.fitness.limit} docs of each task" if spec.fitness.limit else "every doc of each task"
    estimate = ("accuracy on the search split" if spec.fitness.mode == "full"
                else f"estimate by {spec.fitness.estimator} from {spec.fitness.k} anchor items per task of the search split")
    lines = ["", "## Evosearch", "",
             f"- Job: `{job_name}`; candidate id {candidate.id} (generation {candidate.generation}, "
             f"index {candidate.index}); recipe hash `{candidate.recipe_hash}`",
             f"- Method: {_method(candidate.recipe)}",
             "- Sources: " + ", ".join(f"`{s}`" for s in sources),
             f"- Chosen as: {rule}",
             f"- Fitness: {spec.fitness.mode} ({estimate}); {docs}"]
    if spec.allow_test_split_fitness:
        lines.append("- **This job searched on a public benchmark's test split (allow_test_split_fitness: true); "
                     "its scores on that benchmark are not held-out.**")
    header = "| objective | direction | metric/filter | search split: estimate | report split: score (held out) |"
    rule_row = "|---|---|---|---|---|"
    if verification is not None:
        header += " report split: re-measured on this export |"
        rule_row += "---|"
    lines += ["", "### Scores", "",
              "The search split is what the search optimised on (the winner of many candidates is biased upward "
              "there); the report split was never seen by the search.", "", header, rule_row]
    search = {s.objective: s.estimated for s in candidate.scores if s.split == "search"}
    report = {s.objective: s.full for s in candidate.scores if s.split == "report"}
    for objective in spec.objectives:
        name = objective.objective
        if isinstance(objective, TaskObjective):
            searched = describe(objective.task, splits, "search")
            reported = describe(objective.report, splits, "report")
            row = (f"| {name} | {objective.direction} | {measured_by(objective)} | {_fmt(search.get(name))} ({searched}) "
                   f"| {_fmt(report.get(name))} ({reported}) |")
            if verification is not None:
                row += f" {_fmt(verification.accuracy.get(objective.report))} ({reported}) |"
        else:
            row = f"| {name} | {objective.direction} | cost | {_fmt(search.get(name))} (cost) | - (no split) |"
            if verification is not None:
                row += " - |"
        lines.append(row)
    if verification is not None:
        vdocs = f"first {verification.docs} docs" if verification.docs else "every doc"
        lines += ["", f"Re-measured with lm-eval on the exported directory, report split, {vdocs} of each task."]
    return "\n".join(lines) + "\n"
