"""Score every zoo model on every zoo task (report split) and measure how well the zoo merges.

The three mergeability figures:

1. **specialist gain** - each specialist's accuracy on its own task minus the base's;
2. **skill-merge retention** - a task-arithmetic merge (mergekit semantics, ``normalize: false``) of
   the two skill specialists at weight 1.0 each keeps this fraction of each specialist's gain on its
   own task (also shown at 0.5 each);
3. **cross-domain target** - the best task-arithmetic merge of the math and lang specialists over a
   weight grid, against both specialists, on the target task (an L1 sum, then an L2 reversal).

Every model and the best merge are also scored on the target answered by generation (`zoo_target_gen`,
exact match), when the zoo has it (zoos built before it was added do not).

Every merge goes through the project's merge engine (`evosearch.merge.ps`) with a `PSRecipe`.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from evosearch.merge.ps import build_merged_model
from evosearch.recipe import PSRecipe
from evosearch.zoo.build import ZooManifest
from evosearch.zoo.tasks import GENERATIVE_TASK, TASKS, task_name
from fitness.evaluator import LmEvalEvaluator

GRID_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
SKILL_MERGE_WEIGHTS = (1.0, 0.5)
TARGET = "zoo_target"


@dataclass
class ZooReport:
    split: str
    accuracy: dict[str, dict[str, float]]  # model or merge label -> base task name -> accuracy (0..1)
    gains: dict[str, float]  # specialist -> own-task accuracy minus base's (figure 1)
    retention: dict[str, dict[str, float]]  # "w=1.0" -> specialist -> kept fraction of its gain (figure 2)
    target_grid: dict[str, float] = field(default_factory=dict)  # "w_math,w_lang" -> target accuracy
    best_target: dict[str, float | str] = field(default_factory=dict)  # figure 3

    def to_json(self) -> dict:
        return asdict(self)


def task_arithmetic(base: str, weights: dict[str, float]) -> PSRecipe:
    return PSRecipe(merge_method="task_arithmetic", base_model=base, parameters={"normalize": False},
                    models=[{"model": m, "parameters": {"weight": w}} for m, w in weights.items()])


class _Zoo:
    """The zoo's models resident in memory, and one evaluator over the chosen split."""

    def __init__(self, manifest: ZooManifest, split: str, batch_size: int):
        self.manifest, self.split = manifest, split
        self.paths = {name: str(path) for name, path in manifest.models.items()}
        self.tensors = {p: load_file(str(Path(p) / "model.safetensors")) for p in self.paths.values()}
        self.config = AutoConfig.from_pretrained(self.paths["base"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.paths["base"])
        self.tasks = scored_tasks(manifest)
        self.evaluator = LmEvalEvaluator(manifest.include_path, [task_name(t, split) for t in self.tasks],
                                         batch_size=batch_size)

    def score(self, model: torch.nn.Module, tasks: list[str]) -> dict[str, float]:
        result = self.evaluator.evaluate(model, self.tokenizer, tasks=[task_name(t, self.split) for t in tasks])
        return {t: result.accuracy[task_name(t, self.split)] for t in tasks}

    def load(self, name: str) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(self.paths[name]).eval()

    def merge(self, weights: dict[str, float]) -> torch.nn.Module:
        recipe = task_arithmetic(self.paths["base"], {self.paths[m]: w for m, w in weights.items()})
        return build_merged_model(recipe, self.tensors, config=self.config)


def scored_tasks(manifest: ZooManifest) -> list[str]:
    """The zoo's tasks by base name, the generative target last when the zoo has it."""
    return list(TASKS) + ([GENERATIVE_TASK] if GENERATIVE_TASK in manifest.tasks else [])


def _kept(merged: float, base: float, specialist: float) -> float:
    gain = specialist - base
    return (merged - base) / gain if gain > 0 else float("nan")


def zoo_report(manifest: ZooManifest, split: str = "report", batch_size: int = 64) -> ZooReport:
    zoo = _Zoo(manifest, split, batch_size)
    all_tasks = zoo.tasks
    acc = {name: zoo.score(zoo.load(name), all_tasks) for name in manifest.models}
    base = acc["base"]
    own = manifest.own_tasks
    gains = {s: acc[s][t] - base[t] for s, t in own.items()}

    retention: dict[str, dict[str, float]] = {}
    skills = ("math", "strings")
    for w in SKILL_MERGE_WEIGHTS:
        label = f"math+strings TA w={w}"
        acc[label] = zoo.score(zoo.merge({s: w for s in skills}), [own[s] for s in skills])
        retention[f"w={w}"] = {s: _kept(acc[label][own[s]], base[own[s]], acc[s][own[s]]) for s in skills}

    grid = {}
    for wm, wl in itertools.product(GRID_WEIGHTS, repeat=2):
        grid[f"{wm},{wl}"] = zoo.score(zoo.merge({"math": wm, "lang": wl}), [TARGET])[TARGET]
    best_w, best = max(grid.items(), key=lambda kv: kv[1])
    best_weights = dict(zip(("math", "lang"), map(float, best_w.split(","))))
    acc[f"math+lang TA w={best_w} (best of grid)"] = {
        TARGET: best, **zoo.score(zoo.merge(best_weights), [t for t in all_tasks if t == GENERATIVE_TASK])}
    best_target = {"weights (math,lang)": best_w, "accuracy": best,
                   "minus_math": best - acc["math"][TARGET], "minus_lang": best - acc["lang"][TARGET]}
    return ZooReport(split=split, accuracy=acc, gains=gains, retention=retention, target_grid=grid,
                     best_target=best_target)
